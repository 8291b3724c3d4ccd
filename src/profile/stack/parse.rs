//! Parsing one stack file's services: every key compose allows here, checked and turned into
//! a [`Service`], with errors naming the file and the key's path; also the start order from
//! `depends_on`, and the word, duration and size syntaxes stack files share with flags.

use super::compose;
use super::*;

const SERVICE_KEYS: [&str; 29] = [
    "image",
    "command",
    "entrypoint",
    "environment",
    "volumes",
    "ports",
    "network_mode",
    "restart",
    "depends_on",
    "healthcheck",
    "mem_limit",
    "cpus",
    "x-duckiebot",
    "privileged",
    "security_opt",
    "read_only",
    "devices",
    "stop_signal",
    "stop_grace_period",
    "init",
    "labels",
    "user",
    "working_dir",
    "hostname",
    "env_file",
    "logging",
    "ulimits",
    "container_name",
    "expose",
];

pub(super) fn parse_service(
    doc: Doc<'_>,
    path: &str,
    v: &Value,
    volumes: &BTreeSet<String>,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Service, ProfileError> {
    let m = doc
        .map(path, v, |k| {
            SERVICE_KEYS.contains(&k) || k.starts_with("x-")
        })
        .map_err(|e| match &e {
            ProfileError::Invalid { key, .. } => {
                let last = key.rsplit('.').next().unwrap_or_default().to_string();
                match super::compose::refused_why(&last) {
                    Some(why) => doc.err(key, format!("`{last}` is refused: {why}")),
                    None => e.with_hint(
                        "not a compose service key dt-agent knows; docs/formats.md lists them",
                    ),
                }
            }
            _ => e,
        })?;
    let extra = super::compose::parse_extra(doc, &m, env)?;
    let image_at = m.at("image");
    let image = doc.string(
        &image_at,
        m.get("image")
            .ok_or_else(|| doc.err(&image_at, "missing: every service runs an image"))?,
    )?;
    crate::oci::reference::Reference::parse(&image).map_err(|e| {
        doc.err(
            &image_at,
            format!("`{image}` is not an image reference: {e}"),
        )
    })?;
    let words = |key: &str| -> Result<Option<Vec<String>>, ProfileError> {
        let Some(v) = m.get(key) else {
            return Ok(None);
        };
        let at = m.at(key);
        match v {
            Value::String(s) => split_words(s).map(Some).map_err(|e| doc.err(&at, e)),
            Value::Sequence(_) => doc.strings(&at, v).map(Some),
            other => Err(doc.err(
                &at,
                format!("expected a string or a list, found {}", kind(other)),
            )),
        }
    };
    let command = words("command")?;
    let entrypoint = words("entrypoint")?;
    // `env_file` first, `environment` over it: compose's precedence.
    let mut environment = extra.env_file.clone();
    if let Some(v) = m.get("environment") {
        environment.extend(parse_environment(doc, &m.at("environment"), v, env)?);
    }
    let mounts = parse_mounts(doc, &m, volumes)?;
    let network_mode = parse_network_mode(doc, &m)?;
    let mut ports = Vec::new();
    if let Some(v) = m.get("ports") {
        let at = m.at("ports");
        let Value::Sequence(items) = v else {
            return Err(doc.err(&at, format!("expected a list, found {}", kind(v))));
        };
        for (i, item) in items.iter().enumerate() {
            let iat = index(&at, i);
            let s = doc.scalar(&iat, item)?;
            ports.push(parse_port(&s).map_err(|e| doc.err(&iat, e))?);
        }
        if !ports.is_empty() && network_mode != NetworkMode::Bridge {
            warnings.push(format!(
                "{}: {at}: ignored: ports are published only with `network_mode: bridge`",
                doc.file
            ));
        }
    }
    let restart = match m.get("restart") {
        None => RestartPolicy::No,
        // YAML 1.1 readers turn an unquoted `no` into false; accept what the user meant.
        Some(Value::Bool(false)) => RestartPolicy::No,
        Some(v) => {
            let at = m.at("restart");
            parse_restart(&doc.string(&at, v)?).map_err(|e| doc.err(&at, e))?
        }
    };
    let depends_on = match m.get("depends_on") {
        Some(v) => parse_depends(doc, &m.at("depends_on"), v)?,
        None => Vec::new(),
    };
    let healthcheck = match m.get("healthcheck") {
        Some(v) => Some(parse_healthcheck(doc, &m.at("healthcheck"), v)?),
        None => None,
    };
    let (mem_limit, cpus) = parse_limits(doc, &m)?;
    let (devices, stage) = match m.get("x-duckiebot") {
        Some(v) => parse_x_duckiebot(doc, &m.at("x-duckiebot"), v)?,
        None => (Vec::new(), 0),
    };
    let security = super::security::parse_security(doc, &m)?;
    let (cdi_devices, host_devices) = match m.get("devices") {
        Some(v) => super::compose::parse_devices(doc, &m.at("devices"), v)?,
        None => (Vec::new(), Vec::new()),
    };
    let privileges = Privileges {
        privileged: extra.privileged.then(|| compose::Located {
            key: m.at("privileged"),
            pos: None,
        }),
        host_devices,
    };
    let (stop_signal, stop_grace_period, init) = super::stop::parse_stop(doc, &m)?;
    Ok(Service {
        security,
        cdi_devices,
        image,
        command,
        entrypoint,
        environment,
        volumes: mounts,
        ports,
        network_mode,
        restart,
        depends_on,
        healthcheck,
        mem_limit,
        cpus,
        devices,
        stage,
        stop_signal,
        stop_grace_period,
        init,
        labels: extra.labels,
        user: extra.user,
        working_dir: extra.working_dir,
        hostname: extra.hostname,
        ulimits: extra.ulimits,
        logging: extra.logging,
        container_name: extra.container_name,
        privileges,
    })
}

/// A service's `network_mode`: `host` (the default), `none` or `bridge`.
fn parse_network_mode(doc: Doc<'_>, m: &Map<'_>) -> Result<NetworkMode, ProfileError> {
    let Some(v) = m.get("network_mode") else {
        return Ok(NetworkMode::Host);
    };
    let at = m.at("network_mode");
    match doc.string(&at, v)?.as_str() {
        "host" => Ok(NetworkMode::Host),
        "none" => Ok(NetworkMode::None),
        "bridge" => Ok(NetworkMode::Bridge),
        other => Err(doc.err(
            &at,
            format!("`{other}` is not supported (use `host`, `none` or `bridge`)"),
        )),
    }
}

/// A service's `volumes`: each `SOURCE:TARGET[:ro]`, no target twice.
fn parse_mounts(
    doc: Doc<'_>,
    m: &Map<'_>,
    volumes: &BTreeSet<String>,
) -> Result<Vec<VolumeMount>, ProfileError> {
    let mut mounts = Vec::new();
    if let Some(v) = m.get("volumes") {
        let at = m.at("volumes");
        let Value::Sequence(items) = v else {
            return Err(doc.err(&at, format!("expected a list, found {}", kind(v))));
        };
        for (i, item) in items.iter().enumerate() {
            let iat = index(&at, i);
            let s = doc.string(&iat, item).map_err(|e| {
                if item.is_mapping() {
                    doc.err(
                        &iat,
                        "the long volume syntax is not supported; write `SOURCE:TARGET[:ro]`",
                    )
                } else {
                    e
                }
            })?;
            let mount = parse_volume(&s, volumes).map_err(|e| doc.err(&iat, e))?;
            if mounts
                .iter()
                .any(|o: &VolumeMount| o.target == mount.target)
            {
                return Err(doc.err(&iat, format!("`{}` is mounted twice", mount.target)));
            }
            mounts.push(mount);
        }
    }
    Ok(mounts)
}

/// A service's `mem_limit` and `cpus`.
fn parse_limits(doc: Doc<'_>, m: &Map<'_>) -> Result<(Option<u64>, Option<f64>), ProfileError> {
    let mem_limit = match m.get("mem_limit") {
        None => None,
        Some(v) => {
            let at = m.at("mem_limit");
            let bytes = match v {
                Value::Number(n) => n
                    .as_u64()
                    .ok_or_else(|| doc.err(&at, format!("expected a size, found {}", show(v))))?,
                _ => parse_bytes(&doc.string(&at, v)?).map_err(|e| doc.err(&at, e))?,
            };
            // Below a few MB the runtime cannot even start the container's init.
            if bytes < 6 * 1024 * 1024 {
                return Err(doc.err(&at, format!("{bytes} bytes is below the 6 MiB minimum")));
            }
            Some(bytes)
        }
    };
    let cpus = match m.get("cpus") {
        None => None,
        Some(v) => {
            let at = m.at("cpus");
            let c = doc.f64(&at, v)?;
            if !(c.is_finite() && c > 0.0) {
                return Err(doc.err(
                    &at,
                    format!("expected a positive number of CPUs, found {c}"),
                ));
            }
            Some(c)
        }
    };
    Ok((mem_limit, cpus))
}

pub(super) fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['=', '\0']) {
        Err(format!("`{name}` is not an environment variable name"))
    } else {
        Ok(())
    }
}

/// Map form `{K: V}` or list form `[K=V]`. A name without a value (`K:` or `- K`) takes the
/// value from `env`, and is left out when `env` lacks it, as compose does.
pub(super) fn parse_environment(
    doc: Doc<'_>,
    path: &str,
    v: &Value,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ProfileError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(_) => {
            let m = doc.map(path, v, |_| true)?;
            for (k, val) in &m.entries {
                let at = m.at(k);
                check_env_name(k).map_err(|e| doc.err(&at, e))?;
                if val.is_null() {
                    if let Some(x) = env.get(k) {
                        out.insert(k.clone(), x.clone());
                    }
                } else {
                    out.insert(k.clone(), doc.scalar(&at, val)?);
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let at = index(path, i);
                let s = doc.string(&at, item)?;
                match s.split_once('=') {
                    Some((k, val)) => {
                        check_env_name(k).map_err(|e| doc.err(&at, e))?;
                        out.insert(k.to_string(), val.to_string());
                    }
                    None => {
                        check_env_name(&s).map_err(|e| doc.err(&at, e))?;
                        if let Some(x) = env.get(&s) {
                            out.insert(s.clone(), x.clone());
                        }
                    }
                }
            }
        }
        other => {
            return Err(doc.err(
                path,
                format!("expected a mapping or a list of K=V, found {}", kind(other)),
            ));
        }
    }
    Ok(out)
}

pub(super) fn parse_volume(s: &str, declared: &BTreeSet<String>) -> Result<VolumeMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [_] => {
            return Err(format!(
                "`{s}`: anonymous volumes are not supported; write `NAME:{s}` with NAME under the top-level `volumes`"
            ));
        }
        [src, dst] => (*src, *dst, None),
        [src, dst, mode] => (*src, *dst, Some(*mode)),
        _ => return Err(format!("`{s}`: expected SOURCE:TARGET[:ro]")),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => {
            return Err(format!(
                "`{s}`: mode `{m}` is not supported (use `ro` or `rw`)"
            ));
        }
    };
    if !target.starts_with('/') {
        return Err(format!(
            "`{s}`: the target `{target}` must be an absolute path"
        ));
    }
    let source = if source.starts_with('/') {
        VolumeSource::Bind(source.to_string())
    } else if source.starts_with('.') || source.starts_with('~') {
        return Err(format!(
            "`{s}`: a bind mount's source is a path on the robot and must be absolute"
        ));
    } else {
        check_name("volume", source)?;
        if !declared.contains(source) {
            return Err(format!(
                "`{s}`: volume `{source}` is not declared under the top-level `volumes`"
            ));
        }
        VolumeSource::Named(source.to_string())
    };
    Ok(VolumeMount {
        source,
        target: target.to_string(),
        read_only,
    })
}

pub(super) fn parse_port(s: &str) -> Result<PortMapping, String> {
    let (ports, protocol) = match s.split_once('/') {
        None => (s, Protocol::Tcp),
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => return Err(format!("`{s}`: protocol `{other}` is not `tcp` or `udp`")),
    };
    let (h, c) = ports
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected HOST:CONTAINER[/tcp|/udp]"))?;
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{s}`: `{p}` is not a port number")),
        }
    };
    Ok(PortMapping {
        host_port: port(h)?,
        container_port: port(c)?,
        protocol,
        host_ip: None,
    })
}

pub(super) fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    Ok(match s {
        "no" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure(None),
        other => match other.strip_prefix("on-failure:") {
            Some(n) => RestartPolicy::OnFailure(Some(
                n.parse()
                    .map_err(|_| format!("`{other}`: `{n}` is not a number of retries"))?,
            )),
            None => {
                return Err(format!(
                    "`{other}` is not `no`, `on-failure[:N]`, `always` or `unless-stopped`"
                ));
            }
        },
    })
}

pub(super) fn parse_depends(
    doc: Doc<'_>,
    path: &str,
    v: &Value,
) -> Result<Vec<Dependency>, ProfileError> {
    let mut out = Vec::new();
    match v {
        Value::Sequence(_) => {
            for service in doc.strings(path, v)? {
                out.push(Dependency {
                    service,
                    condition: DependsCondition::ServiceStarted,
                });
            }
        }
        Value::Mapping(_) => {
            let m = doc.map(path, v, |_| true)?;
            for (service, spec) in &m.entries {
                let at = m.at(service);
                let sm = doc.map(&at, spec, |k| k == "condition")?;
                let condition = match sm.get("condition") {
                    None => DependsCondition::ServiceStarted,
                    Some(c) => {
                        let cat = sm.at("condition");
                        match doc.string(&cat, c)?.as_str() {
                            "service_started" => DependsCondition::ServiceStarted,
                            "service_healthy" => DependsCondition::ServiceHealthy,
                            "service_completed_successfully" => {
                                DependsCondition::ServiceCompletedSuccessfully
                            }
                            other => {
                                return Err(doc.err(
                                    &cat,
                                    format!(
                                        "`{other}` is not `service_started`, `service_healthy` or `service_completed_successfully`"
                                    ),
                                ));
                            }
                        }
                    }
                };
                out.push(Dependency {
                    service: service.clone(),
                    condition,
                });
            }
        }
        other => {
            return Err(doc.err(
                path,
                format!("expected a list or a mapping, found {}", kind(other)),
            ));
        }
    }
    Ok(out)
}

pub(super) fn parse_healthcheck(
    doc: Doc<'_>,
    path: &str,
    v: &Value,
) -> Result<Healthcheck, ProfileError> {
    let m = doc.map(path, v, |k| {
        matches!(
            k,
            "test" | "interval" | "timeout" | "retries" | "start_period" | "disable"
        )
    })?;
    let mut hc = Healthcheck::default();
    if let Some(d) = m.get("disable") {
        hc.disable = doc.bool(&m.at("disable"), d)?;
    }
    if let Some(t) = m.get("test") {
        let at = m.at("test");
        match t {
            Value::String(s) => hc.test = Some(HealthTest::Shell(s.clone())),
            Value::Sequence(_) => {
                let words = doc.strings(&at, t)?;
                match words.split_first() {
                    Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                        hc.test = Some(HealthTest::Exec(rest.to_vec()));
                    }
                    Some((first, [cmd])) if first == "CMD-SHELL" => {
                        hc.test = Some(HealthTest::Shell(cmd.clone()));
                    }
                    Some((first, [])) if first == "NONE" => hc.disable = true,
                    _ => {
                        return Err(doc.err(
                            &at,
                            "expected [\"CMD\", ARG…], [\"CMD-SHELL\", COMMAND] or [\"NONE\"]",
                        ));
                    }
                }
            }
            other => {
                return Err(doc.err(
                    &at,
                    format!("expected a string or a list, found {}", kind(other)),
                ));
            }
        }
        if hc.disable && hc.test.is_some() {
            return Err(doc.err(&at, "a test cannot be given with `disable: true`"));
        }
    }
    let duration = |key: &str| -> Result<Option<Duration>, ProfileError> {
        match m.get(key) {
            None => Ok(None),
            Some(v) => {
                let at = m.at(key);
                let s = doc.scalar(&at, v)?;
                parse_duration(&s).map(Some).map_err(|e| doc.err(&at, e))
            }
        }
    };
    hc.interval = duration("interval")?;
    hc.timeout = duration("timeout")?;
    hc.start_period = duration("start_period")?;
    for (key, d) in [("interval", hc.interval), ("timeout", hc.timeout)] {
        if d == Some(Duration::ZERO) {
            return Err(doc.err(&m.at(key), "must be longer than zero"));
        }
    }
    if let Some(r) = m.get("retries") {
        hc.retries = Some(doc.u32(&m.at("retries"), r)?);
    }
    Ok(hc)
}

pub(super) fn parse_x_duckiebot(
    doc: Doc<'_>,
    path: &str,
    v: &Value,
) -> Result<(Vec<String>, u32), ProfileError> {
    let m: Map<'_> = doc.map(path, v, |k| matches!(k, "devices" | "roles" | "stage"))?;
    let mut devices = Vec::new();
    // `roles` is another name for `devices`, the one the issue tracker and docs use.
    let key = match (m.get("devices"), m.get("roles")) {
        (Some(_), Some(_)) => {
            return Err(doc.err(
                &m.at("roles"),
                "give the roles once: `roles` and `devices` are the same key",
            ));
        }
        (None, Some(_)) => "roles",
        _ => "devices",
    };
    if let Some(d) = m.get(key) {
        let at = m.at(key);
        for (i, role) in doc.strings(&at, d)?.into_iter().enumerate() {
            if devices.contains(&role) {
                return Err(doc.err(&index(&at, i), format!("role `{role}` is listed twice")));
            }
            devices.push(role);
        }
    }
    let stage = match m.get("stage") {
        Some(s) => doc.u32(&m.at("stage"), s)?,
        None => 0,
    };
    Ok((devices, stage))
}

/// Splits a command string into words as a POSIX shell would, without expanding anything:
/// compose's string form of `command` is not run through a shell.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(n) => cur.push(n),
                    None => return Err(format!("`{s}` ends in a lone `\\`")),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err(format!("`{s}` has an unterminated `'`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\' | '$' | '`')) => cur.push(n),
                            Some('\n') => {}
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n);
                            }
                            None => return Err(format!("`{s}` has an unterminated `\"`")),
                        },
                        Some(n) => cur.push(n),
                        None => return Err(format!("`{s}` has an unterminated `\"`")),
                    }
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if words.is_empty() {
        return Err("an empty command".to_string());
    }
    Ok(words)
}

/// Parses a Go-style duration as compose writes them: `1m30s`, `500ms`, `1.5h`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration (e.g. `30s`, `1m30s`, `500ms`)");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Parses a memory size as Docker does: bytes, or a number with `b`, `k`, `m`, `g`, `t`
/// (binary multiples; `kb`, `MiB` and friends too).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a size (e.g. `512m`, `1g`, or bytes)");
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if num_end == 0 {
        return Err(bad());
    }
    let n: f64 = t[..num_end].parse().map_err(|_| bad())?;
    let unit = t[num_end..].trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = n * scale as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Orders services by stage, then by `depends_on` inside a stage. The error is
/// `(service, message)` for the first service whose dependencies cannot be met.
pub(super) fn order(
    services: &BTreeMap<String, Service>,
) -> Result<Vec<Vec<String>>, (String, String)> {
    for (name, svc) in services {
        for d in &svc.depends_on {
            let Some(dep) = services.get(&d.service) else {
                return Err((
                    name.clone(),
                    format!("no service `{}` in this stack", d.service),
                ));
            };
            if d.service == *name {
                return Err((
                    name.clone(),
                    "a service cannot depend on itself".to_string(),
                ));
            }
            if dep.stage > svc.stage {
                return Err((
                    name.clone(),
                    format!(
                        "`{}` is in stage {}, which starts after this service's stage {}",
                        d.service, dep.stage, svc.stage
                    ),
                ));
            }
        }
    }
    let stages: BTreeSet<u32> = services.values().map(|s| s.stage).collect();
    let mut out = Vec::new();
    for stage in stages {
        let members: BTreeSet<&str> = services
            .iter()
            .filter(|(_, s)| s.stage == stage)
            .map(|(n, _)| n.as_str())
            .collect();
        // Dependencies inside this stage; earlier stages are already up.
        let deps = |n: &str| -> Vec<&str> {
            services[n]
                .depends_on
                .iter()
                .map(|d| d.service.as_str())
                .filter(|d| members.contains(d))
                .collect()
        };
        let mut placed: Vec<String> = Vec::new();
        let mut left = members.clone();
        while !left.is_empty() {
            // The alphabetically first service whose dependencies are all placed: a stable
            // order, so two deploys of one stack start containers identically.
            let next = left
                .iter()
                .find(|n| deps(n).iter().all(|d| placed.iter().any(|p| p == d)))
                .copied();
            match next {
                Some(n) => {
                    placed.push(n.to_string());
                    left.remove(n);
                }
                None => {
                    let start = *left.iter().next().expect("non-empty");
                    return Err((start.to_string(), cycle_text(start, &left, &deps)));
                }
            }
        }
        out.push(placed);
    }
    Ok(out)
}

/// `a → b → a`: follows unplaced dependencies from `start` until a service repeats.
pub(super) fn cycle_text<'a>(
    start: &'a str,
    left: &BTreeSet<&'a str>,
    deps: &dyn Fn(&str) -> Vec<&'a str>,
) -> String {
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = deps(cur)
            .into_iter()
            .find(|d| left.contains(d))
            .expect("an unplaced service has an unplaced dependency");
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<&str> = path[pos..].to_vec();
            cycle.push(next);
            return format!("dependency cycle: {}", cycle.join(" → "));
        }
        path.push(next);
        cur = next;
    }
}
