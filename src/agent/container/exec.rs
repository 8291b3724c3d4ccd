//! `exec`: what a command run inside a running container is (`docker exec`). The process is
//! the container's own process spec from its bundle with only the command, terminal, user,
//! working directory and environment replaced, so it keeps the container's capabilities,
//! no_new_privileges, AppArmor profile and rlimits; `runc exec` joins it to the container's
//! namespaces and cgroup and applies its seccomp filter. Nothing here can widen what the
//! container may do: there is no privileged exec.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::spec::check_workdir;
use super::{ContainerError, Manager};
use crate::api::ExecSpec;
use crate::util::fs::PathContext;

/// An exec ready to run: the runtime's id of the container and the process file written for
/// it (removed when this is dropped).
pub struct ExecPlan {
    /// The runtime's container id.
    pub rid: String,
    /// The OCI process JSON (`runc exec --process`).
    pub process: PathBuf,
    /// Where the runtime's own messages go (`--log`).
    pub log: PathBuf,
}

impl Drop for ExecPlan {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.process);
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Manager {
    /// Checks `spec` against its container (which must be running) and writes its process.
    pub fn exec_plan(&self, spec: &ExecSpec) -> Result<ExecPlan, ContainerError> {
        let name = spec.name.as_str();
        let info = self.info(name)?;
        if info.state != "running" {
            return Err(ContainerError::State {
                name: name.to_string(),
                state: info.state,
                hint: "exec needs a running container (`dt-agent start` it first)",
            });
        }
        if spec.cmd.is_empty() {
            return Err(ContainerError::BadSpec(
                "exec needs a command: `exec CONTAINER -- CMD [ARG…]`".into(),
            ));
        }
        for e in &spec.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(ContainerError::BadSpec(format!(
                    "environment variable `{e}` is not `KEY=VALUE`"
                )));
            }
        }
        if let Some(w) = &spec.workdir {
            if !w.starts_with('/') {
                return Err(ContainerError::BadSpec(format!(
                    "working directory `{w}` is not absolute"
                )));
            }
            check_workdir(w).map_err(ContainerError::BadSpec)?;
        }
        let bundle = self.dir(name).join("bundle");
        let config_path = bundle.join("config.json");
        let text = std::fs::read(&config_path).at("read", &config_path)?;
        let config: Value = serde_json::from_slice(&text)
            .map_err(|e| ContainerError::BadSpec(format!("{}: {e}", config_path.display())))?;
        let rootfs = root_of(&config, &bundle);
        let user = match &spec.user {
            Some(u) => Some(self.resolve_user(name, &rootfs, u)?),
            None => None,
        };
        let process = process_for(&config, spec, user.as_ref());
        let tag = format!("{:08x}", rand_tag());
        let process_path = bundle.join(format!("exec-{tag}.json"));
        let body = serde_json::to_vec(&process).expect("a process serialises");
        std::fs::write(&process_path, &body).at("write", &process_path)?;
        Ok(ExecPlan {
            rid: self.rid(name),
            process: process_path,
            log: bundle.join(format!("exec-{tag}.log")),
        })
    }
}

/// The container's root file system, as its bundle names it.
fn root_of(config: &Value, bundle: &Path) -> PathBuf {
    let p = PathBuf::from(config["root"]["path"].as_str().unwrap_or("rootfs"));
    if p.is_absolute() { p } else { bundle.join(p) }
}

/// The container's process with `spec`'s changes: the command, a terminal (and its size),
/// the user, the working directory, and the environment with `spec.env` replacing variables
/// of the same name (`docker exec -e`).
pub fn process_for(
    config: &Value,
    spec: &ExecSpec,
    user: Option<&crate::runtime::user::ExecUser>,
) -> Value {
    let mut p = config["process"].clone();
    if !p.is_object() {
        p = json!({});
    }
    p["args"] = json!(spec.cmd);
    p["terminal"] = json!(spec.tty);
    match (spec.tty, spec.size) {
        (true, Some((rows, cols))) => p["consoleSize"] = json!({"height": rows, "width": cols}),
        _ => {
            if let Some(o) = p.as_object_mut() {
                o.remove("consoleSize");
            }
        }
    }
    if let Some(u) = user {
        p["user"] = json!({"uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids});
    }
    if let Some(w) = &spec.workdir {
        p["cwd"] = json!(w);
    }
    let mut env: Vec<String> = p["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for e in &spec.env {
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|old| old.split('=').next() != Some(key));
        env.push(e.clone());
    }
    p["env"] = json!(env);
    p
}

/// A tag that keeps two execs' files apart.
fn rand_tag() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    t ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::names::ContainerName;

    #[test]
    fn the_process_is_the_containers_with_only_what_exec_changes() {
        let config = json!({
            "process": {
                "args": ["ros"], "terminal": false, "cwd": "/code",
                "user": {"uid": 1000, "gid": 1000},
                "env": ["PATH=/bin", "A=1", "B=2"],
                "capabilities": {"bounding": ["CAP_CHOWN"]},
                "noNewPrivileges": true, "apparmorProfile": "docker-default",
            },
            "root": {"path": "/x/rootfs"}
        });
        let spec = ExecSpec {
            name: ContainerName::new("c").unwrap(),
            cmd: vec!["sh".into()],
            tty: true,
            env: vec!["A=9".into(), "C=3".into()],
            size: Some((24, 80)),
            ..ExecSpec::default()
        };
        let p = process_for(&config, &spec, None);
        assert_eq!(p["args"], json!(["sh"]));
        assert_eq!(p["terminal"], json!(true));
        assert_eq!(p["consoleSize"], json!({"height": 24, "width": 80}));
        assert_eq!(p["env"], json!(["PATH=/bin", "B=2", "A=9", "C=3"]));
        assert_eq!(p["cwd"], json!("/code"));
        assert_eq!(p["user"]["uid"], json!(1000));
        assert_eq!(p["capabilities"], config["process"]["capabilities"]);
        assert_eq!(p["noNewPrivileges"], json!(true));
        assert_eq!(p["apparmorProfile"], json!("docker-default"));
        let user = crate::runtime::user::ExecUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![10],
        };
        let spec = ExecSpec {
            workdir: Some("/tmp".into()),
            ..spec
        };
        let p = process_for(&config, &spec, Some(&user));
        assert_eq!(
            p["user"],
            json!({"uid": 0, "gid": 0, "additionalGids": [10]})
        );
        assert_eq!(p["cwd"], json!("/tmp"));
        assert_eq!(
            root_of(&config, Path::new("/b")),
            PathBuf::from("/x/rootfs")
        );
        assert_eq!(
            root_of(&json!({}), Path::new("/b")),
            PathBuf::from("/b/rootfs")
        );
    }
}
