//! Layer tars end to end: the canonical writer (determinism, normalisation, round trip through
//! unpack), the overlayfs differ against a real overlay mount, and an attack corpus of crafted
//! layers that must be refused or contained.
//!
//! Safety of the corpus itself: every escape target is a `canary` directory made by the test
//! next to the unpack roots, named by its absolute path computed at run time — never the host's
//! `/etc` — and the canary is compared byte for byte (and mode, owner, mtime) before and after
//! each case. Tests that need root (chown, mknod, overlay mounts) skip with a `SKIP:` line.

use crate::support;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use dts::layer::{
    Change, DevicePolicy, DiffOptions, EntryMeta, HashingSink, LayerBuilder, Resolver, SpecialFile,
    TarReader, UnpackError, UnpackOptions, overlay_changes, unpack, unpack_with,
    write_overlay_layer, write_tree,
};
use dts::oci::{Compression, Digest};

// ---------------------------------------------------------------------------------------------
// Tree snapshots

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    /// File content or symlink target.
    data: Vec<u8>,
    rdev: u64,
    mtime: Option<i64>,
    cap: Option<Vec<u8>>,
    /// For files with several links: the first path (sorted) sharing the inode.
    link_group: Option<String>,
}

#[derive(Clone, Copy)]
struct Snap {
    mtimes: bool,
    dir_mtimes: bool,
    owners: bool,
}

fn snapshot(root: &Path, how: Snap) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    fn walk(
        root: &Path,
        dir: &Path,
        how: Snap,
        out: &mut BTreeMap<String, Node>,
        inodes: &mut BTreeMap<u64, String>,
    ) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let p = dir.join(&name);
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_file() {
                'f'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else if ft.is_fifo() {
                'p'
            } else {
                's'
            };
            let data = match kind {
                'f' => std::fs::read(&p).unwrap(),
                'l' => std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
                _ => Vec::new(),
            };
            let cap = if kind == 'f' {
                let mut buf = vec![0u8; 256];
                rustix::fs::lgetxattr(&p, "security.capability", &mut buf[..])
                    .ok()
                    .map(|n| buf[..n].to_vec())
            } else {
                None
            };
            let link_group = (kind != 'd' && m.nlink() > 1)
                .then(|| inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone());
            let with_mtime = how.mtimes && (kind != 'd' || how.dir_mtimes);
            out.insert(
                rel,
                Node {
                    kind,
                    mode: if kind == 'l' { 0 } else { m.mode() & 0o7777 },
                    uid: if how.owners { m.uid() } else { 0 },
                    gid: if how.owners { m.gid() } else { 0 },
                    data,
                    rdev: m.rdev(),
                    mtime: with_mtime.then(|| m.mtime()),
                    cap,
                    link_group,
                },
            );
            if kind == 'd' {
                walk(root, &p, how, out, inodes);
            }
        }
    }
    walk(root, root, how, &mut out, &mut inodes);
    out
}

const EXACT: Snap = Snap {
    mtimes: true,
    dir_mtimes: true,
    owners: true,
};

fn write_layer(root: &Path, epoch: Option<i64>) -> Vec<u8> {
    let mut out = Vec::new();
    let l = write_tree(
        root,
        &mut out,
        Compression::None,
        &dts::layer::WriteOptions { epoch },
    )
    .unwrap();
    assert_eq!(l.diff_id, Digest::of(&out));
    assert_eq!(l.uncompressed_size, out.len() as u64);
    out
}

/// (name, type flag, size, link, uid, gid, mode, mtime, uname, xattr names) per entry, via
/// the `tar` crate — a second parser, so its view must agree with ours.
#[derive(Debug)]
struct Listed {
    name: String,
    flag: u8,
    size: u64,
    link: String,
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: u64,
    uname: Vec<u8>,
    xattrs: Vec<String>,
}

fn list(tar_bytes: &[u8]) -> Vec<Listed> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let xattrs = match e.pax_extensions().unwrap() {
            Some(p) => p
                .filter_map(|x| x.ok())
                .map(|x| x.key().unwrap().to_string())
                .filter(|k| k.starts_with("SCHILY"))
                .collect(),
            None => Vec::new(),
        };
        let h = e.header();
        out.push(Listed {
            name: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            flag: h.entry_type().as_byte(),
            size: e.size(),
            link: e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mode: h.mode().unwrap(),
            mtime: h.mtime().unwrap(),
            uname: h.username_bytes().unwrap_or_default().to_vec(),
            xattrs,
        });
    }
    // Our own reader must see the same entries.
    let mut r = TarReader::new(tar_bytes, Default::default());
    let mut ours = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        ours.push(String::from_utf8_lossy(&e.path).into_owned());
    }
    assert_eq!(ours, out.iter().map(|l| l.name.clone()).collect::<Vec<_>>());
    assert_eq!(r.finish().unwrap().0, Digest::of(tar_bytes));
    out
}

fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 123_456_789,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Writer

/// Builds the same tree in `root`, in an order and with mtimes chosen by `flip`.
fn build_tree(root: &Path, flip: bool, mtime_base: i64) {
    let files: Vec<(&str, &[u8])> = vec![
        ("etc/hostname", b"duckiebot\n"),
        ("etc/a-b", b"dash"),
        ("etc/a/b", b"nested"),
        ("usr/bin/tool", b"#!/bin/sh\necho hi\n"),
        ("usr/lib/libx.so.1", b"\x7fELF..."),
        ("z", b""),
    ];
    let mut order: Vec<usize> = (0..files.len()).collect();
    if flip {
        order.reverse();
    }
    for (n, i) in order.iter().enumerate() {
        let (p, data) = files[*i];
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        chmod(&p, 0o644);
        set_mtime(&p, mtime_base + n as i64 * 7);
    }
    chmod(&root.join("usr/bin/tool"), 0o755);
    std::os::unix::fs::symlink("libx.so.1", root.join("usr/lib/libx.so")).unwrap();
    std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-alias")).unwrap();
    let long = root
        .join("usr/share")
        .join("d".repeat(120))
        .join("f".repeat(90));
    std::fs::create_dir_all(long.parent().unwrap()).unwrap();
    std::fs::write(&long, b"long").unwrap();
    chmod(&long, 0o644);
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    chmod(&root.join("fifo"), 0o600);
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    // user.* xattrs are dropped by the writer (only security.capability is kept).
    let _ = rustix::fs::setxattr(
        root.join("z"),
        "user.note",
        b"dropped",
        rustix::fs::XattrFlags::empty(),
    );
    for dir in ["etc", "etc/a", "usr", "usr/bin", "usr/lib", "usr/share"] {
        chmod(&root.join(dir), 0o755);
    }
    let mut all = Vec::new();
    collect_paths(root, &mut all);
    for p in all {
        if p.is_dir() && !p.is_symlink() {
            set_mtime(&p, mtime_base + 1000);
        }
    }
    set_mtime(&root.join("usr/lib/libx.so"), mtime_base);
    set_mtime(&root.join("usr/bin/tool"), mtime_base);
}

fn collect_paths(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() && !p.is_symlink() {
            collect_paths(&p, out);
        }
    }
}

#[test]
fn same_tree_same_bytes_whatever_the_order_and_host_mtimes() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let epoch = 1_700_000_000;
    build_tree(&a, false, epoch + 100);
    build_tree(&b, true, epoch + 50_000);
    let (la, lb) = (write_layer(&a, Some(epoch)), write_layer(&b, Some(epoch)));
    assert!(la == lb, "layers differ although the trees are the same");
    // Without the epoch, host mtimes show through.
    assert_ne!(write_layer(&a, None), write_layer(&b, None));
    // Compressed blobs are deterministic too, and carry the same diff_id.
    for c in [Compression::Gzip, Compression::Zstd] {
        let opts = dts::layer::WriteOptions { epoch: Some(epoch) };
        let (mut ga, mut gb) = (Vec::new(), Vec::new());
        let wa = write_tree(&a, &mut ga, c, &opts).unwrap();
        let wb = write_tree(&b, &mut gb, c, &opts).unwrap();
        assert_eq!(ga, gb, "{c:?}");
        assert_eq!(wa, wb);
        assert_eq!(wa.diff_id, Digest::of(&la));
        assert_eq!(wa.digest, Digest::of(&ga));
        assert_eq!(wa.size, ga.len() as u64);
        let mut plain = Vec::new();
        c.decoder(&ga[..]).unwrap().read_to_end(&mut plain).unwrap();
        assert_eq!(plain, la, "{c:?} decompresses to the uncompressed layer");
    }
    // gzip header: no name, mtime 0, OS 255.
    let mut g = Vec::new();
    write_tree(
        &a,
        &mut g,
        Compression::Gzip,
        &dts::layer::WriteOptions { epoch: Some(epoch) },
    )
    .unwrap();
    assert_eq!(&g[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    assert_eq!(g[9], 255);
}

#[test]
fn layers_are_normalised_like_buildkit() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("r");
    std::fs::create_dir(&root).unwrap();
    let epoch = 1_700_000_000;
    build_tree(&root, false, epoch + 10);
    // An old file keeps its mtime: the epoch clamps, it does not reset.
    set_mtime(&root.join("z"), 1_000);
    let bytes = write_layer(&root, Some(epoch));
    let entries = list(&bytes);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let long_dir = format!("usr/share/{}/", "d".repeat(120));
    let long_file = format!("usr/share/{}/{}", "d".repeat(120), "f".repeat(90));
    assert_eq!(
        names,
        [
            "etc/",
            "etc/a/",
            "etc/a/b",
            "etc/a-b",
            "etc/hostname",
            "fifo",
            "usr/",
            "usr/bin/",
            "usr/bin/tool",
            "usr/bin/tool-alias",
            "usr/lib/",
            "usr/lib/libx.so",
            "usr/lib/libx.so.1",
            "usr/share/",
            long_dir.as_str(),
            long_file.as_str(),
            "z",
        ],
        "sorted depth-first, dirs end in `/`, socket skipped"
    );
    let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
    assert_eq!(by("usr/bin/tool-alias").flag, b'1');
    assert_eq!(by("usr/bin/tool-alias").link, "usr/bin/tool");
    assert_eq!(by("usr/bin/tool-alias").size, 0);
    assert_eq!(by("usr/bin/tool").mode, 0o755);
    assert_eq!(by("usr/lib/libx.so").flag, b'2');
    assert_eq!(by("usr/lib/libx.so").link, "libx.so.1");
    assert_eq!(by("fifo").flag, b'6');
    assert_eq!(by("z").mtime, 1_000, "older than the epoch: kept");
    assert!(by("z").xattrs.is_empty(), "user.* xattrs are not written");
    for e in &entries {
        assert!(e.uname.is_empty(), "{}: no uname", e.name);
        assert!(e.mtime <= epoch as u64, "{}: clamped", e.name);
        let me = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        assert_eq!(
            (e.uid, e.gid),
            (u64::from(me.0), u64::from(me.1)),
            "{}: numeric ids",
            e.name
        );
    }
    // The long name went through a PAX record (not a GNU long name), which the raw bytes show.
    let rec = format!(" path={long_file}\n");
    assert!(bytes.windows(rec.len()).any(|w| w == rec.as_bytes()));
    assert!(
        !bytes
            .windows(b"././@LongLink".len())
            .any(|w| w == b"././@LongLink")
    );
}

#[test]
fn builder_writes_synthetic_entries_that_unpack() {
    let mut out = Vec::new();
    let opts = dts::layer::WriteOptions { epoch: Some(2_000) };
    let mut b = LayerBuilder::new(&mut out, Compression::None, &opts).unwrap();
    let dir = EntryMeta {
        mode: 0o2755,
        uid: 0,
        gid: 0,
        mtime: 5_000,
        capability: None,
    };
    b.add_dir(Path::new("app"), &dir).unwrap();
    b.add_special(
        Path::new("app/pipe"),
        &EntryMeta::with_mode(0o640),
        SpecialFile::Fifo,
    )
    .unwrap();
    b.add_file(
        Path::new("app/run.sh"),
        &EntryMeta {
            mode: 0o4755,
            mtime: 1_500,
            ..Default::default()
        },
        5,
        &b"echo\n"[..],
    )
    .unwrap();
    b.add_hardlink(
        Path::new("app/run2.sh"),
        &EntryMeta::with_mode(0o4755),
        Path::new("app/run.sh"),
    )
    .unwrap();
    b.add_symlink(
        Path::new("app/self"),
        &EntryMeta::with_mode(0o777),
        Path::new("/app"),
    )
    .unwrap();
    b.add_whiteout(Path::new("gone")).unwrap();
    let l = b.finish().unwrap();
    assert_eq!(l.diff_id, Digest::of(&out));
    let names: Vec<String> = list(&out).into_iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [
            "app/",
            "app/pipe",
            "app/run.sh",
            "app/run2.sh",
            "app/self",
            ".wh.gone"
        ]
    );

    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("gone"), b"lower").unwrap();
    let mut sink = HashingSink::default();
    let stats = unpack_with(&out[..], t.path(), &UnpackOptions::default(), &mut sink).unwrap();
    assert_eq!(stats.diff_id, l.diff_id);
    assert_eq!(
        (
            stats.files,
            stats.hardlinks,
            stats.whiteouts,
            stats.specials
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(sink.files.len(), 1);
    assert_eq!(sink.files[0].digest, Digest::of(b"echo\n"));
    assert!(!t.path().join("gone").exists());
    let s = snapshot(
        t.path(),
        Snap {
            mtimes: true,
            dir_mtimes: true,
            owners: false,
        },
    );
    assert_eq!(s["app"].mode, 0o2755);
    assert_eq!(s["app"].mtime, Some(2_000), "clamped to the epoch");
    assert_eq!(s["app/run.sh"].mode, 0o4755);
    assert_eq!(s["app/run.sh"].mtime, Some(1_500));
    assert_eq!(s["app/run2.sh"].link_group.as_deref(), Some("app/run.sh"));
    assert_eq!(s["app/pipe"].kind, 'p');
    assert_eq!(s["app/pipe"].mode, 0o640);
    assert_eq!(s["app/self"].data, b"/app");

    // The diff_id is checked when asked.
    let t2 = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        expect_diff_id: Some(Digest::of(b"other")),
        ..Default::default()
    };
    assert!(matches!(
        unpack(&out[..], t2.path(), &opts),
        Err(UnpackError::DiffIdMismatch { .. })
    ));
}

/// A valid v2 `security.capability` value: cap_net_raw (bit 13), permitted and effective.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

#[test]
fn round_trip_keeps_owners_modes_links_devices_and_capabilities() {
    if !support::require_root("chown, mknod and security.capability need root") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let p = |s: &str| src.join(s);
    std::fs::create_dir_all(p("bin")).unwrap();
    std::fs::create_dir_all(p("tmp")).unwrap();
    std::fs::create_dir_all(p("srv/shared")).unwrap();
    std::fs::create_dir_all(p("dev")).unwrap();
    std::fs::write(p("bin/su"), b"suid binary").unwrap();
    std::fs::write(p("bin/ping"), b"ping").unwrap();
    std::fs::write(p("srv/data"), vec![7u8; 70_000]).unwrap();
    std::fs::hard_link(p("srv/data"), p("srv/data.hl")).unwrap();
    std::fs::hard_link(p("srv/data"), p("bin/data.hl2")).unwrap();
    std::os::unix::fs::symlink("/srv/data", p("bin/abs")).unwrap();
    std::os::unix::fs::symlink("../srv", p("bin/rel")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p("dev/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p("dev/loop9"),
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o660),
        rustix::fs::makedev(7, 9),
    )
    .unwrap();
    std::os::unix::fs::chown(p("bin/su"), Some(0), Some(0)).unwrap();
    std::os::unix::fs::chown(p("srv/shared"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::chown(p("srv/data"), Some(4_000_000), Some(3_000_000)).unwrap();
    std::os::unix::fs::lchown(p("bin/rel"), Some(42), Some(43)).unwrap();
    std::os::unix::fs::chown(p("dev/null"), Some(0), Some(5)).unwrap();
    chmod(&p("bin/su"), 0o4755);
    chmod(&p("srv/shared"), 0o2775);
    chmod(&p("tmp"), 0o1777);
    chmod(&p("dev/null"), 0o666);
    chmod(&p("dev/loop9"), 0o660);
    rustix::fs::setxattr(
        p("bin/ping"),
        "security.capability",
        &CAP_NET_RAW,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let mut all = Vec::new();
    collect_paths(&src, &mut all);
    for (i, q) in all.iter().enumerate() {
        set_mtime(q, 1_600_000_000 + i as i64);
    }

    let layer = write_layer(&src, None);
    let caps: Vec<_> = list(&layer)
        .into_iter()
        .filter(|e| !e.xattrs.is_empty())
        .map(|e| e.name)
        .collect();
    assert_eq!(caps, ["bin/ping"]);

    for resolver in [Resolver::Kernel, Resolver::Userspace] {
        let dst = t.path().join(format!("dst-{resolver:?}"));
        std::fs::create_dir(&dst).unwrap();
        let opts = UnpackOptions {
            same_owner: true,
            devices: DevicePolicy::Create,
            resolver,
            ..Default::default()
        };
        let stats = unpack(&layer[..], &dst, &opts).unwrap();
        assert_eq!(stats.xattrs_skipped, 0);
        assert_eq!(snapshot(&dst, EXACT), snapshot(&src, EXACT), "{resolver:?}");
        // And writing the unpacked tree again gives the same layer.
        assert!(
            write_layer(&dst, None) == layer,
            "{resolver:?}: re-written layer differs"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Overlay differ

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn overlay_upper_dir_becomes_a_layer_that_reproduces_the_merged_view() {
    if !support::require_root("mounts overlayfs") || !support::require_cmd("mount") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = |s: &str| t.path().join(s);
    for s in ["lower", "upper", "work", "merged", "fresh"] {
        std::fs::create_dir(d(s)).unwrap();
    }
    let l = |s: &str| d("lower").join(s);
    std::fs::create_dir_all(l("opaque/sub")).unwrap();
    std::fs::create_dir_all(l("keep/deep")).unwrap();
    std::fs::create_dir_all(l("dev")).unwrap();
    std::fs::write(l("deleted"), b"bye").unwrap();
    std::fs::write(l("keep/deep/file"), b"same").unwrap();
    std::fs::write(l("keep/modified"), b"old").unwrap();
    std::fs::write(l("opaque/old1"), b"1").unwrap();
    std::fs::write(l("opaque/sub/old2"), b"2").unwrap();
    std::fs::write(l("keep/deldir-file"), b"x").unwrap();
    std::fs::create_dir_all(l("deldir/inner")).unwrap();
    std::fs::write(l("deldir/inner/f"), b"x").unwrap();

    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            l("").display(),
            d("upper").display(),
            d("work").display()
        ))
        .arg(d("merged"))
        .status()
        .unwrap();
    if !status.success() {
        support::skip("`mount -t overlay` failed (no overlayfs here?)");
        return;
    }
    let guard = Mount(d("merged"));
    let m = |s: &str| d("merged").join(s);
    std::fs::remove_file(m("deleted")).unwrap();
    std::fs::remove_dir_all(m("deldir")).unwrap();
    std::fs::remove_dir_all(m("opaque")).unwrap();
    std::fs::create_dir(m("opaque")).unwrap();
    std::fs::write(m("opaque/new"), b"new").unwrap();
    std::fs::write(m("keep/modified"), b"new content").unwrap();
    std::fs::create_dir_all(m("added/x/y")).unwrap();
    std::fs::write(m("added/x/y/z"), b"z").unwrap();
    std::fs::write(m("added/caps"), b"c").unwrap();
    rustix::fs::setxattr(
        m("added/caps"),
        "security.capability",
        &CAP_NET_RAW,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::os::unix::fs::symlink("/keep/deep/file", m("added/link")).unwrap();
    chmod(&m("keep"), 0o700);
    // Mount stubs, as a runtime makes them: new and empty → dropped; with content → kept.
    std::fs::create_dir(m("proc")).unwrap();
    std::fs::create_dir_all(m("etc")).unwrap();
    std::fs::write(m("etc/hosts"), b"").unwrap();
    std::fs::write(m("dev/shm-not-empty"), b"data").unwrap();
    let stubs: Vec<PathBuf> = ["/proc", "/etc/hosts", "/etc/resolv.conf", "/dev"]
        .iter()
        .map(PathBuf::from)
        .collect();

    let mut merged = snapshot(
        &d("merged"),
        Snap {
            mtimes: false,
            dir_mtimes: false,
            owners: true,
        },
    );
    merged.remove("proc");
    merged.remove("etc");
    merged.remove("etc/hosts");
    drop(guard);

    let lower_root = l("");
    let existed = move |p: &Path| std::fs::symlink_metadata(lower_root.join(p)).is_ok();
    let diff = DiffOptions {
        mount_stubs: &stubs,
        existed_in_lower: &existed,
    };
    let changes = overlay_changes(&d("upper"), &diff).unwrap();
    let has = |c: Change| changes.contains(&c);
    assert!(has(Change::Delete("deleted".into())), "{changes:?}");
    assert!(has(Change::Delete("deldir".into())), "{changes:?}");
    assert!(
        has(Change::Add("opaque".into())) && has(Change::Opaque("opaque".into())),
        "{changes:?}"
    );
    assert!(has(Change::Add("dev/shm-not-empty".into())), "{changes:?}");
    for stub in ["proc", "etc", "etc/hosts"] {
        assert!(
            !changes.iter().any(|c| c == &Change::Add(stub.into())),
            "stub {stub} kept: {changes:?}"
        );
    }

    let mut layer = Vec::new();
    let w = write_overlay_layer(
        &d("upper"),
        &diff,
        &mut layer,
        Compression::None,
        &Default::default(),
    )
    .unwrap();
    let names: Vec<String> = list(&layer).into_iter().map(|e| e.name).collect();
    for want in [
        ".wh.deleted",
        ".wh.deldir",
        "opaque/",
        "opaque/.wh..wh..opq",
        "opaque/new",
        "keep/",
        "keep/modified",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let opq = names
        .iter()
        .position(|n| n == "opaque/.wh..wh..opq")
        .unwrap();
    assert_eq!(
        names[opq - 1],
        "opaque/",
        "the marker follows its directory"
    );
    assert_eq!(names[opq + 1], "opaque/new", "and precedes its children");

    // lower layer + diff layer, applied to an empty directory, give the merged view.
    let lower_layer = write_layer(&l(""), None);
    let opts = UnpackOptions {
        same_owner: true,
        ..Default::default()
    };
    unpack(&lower_layer[..], &d("fresh"), &opts).unwrap();
    let stats = unpack(&layer[..], &d("fresh"), &opts).unwrap();
    assert_eq!(stats.diff_id, w.diff_id);
    let fresh = snapshot(
        &d("fresh"),
        Snap {
            mtimes: false,
            dir_mtimes: false,
            owners: true,
        },
    );
    assert_eq!(fresh, merged);
}

// ---------------------------------------------------------------------------------------------
// Attack corpus

use crate::support::hostile::{E, Expect, corpus, make_canary, tar};

#[test]
fn attack_corpus_is_refused_or_contained() {
    let t = tempfile::tempdir().unwrap();
    let canary = t.path().join("canary");
    make_canary(&canary);
    let canary_before = snapshot(&canary, EXACT);
    let canary_dir_before = std::fs::metadata(&canary).unwrap();
    let host_passwd = std::fs::read("/etc/passwd").ok();
    let cases = corpus(&canary);
    assert!(cases.len() >= 25, "{} cases", cases.len());
    let mut n = 0;
    for resolver in [Resolver::Kernel, Resolver::Userspace] {
        for case in &cases {
            n += 1;
            let root = t.path().join(format!("root-{n}"));
            std::fs::create_dir(&root).unwrap();
            let opts = UnpackOptions {
                resolver,
                ..case.opts.clone()
            };
            let mut result = Ok(());
            for (i, layer) in case.layers.iter().enumerate() {
                match unpack(&layer[..], &root, &opts) {
                    Ok(_) => {}
                    Err(e) if i + 1 == case.layers.len() => result = Err(e),
                    Err(e) => panic!("{} ({resolver:?}): lower layer {i} failed: {e}", case.name),
                }
            }
            match (case.expect, &result) {
                (Expect::Refused, Err(e)) => {
                    // Entry-level refusals name the entry; a broken tar structure names the offset.
                    let msg = e.to_string();
                    assert!(
                        msg.contains('`') || msg.contains(" at byte "),
                        "{}: the error names the entry: {msg}",
                        case.name
                    );
                }
                (Expect::Contained, Ok(())) => {}
                (want, got) => panic!(
                    "{} ({resolver:?}): expected {want:?}, got {got:?}",
                    case.name
                ),
            }
            if let Some(check) = &case.check {
                check(&root, &canary);
            }
            assert_eq!(
                snapshot(&canary, EXACT),
                canary_before,
                "{} ({resolver:?}): canary changed",
                case.name
            );
            let now = std::fs::metadata(&canary).unwrap();
            assert_eq!(
                (now.mode(), now.mtime(), now.uid()),
                (
                    canary_dir_before.mode(),
                    canary_dir_before.mtime(),
                    canary_dir_before.uid()
                )
            );
            let mut siblings: Vec<String> = std::fs::read_dir(t.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("root-"))
                .collect();
            siblings.sort();
            assert_eq!(
                siblings,
                ["canary"],
                "{}: something appeared next to the root",
                case.name
            );
            assert_eq!(
                std::fs::read("/etc/passwd").ok(),
                host_passwd,
                "{}: host /etc/passwd",
                case.name
            );
        }
    }
}

#[test]
fn errors_name_the_entry_and_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let e = unpack(
        &tar(&[E::file("ok", b""), E::file("a/../../x", b"")])[..],
        t.path(),
        &Default::default(),
    )
    .unwrap_err();
    match &e {
        UnpackError::Hostile { entry, reason } => {
            assert_eq!(entry, Path::new("a/../../x"));
            assert!(reason.contains(".."), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "refused layer entry `a/../../x`: `..` climbs above the root"
    );
    let e = unpack(
        &tar(&[E::file("big", b"").declared(1 << 40)])[..],
        t.path(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("`big`"), "{e}");
}

#[test]
fn devices_are_created_when_allowed() {
    if !support::require_root("mknod needs CAP_MKNOD") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let layer = tar(&[
        E::dir("dev"),
        E::chr("dev/null", 1, 3).mode(0o666),
        E {
            dev: (7, 0),
            ..E::new("dev/loop0", b'4')
        },
    ]);
    let opts = UnpackOptions {
        devices: DevicePolicy::Create,
        same_owner: true,
        ..Default::default()
    };
    let stats = unpack(&layer[..], t.path(), &opts).unwrap();
    assert_eq!(stats.specials, 2);
    let s = snapshot(t.path(), EXACT);
    assert_eq!(
        (s["dev/null"].kind, s["dev/null"].mode, s["dev/null"].rdev),
        ('c', 0o666, rustix::fs::makedev(1, 3))
    );
    assert_eq!(s["dev/loop0"].kind, 'b');
}
