//! COPY: what it copies from (the build context, another stage, an image), the options Docker
//! takes (`--chown`, `--chmod`, `--exclude`, heredocs), and the layer it writes: planned
//! entries with their metadata, parents included, written in canonical order.

use super::chmod::Chmod;
use super::*;

impl Executor<'_> {
    pub(super) fn copy_step(
        &mut self,
        s: &StageState,
        ins: &Instruction,
        key: &str,
        c: &Copy,
        stage: usize,
    ) -> Result<(Option<LayerRef>, bool), BuildError> {
        let at = self.loc(ins.span.start);
        let exclude = if c.excludes.is_empty() {
            None
        } else {
            let patterns: Vec<&str> = c.excludes.iter().map(|w| w.value.as_str()).collect();
            Some(DockerIgnore::new(&patterns).map_err(|e| BuildError::Input {
                at: at.clone(),
                message: format!("COPY --exclude: {e}"),
            })?)
        };
        // `--parents`: where each source lands under the destination, in source order.
        let mut kept = Vec::new();
        let sources = match &c.from {
            Some(from) => {
                let src_state = self.copy_from_state(&from.value, stage, &at)?;
                let view = self.view(&src_state)?;
                let paths: Vec<String> = c.sources.iter().map(|w| w.value.clone()).collect();
                kept.extend(paths.iter().map(|p| parents_keep(p, &clean(p))));
                CopySources::View {
                    view,
                    paths,
                    key: src_state.key,
                    exclude,
                }
            }
            None => {
                let mut out = Vec::new();
                for w in &c.sources {
                    let mut found = self.ctx.resolve(&w.value).map_err(|e| BuildError::Input {
                        at: self.loc(w.pos),
                        message: format!("COPY source {e}"),
                    })?;
                    if let Some(ex) = &exclude {
                        for src in &mut found {
                            exclude_entries(src, ex);
                        }
                        found.retain(|src| !src.entries.is_empty());
                    }
                    kept.extend(found.iter().map(|src| parents_keep(&w.value, &src.path)));
                    out.extend(found);
                }
                CopySources::Context(out)
            }
        };
        let inline = heredoc_files(&c.inline);
        let content_key = match &sources {
            CopySources::Context(v) => self.ctx.content_hash(v).map_err(|e| BuildError::Input {
                at: at.clone(),
                message: e.to_string(),
            })?,
            CopySources::View { key, paths, .. } => {
                sha(&[key.as_bytes(), paths.join("\0").as_bytes()])
            }
        };
        let key = sha(&[
            key.as_bytes(),
            content_key.as_bytes(),
            inline_key(&inline).as_bytes(),
        ]);
        let mut spec = CopySpec::new(
            &c.dest,
            c.chown.as_ref(),
            c.chmod.as_ref(),
            &c.sources,
            c.inline.len(),
            at,
        );
        spec.parents = c.parents.then_some(kept);
        self.cached_layer(&key, |me| {
            me.copy_layer(s, &spec, &sources, &inline).map(Some)
        })
    }

    fn copy_from_state(
        &mut self,
        from: &str,
        stage: usize,
        at: &Location,
    ) -> Result<StageState, BuildError> {
        if let Some((i, _)) = self.df.stage(from) {
            if i >= stage {
                return Err(BuildError::Input {
                    at: at.clone(),
                    message: format!("COPY --from={from} refers to this or a later stage"),
                });
            }
            return self.build_stage(i);
        }
        if let Ok(i) = from.parse::<usize>()
            && i < stage
        {
            return self.build_stage(i);
        }
        let reference = Reference::parse(from).map_err(|e| BuildError::Input {
            at: at.clone(),
            message: format!("COPY --from: {e}"),
        })?;
        let platform = self.platform.clone();
        self.image_state(&reference, &platform, at)
    }
}

impl Executor<'_> {
    /// Writes COPY's layer: every entry planned with its metadata (see [`CopyPlan`]), then
    /// written in canonical order.
    pub(super) fn copy_layer(
        &self,
        s: &StageState,
        spec: &CopySpec,
        sources: &CopySources,
        inline: &[InlineFile],
    ) -> Result<LayerRef, BuildError> {
        let view = self.view(s)?;
        let mut plan = CopyPlan::new(&view, s, spec, self.epoch)?;
        for f in inline {
            plan.inline(f);
        }
        match sources {
            CopySources::Context(list) => {
                for (i, src) in list.iter().enumerate() {
                    plan.context_source(src, i);
                }
            }
            CopySources::View {
                view: from,
                paths,
                exclude,
                ..
            } => plan.view_sources(from, paths, exclude.as_ref(), spec)?,
        }
        let entries = plan.entries;
        self.new_layer(|b| write_entries(b, &entries))
    }
}

/// The entries one COPY writes, planned before any is written: where each source lands (the
/// destination's rules: a directory when it ends in `/` or exists as one), with which owner
/// and mode, and the parent directories the layer must carry.
struct CopyPlan<'v> {
    /// The stage's file system before the COPY.
    view: &'v FsView,
    dest: String,
    dest_is_dir: bool,
    dest_existing_dir: bool,
    /// `--chown`, resolved against the stage's passwd and group files.
    owner: Option<(u64, u64)>,
    /// `--chmod`.
    chmod: Option<Chmod>,
    /// `--parents`: each source's path kept under the destination, in source order.
    parents: Option<Vec<String>>,
    epoch: Option<i64>,
    entries: BTreeMap<String, Planned>,
}

impl<'v> CopyPlan<'v> {
    fn new(
        view: &'v FsView,
        s: &StageState,
        spec: &CopySpec,
        epoch: Option<i64>,
    ) -> Result<CopyPlan<'v>, BuildError> {
        let dest_is_dir = spec.dest.ends_with('/')
            || spec.dest == "."
            || spec.dest.ends_with("/.")
            || spec.parents.is_some();
        let dest = dest_path(s, &spec.dest);
        if spec.multiple && !dest_is_dir {
            return Err(BuildError::Input {
                at: spec.at.clone(),
                message: "when using COPY with more than one source file, the destination must be a directory and end with a /".into(),
            });
        }
        let owner = match &spec.chown {
            Some(u) => Some(resolve_owner(view, u).map_err(|message| BuildError::Input {
                at: spec.at.clone(),
                message,
            })?),
            None => None,
        };
        let chmod = spec
            .chmod
            .as_deref()
            .map(Chmod::parse)
            .transpose()
            .map_err(|message| BuildError::Input {
                at: spec.at.clone(),
                message,
            })?;
        let dest_existing_dir = view
            .resolve(&dest, true)
            .ok()
            .and_then(|p| view.get(&p).cloned())
            .is_some_and(|n| n.kind == Kind::Dir);
        Ok(CopyPlan {
            view,
            dest,
            dest_is_dir,
            dest_existing_dir,
            owner,
            chmod,
            parents: spec.parents.clone(),
            epoch,
            entries: BTreeMap::new(),
        })
    }

    /// Where source number `index`, named `name`, lands: with `--parents` at its kept path
    /// under the destination (a directory's contents in it), else by COPY's usual rules.
    fn source_target(&self, index: usize, name: &str, is_dir_source: bool) -> String {
        match self.parents.as_ref().and_then(|k| k.get(index)) {
            Some(keep) => clean(&format!("{}/{keep}", self.dest)),
            None => self.target_for(name, is_dir_source),
        }
    }

    /// Where a source named `name` lands.
    fn target_for(&self, name: &str, is_dir_source: bool) -> String {
        if is_dir_source {
            self.dest.clone()
        } else if self.dest_is_dir || self.dest_existing_dir {
            format!("{}/{name}", self.dest)
                .trim_start_matches('/')
                .to_string()
        } else {
            self.dest.clone()
        }
    }

    /// An entry's mode after `--chmod` (octal: that mode; symbolic: applied to `mode`).
    fn mode(&self, mode: u32, is_dir: bool) -> u32 {
        self.chmod.as_ref().map_or(mode, |c| c.apply(mode, is_dir))
    }

    fn dir_owner(&self) -> (u64, u64) {
        self.owner.unwrap_or((0, 0))
    }

    fn add_file_parents(&mut self, target: &str) {
        let (epoch, owner) = (self.epoch, self.dir_owner());
        add_parents(
            self.view,
            &mut self.entries,
            target,
            epoch,
            owner,
            // Docker's MkdirAll: created parents are 0755 whatever --chmod says.
            0o755,
        );
    }

    /// The directory a directory source lands in is made the same way as parents: 0755, owned
    /// by --chown or root; neither --chmod nor the source directory's own metadata apply.
    fn made_dir(&self) -> EntryMeta {
        let (uid, gid) = self.dir_owner();
        EntryMeta {
            mode: 0o755,
            uid,
            gid,
            mtime: self.epoch.unwrap_or(0),
            capability: None,
        }
    }

    /// A heredoc body.
    fn inline(&mut self, f: &InlineFile) {
        let target = self.target_for(&f.name, false);
        self.add_file_parents(&target);
        let (uid, gid) = self.dir_owner();
        let meta = EntryMeta {
            mode: self.mode(f.mode, false),
            uid,
            gid,
            mtime: f.mtime.or(self.epoch).unwrap_or(0),
            capability: None,
        };
        self.entries.insert(
            target,
            Planned {
                meta,
                what: What::Bytes(f.bytes.clone()),
                link: None,
            },
        );
    }

    /// One source from the build context (a file, or a directory and its tree).
    fn context_source(&mut self, src: &Source, index: usize) {
        let base = Path::new(&src.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = self.source_target(index, &base, src.is_dir);
        self.add_file_parents(&root);
        for e in &src.entries {
            let target = if e.rel.is_empty() {
                root.clone()
            } else {
                format!("{root}/{}", e.rel)
                    .trim_start_matches('/')
                    .to_string()
            };
            if target.is_empty() {
                continue;
            }
            let (uid, gid) = self.owner.unwrap_or((0, 0));
            let mode = self.mode(e.mode, e.kind == EntryKind::Dir);
            let meta = if e.rel.is_empty() && src.is_dir {
                self.made_dir()
            } else {
                EntryMeta {
                    mode,
                    uid,
                    gid,
                    mtime: e.mtime,
                    capability: None,
                }
            };
            let what = match &e.kind {
                EntryKind::Dir => What::Dir,
                EntryKind::File => What::HostFile(e.host.clone(), e.size),
                EntryKind::Symlink(t) => What::Symlink(t.clone()),
            };
            // A copied directory over an existing one keeps the existing metadata.
            if e.rel.is_empty() && src.is_dir && self.view.exists(&target) {
                continue;
            }
            let link = e.inode.map(|(dev, ino)| format!("inode:{dev}:{ino}"));
            self.entries.insert(target, Planned { meta, what, link });
        }
    }

    /// `COPY --from` sources: paths in another stage's or image's file system, less what
    /// `--exclude` matches (relative to the source, as for context sources), their file
    /// contents read with one pass per source layer.
    fn view_sources(
        &mut self,
        from: &FsView,
        paths: &[String],
        exclude: Option<&DockerIgnore>,
        spec: &CopySpec,
    ) -> Result<(), BuildError> {
        let mut by_layer: BTreeMap<usize, Vec<(usize, String)>> = BTreeMap::new();
        let mut planned: Vec<(String, Planned)> = Vec::new();
        for (index, p) in paths.iter().enumerate() {
            let resolved = from.resolve(p, true).map_err(|e| BuildError::Input {
                at: spec.at.clone(),
                message: e.to_string(),
            })?;
            let Some(node) = from.get(&resolved).cloned() else {
                return Err(BuildError::Input {
                    at: spec.at.clone(),
                    message: format!("COPY --from source `{p}` not found"),
                });
            };
            let is_dir = node.kind == Kind::Dir;
            let base = Path::new(&resolved)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let root = self.source_target(index, &base, is_dir);
            let excluded = |rel: &str| {
                let name = if rel.is_empty() { base.as_str() } else { rel };
                exclude.is_some_and(|ex| ex.matches(name)) && !(rel.is_empty() && is_dir)
            };
            if excluded("") {
                continue;
            }
            self.add_file_parents(&root);
            for (path, n) in from.subtree(&resolved) {
                let rel = path[resolved.len()..].trim_start_matches('/');
                if excluded(rel) {
                    continue;
                }
                let target = if rel.is_empty() {
                    root.clone()
                } else {
                    format!("{root}/{rel}").trim_start_matches('/').to_string()
                };
                if target.is_empty() || (rel.is_empty() && is_dir && self.view.exists(&target)) {
                    continue;
                }
                let (uid, gid) = self.owner.unwrap_or((n.uid, n.gid));
                let meta = if rel.is_empty() && is_dir {
                    self.made_dir()
                } else {
                    EntryMeta {
                        mode: self.mode(n.mode, n.kind == Kind::Dir),
                        uid,
                        gid,
                        mtime: n.mtime as i64,
                        capability: n
                            .xattrs
                            .iter()
                            .find(|(k, _)| k == "security.capability")
                            .map(|(_, v)| v.clone()),
                    }
                };
                // Hard links in the source image share one (layer, entry) in the view.
                let link = match &n.kind {
                    Kind::File { layer, entry } => Some(format!("entry:{layer}:{entry}")),
                    _ => None,
                };
                let what = match &n.kind {
                    Kind::Dir => What::Dir,
                    Kind::Symlink(t) => What::Symlink(t.clone()),
                    Kind::File { layer, entry } => {
                        by_layer
                            .entry(*layer)
                            .or_default()
                            .push((*entry, target.clone()));
                        What::Pending
                    }
                    Kind::Special(_) => continue,
                };
                planned.push((target, Planned { meta, what, link }));
            }
        }
        // Read the files' content: one pass per source layer.
        let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (layer, wanted) in by_layer {
            let idx: Vec<usize> = wanted.iter().map(|(e, _)| *e).collect();
            let mut got = from.read_entries(layer, &idx)?;
            for (e, target) in wanted {
                contents.insert(target, got.remove(&e).unwrap_or_default());
            }
        }
        for (target, mut p) in planned {
            if let What::Pending = p.what {
                p.what = What::Bytes(contents.remove(&target).unwrap_or_default());
            }
            self.entries.insert(target, p);
        }
        Ok(())
    }
}

/// A file COPY/ADD writes from memory: a heredoc body or a downloaded URL.
pub(super) struct InlineFile {
    pub(super) name: String,
    pub(super) bytes: Vec<u8>,
    /// Mode when `--chmod` does not say (0644 for heredocs, 0600 for URLs, as BuildKit).
    pub(super) mode: u32,
    /// Modification time (the epoch for heredocs, `Last-Modified` for URLs).
    pub(super) mtime: Option<i64>,
}

/// What COPY copies from.
pub(super) enum CopySources {
    Context(Vec<Source>),
    View {
        view: std::sync::Arc<FsView>,
        paths: Vec<String>,
        key: String,
        /// `--exclude`.
        exclude: Option<DockerIgnore>,
    },
}

pub(super) struct CopySpec {
    pub(super) dest: String,
    pub(super) chown: Option<String>,
    pub(super) chmod: Option<String>,
    pub(super) multiple: bool,
    /// `--parents`: each source's path kept under the destination (see [`parents_keep`]).
    pub(super) parents: Option<Vec<String>>,
    pub(super) at: Location,
}

/// One entry of a layer being assembled.
#[derive(Clone)]
pub(super) struct Planned {
    pub(super) meta: EntryMeta,
    pub(super) what: What,
    /// Entries with the same key are one file: the first in canonical order carries the
    /// content, the others are written as hard links to it (Docker keeps hard links a COPY
    /// or an ADDed tar has).
    pub(super) link: Option<String>,
}

#[derive(Clone)]
pub(super) enum What {
    Dir,
    Symlink(String),
    HostFile(PathBuf, u64),
    Bytes(Vec<u8>),
    Pending,
}

/// Drops what `--exclude` patterns match, relative to the source (a file source by its name);
/// a directory's exclusion takes its contents with it.
pub(super) fn exclude_entries(src: &mut Source, ex: &DockerIgnore) {
    let name = Path::new(&src.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    src.entries.retain(|e| {
        let rel = if e.rel.is_empty() { &name } else { &e.rel };
        !(ex.matches(rel) && !(e.rel.is_empty() && src.is_dir))
    });
}

/// The part of a source's path `COPY --parents` keeps under the destination: all of `path`
/// (relative to the context or the `--from` root), or, when the source as written has a `/./`
/// pivot (`./x/./y/*.txt`), what follows the pivot. A leading `./` is no pivot.
pub(super) fn parents_keep(written: &str, path: &str) -> String {
    let mut w = written;
    while let Some(rest) = w.strip_prefix("./").or_else(|| w.strip_prefix('/')) {
        w = rest;
    }
    let Some((before, _)) = w.split_once("/./") else {
        return clean(path);
    };
    let skip = clean(before).split('/').filter(|p| !p.is_empty()).count();
    clean(path)
        .split('/')
        .skip(skip)
        .collect::<Vec<_>>()
        .join("/")
}

/// A COPY/ADD destination as a clean image path: absolute, or relative to WORKDIR.
pub(super) fn dest_path(s: &StageState, dest: &str) -> String {
    if dest.starts_with('/') {
        return clean(dest);
    }
    let wd = s
        .config
        .config
        .as_ref()
        .and_then(|c| c.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    clean(&format!("{wd}/{dest}"))
}

/// Heredoc sources as files (mode 0644, the build's time).
pub(super) fn heredoc_files(inline: &[crate::build::dockerfile::InlineSource]) -> Vec<InlineFile> {
    inline
        .iter()
        .map(|i| InlineFile {
            name: i.name.clone(),
            bytes: i.content.clone().into_bytes(),
            mode: 0o644,
            mtime: None,
        })
        .collect()
}

impl CopySpec {
    pub(super) fn new(
        dest: &crate::build::dockerfile::Word,
        chown: Option<&crate::build::dockerfile::Word>,
        chmod: Option<&crate::build::dockerfile::Word>,
        sources: &[crate::build::dockerfile::Word],
        inline: usize,
        at: Location,
    ) -> CopySpec {
        CopySpec {
            dest: dest.value.clone(),
            chown: chown.map(|w| w.value.clone()),
            chmod: chmod.map(|w| w.value.clone()),
            multiple: sources.len() + inline > 1
                || sources
                    .iter()
                    .any(|w| crate::build::context::has_wildcard(&w.value)),
            parents: None,
            at,
        }
    }
}

/// What identifies inline files in a cache key: names, modes and content (not URL mtimes).
pub(super) fn inline_key(files: &[InlineFile]) -> String {
    let mut parts: Vec<u8> = Vec::new();
    for f in files {
        parts.extend(f.name.as_bytes());
        parts.push(0);
        parts.extend(format!("{:o}", f.mode).as_bytes());
        parts.push(0);
        parts.extend(Digest::of(&f.bytes).to_string().as_bytes());
        parts.push(0);
    }
    sha(&[&parts])
}

/// Adds the parent directories of `target` that a layer must carry: existing ones with their
/// existing metadata (so the layer does not change them), missing ones as new directories.
pub(super) fn add_parents(
    view: &FsView,
    entries: &mut BTreeMap<String, Planned>,
    target: &str,
    epoch: Option<i64>,
    owner: (u64, u64),
    mode: u32,
) {
    let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
    let mut path = String::new();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
        if entries.contains_key(&path) {
            continue;
        }
        let existing = view
            .resolve(&path, true)
            .ok()
            .and_then(|p| view.get(&p).cloned())
            .filter(|n| n.kind == Kind::Dir);
        let meta = match existing {
            Some(n) => EntryMeta {
                mode: n.mode,
                uid: n.uid,
                gid: n.gid,
                mtime: n.mtime as i64,
                capability: None,
            },
            None => EntryMeta {
                mode,
                uid: owner.0,
                gid: owner.1,
                mtime: epoch.unwrap_or(0),
                capability: None,
            },
        };
        entries.insert(
            path.clone(),
            Planned {
                meta,
                what: What::Dir,
                link: None,
            },
        );
    }
}

pub(super) fn write_entries(
    b: &mut LayerBuilder<&mut crate::store::BlobWriter>,
    entries: &BTreeMap<String, Planned>,
) -> Result<(), BuildError> {
    let mut order: Vec<&String> = entries.keys().collect();
    order.sort_by(|a, b| canonical_cmp(Path::new(a), Path::new(b)));
    let mut leaders: BTreeMap<&str, &str> = BTreeMap::new();
    for path in &order {
        if let Some(key) = &entries[*path].link {
            leaders.entry(key.as_str()).or_insert(path.as_str());
        }
    }
    for path in order {
        let p = &entries[path];
        if let Some(leader) = p.link.as_deref().and_then(|k| leaders.get(k))
            && *leader != path.as_str()
        {
            b.add_hardlink(Path::new(path.as_str()), &p.meta, Path::new(leader))?;
            continue;
        }
        let path = Path::new(path.as_str());
        match &p.what {
            What::Dir => b.add_dir(path, &p.meta)?,
            What::Symlink(t) => b.add_symlink(path, &p.meta, Path::new(t))?,
            What::HostFile(host, size) => {
                let f = fs::File::open(host).at("open", host)?;
                b.add_file(path, &p.meta, *size, BufReader::new(f))?;
            }
            What::Bytes(bytes) => b.add_file(path, &p.meta, bytes.len() as u64, &bytes[..])?,
            // Filled in before writing; a file whose content was not found is left out.
            What::Pending => {}
        }
    }
    Ok(())
}

/// `user[:group]` → uid/gid, names looked up in the image's `/etc/passwd` and `/etc/group`.
pub(super) fn resolve_owner(view: &FsView, spec: &str) -> Result<(u64, u64), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str, field: usize| -> Option<(u64, u64)> {
        let text = view.read(file).ok()?;
        String::from_utf8_lossy(&text).lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                let id = f.get(field).and_then(|v| v.parse().ok()).unwrap_or(0);
                let gid = f.get(3).and_then(|v| v.parse().ok()).unwrap_or(id);
                (id, gid)
            })
        })
    };
    let (uid, primary) = match user.parse::<u64>() {
        Ok(n) => (n, n),
        Err(_) => lookup("/etc/passwd", user, 2)
            .ok_or_else(|| format!("unable to find user `{user}` in the image's /etc/passwd"))?,
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u64>() {
            Ok(n) => n,
            Err(_) => lookup("/etc/group", g, 2)
                .map(|(id, _)| id)
                .ok_or_else(|| format!("unable to find group `{g}` in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::parents_keep;

    #[test]
    fn parents_keeps_the_path_or_what_follows_the_pivot() {
        assert_eq!(parents_keep("src/x/a.txt", "src/x/a.txt"), "src/x/a.txt");
        assert_eq!(parents_keep("./src/x/a.txt", "src/x/a.txt"), "src/x/a.txt");
        assert_eq!(parents_keep("./src/./x/a.txt", "src/x/a.txt"), "x/a.txt");
        assert_eq!(parents_keep("src/./x/*.txt", "src/x/b.txt"), "x/b.txt");
        assert_eq!(parents_keep("/usr/./bin/sh", "usr/bin/sh"), "bin/sh");
        assert_eq!(parents_keep(".", ""), "");
    }
}
