//! Spellings people bring from Duckietown's shell and Docker, read by the clap tree itself so
//! that they mean exactly what the spelled-out form means (docs/cli.md, "Habits"):
//!
//! - `--format json` (or `--format=json`) on any command that has `--json` is `--json`; any
//!   other value there is exit 2, naming the one format the command prints. A command with a
//!   `--format` of its own (`dts image save --format oci|docker`) keeps it.
//! - `-H ROBOT` (or `--host ROBOT`), as Duckietown's `dts` and `docker -H` spell the robot, on
//!   a command that takes a ROBOT argument and no `-H` of its own, is that argument: it is put
//!   where the positional ROBOT goes. Only options before the command's trailing arguments
//!   (`run`'s `IMAGE CMD…`) and before `--` are read, so a container's own `-H` stays its own.
//!
//! The rewriting walks the real clap command (which flags take a value, where the positionals
//! are), so a new command gets both habits without a list to keep in step.

use std::ffi::OsString;

use clap::Command;

/// `argv` with the habits above spelled out; an `Err` is the message of a usage error.
pub fn normalize(cmd: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out: Vec<OsString> = argv.first().cloned().into_iter().collect();
    let rest: Vec<OsString> = argv.into_iter().skip(1).collect();
    let Some(strs) = rest
        .iter()
        .map(|a| a.to_str().map(str::to_string))
        .collect::<Option<Vec<String>>>()
    else {
        // Arguments that are not UTF-8 are left to clap as they are.
        out.extend(rest);
        return Ok(out);
    };
    let (path, at) = subcommand_path(cmd, &strs);
    let leaf = path.last().copied().unwrap_or(cmd);
    let mut args: Vec<String> = strs[at..].to_vec();
    args = format_json(leaf, args)?;
    args = host_flag(leaf, args)?;
    out.extend(strs[..at].iter().map(OsString::from));
    out.extend(args.into_iter().map(OsString::from));
    Ok(out)
}

/// The chain of subcommands `args` names, and the index of the first argument after it.
fn subcommand_path<'c>(cmd: &'c Command, args: &[String]) -> (Vec<&'c Command>, usize) {
    let mut path = Vec::new();
    let mut cur = cmd;
    let mut i = 0;
    while i < args.len() && cur.has_subcommands() {
        let a = &args[i];
        if a == "--" {
            break;
        }
        if a.starts_with('-') {
            i += if takes_value(cur, a) && !a.contains('=') {
                2
            } else {
                1
            };
            continue;
        }
        match cur
            .get_subcommands()
            .find(|s| s.get_name() == a || s.get_all_aliases().any(|al| al == a))
        {
            Some(s) => {
                path.push(s);
                cur = s;
                i += 1;
            }
            None => break,
        }
    }
    (path, i)
}

/// Whether the option `a` (`--name`, `-x`, `-xVALUE`) of `cmd` takes its value from the next
/// argument.
fn takes_value(cmd: &Command, a: &str) -> bool {
    let arg = if let Some(long) = a.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        cmd.get_arguments().find(|x| {
            x.get_long() == Some(name) || x.get_all_aliases().is_some_and(|v| v.contains(&name))
        })
    } else {
        let mut chars = a.chars().skip(1);
        let Some(c) = chars.next() else { return false };
        if chars.next().is_some() {
            // `-xVALUE` or a cluster of switches: nothing more to take.
            return false;
        }
        cmd.get_arguments().find(|x| x.get_short() == Some(c))
    };
    arg.is_some_and(|x| x.get_action().takes_values())
}

fn has_long(cmd: &Command, name: &str) -> bool {
    cmd.get_arguments().any(|a| a.get_long() == Some(name))
}

/// `--format json` → `--json` where the command has `--json` and no `--format`.
fn format_json(cmd: &Command, args: Vec<String>) -> Result<Vec<String>, String> {
    if !has_long(cmd, "json") || has_long(cmd, "format") {
        return Ok(args);
    }
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a);
            out.extend(it.by_ref());
            break;
        }
        let value = if a == "--format" {
            Some(it.next().ok_or("--format needs a value: `json`")?)
        } else {
            a.strip_prefix("--format=").map(str::to_string)
        };
        match value {
            None => out.push(a),
            Some(v) if v == "json" => out.push("--json".into()),
            Some(v) => {
                return Err(format!(
                    "--format `{v}`: `dts {}` prints only `json` (`--format json`, the same as `--json`)",
                    cmd.get_name()
                ));
            }
        }
    }
    Ok(out)
}

/// `-H ROBOT` → the positional ROBOT, where the command takes one and has no `-H`.
fn host_flag(cmd: &Command, args: Vec<String>) -> Result<Vec<String>, String> {
    let positionals: Vec<&clap::Arg> = cmd.get_positionals().collect();
    let Some(robot_index) = positionals.iter().position(|a| a.get_id() == "robot") else {
        return Ok(args);
    };
    if cmd
        .get_arguments()
        .any(|a| a.get_short() == Some('H') || a.get_long() == Some("host"))
    {
        return Ok(args);
    }
    let mut host: Option<String> = None;
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    // Where the positionals written so far end, to put ROBOT at its place among them.
    let mut seen = 0usize;
    let mut insert_at: Option<usize> = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            out.extend(args[i..].iter().cloned());
            break;
        }
        let flag_value = if a == "-H" || a == "--host" {
            Some(
                args.get(i + 1)
                    .cloned()
                    .ok_or(format!("{a} needs a robot"))?,
            )
        } else if let Some(v) = a.strip_prefix("--host=") {
            Some(v.to_string())
        } else if a.starts_with("-H") && a.len() > 2 {
            Some(a[2..].trim_start_matches('=').to_string())
        } else {
            None
        };
        if let Some(v) = flag_value {
            if host.replace(v).is_some() {
                return Err("-H/--host given twice".into());
            }
            i += if a == "-H" || a == "--host" { 2 } else { 1 };
            continue;
        }
        if a.starts_with('-') && a.len() > 1 {
            let n = if takes_value(cmd, a) && !a.contains('=') {
                2
            } else {
                1
            };
            out.extend(args[i..(i + n).min(args.len())].iter().cloned());
            i += n;
            continue;
        }
        // A positional.
        if seen == robot_index && insert_at.is_none() {
            insert_at = Some(out.len());
        }
        // The clap positional this one fills: past ROBOT's place when `-H` gave ROBOT.
        let slot = seen + usize::from(host.is_some() && seen >= robot_index);
        let variadic = positionals
            .get(slot)
            .is_some_and(|p| p.get_num_args().is_some_and(|n| n.max_values() > 1));
        seen += 1;
        if variadic {
            // A trailing command line (`run IMAGE CMD…`): none of it is ours.
            out.extend(args[i..].iter().cloned());
            break;
        }
        out.push(a.clone());
        i += 1;
    }
    if let Some(h) = host {
        let at = insert_at.unwrap_or(out.len());
        out.insert(at, h);
    }
    Ok(out)
}

#[cfg(all(test, feature = "workstation"))]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn norm(args: &[&str]) -> Result<Vec<String>, String> {
        let cmd = crate::cli::dts::Cli::command();
        let argv = std::iter::once("dts")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        normalize(&cmd, argv).map(|v| {
            v.into_iter()
                .skip(1)
                .map(|s| s.into_string().unwrap())
                .collect()
        })
    }

    #[test]
    fn format_json_is_json_where_json_exists() {
        assert_eq!(
            norm(&["image", "ls", "--format", "json"]).unwrap(),
            ["image", "ls", "--json"]
        );
        assert_eq!(
            norm(&["image", "ls", "--format=json"]).unwrap(),
            ["image", "ls", "--json"]
        );
        let e = norm(&["image", "ls", "--format", "yaml"]).unwrap_err();
        assert!(e.contains("prints only `json`"), "{e}");
        // `image save` has a `--format` of its own.
        let save = ["image", "save", "x", "-o", "f", "--format", "docker"];
        assert_eq!(norm(&save).unwrap(), save);
    }

    /// The short spellings parse where they exist and clash nowhere (`logs -f` is follow,
    /// `rm -f` force, `ps -a` all).
    #[test]
    fn short_flags_and_update_parse() {
        use clap::Parser;
        let ok = |args: &[&str]| {
            let argv = std::iter::once("dts").chain(args.iter().copied());
            crate::cli::dts::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        };
        ok(&["duckiebot", "update", "bot", "--dry-run", "--json"]);
        ok(&["duckiebot", "deploy", "bot", "-f", "compose.yaml"]);
        ok(&["duckiebot", "deploy", "bot", "--file", "compose.yaml"]);
        ok(&["duckiebot", "logs", "bot", "core", "-f"]);
        ok(&["duckiebot", "rm", "bot", "core", "-f"]);
        ok(&["duckiebot", "ps", "bot", "-a"]);
        ok(&["devel", "build", "-a", "arm64v8"]);
        ok(&["sim", "up", "x", "-a", "arm64"]);
        let argv = ["dts", "duckiebot", "update", "bot", "--stack", "x"];
        assert!(crate::cli::dts::Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn dash_h_is_the_robot_argument() {
        assert_eq!(
            norm(&["duckiebot", "deploy", "-H", "bot", "-f", "s.yaml"]).unwrap(),
            ["duckiebot", "deploy", "-f", "s.yaml", "bot"]
        );
        assert_eq!(
            norm(&["duckiebot", "logs", "core", "-H", "bot", "--tail", "5"]).unwrap(),
            ["duckiebot", "logs", "bot", "core", "--tail", "5"]
        );
        assert_eq!(
            norm(&["duckiebot", "volume", "ls", "--host=bot"]).unwrap(),
            ["duckiebot", "volume", "ls", "bot"]
        );
        // `run`'s trailing command keeps its own -H.
        assert_eq!(
            norm(&["duckiebot", "run", "-H", "bot", "img", "ping", "-H", "x"]).unwrap(),
            ["duckiebot", "run", "bot", "img", "ping", "-H", "x"]
        );
        assert!(norm(&["duckiebot", "ps", "-H", "a", "-H", "b"]).is_err());
        // Commands without a ROBOT argument are left alone.
        assert_eq!(
            norm(&["image", "ls", "-H", "x"]).unwrap(),
            ["image", "ls", "-H", "x"]
        );
    }
}
