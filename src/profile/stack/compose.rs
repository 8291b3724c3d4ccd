//! Compose keys read with Docker's meaning beyond the core set of `parse.rs`: `labels`, `user`,
//! `working_dir`, `hostname`, `env_file`, `logging`, `ulimits`, `container_name`, `privileged`
//! and host-path `devices` (granted as device roles at deploy time), and for every compose key
//! that stays refused, why.

use super::*;
use crate::api::{LogConfig, Ulimit};

/// What a compose file asked for that dt-agent grants only as device roles: the deploy turns
/// it into the robot's roles (`ops::deploy`), with one warning line per service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privileges {
    /// Where `privileged: true` was written, when it was.
    pub privileged: Option<Located>,
    /// Host device paths of `devices:` (`/dev/video0`), with where each was written.
    pub host_devices: HostDevices,
}

/// Host device paths with where each was written.
pub type HostDevices = Vec<(String, Located)>;

/// A key path of the stack file and where it was written (`LINE:COL`), for messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    /// `services.core.privileged`.
    pub key: String,
    /// 1-based line and column, when found.
    pub pos: Option<(usize, usize)>,
}

impl Located {
    fn error(&self, file: &str, message: String) -> ProfileError {
        ProfileError::Invalid {
            file: file.to_string(),
            pos: self.pos,
            key: self.key.clone(),
            message,
            hint: None,
        }
    }

    fn prefix(&self, file: &str) -> String {
        match self.pos {
            Some((l, c)) => format!("{file}:{l}:{c}: {}", self.key),
            None => format!("{file}: {}", self.key),
        }
    }
}

/// A `*`/`?` pattern (a role's node such as `/dev/nvhost-*`) against a path.
fn glob(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

impl Stack {
    /// Turns each service's `privileged: true` and host-path `devices` into device roles of
    /// the robot, `roles` being what its hello lists (role → the paths it grants): a host
    /// device becomes every role granting that path; `privileged: true` becomes the roles
    /// `x-duckiebot` names when it names some, else every role the robot has hardware for.
    /// Each such service gets one warning line naming what was granted instead. A device no
    /// role grants, or a robot that does not list its roles, is an error at the key.
    pub fn grant_privileges(
        &mut self,
        roles: Option<&BTreeMap<String, Vec<String>>>,
    ) -> Result<(), ProfileError> {
        let file = self.source.clone();
        for svc in self.services.values_mut() {
            let p = std::mem::take(&mut svc.privileges);
            if p.is_empty() {
                continue;
            }
            let first = p
                .privileged
                .clone()
                .or_else(|| p.host_devices.first().map(|(_, l)| l.clone()))
                .expect("not empty");
            let robot = |at: &Located| {
                roles.ok_or_else(|| {
                    at.error(
                        &file,
                        "the robot's agent does not list its device roles (it is older than this dts, or has no robot.yaml): name the roles in `x-duckiebot: { devices: [ROLE…] }`".into(),
                    )
                })
            };
            let mut granted: Vec<String> = Vec::new();
            let mut what: Vec<String> = Vec::new();
            for (path, at) in &p.host_devices {
                let have = robot(at)?;
                let by: Vec<&String> = have
                    .iter()
                    .filter(|(_, paths)| paths.iter().any(|g| glob(g, path)))
                    .map(|(n, _)| n)
                    .collect();
                if by.is_empty() {
                    let names: Vec<&str> = have.keys().map(String::as_str).collect();
                    return Err(at
                        .error(
                            &file,
                            format!(
                                "`{path}`: no device role of this robot grants it (its roles: {})",
                                names.join(", ")
                            ),
                        )
                        .with_hint(hint_for("devices").expect("has a hint")));
                }
                for r in by {
                    if !granted.contains(r) {
                        granted.push(r.clone());
                    }
                }
                what.push(format!("`{path}`"));
            }
            if let Some(at) = &p.privileged {
                what.insert(0, "`privileged: true`".into());
                if svc.devices.is_empty() {
                    for (name, paths) in robot(at)? {
                        if !paths.is_empty() && !granted.contains(name) {
                            granted.push(name.clone());
                        }
                    }
                }
            }
            for r in &granted {
                if !svc.devices.contains(r) {
                    svc.devices.push(r.clone());
                }
            }
            let roles_text = if svc.devices.is_empty() {
                "no device role (the robot has none with hardware)".to_string()
            } else {
                format!("device roles {}", svc.devices.join(", "))
            };
            self.warnings.push(format!(
                "{}: {} not granted as Docker grants them; granted {roles_text} instead",
                first.prefix(&file),
                what.join(", ")
            ));
        }
        Ok(())
    }
}

impl Privileges {
    /// Nothing to translate.
    pub fn is_empty(&self) -> bool {
        self.privileged.is_none() && self.host_devices.is_empty()
    }
}

/// The keys of this module, per service.
#[derive(Clone, Debug, Default)]
pub(super) struct Extra {
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub hostname: Option<String>,
    pub env_file: BTreeMap<String, String>,
    pub logging: Option<LogConfig>,
    pub ulimits: Vec<Ulimit>,
    pub container_name: Option<String>,
    pub privileged: bool,
}

/// Compose's service keys that dt-agent does not take, and why; the error carries the why.
pub(super) fn refused_why(key: &str) -> Option<&'static str> {
    Some(match key {
        "cap_add" | "cap_drop" => {
            "containers keep Docker's default capabilities; hardware access comes from device roles: `x-duckiebot: { devices: [camera, motors] }`"
        }
        "build" => "stacks run images: build it with `dts devel build` and name it in `image`",
        "runtime" => {
            "runc runs every container; the Jetson camera's nodes and argus socket come with the `camera` device role"
        }
        "pid" | "ipc" | "userns_mode" | "uts" | "cgroup" | "cgroupns_mode" => {
            "every container has its own namespaces; sharing the robot's would let it see and signal every process on the robot"
        }
        "networks" | "links" | "external_links" | "extra_hosts" | "dns" | "dns_search"
        | "dns_opt" | "mac_address" | "domainname" => {
            "the agent has no user-defined networks: use `network_mode: host` (the default), `bridge` or `none`"
        }
        "volumes_from" => "name the volumes in each service's `volumes`",
        "tmpfs" | "shm_size" | "sysctls" | "group_add" | "cgroup_parent" | "oom_score_adj"
        | "oom_kill_disable" | "pids_limit" | "cpuset" | "cpu_shares" | "cpu_quota"
        | "cpu_period" | "mem_reservation" | "memswap_limit" | "blkio_config" => {
            "not supported by dt-agent yet: limits are `mem_limit` and `cpus`"
        }
        "secrets" | "configs" => "bind-mount the file in `volumes` (`/secrets:/secrets:ro`)",
        "deploy" | "profiles" | "scale" | "platform" | "pull_policy" | "extends" => {
            "a Swarm/compose-CLI feature: one container per service runs, for the robot's platform"
        }
        "tty" | "stdin_open" => "containers run without a terminal; their output is in `logs`",
        "device_cgroup_rules" | "security_opt_label" => {
            "devices come from the robot's device roles: `x-duckiebot: { devices: [ROLE…] }`"
        }
        _ => return None,
    })
}

/// The key paths of every refused key of every service (`services.shell.tty`), so that an
/// error can name them all at once rather than one per run.
pub(super) fn refused_keys(doc: Doc<'_>, text: &str) -> Vec<String> {
    let Ok(root) = doc.parse(text) else {
        return Vec::new();
    };
    let Some(Value::Mapping(services)) = root.get("services") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, svc) in services {
        let (Value::String(name), Value::Mapping(keys)) = (name, svc) else {
            continue;
        };
        for k in keys.keys() {
            if let Value::String(k) = k
                && refused_why(k).is_some()
            {
                out.push(join(&join("services", name), k));
            }
        }
    }
    out
}

/// Reads this module's keys of one service.
pub(super) fn parse_extra(
    doc: Doc<'_>,
    m: &Map<'_>,
    env: &BTreeMap<String, String>,
) -> Result<Extra, ProfileError> {
    let mut x = Extra::default();
    if let Some(v) = m.get("labels") {
        x.labels = parse_labels(doc, &m.at("labels"), v)?;
    }
    if let Some(v) = m.get("user") {
        let at = m.at("user");
        let u = doc.scalar(&at, v)?;
        if u.is_empty() || u.contains(char::is_whitespace) {
            return Err(doc.err(&at, format!("`{u}` is not USER[:GROUP] (names or numbers)")));
        }
        x.user = Some(u);
    }
    if let Some(v) = m.get("working_dir") {
        let at = m.at("working_dir");
        let w = doc.string(&at, v)?;
        if !w.starts_with('/') {
            return Err(doc.err(&at, format!("`{w}` must be an absolute path, as Docker's")));
        }
        x.working_dir = Some(w);
    }
    if let Some(v) = m.get("hostname") {
        let at = m.at("hostname");
        let h = doc.scalar(&at, v)?;
        let ok = !h.is_empty()
            && h.len() <= 63
            && !h.starts_with('-')
            && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(doc.err(&at, format!("`{h}` is not a host name (one DNS label)")));
        }
        x.hostname = Some(h);
    }
    if let Some(v) = m.get("env_file") {
        x.env_file = parse_env_files(doc, &m.at("env_file"), v, env)?;
    }
    if let Some(v) = m.get("logging") {
        x.logging = Some(parse_logging(doc, &m.at("logging"), v)?);
    }
    if let Some(v) = m.get("ulimits") {
        x.ulimits = parse_ulimits(doc, &m.at("ulimits"), v)?;
    }
    if let Some(v) = m.get("container_name") {
        let at = m.at("container_name");
        let n = doc.string(&at, v)?;
        check_name("container", &n).map_err(|e| doc.err(&at, e))?;
        x.container_name = Some(n);
    }
    if let Some(p) = m.get("privileged") {
        x.privileged = doc.bool(&m.at("privileged"), p)?;
    }
    Ok(x)
}

/// `labels`: a mapping, or a list of `KEY=VALUE` (a `KEY` alone is an empty label).
fn parse_labels(
    doc: Doc<'_>,
    at: &str,
    v: &Value,
) -> Result<BTreeMap<String, String>, ProfileError> {
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(_) => {
            let lm = doc.map(at, v, |_| true)?;
            for (k, val) in &lm.entries {
                out.insert(k.clone(), doc.scalar(&lm.at(k), val)?);
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let s = doc.string(&index(at, i), item)?;
                let (k, val) = s.split_once('=').unwrap_or((&s, ""));
                out.insert(k.to_string(), val.to_string());
            }
        }
        other => {
            return Err(doc.err(
                at,
                format!(
                    "expected a mapping or a list of KEY=VALUE, found {}",
                    kind(other)
                ),
            ));
        }
    }
    if let Some(k) = out.keys().find(|k| k.is_empty()) {
        return Err(doc.err(at, format!("`{k}`: a label needs a name")));
    }
    Ok(out)
}

/// `env_file`: a path, or a list of paths or of `{path, required}`; relative to the stack
/// file's directory; later files win, as in compose.
fn parse_env_files(
    doc: Doc<'_>,
    at: &str,
    v: &Value,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ProfileError> {
    let entries: Vec<(String, Value)> = match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (index(at, i), item.clone()))
            .collect(),
        other => vec![(at.to_string(), other.clone())],
    };
    let dir = Path::new(doc.file).parent().unwrap_or(Path::new(""));
    let mut out = BTreeMap::new();
    for (here, item) in entries {
        let (path, required) = match &item {
            Value::Mapping(_) => {
                let em = doc.map(&here, &item, |k| matches!(k, "path" | "required"))?;
                let path = doc.string(
                    &em.at("path"),
                    em.get("path")
                        .ok_or_else(|| doc.err(&em.at("path"), "missing"))?,
                )?;
                let required = match em.get("required") {
                    Some(r) => doc.bool(&em.at("required"), r)?,
                    None => true,
                };
                (path, required)
            }
            other => (doc.string(&here, other)?, true),
        };
        let file = dir.join(&path);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => {
                return Err(doc.err(&here, format!("cannot read `{}`: {e}", file.display())));
            }
        };
        for (k, val) in crate::profile::dotenv::parse(&file.display().to_string(), &text, env)? {
            out.insert(k, val);
        }
    }
    Ok(out)
}

/// `logging`: Docker's `json-file` and `local` drivers keep rotated files, as the agent does
/// (their `max-size` and `max-file` options map onto its rotation); `none` keeps nothing.
/// Other drivers send output off the robot, which the agent does not do.
fn parse_logging(doc: Doc<'_>, at: &str, v: &Value) -> Result<LogConfig, ProfileError> {
    let lm = doc.map(at, v, |k| matches!(k, "driver" | "options"))?;
    let driver = match lm.get("driver") {
        Some(d) => doc.string(&lm.at("driver"), d)?,
        None => "json-file".to_string(),
    };
    let mut log = LogConfig::default();
    match driver.as_str() {
        "json-file" | "local" => {}
        "none" => log.discard = true,
        other => {
            return Err(doc.err(
                &lm.at("driver"),
                format!(
                    "driver `{other}` is refused: the agent keeps a container's output on the robot, rotated (`json-file`, `local`), or not at all (`none`); it ships logs nowhere"
                ),
            ));
        }
    }
    if let Some(o) = lm.get("options") {
        let oat = join(at, "options");
        let om = doc.map(&oat, o, |_| true)?;
        for (k, val) in &om.entries {
            let kat = om.at(k);
            let s = doc.scalar(&kat, val)?;
            match k.as_str() {
                "max-size" if !log.discard => {
                    log.max_size = parse_bytes(&s).map_err(|e| doc.err(&kat, e))?.max(1);
                }
                "max-file" if !log.discard => {
                    log.max_files = s
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| doc.err(&kat, format!("`{s}` is not a count ≥ 1")))?;
                }
                // Docker's defaults for what the agent does anyway.
                "compress" | "mode" | "max-buffer-size" => {}
                other => {
                    return Err(doc.err(
                        &kat,
                        format!(
                            "option `{other}` is refused: the agent's log rotation takes `max-size` and `max-file`"
                        ),
                    ));
                }
            }
        }
    }
    Ok(log)
}

/// `ulimits`: `NAME: N` (soft = hard) or `NAME: {soft: N, hard: M}`; `-1` is unlimited.
fn parse_ulimits(doc: Doc<'_>, at: &str, v: &Value) -> Result<Vec<Ulimit>, ProfileError> {
    let um = doc.map(at, v, |_| true)?;
    let mut out = Vec::new();
    let limit = |path: &str, v: &Value| -> Result<u64, ProfileError> {
        let bad = || {
            doc.err(
                path,
                format!(
                    "expected a limit (a number, -1 for unlimited), found {}",
                    show(v)
                ),
            )
        };
        let n: i64 = match v {
            Value::Number(n) => n.as_i64().ok_or_else(bad)?,
            Value::String(s) => s.trim().parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        match n {
            -1 => Ok(u64::MAX),
            n if n >= 0 => Ok(n as u64),
            _ => Err(bad()),
        }
    };
    for (name, val) in &um.entries {
        let here = um.at(name);
        let (soft, hard) = match val {
            Value::Mapping(_) => {
                let lm = doc.map(&here, val, |k| matches!(k, "soft" | "hard"))?;
                let get = |k: &str| {
                    lm.get(k)
                        .ok_or_else(|| doc.err(&lm.at(k), "missing: give both `soft` and `hard`"))
                        .and_then(|v| limit(&lm.at(k), v))
                };
                (get("soft")?, get("hard")?)
            }
            other => {
                let n = limit(&here, other)?;
                (n, n)
            }
        };
        let u = Ulimit {
            name: name.clone(),
            soft,
            hard,
        };
        u.check().map_err(|e| doc.err(&here, e.0))?;
        out.push(u);
    }
    Ok(out)
}

/// `devices`: CDI names (`nvidia.com/gpu=l4t`) go to the robot as they are; host paths
/// (`/dev/video0`, `/dev/video0:/dev/video0:rwm`) are kept for the deploy to turn into the
/// roles of the robot's profile that grant them.
pub(super) fn parse_devices(
    doc: Doc<'_>,
    at: &str,
    v: &Value,
) -> Result<(Vec<String>, HostDevices), ProfileError> {
    let mut cdi: Vec<String> = Vec::new();
    let mut host: Vec<(String, Located)> = Vec::new();
    for (i, d) in doc.strings(at, v)?.into_iter().enumerate() {
        let here = index(at, i);
        if d.starts_with('/') {
            let path = d.split(':').next().unwrap_or(&d).to_string();
            if !host.iter().any(|(p, _)| *p == path) {
                host.push((
                    path,
                    Located {
                        key: here,
                        pos: None,
                    },
                ));
            }
            continue;
        }
        if !crate::cdi::is_qualified_name(&d) {
            return Err(doc
                .err(
                    &here,
                    format!(
                        "`{d}`: expected a host device path (`/dev/video0`) or a CDI device name (vendor.com/class=name)"
                    ),
                )
                .with_hint(hint_for("devices").expect("has a hint")));
        }
        crate::cdi::QualifiedName::parse(&d).map_err(|e| doc.err(&here, e))?;
        if !cdi.contains(&d) {
            cdi.push(d);
        }
    }
    Ok((cdi, host))
}
