//! `dts image pull` and `dts image push`: the store ⇄ an OCI distribution registry; and the
//! registry client's options on this laptop, Docker Hub's mirrors included (`deploy --pull`
//! uses them too).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::image::find;
use crate::oci::{Digest, Platform, Reference};
use crate::progress::Reporter;
use crate::store::Store;

/// Options shared by pull and push.
#[derive(Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Plain HTTP and no TLS verification (lab registries).
    pub insecure: bool,
}

fn client(args: &RegistryArgs) -> Result<crate::registry::Client> {
    Ok(crate::registry::Client::new(client_options(
        args.insecure,
    )?)?)
}

/// The registry client's options for this laptop: `insecure`, and Docker Hub's mirrors
/// ([`docker_hub_mirrors`]).
pub fn client_options(insecure: bool) -> Result<crate::registry::ClientOptions> {
    Ok(crate::registry::ClientOptions {
        insecure,
        mirrors: docker_hub_mirrors()?,
        ..Default::default()
    })
}

/// Where dts reads Docker Hub's mirrors first: `$DTS_HOME/registries.json`.
pub fn mirrors_file() -> PathBuf {
    crate::paths::dts_home().join("registries.json")
}

/// Docker Hub's mirrors, from the `registry-mirrors` list (Docker's `daemon.json` key) of
/// `$DTS_HOME/registries.json` when that file exists (an empty list: none), else of
/// `/etc/docker/daemon.json` (Docker's `~/.docker/config.json` has no mirrors). Ours must
/// parse; Docker's file is read only if it does. Each mirror is an `http://` or `https://` URL.
pub fn docker_hub_mirrors() -> Result<Vec<reqwest::Url>> {
    let ours = mirrors_file();
    match std::fs::read(&ours) {
        Ok(bytes) => return parse_mirrors(&ours, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", ours.display())),
    }
    let docker = Path::new(DOCKER_DAEMON_JSON);
    Ok(std::fs::read(docker)
        .ok()
        .and_then(|b| parse_mirrors(docker, &b).ok())
        .unwrap_or_default())
}

/// Docker's daemon configuration, whose `registry-mirrors` dts also honours.
const DOCKER_DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// The `registry-mirrors` of a `daemon.json`-style file at `path`.
fn parse_mirrors(path: &Path, bytes: &[u8]) -> Result<Vec<reqwest::Url>> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(rename = "registry-mirrors", default)]
        mirrors: Vec<String>,
    }
    let f: File = serde_json::from_slice(bytes).with_context(|| {
        format!(
            "{}: not a JSON object with a `registry-mirrors` list of URLs",
            path.display()
        )
    })?;
    f.mirrors
        .iter()
        .map(|m| {
            reqwest::Url::parse(m)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: registry mirror `{m}` is not an http:// or https:// URL",
                        path.display()
                    )
                })
        })
        .collect()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Pulls an image (all platforms, or the ones given) into the store.
pub fn pull(
    store: &Store,
    name: &str,
    platforms: Option<&[Platform]>,
    args: &RegistryArgs,
    reporter: &dyn Reporter,
) -> Result<crate::registry::PullReport> {
    let reference = Reference::parse(name)?;
    let client = client(args)?;
    Ok(runtime()?.block_on(client.pull(store, &reference, platforms, reporter))?)
}

/// Pushes an image to the registry its name points at.
pub fn push(
    store: &Store,
    name: &str,
    args: &RegistryArgs,
    reporter: &dyn Reporter,
) -> Result<(Reference, Digest, crate::registry::PushReport)> {
    let img = find(store, name)?;
    let client = client(args)?;
    let report = runtime()?.block_on(client.push(store, &img.descriptor, &img.name, reporter))?;
    Ok((img.name, img.descriptor.digest, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_docker_daemon_json_urls() {
        let p = Path::new("registries.json");
        let m = parse_mirrors(
            p,
            br#"{"registry-mirrors": ["https://mirror.lab", "http://10.0.0.2:5000"], "debug": true}"#,
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].port(), Some(5000));
        assert!(parse_mirrors(p, b"{}").unwrap().is_empty());
        let e = parse_mirrors(p, br#"{"registry-mirrors": ["mirror.lab"]}"#).unwrap_err();
        assert!(e.to_string().contains("`mirror.lab`"), "{e}");
        let e = parse_mirrors(p, b"[1]").unwrap_err();
        assert!(e.to_string().contains("registries.json"), "{e}");
    }
}
