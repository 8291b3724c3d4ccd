//! What lets two containers of one service exist for a moment during a release switch
//! (agent::release), and what every container gets besides its spec.
//!
//! **Runtime ids.** A container's runtime id (runc's container id, its cgroup, its CNI
//! attachment) is its name unless that id is taken, when it gets a fresh one
//! (`<name>-<hex>`), recorded in `container.json` (`runtime_id`). Containers recorded by older
//! agents have none: their id is their name, and they are never retired.
//!
//! **Retiring.** A switch that starts a service's new container before the old one stops first
//! renames the old one's directory to `<name>.old<N>` ([`Manager::retire`]) — its record
//! then names it so, with `retired_from` the original — so the new container can be created
//! under the service's name. The old one keeps running under its runtime id; its shim works
//! relative to the directory it entered, so its logs and exit record follow the rename.
//!
//! **Update locks.** Every release container gets `$DT_AGENT_ROOT/locks/<service>/` at
//! [`LOCK_DIR`]; a process there that holds an exclusive `flock` on [`LOCK_FILE`] defers
//! release switches (agent::release::locks).
//!
//! **Init.** `init: true`, or a release service whose image and stack set no entrypoint, runs
//! under [`super::init`] when the agent's binary is static.

use std::sync::OnceLock;

use oci_spec::runtime::{MountBuilder, Spec};

use super::*;

/// Where a container sees its update-lock directory.
pub const LOCK_DIR: &str = "/data/locks";
/// The update lock inside [`LOCK_DIR`].
pub const LOCK_FILE: &str = "dt-agent-update.lock";

impl Record {
    /// The runtime's id of the container.
    pub fn rid(&self) -> &str {
        self.runtime_id.as_deref().unwrap_or(&self.config.name)
    }
}

impl Manager {
    /// The runtime id of container `name`.
    pub(super) fn rid(&self, name: &str) -> String {
        self.record(name)
            .map(|r| r.rid().to_string())
            .unwrap_or_else(|_| name.to_string())
    }

    /// A runtime id for a new container `name`: its name unless a container (a retired one of
    /// the same service) runs under it.
    pub(super) fn fresh_rid(&self, name: &str) -> String {
        let taken = self.names().unwrap_or_default().iter().any(|n| {
            self.record(n)
                .is_ok_and(|r| r.rid() == name && r.config.name != name)
        });
        if !taken {
            return name.to_string();
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{name}-{:06x}", nanos & 0xff_ffff)
    }

    /// Which of `roles` are exclusive on this robot (one holder at a time).
    pub fn exclusive_roles(&self, roles: &[impl AsRef<str>]) -> Vec<String> {
        roles
            .iter()
            .map(AsRef::as_ref)
            .filter(|r| self.roles.get(*r).is_some_and(|s| s.exclusive))
            .map(str::to_string)
            .collect()
    }

    /// Runs `cmd` inside container `name` (health checks).
    pub fn exec(
        &self,
        name: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<crate::runtime::ExecOutput, ContainerError> {
        Ok(self.runtime.exec(&self.rid(name), cmd, &[], timeout)?)
    }

    /// Whether container `name` can be retired: recorded by this agent (it has a runtime id)
    /// and with a name short enough to take a suffix.
    pub fn can_retire(&self, name: &str) -> bool {
        name.len() <= 56 && self.record(name).is_ok_and(|r| r.runtime_id.is_some())
    }

    /// Renames running container `name` out of the way (see the module's documentation) and
    /// returns its new name.
    pub fn retire(&self, name: &str) -> Result<String, ContainerError> {
        let _g = self.lock();
        let mut rec = self.record(name)?;
        if rec.runtime_id.is_none() {
            return Err(ContainerError::State {
                name: name.into(),
                state: "recorded by an older agent".into(),
                hint: "stop it before its replacement starts",
            });
        }
        let new = (1..)
            .map(|n| format!("{name}.old{n}"))
            .find(|n| !self.dir(n).exists())
            .expect("a free name");
        let (from, to) = (self.dir(name), self.dir(&new));
        fs::rename(&from, &to).at("rename", &from)?;
        rec.retired_from.get_or_insert_with(|| name.to_string());
        rec.config.name = crate::api::ContainerName::new(&*new)
            .map_err(|_| ContainerError::BadName(new.clone()))?;
        write_json(&to.join("container.json"), &rec)?;
        crate::util::fs::sync_dir(&self.root.join("containers"))?;
        let mut inner = self.inner();
        if let Some(c) = inner.children.remove(name) {
            inner.children.insert(new.clone(), c);
        }
        inner.restart_at.remove(name);
        Ok(new)
    }

    /// The directory the shim of container `name` was started in (before any retiring).
    pub(super) fn shim_dir(&self, name: &str) -> PathBuf {
        match self.record(name).ok().and_then(|r| r.retired_from) {
            Some(orig) => self.dir(&orig),
            None => self.dir(name),
        }
    }

    /// The update-lock directory of a container, made if missing.
    pub fn lock_dir(&self, config: &ContainerConfig) -> Result<PathBuf, ContainerError> {
        let key = config.service.as_deref().unwrap_or(config.name.as_str());
        let d = self.root.join("locks").join(key);
        crate::util::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// What every container gets besides its spec: its runtime id's cgroup, the update-lock
    /// mount, and the init.
    pub(super) fn adjust_spec(
        &self,
        record: &Record,
        image: &ImageConfig,
        spec: &mut Spec,
    ) -> Result<(), ContainerError> {
        let cfg = &record.config;
        if cfg.name != record.rid()
            && let Some(l) = spec.linux_mut()
        {
            l.set_cgroups_path(Some(
                format!("{}/{}", spec::CGROUP_PARENT, record.rid()).into(),
            ));
        }
        // Not where the user mounted something of their own, nor under a read-only mount
        // (runc could not make the mount point).
        let covered = cfg.volumes.iter().any(|v| {
            let t = v.target.trim_end_matches('/');
            t == LOCK_DIR || (v.read_only && LOCK_DIR.starts_with(&format!("{t}/")))
        });
        // Release containers only: a switch is what the lock defers.
        if !covered && cfg.service.is_some() {
            let src = self.lock_dir(cfg)?;
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            mounts.push(
                MountBuilder::default()
                    .destination(LOCK_DIR)
                    .typ("bind")
                    .source(src)
                    .options(vec![
                        "rbind".to_string(),
                        "rprivate".into(),
                        "nosuid".into(),
                        "nodev".into(),
                        "noexec".into(),
                    ])
                    .build()
                    .map_err(RuntimeError::from)?,
            );
            spec.set_mounts(Some(mounts));
        }
        if wants_init(cfg, image) {
            let exe = init_binary(&self.exe);
            if static_exe(&exe) {
                init::wrap(spec, &exe)?;
            } else if cfg.init == Some(true) {
                return Err(ContainerError::BadSpec(format!(
                    "init: true needs a statically linked dt-agent to run inside the container, and {} is not (set DT_AGENT_INIT to one)",
                    exe.display()
                )));
            }
        }
        Ok(())
    }
}

/// Whether the container runs under the init: as asked, else for a release's service whose
/// image and stack give no entrypoint (its command is then PID 1 itself, typically a shell or
/// an interpreter that ignores SIGTERM; an entrypoint is the image author's own PID 1 and is
/// left alone, as Docker does).
pub fn wants_init(cfg: &ContainerConfig, image: &ImageConfig) -> bool {
    cfg.init.unwrap_or_else(|| {
        let image_ep = image
            .config
            .as_ref()
            .and_then(|c| c.entrypoint.as_ref())
            .is_some_and(|e| !e.is_empty());
        cfg.service.is_some() && cfg.entrypoint.as_ref().is_none_or(|e| e.is_empty()) && !image_ep
    })
}

/// The binary that serves as init: `$DT_AGENT_INIT` (a static `dt-agent`, for an agent that
/// is itself dynamically linked, as a debug build on a laptop is), else the agent's own.
fn init_binary(exe: &Path) -> PathBuf {
    std::env::var_os("DT_AGENT_INIT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| exe.to_path_buf())
}

fn static_exe(exe: &Path) -> bool {
    static STATIC: OnceLock<(PathBuf, bool)> = OnceLock::new();
    let (p, s) = STATIC.get_or_init(|| (exe.to_path_buf(), init::is_static(exe)));
    if p == exe { *s } else { init::is_static(exe) }
}
