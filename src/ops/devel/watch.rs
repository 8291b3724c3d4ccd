//! `dts devel deploy --watch`: build and deploy again on every saved change of the context.
//!
//! The context is watched with inotify, one watch per directory the build can see: `.git`,
//! directories `.dockerignore` excludes (unless a `!` exception may re-include something below
//! them), and `DTS_HOME` when it lies inside the context are not watched, and changes to files
//! `.dockerignore` excludes or that editors write beside the one they save (`*.swp`, `*~`,
//! vim's `4913`, emacs's `.#*`) are dropped. Changes are debounced: a round starts once the
//! context has been quiet for [`DEBOUNCE`], so a save that writes several files (or a `git
//! checkout`) is one build. A build that fails is reported and the loop goes on: nothing is
//! deployed, the robot keeps the last release that deployed. A build whose image is the one
//! deployed last (a change the image does not see) deploys nothing. One SSH session serves
//! every round; a round whose deploy fails drops it and the next round connects again.
//!
//! Why inotify through rustix and not the `notify` crate: rustix is a dependency already (its
//! `fs` feature has inotify), `notify` would add its own dependency tree (its channel and walker
//! crates, the backends of platforms dts never runs on: the agent and the builder need Linux
//! namespaces anyway) for the three calls used here. The reading thread blocks in `read(2)`;
//! the loop's debounce and Ctrl-C are tokio's.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::{Built, DevelReport, Mode};
use crate::build::context::Context;
use crate::ops::build::BuildArgs;
use crate::ops::robot::{self, RobotLink, SshArgs};
use crate::progress::Reporter;
use crate::store::Store;

/// How long the context must stay quiet before a round starts.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What the events of one directory watch refer to: the directory, relative to the root.
struct Watches {
    fd: OwnedFd,
    root: PathBuf,
    /// Paths (absolute) never watched: the laptop's state when it lies inside the context.
    skip: Vec<PathBuf>,
    ignore: Context,
    dockerfile: PathBuf,
    dirs: HashMap<i32, PathBuf>,
}

/// Files editors write beside the one being saved.
fn editor_litter(name: &str) -> bool {
    name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".swo")
        || name.starts_with(".#")
        || name == "4913"
}

fn slash(rel: &Path) -> String {
    rel.to_string_lossy().replace('\\', "/")
}

impl Watches {
    fn new(root: &Path, dockerfile: &Path, skip: Vec<PathBuf>) -> Result<Watches> {
        let fd = inotify::init(CreateFlags::CLOEXEC).context("inotify_init")?;
        let ignore = Context::open(root, dockerfile)?;
        let mut w = Watches {
            fd,
            root: root.to_path_buf(),
            skip,
            ignore,
            dockerfile: dockerfile.to_path_buf(),
            dirs: HashMap::new(),
        };
        w.add_tree(Path::new(""))?;
        Ok(w)
    }

    /// Watches `rel` and every directory below it the build can see.
    fn add_tree(&mut self, rel: &Path) -> Result<()> {
        let abs = self.root.join(rel);
        if self.skip.iter().any(|s| abs.starts_with(s))
            || rel.file_name().is_some_and(|n| n == ".git")
            || (!rel.as_os_str().is_empty() && self.ignore.skip_dir(&slash(rel)))
        {
            return Ok(());
        }
        let flags = WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_TO
            | WatchFlags::MOVED_FROM
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::ATTRIB
            | WatchFlags::ONLYDIR
            | WatchFlags::DONT_FOLLOW;
        match inotify::add_watch(&self.fd, &abs, flags) {
            Ok(wd) => {
                self.dirs.insert(wd, rel.to_path_buf());
            }
            // Gone again (a temporary directory): nothing to watch.
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => return Ok(()),
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("watching `{}`", abs.display()));
            }
        }
        let entries = match std::fs::read_dir(&abs) {
            Ok(e) => e,
            Err(_) => return Ok(()),
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.add_tree(&rel.join(e.file_name()))?;
            }
        }
        Ok(())
    }

    /// Whether a change of `rel` can change the image.
    fn relevant(&self, rel: &Path) -> bool {
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let abs = self.root.join(rel);
        if abs == self.dockerfile || name.ends_with(".dockerignore") {
            return true;
        }
        !editor_litter(&name)
            && !self.skip.iter().any(|s| abs.starts_with(s))
            && !self.ignore.ignored(&slash(rel))
    }

    /// Blocks until events arrive; returns the relevant paths they name (relative), after
    /// watching the directories they created. A queue overflow is reported as the root.
    fn read(&mut self, buf: &mut [std::mem::MaybeUninit<u8>]) -> Result<Vec<PathBuf>> {
        let mut reader = inotify::Reader::new(&self.fd, buf);
        let mut events = Vec::new();
        loop {
            match reader.next() {
                Ok(e) => {
                    let name = e.file_name().map(|n| n.to_string_lossy().into_owned());
                    events.push((e.wd(), e.events(), name));
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(std::io::Error::from(e)).context("reading inotify events"),
            }
            if reader.is_buffer_empty() {
                break;
            }
        }
        let mut changed = Vec::new();
        for (wd, flags, name) in events {
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                changed.push(PathBuf::from("."));
                continue;
            }
            if flags.contains(ReadFlags::IGNORED) {
                self.dirs.remove(&wd);
                continue;
            }
            let (Some(dir), Some(name)) = (self.dirs.get(&wd), name) else {
                continue;
            };
            let rel = dir.join(name);
            if flags.contains(ReadFlags::ISDIR)
                && flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO)
            {
                self.add_tree(&rel)?;
            }
            if name_is_ignore_file(&rel) {
                // New exclusions apply from the next event on.
                self.ignore = Context::open(&self.root, &self.dockerfile)?;
            }
            if self.relevant(&rel) {
                changed.push(rel);
            }
        }
        Ok(changed)
    }
}

fn name_is_ignore_file(rel: &Path) -> bool {
    rel.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".dockerignore"))
}

/// Starts watching the context of `args` in a thread of its own; each batch of relevant changes
/// (paths relative to the context) comes out of the channel.
fn spawn(
    args: &BuildArgs,
    skip: Vec<PathBuf>,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<Result<Vec<PathBuf>, String>>> {
    let root = args
        .context
        .canonicalize()
        .with_context(|| format!("build context `{}`", args.context.display()))?;
    let dockerfile = match &args.dockerfile {
        Some(f) => std::path::absolute(f).unwrap_or_else(|_| f.clone()),
        None => root.join("Dockerfile"),
    };
    let mut watches = Watches::new(&root, &dockerfile, skip)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("dts-watch".into())
        .spawn(move || {
            let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 64 << 10];
            loop {
                let r = watches.read(&mut buf).map_err(|e| format!("{e:#}"));
                let failed = r.is_err();
                match r {
                    Ok(v) if v.is_empty() => continue,
                    r => {
                        if tx.send(r).is_err() || failed {
                            return;
                        }
                    }
                }
            }
        })
        .context("starting the watcher thread")?;
    Ok(rx)
}

/// What a round of `--watch` did, for the caller to show.
pub enum Round {
    /// The context changed (the relevant paths, relative), a round starts.
    Changed(Vec<PathBuf>),
    /// The new release runs.
    Deployed(DevelReport),
    /// The build made the image deployed last: nothing to deploy.
    Same(Built),
    /// The build failed; the robot keeps what it runs.
    BuildFailed(anyhow::Error),
    /// The deploy failed (the session is dropped; the next round connects again).
    DeployFailed(anyhow::Error),
}

/// What `--watch` works with.
pub struct Watch<'a> {
    /// The robot as given.
    pub robot: &'a str,
    /// How to reach it.
    pub ssh: &'a SshArgs,
    /// The laptop's store.
    pub store: &'a Store,
    /// What to build.
    pub args: &'a BuildArgs,
    /// The service to replace (default: the one of the same repository).
    pub service: Option<&'a str>,
    /// Wait for probation, `--force`.
    pub mode: Mode,
    /// Progress.
    pub log: &'a dyn Reporter,
}

impl Watch<'_> {
    /// Deploys once, then again after every change of the context, until `stop` completes
    /// (Ctrl-C). Every round's result goes to `on_round`; only a context that cannot be
    /// watched ends it with an error.
    pub async fn run(
        &self,
        stop: impl std::future::Future<Output = ()>,
        on_round: &mut dyn FnMut(Round),
    ) -> Result<()> {
        let skip = vec![crate::paths::dts_home()];
        let mut rx = spawn(self.args, skip)?;
        let mut stop = std::pin::pin!(stop);
        let mut link: Option<RobotLink> = None;
        let mut last: Option<crate::oci::Digest> = None;
        let mut started = Instant::now();
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = self.round(&mut link, &mut last, started, on_round) => {}
            }
            // Wait for a change, then for the context to be quiet.
            let mut changed = tokio::select! {
                () = &mut stop => return Ok(()),
                batch = rx.recv() => match batch {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => anyhow::bail!("watching the context: {e}"),
                    None => anyhow::bail!("watching the context: the watcher stopped"),
                },
            };
            started = Instant::now();
            while let Ok(more) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                match more {
                    Some(Ok(b)) => changed.extend(b),
                    Some(Err(e)) => anyhow::bail!("watching the context: {e}"),
                    None => break,
                }
            }
            changed.sort();
            changed.dedup();
            on_round(Round::Changed(changed));
        }
    }

    /// One build and, if the image changed, one deploy.
    async fn round(
        &self,
        link: &mut Option<RobotLink>,
        last: &mut Option<crate::oci::Digest>,
        started: Instant,
        on_round: &mut dyn FnMut(Round),
    ) {
        if link.is_none() {
            match robot::connect(self.robot, self.ssh).await {
                Ok(l) => *link = Some(l),
                Err(e) => return on_round(Round::DeployFailed(e)),
            }
        }
        let Some(l) = link.as_mut() else { return };
        let platform = l.hello.platform.clone();
        let built = match super::build_blocking(self.store, self.args, &platform, self.log) {
            Ok(b) => b,
            Err(e) => return on_round(Round::BuildFailed(e)),
        };
        if last.as_ref() == Some(&built.manifest) {
            return on_round(Round::Same(built));
        }
        let r = super::deploy_built(
            l,
            self.store,
            &built,
            self.service,
            self.mode,
            started,
            self.log,
        )
        .await;
        match r {
            Ok((report, outcome)) => {
                if matches!(
                    outcome.state,
                    crate::api::ReleaseState::Committed | crate::api::ReleaseState::Probation
                ) {
                    *last = Some(built.manifest.clone());
                }
                on_round(Round::Deployed(report));
            }
            Err(e) => {
                *link = None;
                on_round(Round::DeployFailed(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_litter_is_not_a_change() {
        for n in ["a.py~", ".a.py.swp", ".a.py.swx", "4913", ".#a.py"] {
            assert!(editor_litter(n), "{n}");
        }
        for n in ["a.py", "Dockerfile", "swp"] {
            assert!(!editor_litter(n), "{n}");
        }
    }

    /// Changes of the context come through, those `.dockerignore` excludes or under `.git` do
    /// not, and a new directory is watched.
    #[test]
    fn watches_what_the_build_sees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::write(root.join(".dockerignore"), "out\n**/*.log\n").unwrap();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        let mut w = Watches::new(&root, &root.join("Dockerfile"), Vec::new()).unwrap();
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 16 << 10];
        std::fs::write(root.join(".git/index"), "x").unwrap();
        std::fs::write(root.join("out/a.o"), "x").unwrap();
        std::fs::write(root.join("src/run.log"), "x").unwrap();
        std::fs::write(root.join("src/.run.py.swp"), "x").unwrap();
        std::fs::write(root.join("src/run.py"), "x").unwrap();
        let got = w.read(&mut buf).unwrap();
        assert!(got.iter().all(|p| p == Path::new("src/run.py")), "{got:?}");
        assert!(!got.is_empty());
        std::fs::create_dir_all(root.join("src/new")).unwrap();
        let got = w.read(&mut buf).unwrap();
        assert_eq!(got, [PathBuf::from("src/new")]);
        std::fs::write(root.join("src/new/mod.py"), "x").unwrap();
        let got = w.read(&mut buf).unwrap();
        assert!(got.contains(&PathBuf::from("src/new/mod.py")), "{got:?}");
    }
}
