//! The steps that only change the image config (ENV, LABEL, USER, VOLUME, EXPOSE, CMD,
//! ENTRYPOINT, SHELL, HEALTHCHECK, STOPSIGNAL, ONBUILD, MAINTAINER), what they check in their
//! arguments as Docker does, and the history line every step leaves.

use super::*;

impl Executor<'_> {
    /// Applies a config-only instruction to the state's config.
    pub(super) fn set_config(
        &self,
        s: &mut StageState,
        command: &Command,
    ) -> Result<(), BuildError> {
        let cfg = s.config.config.get_or_insert_with(Default::default);
        match command {
            Command::Env(kvs) => {
                let list = cfg.env.get_or_insert_with(Vec::new);
                for kv in kvs {
                    set_env(list, &kv.key.value, &kv.value.value);
                }
            }
            Command::Label(kvs) => {
                let labels = cfg.labels.get_or_insert_with(BTreeMap::new);
                for kv in kvs {
                    labels.insert(kv.key.value.clone(), kv.value.value.clone());
                }
            }
            Command::Maintainer(w) => s.config.author = Some(w.value.clone()),
            Command::User(w) => cfg.user = Some(w.value.clone()),
            Command::Volume(v) => {
                let vols = cfg.volumes.get_or_insert_with(BTreeMap::new);
                for p in v {
                    if p.value.is_empty() {
                        return Err(BuildError::Input {
                            at: self.loc(p.pos),
                            message: "VOLUME specified can not be an empty string".into(),
                        });
                    }
                    vols.insert(p.value.clone(), serde_json::json!({}));
                }
            }
            Command::Expose(ports) => {
                let map = cfg.exposed_ports.get_or_insert_with(BTreeMap::new);
                for p in ports {
                    for key in expose_keys(&p.value).map_err(|message| BuildError::Input {
                        at: self.loc(p.pos),
                        message,
                    })? {
                        map.insert(key, serde_json::json!({}));
                    }
                }
            }
            Command::Cmd(c) => {
                let shell = cfg.shell.clone();
                cfg.cmd = Some(command_argv(c, shell.as_deref()));
                cfg.args_escaped = Some(true);
                s.cmd_set = true;
            }
            Command::Entrypoint(c) => {
                let shell = cfg.shell.clone();
                cfg.entrypoint = Some(command_argv(c, shell.as_deref()));
                if !s.cmd_set {
                    cfg.cmd = None;
                }
            }
            Command::Shell(sh) => cfg.shell = Some(sh.clone()),
            Command::Healthcheck(h) => {
                cfg.healthcheck = Some(match h {
                    Healthcheck::None => OciHealthcheck {
                        test: Some(vec!["NONE".into()]),
                        ..Default::default()
                    },
                    Healthcheck::Check(c) => {
                        let ns =
                            |d: std::time::Duration| (!d.is_zero()).then_some(d.as_nanos() as i64);
                        OciHealthcheck {
                            test: Some(c.test.clone()),
                            interval: ns(c.interval),
                            timeout: ns(c.timeout),
                            start_period: ns(c.start_period),
                            start_interval: ns(c.start_interval),
                            retries: (c.retries > 0).then_some(i64::from(c.retries)),
                        }
                    }
                })
            }
            Command::StopSignal(w) => {
                check_signal(&w.value).map_err(|message| BuildError::Input {
                    at: self.loc(w.pos),
                    message,
                })?;
                cfg.stop_signal = Some(w.value.clone());
            }
            Command::OnBuild(o) => cfg
                .on_build
                .get_or_insert_with(Vec::new)
                .push(o.expression.clone()),
            Command::Arg(_)
            | Command::Workdir(_)
            | Command::Run(_)
            | Command::Copy(_)
            | Command::Add(_) => unreachable!("not a config-only instruction"),
        }
        Ok(())
    }
}

/// Shell form → SHELL + [cmd]; exec form as is.
pub(super) fn command_argv(c: &CommandLine, shell: Option<&[String]>) -> Vec<String> {
    match c {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(cmd) => {
            let mut v: Vec<String> = shell
                .map(<[String]>::to_vec)
                .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
            v.push(cmd.clone());
            v
        }
    }
}

/// BuildKit's history text: `RUN /bin/sh -c cmd` (with `|N K=V…` for declared args),
/// `COPY src dest # buildkit`, or the instruction as written.
pub(super) fn history_text(ins: &Instruction, s: &StageState) -> String {
    match &ins.command {
        Command::Run(r) => {
            let shell = s.config.config.as_ref().and_then(|c| c.shell.clone());
            let argv = command_argv(&r.command, shell.as_deref());
            let args: Vec<String> = s
                .args
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                .collect();
            if args.is_empty() {
                format!("RUN {}", argv.join(" "))
            } else {
                format!("RUN |{} {} {}", args.len(), args.join(" "), argv.join(" "))
            }
        }
        Command::Copy(_) | Command::Add(_) => format!("{} # buildkit", ins.source),
        _ => ins.source.clone(),
    }
}

/// EXPOSE words → `port/proto` keys (ranges expanded, proto lower-cased, default tcp).
pub(super) fn expose_keys(spec: &str) -> Result<Vec<String>, String> {
    let bad = || format!("invalid port `{spec}` for EXPOSE");
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    // `ip:host:container` keeps the container port (BuildKit accepts it with a lint warning).
    let ports = ports.rsplit(':').next().unwrap_or(ports);
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a, b),
        None => (ports, ports),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// STOPSIGNAL: `SIGNAME`, `NAME` or a number.
pub(super) fn check_signal(s: &str) -> Result<(), String> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    if s.parse::<u32>().is_ok_and(|n| (1..=64).contains(&n)) {
        return Ok(());
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    if NAMES.contains(&name) || name.starts_with("RTMIN") || name.starts_with("RTMAX") {
        Ok(())
    } else {
        Err(format!("invalid signal `{s}` for STOPSIGNAL"))
    }
}
