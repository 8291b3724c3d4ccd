//! The `dts` command tree (clap) and its dispatch to `ops`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use super::table::Table;
use super::{Exit, GlobalArgs, Printer, exit_for, human_size, reporter};
use crate::archive::SaveFormat;
use crate::oci::Platform;
use crate::ops;

/// dts: build, ship and run software on Duckiebots.
#[derive(Parser, Debug)]
#[command(name = "dts", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Development: build images for the robots' platforms, deploy them in place of a service
    #[command(subcommand)]
    Devel(DevelCmd),
    /// Images in the local store: list, inspect, tag, remove, save, load, pull, push
    #[command(subcommand)]
    Image(ImageCmd),
    /// One robot over SSH: deploy a stack, releases, containers
    Duckiebot(super::duckiebot::DuckiebotArgs),
    /// The robots on the LAN
    #[command(subcommand)]
    Fleet(super::fleet::FleetCmd),
    /// Virtual Duckiebots on this machine: up, down, ls
    #[command(subcommand)]
    Sim(super::sim::SimCommand),
}

#[derive(Subcommand, Debug)]
enum DevelCmd {
    /// Build an image from a Dockerfile, for one or several platforms, without a Docker daemon
    Build {
        /// The build context directory
        #[arg(short = 'C', long = "context", default_value = ".")]
        context: PathBuf,
        /// The Dockerfile (default: <context>/Dockerfile)
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Name the result (repeatable)
        #[arg(short = 't', long = "tag")]
        tags: Vec<String>,
        /// Target platforms, comma-separated (linux/arm64,linux/arm/v7); default: this machine's
        #[arg(long, value_parser = parse_platforms, conflicts_with = "arch")]
        platform: Option<PlatformList>,
        /// Target platforms in Duckietown's spelling (arm64v8,arm32v7,amd64)
        #[arg(short = 'a', long, value_parser = parse_platforms)]
        arch: Option<PlatformList>,
        /// Build argument KEY=VALUE (repeatable)
        #[arg(long = "build-arg", value_parser = parse_kv)]
        build_args: Vec<(String, String)>,
        /// Build this stage instead of the last
        #[arg(long)]
        target: Option<String>,
        /// Do not use the build cache
        #[arg(long)]
        no_cache: bool,
        /// Pull base images over plain HTTP (lab registries)
        #[arg(long)]
        insecure: bool,
        #[command(flatten)]
        mounts: super::devel::MountFlags,
        /// Build for this robot's platform only (asks the robot; ships nothing)
        #[arg(short = 'H', long = "host", value_name = "ROBOT", conflicts_with_all = ["platform", "arch"])]
        host: Option<String>,
        #[command(flatten)]
        ssh: super::devel::DevelSsh,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Build the context for a robot and deploy it in place of one service of the release it
    /// runs; `--watch` again on every saved change
    Deploy(super::devel::DeployArgs),
    /// Remove what builds keep between runs: `--cache`, the cache mounts of
    /// `RUN --mount=type=cache`
    Prune {
        /// Remove the cache mounts (those no build is using), reporting their sizes
        #[arg(long, required = true)]
        cache: bool,
        /// One JSON document on stdout: {removed: [{id, platform, bytes, in_use}], in_use, bytes}
        #[arg(long)]
        json: bool,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// List images
    Ls {
        /// One JSON document on stdout: [{name, digest, platforms, size}]
        #[arg(long)]
        json: bool,
    },
    /// Show an image's configuration (for one platform)
    Inspect {
        /// Image name
        name: String,
        /// Platform of a multi-platform image (default: this machine's, if present)
        #[arg(long, value_parser = parse_platform)]
        platform: Option<Platform>,
        /// Print the configuration exactly as stored
        #[arg(long)]
        json: bool,
    },
    /// Remove image names, and the content only they used
    Rm {
        /// Image names
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Give an image another name
    Tag {
        /// Existing name
        src: String,
        /// New name
        dst: String,
    },
    /// Remove content no image name reaches
    Prune {
        /// One JSON document on stdout: {blobs, bytes}
        #[arg(long)]
        json: bool,
    },
    /// Write images to an archive that docker load, skopeo, podman and umoci read
    Save {
        /// Image names
        #[arg(required = true)]
        names: Vec<String>,
        /// Output file
        #[arg(short, long)]
        output: PathBuf,
        /// Archive format: OCI keeps every platform, a docker-archive holds one
        #[arg(long, value_enum, default_value_t = FormatArg::Oci)]
        format: FormatArg,
        /// Save only this platform (required for a multi-platform image in docker format)
        #[arg(long, value_parser = parse_platform)]
        platform: Option<Platform>,
    },
    /// Load images from a docker-archive, an OCI archive or an OCI layout directory
    Load {
        /// Archive file or OCI layout directory
        #[arg(short, long)]
        input: PathBuf,
        /// Name for an image whose archive carries no full name
        #[arg(short, long)]
        tag: Option<String>,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Pull an image from an OCI distribution registry
    Pull {
        /// Image reference (`duckietown/dt-core:daffy`, `host:5000/x/y@sha256:…`)
        name: String,
        /// Only these platforms (comma-separated); default: every platform of the image
        #[arg(long, value_parser = parse_platforms)]
        platform: Option<PlatformList>,
        /// Plain HTTP and no TLS verification, for a lab registry
        #[arg(long)]
        insecure: bool,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Push an image to the registry its name points at (tag it first to choose one)
    Push {
        /// Image name, e.g. `lab:5000/me/dt-core:exp1`
        name: String,
        /// Plain HTTP and no TLS verification, for a lab registry
        #[arg(long)]
        insecure: bool,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

/// A comma-separated platform list as one flag value (clap would treat a bare `Vec` as
/// repeated values).
#[derive(Clone, Debug)]
struct PlatformList(Vec<Platform>);

fn parse_platforms(s: &str) -> Result<PlatformList, String> {
    crate::oci::platform::parse_list(s)
        .map(PlatformList)
        .map_err(|e| e.to_string())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Oci,
    Docker,
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    s.parse::<Platform>().map_err(|e| e.to_string())
}

/// Runs `dts` with the process arguments.
pub fn main() -> ExitCode {
    let cli = match super::parse_args::<Cli>() {
        Ok(c) => c,
        Err(exit) => return exit.into(),
    };
    let printer = Printer::new(&cli.global);
    match run(&cli, &printer) {
        Ok(exit) => exit.into(),
        Err(e) => {
            printer.error(&e);
            exit_for(&e).into()
        }
    }
}

fn run(cli: &Cli, p: &Printer) -> Result<Exit> {
    match &cli.command {
        Command::Image(cmd) => image(cmd, &cli.global, p),
        Command::Devel(cmd) => devel(cmd, &cli.global, p),
        Command::Duckiebot(a) => super::duckiebot::run(a, &cli.global, p),
        Command::Fleet(cmd) => super::fleet::run(cmd, &cli.global, p),
        Command::Sim(cmd) => super::sim::run(cmd, p),
    }
}

fn devel(cmd: &DevelCmd, g: &GlobalArgs, p: &Printer) -> Result<Exit> {
    let (context, file, tags, platform, arch, build_args, target, no_cache, insecure, mounts, json) =
        match cmd {
            DevelCmd::Deploy(a) => return super::devel::deploy(a, g, p),
            DevelCmd::Prune { cache: _, json } => return super::devel::prune_cache(*json, p),
            DevelCmd::Build {
                context,
                file,
                tags,
                platform,
                arch,
                build_args,
                target,
                no_cache,
                insecure,
                mounts,
                host,
                ssh,
                json,
            } => {
                if let Some(robot) = host {
                    let opts = ops::build::BuildArgs {
                        context: context.clone(),
                        dockerfile: file.clone(),
                        tags: tags.clone(),
                        platforms: Vec::new(),
                        build_args: build_args.iter().cloned().collect(),
                        target: target.clone(),
                        no_cache: *no_cache,
                        insecure: *insecure,
                        mounts: mounts.inputs()?,
                    };
                    return super::devel::build_for_robot(robot, ssh, &opts, *json, g, p);
                }
                (
                    context, file, tags, platform, arch, build_args, target, no_cache, insecure,
                    mounts, json,
                )
            }
        };
    let store = ops::image::open_store()?;
    let rep = reporter(g);
    let platforms = platform
        .as_ref()
        .or(arch.as_ref())
        .map(|l| l.0.clone())
        .unwrap_or_default();
    let opts = ops::build::BuildArgs {
        context: context.clone(),
        dockerfile: file.clone(),
        tags: tags.clone(),
        platforms,
        build_args: build_args.iter().cloned().collect(),
        target: target.clone(),
        no_cache: *no_cache,
        insecure: *insecure,
        mounts: mounts.inputs()?,
    };
    let r = ops::build::build(&store, &opts, &*rep)?;
    if *json {
        let platforms: Vec<_> = r
            .platforms
            .iter()
            .map(|(pl, d)| serde_json::json!({"platform": pl.to_string(), "digest": d.digest}))
            .collect();
        p.json(&serde_json::json!({
            "digest": r.descriptor.digest,
            "media_type": r.descriptor.media_type,
            "platforms": platforms,
            "steps_run": r.steps_run,
            "steps_cached": r.steps_cached,
        }));
    } else {
        p.out(&r.descriptor.digest.to_string());
    }
    Ok(Exit::Ok)
}

/// The `image ls` table: columns as wide as the longest name, digest, platform list.
pub fn image_table(rows: &[ops::image::ImageSummary]) -> Table {
    let mut t = Table::new(&["NAME", "DIGEST", "PLATFORMS", "SIZE"]).right(3);
    for r in rows {
        t.row([
            r.name.clone(),
            r.digest.short().to_string(),
            r.platforms.join(","),
            human_size(r.size),
        ]);
    }
    t
}

fn image(cmd: &ImageCmd, g: &GlobalArgs, p: &Printer) -> Result<Exit> {
    let store = ops::image::open_store()?;
    match cmd {
        ImageCmd::Ls { json } => {
            let rows = ops::image::list(&store)?;
            if *json {
                p.json(&rows);
            } else {
                p.table(&image_table(&rows));
            }
        }
        ImageCmd::Inspect {
            name,
            platform,
            json,
        } => {
            let bytes = ops::image::inspect(&store, name, platform.as_ref())?;
            if *json {
                p.out(&String::from_utf8_lossy(&bytes));
            } else {
                let v: serde_json::Value = serde_json::from_slice(&bytes)?;
                p.json(&v);
            }
        }
        ImageCmd::Rm { names } => {
            let (removed, pruned) = ops::image::remove(&store, names)?;
            for r in removed {
                p.info(&format!("Untagged: {}", r.familiar()));
            }
            print_pruned(&pruned, false, p);
        }
        ImageCmd::Tag { src, dst } => {
            let dst = ops::image::tag(&store, src, dst)?;
            p.info(&format!("Tagged {}", dst.familiar()));
        }
        ImageCmd::Prune { json } => {
            print_pruned(&ops::image::prune(&store)?, *json, p);
        }
        ImageCmd::Save {
            names,
            output,
            format,
            platform,
        } => {
            let format = match format {
                FormatArg::Oci => SaveFormat::Oci,
                FormatArg::Docker => SaveFormat::Docker,
            };
            let rep = reporter(g);
            let r = ops::image::save(&store, names, platform.as_ref(), format, output, &*rep)?;
            p.info(&format!(
                "Saved {} blobs ({}) to {}",
                r.blobs,
                human_size(r.bytes),
                output.display()
            ));
        }
        ImageCmd::Load { input, tag, json } => {
            let rep = reporter(g);
            let r = ops::image::load(&store, input, tag.as_deref(), &*rep)?;
            print_load(&r, *json, p);
        }
        ImageCmd::Pull {
            name,
            platform,
            insecure,
            json,
        } => {
            let rep = reporter(g);
            let args = ops::registry::RegistryArgs {
                insecure: *insecure,
            };
            let platforms = platform.as_ref().map(|l| l.0.as_slice());
            let r = ops::registry::pull(&store, name, platforms, &args, &*rep)?;
            print_pull(&r, *json, p);
        }
        ImageCmd::Push {
            name,
            insecure,
            json,
        } => {
            let rep = reporter(g);
            let args = ops::registry::RegistryArgs {
                insecure: *insecure,
            };
            let (name, digest, r) = ops::registry::push(&store, name, &args, &*rep)?;
            print_push(&name, &digest, &r, *json, p);
        }
    }
    Ok(Exit::Ok)
}

/// `Deleted 3 blobs, freed 120 MB; removed 2 unpacked layer(s) builds kept (1.1 GB)`.
fn print_pruned(r: &ops::image::Pruned, json: bool, p: &Printer) {
    if json {
        return p.json(r);
    }
    if let Some(w) = &r.warning {
        p.info(&format!("warning: {w}"));
    }
    let mut text = format!("Deleted {} blobs, freed {}", r.blobs, human_size(r.bytes));
    if r.build.snapshots > 0 {
        text += &format!(
            "; removed {} unpacked layer(s) builds kept ({})",
            r.build.snapshots,
            human_size(r.build.snapshot_bytes)
        );
    }
    p.info(&text);
}

/// What `dts image load` prints: the loaded names, or with `--json` the whole report.
fn print_load(r: &crate::archive::LoadReport, json: bool, p: &Printer) {
    if json {
        let images: Vec<_> = r
            .images
            .iter()
            .map(|(n, d)| serde_json::json!({"name": n.to_string(), "digest": d.digest}))
            .collect();
        p.json(&serde_json::json!({
            "format": r.format,
            "images": images,
            "blobs_added": r.blobs_added,
            "blobs_present": r.blobs_present,
        }));
    } else {
        for (n, _) in &r.images {
            p.out(&format!("Loaded image: {}", n.familiar()));
        }
    }
}

/// What `dts image pull` prints: a summary and the digest, or with `--json` the report.
fn print_pull(r: &crate::registry::PullReport, json: bool, p: &Printer) {
    if json {
        p.json(&serde_json::json!({
            "name": r.name.to_string(),
            "digest": r.descriptor.digest,
            "source_digest": r.source.digest,
            "blobs_fetched": r.blobs_fetched,
            "blobs_present": r.blobs_present,
            "bytes_downloaded": r.bytes_downloaded,
        }));
    } else {
        p.info(&format!(
            "Pulled {} ({} blobs, {}; {} already here)",
            r.name.familiar(),
            r.blobs_fetched,
            human_size(r.bytes_downloaded),
            r.blobs_present
        ));
        p.out(&r.descriptor.digest.to_string());
    }
}

/// What `dts image push` prints: a summary and the digest, or with `--json` the report.
fn print_push(
    name: &crate::oci::Reference,
    digest: &crate::oci::Digest,
    r: &crate::registry::PushReport,
    json: bool,
    p: &Printer,
) {
    if json {
        p.json(&serde_json::json!({
            "name": name.to_string(),
            "digest": digest,
            "blobs_uploaded": r.blobs_uploaded,
            "blobs_existing": r.blobs_existing,
            "blobs_mounted": r.blobs_mounted,
            "bytes_uploaded": r.bytes_uploaded,
            "manifests_pushed": r.manifests_pushed,
        }));
    } else {
        p.info(&format!(
            "Pushed {}: {} blobs uploaded ({}), {} already there, {} mounted",
            name.familiar(),
            r.blobs_uploaded,
            human_size(r.bytes_uploaded),
            r.blobs_existing,
            r.blobs_mounted
        ));
        p.out(&digest.to_string());
    }
}
