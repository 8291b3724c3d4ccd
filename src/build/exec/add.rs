//! ADD: what COPY does plus URLs (downloaded by [`super::fetch`]), git repositories
//! ([`super::git`]) and local tar archives (uncompressed, gzip, bzip2, xz or zstd), which are
//! unpacked into the layer rather than copied.

use super::copy::*;
use super::fetch::fetch_url;
use super::git::{self, parse_git_source};
use super::*;

impl Executor<'_> {
    pub(super) fn add_step(
        &mut self,
        s: &StageState,
        ins: &Instruction,
        key: &str,
        a: &Add,
    ) -> Result<(Option<LayerRef>, bool), BuildError> {
        let at = self.loc(ins.span.start);
        let exclude = if a.excludes.is_empty() {
            None
        } else {
            let patterns: Vec<&str> = a.excludes.iter().map(|w| w.value.as_str()).collect();
            Some(DockerIgnore::new(&patterns).map_err(|e| BuildError::Input {
                at: at.clone(),
                message: format!("ADD --exclude: {e}"),
            })?)
        };
        let mut local = Vec::new();
        let mut inline = heredoc_files(&a.inline);
        // Git sources: resolved to a commit now (the cache key), fetched on a miss.
        let mut repos = Vec::new();
        for w in &a.sources {
            let v = &w.value;
            if let Some(g) = parse_git_source(v) {
                let commit = g.resolve().map_err(|reason| BuildError::Fetch {
                    at: self.loc(w.pos),
                    url: v.clone(),
                    reason,
                })?;
                repos.push((g, commit, w));
                continue;
            }
            if v.starts_with("http://") || v.starts_with("https://") {
                let checksum = a.checksum.as_ref().map(|c| c.value.as_str());
                inline.push(fetch_url(v, checksum).map_err(|reason| BuildError::Fetch {
                    at: self.loc(w.pos),
                    url: v.clone(),
                    reason,
                })?);
                continue;
            }
            if v.contains("://") || v.starts_with("git@") {
                return Err(BuildError::Input {
                    at: self.loc(w.pos),
                    message: format!(
                        "ADD source `{v}`: only http(s) URLs and git repositories (https://….git, git://, ssh://, git@host:path) are supported"
                    ),
                });
            }
            let mut found = self.ctx.resolve(&w.value).map_err(|e| BuildError::Input {
                at: self.loc(w.pos),
                message: format!("ADD source {e}"),
            })?;
            if let Some(ex) = &exclude {
                for src in &mut found {
                    exclude_entries(src, ex);
                }
                found.retain(|src| !src.entries.is_empty());
            }
            local.extend(found);
        }
        // Local tar archives (detected by content) are extracted; other files are copied.
        let mut archives = Vec::new();
        let mut plain = Vec::new();
        for src in local {
            let host = self.ctx.root().join(&src.path);
            if src.is_dir || a.unpack == Some(false) {
                plain.push(src);
            } else if is_tar_archive(&host) {
                archives.push(src);
            } else if let (Some(true), Some(format)) = (a.unpack, unreadable_compression(&host)) {
                // Docker would copy it; asked to unpack, saying why it cannot is kinder.
                return Err(BuildError::Input {
                    at,
                    message: format!(
                        "ADD --unpack: `{}` is {format}-compressed; ADD unpacks tar archives uncompressed or compressed with gzip, bzip2, xz or zstd",
                        src.path
                    ),
                });
            } else {
                plain.push(src);
            }
        }
        let content_key = self
            .ctx
            .content_hash(&archives)
            .and_then(|a| self.ctx.content_hash(&plain).map(|p| format!("{a}{p}")))
            .map_err(|e| BuildError::Input {
                at: at.clone(),
                message: e.to_string(),
            })?;
        let repo_key: Vec<String> = repos
            .iter()
            .map(|(g, commit, _)| format!("{}\0{commit}\0{:?}", g.url, g.subdir))
            .collect();
        let key = sha(&[
            key.as_bytes(),
            content_key.as_bytes(),
            inline_key(&inline).as_bytes(),
            repo_key.join("\0").as_bytes(),
        ]);
        let spec = CopySpec::new(
            &a.dest,
            a.chown.as_ref(),
            a.chmod.as_ref(),
            &a.sources,
            a.inline.len(),
            at.clone(),
        );
        let keep_git_dir = a.keep_git_dir.unwrap_or(false);
        self.cached_layer(&key, |me| {
            // The checkouts live until the layer is written.
            let mut checkouts = Vec::new();
            for (g, commit, w) in &repos {
                let mut c =
                    git::checkout(g, commit, keep_git_dir, &me.git_dir()).map_err(|reason| {
                        BuildError::Fetch {
                            at: me.loc(w.pos),
                            url: w.value.clone(),
                            reason,
                        }
                    })?;
                if let Some(ex) = &exclude {
                    exclude_entries(&mut c.source, ex);
                }
                plain.push(c.source.clone());
                checkouts.push(c);
            }
            if archives.is_empty() {
                return me
                    .copy_layer(s, &spec, &CopySources::Context(plain), &inline)
                    .map(Some);
            }
            me.extract_layer(s, &spec, &archives, plain, &inline)
                .map(Some)
        })
    }

    /// ADD of local archives: their entries land under the destination directory, together
    /// with any plain sources of the same instruction.
    fn extract_layer(
        &self,
        s: &StageState,
        spec: &CopySpec,
        archives: &[Source],
        plain: Vec<Source>,
        inline: &[InlineFile],
    ) -> Result<LayerRef, BuildError> {
        // Materialise the plain part as a COPY layer first, then merge the archives' entries.
        let view = self.view(s)?;
        let dest = dest_path(s, &spec.dest);
        let mut entries: BTreeMap<String, Planned> = BTreeMap::new();
        add_parents(
            &view,
            &mut entries,
            &format!("{dest}/x"),
            self.epoch,
            (0, 0),
            0o755,
        );
        for src in archives {
            let host = self.ctx.root().join(&src.path);
            let f = fs::File::open(&host).at("open", &host)?;
            let r = ArchiveCompression::of_file(&host)
                .at("read", &host)?
                .decoder(BufReader::new(f))
                .at("decompress", &host)?;
            let mut ar = tar::Archive::new(r);
            for e in ar.entries().at("read archive", &host)? {
                let mut e = e.at("read archive", &host)?;
                let name = clean(&e.path().at("read archive", &host)?.to_string_lossy());
                if name.is_empty() {
                    continue;
                }
                let target = clean(&format!("{dest}/{name}"));
                if e.header().entry_type() == tar::EntryType::Link {
                    // A hard link to an earlier entry of the archive stays a hard link.
                    let linked = e
                        .link_name()
                        .at("read archive", &host)?
                        .map(|l| clean(&format!("{dest}/{}", l.to_string_lossy())));
                    if let Some(first) = linked.filter(|l| entries.contains_key(l)) {
                        let leader = entries.get_mut(&first).expect("checked");
                        leader.link = Some(first.clone());
                        let twin = leader.clone();
                        entries.insert(target, twin);
                    }
                    continue;
                }
                let Some(planned) = planned_from_tar(&mut e, &host)? else {
                    continue;
                };
                add_parents(&view, &mut entries, &target, self.epoch, (0, 0), 0o755);
                entries.insert(target, planned);
            }
        }
        if !plain.is_empty() || !inline.is_empty() {
            // Plain sources next to archives: copy them the COPY way into the same layer.
            let copy = self.copy_layer(s, spec, &CopySources::Context(plain), inline)?;
            let blob = self.store.blob_path(&copy.descriptor.digest);
            let f = self.store.open_blob(&copy.descriptor.digest)?;
            let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(f)));
            for e in ar.entries().at("read layer", &blob)? {
                let mut e = e.at("read layer", &blob)?;
                let name = clean(&e.path().at("read layer", &blob)?.to_string_lossy());
                if let Some(planned) = planned_from_tar(&mut e, &blob)? {
                    entries.insert(name, planned);
                }
            }
        }
        self.new_layer(|b| write_entries(b, &entries))
    }
}

/// One tar entry as a planned layer entry (content read into memory).
fn planned_from_tar<R: Read>(
    e: &mut tar::Entry<'_, R>,
    archive: &Path,
) -> Result<Option<Planned>, BuildError> {
    let h = e.header();
    let meta = EntryMeta {
        mode: h.mode().unwrap_or(0o644) & 0o7777,
        uid: h.uid().unwrap_or(0),
        gid: h.gid().unwrap_or(0),
        mtime: h.mtime().unwrap_or(0) as i64,
        capability: None,
    };
    let what = match h.entry_type() {
        tar::EntryType::Directory => What::Dir,
        tar::EntryType::Symlink => What::Symlink(
            e.link_name()
                .at("read archive", archive)?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).at("read archive", archive)?;
            What::Bytes(buf)
        }
        _ => return Ok(None),
    };
    Ok(Some(Planned {
        meta,
        what,
        link: None,
    }))
}

/// The compressions ADD unpacks a local tar archive from (BuildKit's
/// `archive.DetectCompression`): none, gzip, bzip2, xz, zstd, told by their magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ArchiveCompression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl ArchiveCompression {
    pub(super) fn sniff(head: &[u8]) -> ArchiveCompression {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            ArchiveCompression::Gzip
        } else if head.starts_with(b"BZh") {
            ArchiveCompression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            ArchiveCompression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            ArchiveCompression::Zstd
        } else {
            ArchiveCompression::None
        }
    }

    fn of_file(path: &Path) -> std::io::Result<ArchiveCompression> {
        let mut head = [0u8; 6];
        let mut f = fs::File::open(path)?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(ArchiveCompression::sniff(&head[..n]))
    }

    pub(super) fn decoder<'a, R: std::io::BufRead + 'a>(
        self,
        r: R,
    ) -> std::io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            ArchiveCompression::None => Box::new(r),
            ArchiveCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            ArchiveCompression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
            ArchiveCompression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
            ArchiveCompression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }
}

/// A compression ADD recognises but cannot unpack (for `--unpack=true`'s error).
fn unreadable_compression(path: &Path) -> Option<&'static str> {
    let mut head = [0u8; 4];
    let n = fs::File::open(path).ok()?.read(&mut head).ok()?;
    let head = &head[..n];
    let magics: [(&[u8], &str); 5] = [
        (&[0x04, 0x22, 0x4d, 0x18], "lz4"),
        (b"LZIP", "lzip"),
        (&[0x1f, 0x9d], "compress (.Z)"),
        (&[0x5d, 0x00, 0x00], "lzma"),
        (b"7z\xbc\xaf", "7-zip"),
    ];
    magics
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, name)| *name)
}

fn is_tar_archive(path: &Path) -> bool {
    let Ok(compression) = ArchiveCompression::of_file(path) else {
        return false;
    };
    let Ok(f) = fs::File::open(path) else {
        return false;
    };
    let Ok(mut r) = compression.decoder(BufReader::new(f)) else {
        return false;
    };
    let mut block = vec![0u8; 512];
    let mut got = 0;
    while got < 512 {
        match r.read(&mut block[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(k) => got += k,
        }
    }
    // A ustar/GNU header has "ustar" at offset 257 and a valid checksum.
    &block[257..262] == b"ustar" && tar_checksum_ok(&block)
}

fn tar_checksum_ok(block: &[u8]) -> bool {
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    stored == Some(sum)
}
