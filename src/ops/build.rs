//! `dts devel build`: resolve the user's arguments, build, return the report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::build::{self, BuildOptions, BuildReport, StoreOrRegistry};
use crate::oci::{Platform, Reference};
use crate::progress::Reporter;
use crate::store::Store;

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct BuildArgs {
    /// Context directory.
    pub context: PathBuf,
    /// Dockerfile, if not `<context>/Dockerfile`.
    pub dockerfile: Option<PathBuf>,
    /// Names.
    pub tags: Vec<String>,
    /// Platforms (empty: this machine's).
    pub platforms: Vec<Platform>,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// Plain-HTTP registries for base images.
    pub insecure: bool,
    /// `--secret`s and `--ssh` agents for `RUN --mount`.
    pub mounts: build::MountInputs,
}

/// Builds and names the image.
pub fn build(store: &Store, args: &BuildArgs, reporter: &dyn Reporter) -> Result<BuildReport> {
    let tags = args
        .tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let context = args
        .context
        .canonicalize()
        .with_context(|| format!("build context `{}`", args.context.display()))?;
    let opts = BuildOptions {
        context,
        dockerfile: args.dockerfile.clone(),
        tags,
        platforms: args.platforms.clone(),
        build_args: args.build_args.clone(),
        target: args.target.clone(),
        no_cache: args.no_cache,
        state_dir: super::dts_home().join("build"),
        mounts: args.mounts.clone(),
    };
    let resolver = StoreOrRegistry {
        store,
        insecure: args.insecure,
    };
    Ok(build::build(store, &opts, &resolver, reporter)?)
}
