//! `dts duckiebot exec ROBOT CONTAINER [-it] -- CMD…`: `dt-agent exec` on the robot, on an
//! SSH channel of its own next to the wire session (which only checks the robot's agent has
//! `exec`, wire 2.5). SSH carries what `docker exec`'s hijacked stream does: with `-t` a
//! pseudo-terminal the server allocates (its size at start and at every SIGWINCH as
//! `window-change`), this terminal in raw mode (restored on every way out, SIGTERM and SIGHUP
//! included) so Ctrl-C travels as a byte to the container's terminal; without `-t` stdin,
//! stdout and stderr as three separate byte streams, stdin's end sent as EOF. The exit code
//! is the process's, passed back as the channel's exit status.
//!
//! `dts duckiebot run -i/-t` ends the same way: once the container is created (not started)
//! over the wire session, `dt-agent start -a [-i] NAME` runs on a channel of its own (robots
//! from wire 2.6), and the container's exit code is ours.

use std::io::IsTerminal;
use std::os::fd::BorrowedFd;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::Exit;
use super::containers::RunArgs;
use super::exec::ExecArgs;
use crate::api::{ContainerName, ExecSpec, SpecError};
use crate::ops::robot::{self, RobotLink, SshArgs};
use crate::ssh::Session;
use crate::ssh::{ExecChannel, ExitStatus, PtyRequest, Stderr};
use crate::util::tty;
use crate::wire::RobotHello;

/// Runs `a` in a container of `robot`; returns the process's exit code as ours.
pub async fn exec(robot: &str, ssh: &SshArgs, a: &ExecArgs) -> Result<Exit> {
    if a.tty && a.interactive && !std::io::stdin().is_terminal() {
        return Err(SpecError(
            "the input device is not a TTY: drop -t to pipe data through exec -i, or run this in a terminal"
                .into(),
        )
        .into());
    }
    let size = tty::own_size();
    let spec = a.to_spec(size)?;
    let link = robot::connect(robot, ssh).await?;
    if !link.hello.execs() {
        anyhow::bail!(
            "robot `{robot}`: its dt-agent {} (wire {}) has no `exec`; re-provision the robot to upgrade dt-agent (`dts duckiebot provision`)",
            link.hello.agent_version,
            link.hello.protocol
        );
    }
    let robot::RobotLink { session, conn, .. } = link;
    let _ = conn.close().await;
    let command = agent_command(session.user() == "root", &spec);
    on_channel(robot, session, &command, (a.tty, a.interactive), size).await
}

/// Refuses `run -i/-t` on a robot whose agent cannot attach (before wire 2.6), naming its
/// version and the upgrade.
pub fn check_attaches(robot: &str, hello: &RobotHello) -> Result<()> {
    if !hello.attaches() {
        anyhow::bail!(
            "robot `{robot}`: its dt-agent {} (wire {}) cannot run a container with -i/-t (wire 2.6 needed); re-provision the robot to upgrade dt-agent (`dts duckiebot provision`), or run it with -d and open a terminal in it with `dts duckiebot exec -it`",
            hello.agent_version,
            hello.protocol
        );
    }
    Ok(())
}

/// `dts duckiebot run -i/-t` once the container `name` is created on the robot of `link`:
/// starts it attached on a channel of its own; its exit code is ours.
pub async fn attach(
    robot: &str,
    link: RobotLink,
    name: &ContainerName,
    a: &RunArgs,
) -> Result<Exit> {
    let RobotLink { session, conn, .. } = link;
    let _ = conn.close().await;
    let mut words: Vec<String> = vec!["dt-agent".into(), "start".into(), "--attach".into()];
    if a.interactive {
        words.push("--interactive".into());
    }
    words.push(name.to_string());
    let command = quote(session.user() == "root", words);
    let size = tty::own_size();
    on_channel(robot, session, &command, (a.tty, a.interactive), size).await
}

/// Runs `command` on a channel of its own of `session`, as `(tty, interactive)` say: with a
/// terminal of `size`, or three streams; returns its exit status as ours.
async fn on_channel(
    robot: &str,
    session: Session,
    command: &str,
    (tty, interactive): (bool, bool),
    size: Option<(u16, u16)>,
) -> Result<Exit> {
    let status = if tty {
        let pty = PtyRequest {
            term: std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
            rows: size.map_or(24, |s| s.0),
            cols: size.map_or(80, |s| s.1),
        };
        let (channel, resizer) = session
            .exec_tty(command, &pty)
            .await
            .with_context(|| format!("robot `{robot}`: starting `{command}`"))?;
        relay_tty(channel, resizer, interactive).await?
    } else {
        let channel = session
            .exec_with(command, Stderr::Forward(Box::new(tokio::io::stderr())))
            .await
            .with_context(|| format!("robot `{robot}`: starting `{command}`"))?;
        relay_plain(channel, interactive).await?
    };
    let _ = session.close().await;
    Ok(match status {
        0 => Exit::Ok,
        c => Exit::Code(c),
    })
}

/// The robot's command line: `dt-agent exec` with the spec's flags, every word quoted for the
/// login shell that runs it.
fn agent_command(root: bool, spec: &ExecSpec) -> String {
    let mut words: Vec<String> = vec!["dt-agent".into(), "exec".into()];
    if spec.interactive {
        words.push("-i".into());
    }
    if spec.tty {
        words.push("-t".into());
    }
    if let Some(u) = &spec.user {
        words.push(format!("--user={u}"));
    }
    for e in &spec.env {
        words.push(format!("--env={e}"));
    }
    if let Some(w) = &spec.workdir {
        words.push(format!("--workdir={w}"));
    }
    words.push("--".into());
    words.push(spec.name.to_string());
    words.extend(spec.cmd.iter().cloned());
    quote(root, words)
}

/// A robot command line: `words` behind `sudo -n` unless logged in as `root`, every word
/// quoted for the login shell that runs it.
fn quote(root: bool, words: Vec<String>) -> String {
    let sudo = ["sudo", "-n"].map(String::from);
    let all = if root { Vec::new() } else { sudo.to_vec() };
    all.into_iter()
        .chain(words)
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads this process's stdin on a thread of its own (a blocking read cannot be cancelled,
/// and must not hold up the end of the runtime), chunk by chunk; the channel closes at EOF.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// Copies the channel's stdout to ours, flushing every chunk.
async fn copy_out(mut from: crate::ssh::ExecStdout) -> std::io::Result<()> {
    let mut out = tokio::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return out.flush().await;
        }
        out.write_all(&buf[..n]).await?;
        out.flush().await?;
    }
}

/// The exit status as an exit code: the command's, or `128 + n` for signal `n`.
fn code_of(status: &ExitStatus) -> u8 {
    match status {
        ExitStatus::Code(c) => (*c).min(255) as u8,
        ExitStatus::Signal { name, .. } => {
            let n = match name.as_str() {
                "HUP" => 1,
                "INT" => 2,
                "QUIT" => 3,
                "KILL" => 9,
                "PIPE" => 13,
                "TERM" => 15,
                _ => 127,
            };
            128 + n
        }
    }
}

/// Three separate streams: our stdin to the command's until EOF (or none without `-i`), its
/// stdout to ours, its stderr to ours (forwarded by the channel's pump).
async fn relay_plain(channel: ExecChannel, interactive: bool) -> Result<u8> {
    let (mut stdin, stdout, waiter) = channel.into_parts();
    let feed = async move {
        if interactive {
            let mut chunks = stdin_chunks();
            while let Some(c) = chunks.recv().await {
                if stdin.write_all(&c).await.is_err() {
                    return;
                }
            }
        }
        let _ = stdin.shutdown().await;
    };
    let (_, out) = tokio::join!(feed, copy_out(stdout));
    out.context("writing the command's output")?;
    let exit = waiter.wait().await?;
    Ok(code_of(&exit.status))
}

/// A terminal: ours raw (when we feed it), its size sent at every SIGWINCH, until the command
/// ends or we are told to stop.
async fn relay_tty(
    channel: ExecChannel,
    resizer: crate::ssh::WindowChanger,
    interactive: bool,
) -> Result<u8> {
    // SAFETY: stdin stays open for the life of the process.
    let stdin_fd: BorrowedFd<'static> = unsafe { BorrowedFd::borrow_raw(0) };
    let raw = if interactive {
        tty::RawMode::enter(stdin_fd).context("putting the terminal in raw mode")?
    } else {
        None
    };
    let mut winch = signal(SignalKind::window_change()).context("watching SIGWINCH")?;
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    let (mut stdin, stdout, waiter) = channel.into_parts();
    // Keys go on a task of their own: a write waiting for the channel's window must not stop
    // the output from being read meanwhile.
    let feed = if interactive {
        let mut chunks = stdin_chunks();
        Some(tokio::spawn(async move {
            while let Some(c) = chunks.recv().await {
                if stdin.write_all(&c).await.is_err() {
                    return;
                }
            }
        }))
    } else {
        let _ = stdin.shutdown().await;
        None
    };
    let out = copy_out(stdout);
    tokio::pin!(out);
    let stopped = loop {
        tokio::select! {
            r = &mut out => {
                r.context("writing the command's output")?;
                break None;
            }
            _ = winch.recv() => {
                if let Some((rows, cols)) = tty::own_size() {
                    resizer.resize(rows, cols).await;
                }
            }
            _ = term.recv() => break Some(128 + 15),
            _ = hup.recv() => break Some(128 + 1),
        }
    };
    if let Some(f) = feed {
        f.abort();
    }
    drop(raw);
    if let Some(code) = stopped {
        return Ok(code);
    }
    let exit = waiter.wait().await?;
    Ok(code_of(&exit.status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::names::ContainerName;

    #[test]
    fn the_robots_command_line_quotes_every_word() {
        let spec = ExecSpec {
            name: ContainerName::new("c").unwrap(),
            cmd: vec!["sh".into(), "-c".into(), "echo 'hi'; exit 7".into()],
            tty: true,
            interactive: true,
            env: vec!["A=b c".into()],
            ..ExecSpec::default()
        };
        assert_eq!(
            agent_command(false, &spec),
            r#"'sudo' '-n' 'dt-agent' 'exec' '-i' '-t' '--env=A=b c' '--' 'c' 'sh' '-c' 'echo '\''hi'\''; exit 7'"#
        );
        assert!(agent_command(true, &spec).starts_with("'dt-agent' 'exec'"));
        assert_eq!(code_of(&ExitStatus::Code(7)), 7);
        let killed = ExitStatus::Signal {
            name: "KILL".into(),
            core_dumped: false,
            message: String::new(),
        };
        assert_eq!(code_of(&killed), 137);
    }

    #[test]
    fn an_older_robot_is_refused_naming_its_agent() {
        let json = r#"{"platform":{"os":"linux","architecture":"amd64"},
            "hostname":"r","agent_version":"0.9.1","free_bytes":1,"images":[],"protocol":"2.5"}"#;
        let mut hello: RobotHello = serde_json::from_str(json).unwrap();
        let e = check_attaches("bot", &hello).unwrap_err().to_string();
        assert!(e.contains("dt-agent 0.9.1 (wire 2.5)"), "{e}");
        assert!(e.contains("dts duckiebot provision"), "{e}");
        hello.protocol = "2.6".into();
        assert!(check_attaches("bot", &hello).is_ok());
    }
}
