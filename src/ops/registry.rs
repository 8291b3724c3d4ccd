//! `dts image pull` and `dts image push`: the store ⇄ an OCI distribution registry.

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
    Ok(crate::registry::Client::new(
        crate::registry::ClientOptions {
            insecure: args.insecure,
            ..Default::default()
        },
    )?)
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
