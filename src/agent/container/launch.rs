//! Starting a container: the shim spawned in its own session, the overlay root mounted, the
//! runtime bundle written (config.json, hosts, hostname, resolv.conf), the user resolved in the
//! image, and the platform checked; see the parent module for why a shim.

use super::*;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use super::attach::{Attach, Attached};
use crate::agent::fdpass::{LineReader, send_with_fds};

impl Manager {
    /// Starts `name` (with a client attached: `attach`), returning what an attached client
    /// needs.
    pub(super) fn start_locked(
        &self,
        name: &str,
        by_policy: bool,
        attach: Option<Attach>,
    ) -> Result<Option<Attached>, ContainerError> {
        let record = self.record(name)?;
        let mut state = self.state(name)?;
        if state.status == Status::Running {
            return Err(ContainerError::State {
                name: name.into(),
                state: "running".into(),
                hint: "stop it first",
            });
        }
        self.inner().restart_at.remove(name);
        match self.launch(&record, attach) {
            Ok((shim_pid, launched)) => {
                state.status = Status::Running;
                state.pid = Some(launched.pid);
                state.shim_pid = Some(shim_pid);
                state.ip = launched.ip;
                state.started_at = Some(crate::util::time::rfc3339(crate::util::time::now_secs()));
                state.exit_code = None;
                state.finished_at = None;
                state.error = None;
                if by_policy {
                    state.restart_count += 1;
                } else {
                    state.stopped_by_user = false;
                }
                self.save_state(name, &state)?;
                Ok(launched.attached)
            }
            Err(e) => {
                state.status = if state.started_at.is_some() {
                    Status::Exited
                } else {
                    Status::Created
                };
                state.error = Some(e.to_string());
                state.pid = None;
                self.save_state(name, &state)?;
                Err(e)
            }
        }
    }

    /// Mounts the root, writes the bundle, and has a shim create and start the container.
    pub(super) fn launch(
        &self,
        record: &Record,
        attach: Option<Attach>,
    ) -> Result<(u32, Launched), ContainerError> {
        let cfg = &record.config;
        let name = &cfg.name;
        let dir = self.dir(name);
        let rootfs = dir.join("rootfs");
        let bundle = dir.join("bundle");
        let store = AgentStore::open(&self.root)?;
        let snapshot = store.snapshot_rootfs(&record.chain_id);
        if !snapshot.is_dir() {
            return Err(ContainerError::NoSnapshot(cfg.image.to_string()));
        }
        let (_, image) = store.image_config(&record.manifest)?;
        drop(store);
        check_platform(&cfg.image, &image.platform())?;
        // A leftover runtime container (agent killed between create and delete) would make
        // `create` fail with "container exists".
        self.runtime.delete(record.rid())?;

        if !is_mount_point(&rootfs) {
            mount_overlay(
                &rootfs,
                &[snapshot.as_path()],
                Some((&dir.join("upper"), &dir.join("work"))),
            )?;
        }
        let result = self.launch_mounted(record, &image, &rootfs, &bundle, attach);
        if result.is_err() {
            let _ = unmount(&rootfs);
        }
        result
    }

    pub(super) fn launch_mounted(
        &self,
        record: &Record,
        image: &ImageConfig,
        rootfs: &Path,
        bundle: &Path,
        attach: Option<Attach>,
    ) -> Result<(u32, Launched), ContainerError> {
        let cfg = &record.config;
        let name = &cfg.name;
        let user_spec = cfg
            .user
            .clone()
            .or_else(|| image.config.as_ref().and_then(|c| c.user.clone()))
            .unwrap_or_default();
        let user = self.resolve_user(name, rootfs, &user_spec)?;
        let devices = devices::resolve(&self.roles, &strings(&cfg.device_roles), &self.etc_root)
            .map_err(|source| ContainerError::Device {
                name: name.to_string(),
                source,
            })?;
        for v in &cfg.volumes {
            match &v.source {
                VolumeSource::Named(n) => {
                    crate::util::fs::create_dir_all(&self.volumes_dir().join(n))?
                }
                VolumeSource::Bind(p) if !p.exists() => {
                    return Err(ContainerError::BadSpec(format!(
                        "bind mount source `{}` does not exist on this robot",
                        p.display()
                    )));
                }
                VolumeSource::Bind(_) => {}
            }
        }
        let hostname = cfg.hostname.clone().unwrap_or_else(|| {
            if cfg.network == NetworkMode::Host {
                host_hostname()
            } else {
                name.to_string()
            }
        });
        // Checked again at each start: the image may have been re-imported since create.
        let cwd = spec::working_dir(cfg, image)?;
        self.write_etc(bundle, &hostname, cfg.network)?;
        let mut spec = spec::runtime_spec(&spec::SpecInput {
            config: cfg,
            image,
            rootfs,
            bundle,
            user,
            devices: &devices,
            volumes_dir: &self.volumes_dir(),
            hostname,
            cwd,
        })?;
        self.adjust_spec(record, image, &mut spec)?;
        super::seccomp::apply(&mut spec, &cfg.security, self.runtime.command())?;
        let spec_json = serde_json::to_vec_pretty(&spec).expect("a spec serialises");
        atomic_write(&bundle.join("config.json"), &spec_json)?;
        let shim = shim::ShimConfig {
            id: record.rid().to_string(),
            runtime: self.runtime.command().to_path_buf(),
            runtime_root: self.runtime.root().to_path_buf(),
            bundle: bundle.to_path_buf(),
            logs: self.logs_dir(name),
            log: cfg.log,
            network: (cfg.network == NetworkMode::Bridge).then(|| shim::ShimNetwork {
                state_dir: self.root.join("net"),
                ports: cfg.ports.clone(),
            }),
            tty: cfg.tty,
            attached: attach.is_some(),
            size: attach.as_ref().and_then(|a| a.size).filter(|_| cfg.tty),
        };
        write_json(&bundle.join("shim.json"), &shim)?;
        let _ = fs::remove_file(self.dir(name).join("exit.json"));
        self.spawn_shim(name, &devices, attach)
    }

    pub(super) fn resolve_user(
        &self,
        name: &str,
        rootfs: &Path,
        spec: &str,
    ) -> Result<ExecUser, ContainerError> {
        let err = |reason: String| ContainerError::User {
            name: name.to_string(),
            user: spec.to_string(),
            reason,
        };
        let passwd = read_in_root(Some(rootfs), "/etc/passwd").map_err(|e| err(e.to_string()))?;
        let group = read_in_root(Some(rootfs), "/etc/group").map_err(|e| err(e.to_string()))?;
        resolve_user(spec, passwd.as_deref(), group.as_deref()).map_err(err)
    }

    /// `hosts`, `hostname` and `resolv.conf` for the container: the robot's own on the host
    /// network (so names resolve as on the robot), generated ones otherwise.
    pub(super) fn write_etc(
        &self,
        bundle: &Path,
        hostname: &str,
        net: NetworkMode,
    ) -> Result<(), ContainerError> {
        let host_file = |p: &str| fs::read(p).unwrap_or_default();
        let hosts = if net == NetworkMode::Host {
            host_file("/etc/hosts")
        } else {
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
            )
            .into_bytes()
        };
        atomic_write(&bundle.join("hosts"), &hosts)?;
        atomic_write(&bundle.join("hostname"), format!("{hostname}\n").as_bytes())?;
        let mut resolv = host_file("/etc/resolv.conf");
        if net != NetworkMode::Host {
            // A resolver on the robot's loopback is not reachable from the container's.
            let text = String::from_utf8_lossy(&resolv)
                .lines()
                .filter(|l| {
                    !(l.trim_start().starts_with("nameserver")
                        && l.split_whitespace()
                            .nth(1)
                            .is_some_and(|a| a.starts_with("127.")))
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>();
            resolv = text.into_bytes();
        }
        atomic_write(&bundle.join("resolv.conf"), &resolv)?;
        Ok(())
    }

    pub(super) fn spawn_shim(
        &self,
        name: &str,
        devices: &ResolvedDevices,
        attach: Option<Attach>,
    ) -> Result<(u32, Launched), ContainerError> {
        let dir = self.dir(name);
        let log_path = dir.join("shim.log");
        let shim_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .at("open", &log_path)?;
        for w in &devices.warnings {
            let _ = std::io::Write::write_all(&mut &shim_log, format!("warning: {w}\n").as_bytes());
        }
        // A socket, not a pipe: an attached start passes descriptors both ways on it.
        let (ours, theirs) = UnixStream::pair().at("make a socket pair for", &dir)?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("shim").arg(&dir);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stderr(Stdio::from(shim_log));
        // A session of its own: the daemon's signals and its death do not reach the shim.
        // SAFETY: setsid is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| ContainerError::Start {
            name: name.to_string(),
            message: format!("cannot run `{} shim`: {source}", self.exe.display()),
        })?;
        drop(cmd);
        let shim_pid = child.id();
        if let Some(a) = &attach {
            let fds: Vec<_> = a.stdio.iter().map(|f| f.as_fd()).collect();
            // A shim that died already answers nothing, which is reported below.
            let _ = send_with_fds(&ours, b"{\"attach\":true}\n", &fds);
        }
        let attached = attach.is_some();
        drop(attach);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = LineReader::new(ours);
            let line = reader.read_line().ok().flatten().unwrap_or_default();
            let _ = tx.send((line, reader));
        });
        let (line, mut reader) = match rx.recv_timeout(SHIM_START_TIMEOUT) {
            Ok((line, reader)) => (line, Some(reader)),
            Err(_) => (Vec::new(), None),
        };
        let reply: Option<shim::ShimReply> = serde_json::from_slice(line.trim_ascii()).ok();
        match reply {
            Some(shim::ShimReply::Started { pid, ip }) => {
                self.inner().children.insert(name.to_string(), child);
                let attached = attached.then(|| {
                    let mut shim = reader.take().expect("read");
                    Attached {
                        master: shim.take_fds().pop(),
                        shim,
                    }
                });
                Ok((shim_pid, Launched { pid, ip, attached }))
            }
            Some(shim::ShimReply::Failed { error }) => {
                let _ = child.wait();
                Err(ContainerError::Start {
                    name: name.to_string(),
                    message: error,
                })
            }
            // `Exited` only ever follows `Started`; as a first line it is no answer.
            Some(shim::ShimReply::Exited { .. }) | None => {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                Err(ContainerError::Start {
                    name: name.to_string(),
                    message: format!(
                        "the shim gave no answer{}",
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(
                                ": {}",
                                tail.into_iter().rev().collect::<Vec<_>>().join("; ")
                            )
                        }
                    ),
                })
            }
        }
    }
}

pub(super) struct Launched {
    pid: u32,
    ip: Option<String>,
    attached: Option<Attached>,
}

/// Refuses an image this robot cannot execute: another OS, or a foreign CPU without QEMU
/// registered with the `F` flag (the emulator must be opened at registration, since the
/// container's root has none).
pub(super) fn check_platform(image: &str, platform: &Platform) -> Result<(), ContainerError> {
    let err = |reason: String| ContainerError::Platform {
        image: image.to_string(),
        platform: platform.to_string(),
        reason,
    };
    if platform.os != "linux" {
        return Err(err("only linux images run here".into()));
    }
    if crate::binfmt::is_native(platform) {
        return Ok(());
    }
    crate::binfmt::check(platform)
        .map(drop)
        .map_err(|e| err(e.to_string()))
}

/// The robot's hostname.
pub(super) fn host_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
