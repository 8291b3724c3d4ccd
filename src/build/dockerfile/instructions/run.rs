//! The instructions that run something (BuildKit's `parseRun`, `parseCmd`, `parseEntrypoint`,
//! `parseHealthcheck`): command lines in shell or exec form, RUN's `--mount`, `--network`,
//! `--security` and `--device`, and HEALTHCHECK's options.

use super::*;

/// RUN.
pub(super) fn parse_run(name: &str, node: &Node) -> Fallible<Command> {
    let mut flags = Flags::parse(
        name,
        &node.flags,
        &[
            ("mount", FlagKind::Strings),
            ("network", FlagKind::String),
            ("security", FlagKind::String),
            ("device", FlagKind::Strings),
        ],
    )?;
    let network = flags.string("network");
    if let Some(n) = &network
        && !matches!(n.value.as_str(), "default" | "none" | "host")
    {
        return Err((
            n.pos,
            ErrorKind::BadFlag(format!("invalid network mode `{}`", n.value)),
        ));
    }
    let security = flags.string("security");
    if let Some(s) = &security
        && !matches!(s.value.as_str(), "sandbox" | "insecure")
    {
        return Err((
            s.pos,
            ErrorKind::BadFlag(format!("invalid security mode `{}`", s.value)),
        ));
    }
    let mounts = flags.strings("mount");
    for m in &mounts {
        check_mount_from(m)?;
        // Checked now when nothing in it is expanded later, so a typo fails before any step
        // runs; the builder parses the expanded value again with the working directory.
        if !m.value.contains('$') {
            super::mount::parse_mount(&m.value, "/", 0)
                .map_err(|e| (m.pos, ErrorKind::BadFlag(format!("--mount: {e}"))))?;
        }
    }
    Ok(Command::Run(Run {
        command: command_line(name, node)?,
        heredocs: node.heredocs.clone(),
        mounts,
        network,
        security,
        devices: flags.strings("device"),
    }))
}

pub(super) fn command_line(name: &str, node: &Node) -> Fallible<CommandLine> {
    let args = words(node);
    if node.json {
        return Ok(CommandLine::Exec(
            args.into_iter().map(|w| w.value).collect(),
        ));
    }
    let line = args
        .into_iter()
        .map(|w| w.value)
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        return Err(at_least_one(name, node));
    }
    Ok(CommandLine::Shell(line))
}

pub(super) fn parse_healthcheck(node: &Node) -> Fallible<Healthcheck> {
    let args = words(node);
    let Some(typ) = args.first() else {
        return Err(at_least_one("HEALTHCHECK", node));
    };
    let kind = typ.value.to_ascii_uppercase();
    if kind == "NONE" {
        no_flags("HEALTHCHECK NONE", node)?;
        if args.len() > 1 {
            return Err(bad(args[1].pos, "HEALTHCHECK NONE takes no arguments"));
        }
        return Ok(Healthcheck::None);
    }
    let mut flags = Flags::parse(
        "HEALTHCHECK",
        &node.flags,
        &[
            ("interval", FlagKind::String),
            ("timeout", FlagKind::String),
            ("start-period", FlagKind::String),
            ("start-interval", FlagKind::String),
            ("retries", FlagKind::String),
        ],
    )?;
    if kind != "CMD" {
        return Err(bad(
            typ.pos,
            format!("Unknown type `{}` in HEALTHCHECK (try CMD)", typ.value),
        ));
    }
    let cmd: Vec<String> = args[1..].iter().map(|w| w.value.clone()).collect();
    if cmd.is_empty() {
        return Err(bad(typ.pos, "Missing command after HEALTHCHECK CMD"));
    }
    let test = if node.json {
        std::iter::once("CMD".to_string()).chain(cmd).collect()
    } else {
        vec!["CMD-SHELL".to_string(), cmd.join(" ")]
    };
    let mut interval = |name: &str| -> Fallible<Duration> {
        let Some(w) = flags.string(name) else {
            return Ok(Duration::ZERO);
        };
        let err = |reason: String| {
            (
                w.pos,
                ErrorKind::BadDuration {
                    flag: name.to_string(),
                    value: w.value.clone(),
                    reason,
                },
            )
        };
        if w.value.is_empty() {
            return Ok(Duration::ZERO);
        }
        let nanos = parse_go_duration(&w.value).map_err(err)?;
        if nanos == 0 {
            return Ok(Duration::ZERO);
        }
        if nanos < 1_000_000 {
            return Err(err("cannot be less than 1ms".into()));
        }
        Ok(Duration::from_nanos(nanos as u64))
    };
    let interval_v = interval("interval")?;
    let timeout = interval("timeout")?;
    let start_period = interval("start-period")?;
    let start_interval = interval("start-interval")?;
    let retries = match flags.string("retries") {
        None => 0,
        Some(w) if w.value.is_empty() => 0,
        Some(w) => {
            let n: i32 = w.value.parse().map_err(|_| {
                (
                    w.pos,
                    ErrorKind::BadFlag(format!("invalid value `{}` for --retries", w.value)),
                )
            })?;
            if n < 0 {
                return Err((
                    w.pos,
                    ErrorKind::BadFlag(format!("--retries cannot be negative ({n})")),
                ));
            }
            n as u32
        }
    };
    Ok(Healthcheck::Check(HealthConfig {
        test,
        interval: interval_v,
        timeout,
        start_period,
        start_interval,
        retries,
    }))
}

/// RUN `--mount` may not use variables in `from=` (BuildKit: "define alias stage instead").
pub(super) fn check_mount_from(m: &Word) -> Fallible<()> {
    for field in csv_fields(&m.value) {
        let (k, v) = field.split_once('=').unwrap_or((&field, ""));
        if k.eq_ignore_ascii_case("from")
            && let Some(i) = v.find('$')
            && i != v.len() - 1
        {
            return Err((
                m.pos,
                ErrorKind::BadFlag(
                    "'from' doesn't support variable expansion, define alias stage instead".into(),
                ),
            ));
        }
    }
    Ok(())
}

/// Splits a CSV record (`a=b,"c=d,e"`), unquoting quoted fields.
pub(super) fn csv_fields(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut in_quotes = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    in_quotes = false;
                }
            }
            '"' if at_start => in_quotes = true,
            ',' if !in_quotes => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
                continue;
            }
            c => cur.push(c),
        }
        at_start = false;
    }
    out.push(cur);
    out
}

pub(super) fn csv_join(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| {
            if f.contains([',', '"']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
