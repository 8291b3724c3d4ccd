//! A lab hub (issue 15): an OCI registry on a wired lab machine that robots fetch large layers
//! from, so a rollout's bytes cross the laptop's uplink once. Two verbs:
//!
//! - [`Via`] (`deploy --via HUB`, via.rs): the robots' transfers through the hub and the
//!   pipeline that pushes each layer a robot will fetch once per rollout, recompressed with
//!   zstd (convert.rs), with the registry client (`HEAD` checks and cross-repository mounts:
//!   what the hub holds is not sent again). Names on the hub: `HUB/<the image's
//!   repository>@<digest>` (pushed by digest, so two laptops' `dt-core:daffy` never clobber
//!   each other's tags, and a whole image is readable with `skopeo inspect --no-tags
//!   docker://HUB/<repository>@<digest>`).
//! - [`up`] / [`down`] (`dts fleet hub up|down`): Debian's `docker-registry` (CNCF
//!   distribution) with a lab config, for labs that have no registry.
//!
//! ```text
//! $DTS_HOME/hub/            (default --data)
//!   config.yml              the registry's config, written by `up`
//!   registry.pid            the detached registry's pid (`up --detach`; `down` reads it)
//!   registry.log            its log (detached)
//!   data/                   its storage: docker/registry/v2/{blobs,repositories}
//! ```

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::oci::Reference;

mod convert;
mod via;

pub use via::Via;

/// `deploy --via`'s inputs.
#[derive(Clone, Debug, Default)]
pub struct HubArgs {
    /// The hub as robots and the laptop reach it: `host[:port]`.
    pub hub: String,
    /// Plain HTTP (a lab registry), as `dts image push --insecure`.
    pub insecure: bool,
    /// A read-only user for robots of a Basic-auth hub, and its password.
    pub robot_user: Option<(String, String)>,
}

/// `host[:port]` of a `--via` value, and whether it is plain HTTP: `http://` says so as
/// `--insecure` does; `https://` is stripped; a path is refused.
pub fn hub_host(via: &str, insecure: bool) -> Result<(String, bool)> {
    let (rest, insecure) = match via.split_once("://") {
        Some(("http", rest)) => (rest, true),
        Some(("https", rest)) => (rest, insecure),
        Some((scheme, _)) => bail!("--via {via}: `{scheme}://` is not http:// or https://"),
        None => (via, insecure),
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains('@') {
        bail!("--via {via}: expected a registry as HOST[:PORT] (e.g. 10.0.0.2:5000)");
    }
    // The registry client parses it as a reference's registry part.
    Reference::parse(&format!("{host}/x"))
        .with_context(|| format!("--via {via}: not a registry host"))?;
    Ok((host.to_string(), insecure))
}

// ---- `dts fleet hub up|down` -------------------------------------------------------------------

/// Debian's package and binary (CNCF distribution).
const REGISTRY_BIN: &str = "docker-registry";
const REGISTRY_PACKAGE: &str = "docker-registry";
/// How long a starting registry has to answer `/v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `fleet hub up`'s inputs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Port on every interface.
    pub port: u16,
    /// Its directory (config, storage, log, pid).
    pub data: PathBuf,
    /// Run in the background (until `down`).
    pub detach: bool,
}

/// A started hub.
#[derive(Debug)]
pub struct Started {
    /// The registry's pid.
    pub pid: u32,
    /// What robots and laptops pass to `--via` (one per non-loopback IPv4 address, then
    /// `localhost:PORT` for this machine).
    pub via: Vec<String>,
    /// Its config file.
    pub config: PathBuf,
    /// The running child, when not detached (the caller waits for it).
    pub child: Option<Child>,
}

/// The default `--data`: `$DTS_HOME/hub`.
pub fn default_data_dir() -> PathBuf {
    crate::paths::dts_home().join("hub")
}

/// The lab config: filesystem storage under `data/`, deletes enabled (so `skopeo delete` and
/// the registry's garbage collector can free space), listening on every interface, the storage
/// health check on, no auth (a lab hub holds course images; put it behind htpasswd or a token
/// service when it holds anything private: docs/security.md).
pub fn config_yaml(port: u16, data: &Path) -> String {
    format!(
        "version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {storage:?}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 0.0.0.0:{port}
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
",
        storage = data.join("data").display().to_string()
    )
}

/// Starts the hub: writes the config, starts `docker-registry serve`, waits until `/v2/`
/// answers. A hub already running from `data` (its pid file names a live registry) is an
/// error naming `down`.
pub fn up(opts: &UpOptions) -> Result<Started> {
    let bin = find_registry()?;
    let data = &opts.data;
    std::fs::create_dir_all(data.join("data"))
        .with_context(|| format!("creating {}", data.join("data").display()))?;
    let pid_file = data.join("registry.pid");
    if let Some(pid) = running_pid(&pid_file) {
        bail!(
            "a hub already runs from {} (pid {pid}); stop it with `dts fleet hub down`",
            data.display()
        );
    }
    let config = data.join("config.yml");
    crate::util::fs::atomic_write(&config, config_yaml(opts.port, data).as_bytes())?;
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .arg(&config)
        .current_dir(data)
        .stdin(Stdio::null());
    // distribution overrides any config key from REGISTRY_* variables: the config is the truth.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(key);
        }
    }
    if opts.detach {
        let log_path = data.join("registry.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let err = log
            .try_clone()
            .with_context(|| format!("opening {}", log_path.display()))?;
        cmd.stdout(log).stderr(err);
        // Its own process group: the terminal's Ctrl-C is not for it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    if let Err(e) = wait_ready(&mut child, opts.port) {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(data.join("registry.log")).unwrap_or_default();
        bail!("the hub did not start: {e}\n{}", log.trim_end());
    }
    let via = via_addresses(opts.port);
    if opts.detach {
        crate::util::fs::atomic_write(&pid_file, format!("{pid}\n").as_bytes())?;
        // The registry outlives us; its exit status is not ours to collect.
        std::mem::forget(child);
        return Ok(Started {
            pid,
            via,
            config,
            child: None,
        });
    }
    Ok(Started {
        pid,
        via,
        config,
        child: Some(child),
    })
}

/// Stops the detached hub of `data`: SIGTERM, then waits (10 s) for it to go. Returns its pid,
/// or `None` when none ran.
pub fn down(data: &Path) -> Result<Option<u32>> {
    let pid_file = data.join("registry.pid");
    let Some(pid) = running_pid(&pid_file) else {
        let _ = std::fs::remove_file(&pid_file);
        return Ok(None);
    };
    let p = rustix::process::Pid::from_raw(pid as i32)
        .with_context(|| format!("{}: pid {pid}", pid_file.display()))?;
    rustix::process::kill_process(p, rustix::process::Signal::TERM)
        .with_context(|| format!("stopping the hub (pid {pid})"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        bail!("the hub (pid {pid}) did not stop within 10 s");
    }
    std::fs::remove_file(&pid_file).with_context(|| format!("removing {}", pid_file.display()))?;
    Ok(Some(pid))
}

/// `docker-registry` on `$PATH` or in /usr/bin, else an error with the install line.
fn find_registry() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_registry_in(std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]))
}

/// [`REGISTRY_BIN`] in the first of `dirs` that has it, else an error with the install line
/// (the search path apart, so tests need not change the process's `PATH` or the host's
/// packages).
fn find_registry_in(dirs: impl IntoIterator<Item = PathBuf>) -> Result<PathBuf> {
    dirs.into_iter()
        .map(|d| d.join(REGISTRY_BIN))
        // As a shell's search: a file someone may execute (a copy without its mode bits would
        // otherwise be "found" and fail to start with a less helpful error).
        .find(|p| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{REGISTRY_BIN}` (CNCF distribution, the OCI registry) is not installed: \
                 `sudo apt-get install {REGISTRY_PACKAGE}` (Debian, Ubuntu)"
            )
        })
}

/// The pid in `pid_file` if that process still runs a registry.
fn running_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains(REGISTRY_BIN)
        .then_some(pid)
}

fn alive(pid: u32) -> bool {
    // A zombie (our own detached child in tests, reparented to a subreaper that does not reap
    // it) is gone for our purposes. Its state, not its cmdline, says so: the kernel empties
    // the cmdline (exit_mm) before it closes the process's sockets (exit_files), so an empty
    // cmdline can still hold the port.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}

/// Waits until `GET /v2/` on 127.0.0.1:`port` answers 200 or 401.
fn wait_ready(child: &mut Child, port: u16) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("docker-registry exited with {status}");
        }
        if let Ok(status) = get_status(port, "/v2/") {
            if status == 200 || status == 401 {
                return Ok(());
            }
            bail!("GET /v2/ answered {status}");
        }
        if Instant::now() > deadline {
            bail!("GET /v2/ did not answer within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status of a plain HTTP/1.0 `GET` on 127.0.0.1:`port` (no client needed for one line).
fn get_status(port: u16, path: &str) -> std::io::Result<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

/// `ADDR:PORT` for each non-loopback IPv4 address of this machine, then `localhost:PORT`.
fn via_addresses(port: u16) -> Vec<String> {
    let mut out: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .filter_map(|i| match i.ip() {
            std::net::IpAddr::V4(a) => Some(format!("{a}:{port}")),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    out.push(format!("localhost:{port}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_values_are_registry_hosts() {
        assert_eq!(
            hub_host("10.0.0.2:5000", false).unwrap(),
            ("10.0.0.2:5000".into(), false)
        );
        assert_eq!(
            hub_host("http://hub.lab:5000/", false).unwrap(),
            ("hub.lab:5000".into(), true)
        );
        assert_eq!(
            hub_host("https://hub.lab", true).unwrap(),
            ("hub.lab".into(), true)
        );
        for bad in ["", "ftp://x", "hub.lab/path", "user@hub:5000"] {
            let e = hub_host(bad, false).unwrap_err().to_string();
            assert!(e.contains("--via"), "{bad}: {e}");
        }
    }

    /// `fleet hub up` on a machine without Debian's registry says which package to install;
    /// the first directory that has the binary is the one used.
    #[test]
    fn a_missing_registry_names_the_package_to_install() {
        let t = tempfile::tempdir().unwrap();
        let (empty, decoy, with) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        for d in [&empty, &decoy, &with] {
            std::fs::create_dir(d).unwrap();
        }
        // A directory of that name is not the binary.
        std::fs::create_dir(decoy.join(REGISTRY_BIN)).unwrap();
        let e = find_registry_in([empty.clone(), decoy.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`docker-registry`") && e.contains("not installed"),
            "{e}"
        );
        assert!(e.contains("apt-get install docker-registry"), "{e}");

        // Not executable: not the registry either.
        let plain = decoy.join("sub");
        std::fs::create_dir(&plain).unwrap();
        std::fs::write(plain.join(REGISTRY_BIN), "#!/bin/sh\n").unwrap();
        assert!(find_registry_in([plain]).is_err());

        let bin = with.join(REGISTRY_BIN);
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(find_registry_in([empty, decoy, with]).unwrap(), bin);
    }

    #[test]
    fn the_lab_config_listens_everywhere_and_enables_deletes() {
        let c = config_yaml(5000, Path::new("/srv/hub"));
        assert!(c.contains("addr: 0.0.0.0:5000"), "{c}");
        assert!(c.contains("rootdirectory: \"/srv/hub/data\""), "{c}");
        assert!(c.contains("delete:\n    enabled: true"), "{c}");
        assert!(
            c.contains("health:\n  storagedriver:\n    enabled: true"),
            "{c}"
        );
    }
}
