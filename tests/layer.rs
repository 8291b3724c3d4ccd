//! Layer tars end to end: the canonical writer (determinism, normalisation, round trip through
//! unpack), the overlayfs differ against a real overlay mount, and an attack corpus of crafted
//! layers that must be refused or contained.
//!
//! Safety of the corpus itself: every escape target is a `canary` directory made by the test
//! next to the unpack roots, named by its absolute path computed at run time — never the host's
//! `/etc` — and the canary is compared byte for byte (and mode, owner, mtime) before and after
//! each case. Tests that need root (chown, mknod, overlay mounts) skip with a `SKIP:` line.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
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

/// One raw tar entry; names are written as given (no normalisation, `..` allowed).
#[derive(Clone)]
struct E {
    name: Vec<u8>,
    flag: u8,
    link: Vec<u8>,
    data: Vec<u8>,
    mode: u32,
    declared: Option<u64>,
    dev: (u32, u32),
    pax: Vec<(Vec<u8>, Vec<u8>)>,
}

impl E {
    fn new(name: impl AsRef<[u8]>, flag: u8) -> E {
        E {
            name: name.as_ref().to_vec(),
            flag,
            link: Vec::new(),
            data: Vec::new(),
            mode: 0o644,
            declared: None,
            dev: (0, 0),
            pax: Vec::new(),
        }
    }
    fn file(name: impl AsRef<[u8]>, data: &[u8]) -> E {
        E {
            data: data.to_vec(),
            ..E::new(name, b'0')
        }
    }
    fn dir(name: impl AsRef<[u8]>) -> E {
        E {
            mode: 0o755,
            ..E::new(name, b'5')
        }
    }
    fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> E {
        E {
            link: target.as_ref().to_vec(),
            mode: 0o777,
            ..E::new(name, b'2')
        }
    }
    fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> E {
        E {
            link: target.as_ref().to_vec(),
            ..E::new(name, b'1')
        }
    }
    fn chr(name: impl AsRef<[u8]>, major: u32, minor: u32) -> E {
        E {
            dev: (major, minor),
            mode: 0o666,
            ..E::new(name, b'3')
        }
    }
    fn mode(mut self, m: u32) -> E {
        self.mode = m;
        self
    }
    fn declared(mut self, n: u64) -> E {
        self.declared = Some(n);
        self
    }
}

fn pax_record(k: &[u8], v: &[u8]) -> Vec<u8> {
    let body = k.len() + v.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() + body > len {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(k);
    r.push(b'=');
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

fn raw_header(
    name: &[u8],
    flag: u8,
    size: u64,
    link: &[u8],
    mode: u32,
    dev: (u32, u32),
) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    let n = name.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    let n = link.len().min(100);
    h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_000_000);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::new(flag));
    h.set_device_major(dev.0).unwrap();
    h.set_device_minor(dev.1).unwrap();
    h.set_cksum();
    *h.as_bytes()
}

fn pad_to_block(out: &mut Vec<u8>) {
    while out.len() % 512 != 0 {
        out.push(0);
    }
}

/// Writes entries as raw headers (the `tar` crate's `Builder` would refuse `..`).
fn tar(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut pax = e.pax.clone();
        if e.name.len() > 100 {
            pax.push((b"path".to_vec(), e.name.clone()));
        }
        if e.link.len() > 100 {
            pax.push((b"linkpath".to_vec(), e.link.clone()));
        }
        if !pax.is_empty() {
            let data: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            out.extend(raw_header(
                b"PaxHeaders.0/x",
                b'x',
                data.len() as u64,
                b"",
                0o644,
                (0, 0),
            ));
            out.extend(data);
            pad_to_block(&mut out);
        }
        let size = e.declared.unwrap_or(e.data.len() as u64);
        out.extend(raw_header(&e.name, e.flag, size, &e.link, e.mode, e.dev));
        out.extend(&e.data);
        pad_to_block(&mut out);
    }
    out.extend([0u8; 1024]);
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The last layer is refused with an error.
    Refused,
    /// Every layer applies; whatever it did stayed inside the root.
    Contained,
}

/// Assertions on (root, canary) after a case.
type Check = Box<dyn Fn(&Path, &Path)>;

struct Case {
    name: &'static str,
    layers: Vec<Vec<u8>>,
    expect: Expect,
    opts: UnpackOptions,
    /// Extra assertions on the root after the case.
    check: Option<Check>,
}

fn case(name: &'static str, expect: Expect, layers: Vec<Vec<E>>) -> Case {
    Case {
        name,
        layers: layers.iter().map(|l| tar(l)).collect(),
        expect,
        opts: UnpackOptions::default(),
        check: None,
    }
}

impl Case {
    fn check(mut self, f: impl Fn(&Path, &Path) + 'static) -> Case {
        self.check = Some(Box::new(f));
        self
    }
    fn opts(mut self, o: UnpackOptions) -> Case {
        self.opts = o;
        self
    }
}

/// The corpus; `canary` is the absolute path of the canary directory (the escape target).
fn corpus(canary: &Path) -> Vec<Case> {
    let c = canary.as_os_str().as_bytes().to_vec();
    let cs = |tail: &str| -> Vec<u8> { [c.as_slice(), tail.as_bytes()].concat() };
    use Expect::*;
    vec![
        case(
            "dotdot entry",
            Refused,
            vec![vec![E::file("../canary/pwned", b"x")]],
        ),
        case(
            "dotdot after a dir",
            Refused,
            vec![vec![E::dir("a"), E::file("a/../../canary/pwned", b"x")]],
        ),
        case("dotdot dir entry", Refused, vec![vec![E::dir("./../")]]),
        case(
            "absolute path entry",
            Contained,
            vec![vec![E::file(cs("/pwned"), b"x")]],
        )
        .check(|root, canary| assert!(inside(root, canary, "pwned").is_file())),
        // `evil -> /` then `evil/etc/passwd`, aimed at the canary's etc/passwd instead of the
        // host's: if containment failed, the canary (not /etc) would change.
        case(
            "symlink to / then write through it",
            Contained,
            vec![vec![
                E::symlink("evil", "/"),
                E::file(
                    [b"evil".as_slice(), &cs("/etc/passwd")].concat(),
                    b"root::0:0::/:/bin/sh\n",
                ),
            ]],
        )
        .check(|root, canary| {
            assert_eq!(
                std::fs::read(inside(root, canary, "etc/passwd")).unwrap(),
                b"root::0:0::/:/bin/sh\n"
            )
        }),
        case(
            "symlink to the canary then write through it",
            Contained,
            vec![vec![
                E::symlink("evil", cs("")),
                E::file("evil/pwned", b"x"),
            ]],
        )
        .check(|root, canary| assert!(inside(root, canary, "pwned").is_file())),
        case(
            "symlink up and out then write through it",
            Contained,
            vec![vec![
                E::symlink("up", "../../../../../../../.."),
                E::file([b"up".as_slice(), &cs("/pwned")].concat(), b"x"),
            ]],
        )
        .check(|root, canary| assert!(inside(root, canary, "pwned").is_file())),
        case(
            "relative symlink to the sibling canary",
            Contained,
            vec![vec![E::symlink("c", "../canary"), E::file("c/pwned", b"x")]],
        )
        .check(|root, _| assert!(root.join("canary/pwned").is_file())),
        case(
            "symlink chain out",
            Contained,
            vec![vec![
                E::symlink("a", "b"),
                E::symlink("b", "c/../d"),
                E::dir("c"),
                E::symlink("d", cs("")),
                E::file("a/pwned", b"x"),
            ]],
        ),
        case(
            "symlink in one layer, write through it in the next",
            Contained,
            vec![
                vec![E::symlink("l", cs("/dir"))],
                vec![E::file("l/pwned", b"x"), E::dir("l/sub").mode(0o777)],
            ],
        )
        .check(|root, canary| assert!(inside(root, canary, "dir/pwned").is_file())),
        // "Hard link to /etc/passwd", aimed at the canary's etc/passwd.
        case(
            "hardlink to an absolute passwd absent from the image",
            Refused,
            vec![vec![E::hardlink("x", cs("/etc/passwd"))]],
        ),
        case(
            "hardlink to an absolute passwd inside the image",
            Contained,
            vec![vec![
                E::file(cs("/etc/passwd"), b"image passwd"),
                E::hardlink("x", cs("/etc/passwd")),
            ]],
        )
        .check(|root, canary| {
            let a = std::fs::metadata(root.join("x")).unwrap();
            let b = std::fs::metadata(inside(root, canary, "etc/passwd")).unwrap();
            assert_eq!(a.ino(), b.ino());
        }),
        case(
            "hardlink up and out",
            Refused,
            vec![vec![E::hardlink("x", "../canary/file")]],
        ),
        case(
            "hardlink to the canary's absolute path",
            Refused,
            vec![vec![E::hardlink("x", cs("/file"))]],
        ),
        case(
            "hardlink through a symlinked dir",
            Refused,
            vec![vec![E::symlink("sd", cs("")), E::hardlink("x", "sd/file")]],
        ),
        case(
            "hardlink to a symlink that points out, then chmod via it",
            Contained,
            vec![vec![
                E::symlink("s", cs("/file")),
                E::hardlink("h", "s").mode(0o777),
                E::file("s", b"overwrite").mode(0o777),
            ]],
        )
        .check(|root, _| {
            assert!(
                std::fs::symlink_metadata(root.join("h"))
                    .unwrap()
                    .file_type()
                    .is_symlink()
            )
        }),
        case(
            "hardlink to a directory",
            Refused,
            vec![vec![E::dir("d"), E::hardlink("h", "d")]],
        ),
        case(
            "whiteout of ../x",
            Refused,
            vec![vec![E::file("../.wh.canary", b"")]],
        ),
        case(
            "whiteout named .wh..",
            Refused,
            vec![vec![E::file(".wh..", b"")]],
        ),
        case(
            "whiteout named .wh...",
            Refused,
            vec![vec![E::file("a/.wh...", b"")]],
        ),
        // The victim is the canary's `file`: in the root, the image's copy goes; outside, nothing.
        case(
            "whiteout through a symlink to /",
            Contained,
            vec![
                vec![E::file(cs("/file"), b"v"), E::file(cs("/kept"), b"k")],
                vec![
                    E::symlink("link", "/"),
                    E::file([b"link".as_slice(), &cs("/.wh.file")].concat(), b""),
                ],
            ],
        )
        .check(|root, canary| {
            assert!(!inside(root, canary, "file").exists());
            assert!(inside(root, canary, "kept").exists());
        }),
        case(
            "whiteout through a symlink to the canary",
            Contained,
            vec![vec![
                E::symlink("link", cs("")),
                E::file("link/.wh.file", b""),
                E::file("link/dir/.wh.inner", b""),
            ]],
        ),
        case(
            "opaque whiteout in a symlinked parent",
            Contained,
            vec![vec![
                E::symlink("link", cs("")),
                E::file("link/.wh..wh..opq", b""),
                E::symlink("up", "../../../../.."),
                E::file([b"up".as_slice(), &cs("/.wh..wh..opq")].concat(), b""),
            ]],
        ),
        case(
            "whiteout that is a directory",
            Refused,
            vec![vec![E::dir(".wh.x")]],
        ),
        case(
            "whiteout that is a symlink",
            Refused,
            vec![vec![E::symlink(".wh.x", cs(""))]],
        ),
        case(
            "device node when refused",
            Refused,
            vec![vec![E::chr("mem", 1, 1)]],
        )
        .opts(UnpackOptions {
            devices: DevicePolicy::Refuse,
            ..Default::default()
        }),
        case(
            "device node when skipped",
            Contained,
            vec![vec![E::chr("mem", 1, 1), E::hardlink("mem2", "mem")]],
        )
        .check(|root, _| assert!(!root.join("mem").exists() && !root.join("mem2").exists())),
        case(
            "file replaces a directory",
            Contained,
            vec![
                vec![E::dir("d"), E::file("d/f", b"f"), E::dir("d/e")],
                vec![E::file("d", b"now a file")],
            ],
        )
        .check(|root, _| assert_eq!(std::fs::read(root.join("d")).unwrap(), b"now a file")),
        case(
            "directory replaces a file",
            Contained,
            vec![
                vec![E::file("d", b"file")],
                vec![E::dir("d").mode(0o711), E::file("d/f", b"f")],
            ],
        )
        .check(|root, _| {
            assert_eq!(
                std::fs::metadata(root.join("d")).unwrap().mode() & 0o7777,
                0o711
            )
        }),
        case(
            "directory over a symlink to the canary (tar-rs #442)",
            Contained,
            vec![vec![E::symlink("d", cs(""))], vec![E::dir("d").mode(0o777)]],
        )
        .check(|root, _| assert!(std::fs::symlink_metadata(root.join("d")).unwrap().is_dir())),
        case(
            "file over a symlink to a canary file",
            Contained,
            vec![
                vec![E::symlink("f", cs("/file"))],
                vec![E::file("f", b"pwned").mode(0o4777)],
            ],
        )
        .check(|root, _| assert_eq!(std::fs::read(root.join("f")).unwrap(), b"pwned")),
        case(
            "huge declared size",
            Refused,
            vec![vec![E::file("big", b"").declared(1 << 40)]],
        ),
        case(
            "size past the end of the stream",
            Refused,
            vec![vec![E::file("short", b"").declared(1 << 20)]],
        ),
        case(
            "too many entries",
            Refused,
            vec![(0..20).map(|i| E::file(format!("f{i}"), b"")).collect()],
        )
        .opts(UnpackOptions {
            max_entries: 10,
            ..Default::default()
        }),
        case(
            "more bytes than allowed",
            Refused,
            vec![vec![E::file("f", &[1u8; 4096])]],
        )
        .opts(UnpackOptions {
            max_total_bytes: 4096,
            ..Default::default()
        }),
        case(
            "NUL in a name",
            Refused,
            vec![vec![E {
                pax: vec![(b"path".to_vec(), b"a\0/../../x".to_vec())],
                ..E::file("a", b"")
            }]],
        ),
        case(
            "NUL in a symlink target",
            Refused,
            vec![vec![E {
                pax: vec![(b"linkpath".to_vec(), b"/etc\0x".to_vec())],
                ..E::symlink("s", "t")
            }]],
        ),
        case(
            "very long name",
            Refused,
            vec![vec![E::file("a/".repeat(2100), b"")]],
        ),
        case(
            "very long component",
            Refused,
            vec![vec![E::file("x".repeat(300), b"")]],
        ),
        case(
            "empty symlink target",
            Refused,
            vec![vec![E::symlink("s", "")]],
        ),
        case(
            "directory symlink loop",
            Refused,
            vec![vec![
                E::symlink("a", "b"),
                E::symlink("b", "a"),
                E::file("a/x", b"x"),
            ]],
        ),
        case(
            "setuid root file is kept",
            Contained,
            vec![vec![E::file("su", b"x").mode(0o4755)]],
        )
        .check(|root, _| {
            assert_eq!(
                std::fs::metadata(root.join("su")).unwrap().mode() & 0o7777,
                0o4755
            )
        }),
        // `lib -> /usr/lib` as in real images, with `/usr` moved under the canary's path so a
        // failure would write into the canary, never into the host's /usr.
        case(
            "absolute symlinks of a legit image",
            Contained,
            vec![
                vec![
                    E::dir(cs("/usr")),
                    E::dir(cs("/usr/lib")),
                    E::symlink("lib", cs("/usr/lib")),
                    E::symlink(
                        "lib64",
                        [canary_rel(&c).as_os_str().as_bytes(), b"/usr/lib"].concat(),
                    ),
                ],
                vec![E::file("lib/x.so", b"x"), E::file("lib64/y.so", b"y")],
            ],
        )
        .check(|root, canary| {
            assert!(inside(root, canary, "usr/lib/x.so").is_file());
            assert!(inside(root, canary, "usr/lib/y.so").is_file());
            assert!(
                std::fs::symlink_metadata(root.join("lib"))
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        }),
        case(
            "dangling absolute symlink makes its target's parents",
            Contained,
            vec![vec![
                E::symlink("lib", cs("/usr/lib")),
                E::file("lib/x.so", b"x"),
            ]],
        )
        .check(|root, canary| assert!(inside(root, canary, "usr/lib/x.so").is_file())),
        case(
            "symlink entry with data (parser differential)",
            Refused,
            vec![vec![E {
                data: raw_header(b"smuggled", b'0', 0, b"", 0o644, (0, 0)).to_vec(),
                ..E::symlink("s", "t")
            }]],
        ),
        case(
            "two PAX headers for one entry",
            Refused,
            vec![vec![E {
                pax: vec![(b"path".to_vec(), b"a".to_vec())],
                ..E::file("x", b"")
            }]],
        )
        .raw_prefix(),
        case(
            "whiteouts only hide lower layers",
            Contained,
            vec![
                vec![E::dir("d"), E::file("d/lower", b"l")],
                vec![
                    E::file("d/new", b"n"),
                    E::file("d/.wh.new", b""),
                    E::file("d/.wh..wh..opq", b""),
                ],
            ],
        )
        .check(|root, _| {
            assert!(root.join("d/new").exists());
            assert!(!root.join("d/lower").exists());
        }),
        case(
            "chmod and chown never follow into the canary",
            Contained,
            vec![
                vec![E::symlink("f", cs("/file")), E::symlink("d", cs("/dir"))],
                vec![
                    E::hardlink("f2", "f").mode(0o777),
                    E::file("d/.wh.inner", b""),
                ],
            ],
        )
        .check(|root, canary| assert!(!inside(root, canary, "dir").exists())),
    ]
}

/// Where the canary's absolute path leads inside `root`: `<root>/<canary path>/<tail>`.
fn inside(root: &Path, canary: &Path, tail: &str) -> PathBuf {
    root.join(canary.strip_prefix("/").unwrap()).join(tail)
}

/// The canary's absolute path, relative (as it appears under a root).
fn canary_rel(c: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(c.strip_prefix(b"/").unwrap_or(c)))
}

impl Case {
    /// Puts a second, empty PAX header before the last layer's entries.
    fn raw_prefix(mut self) -> Case {
        let last = self.layers.last_mut().unwrap();
        let data = pax_record(b"comment", b"first");
        let mut pre = raw_header(
            b"PaxHeaders.0/y",
            b'x',
            data.len() as u64,
            b"",
            0o644,
            (0, 0),
        )
        .to_vec();
        pre.extend(data);
        pad_to_block(&mut pre);
        pre.extend(last.iter());
        *last = pre;
        self
    }
}

fn make_canary(dir: &Path) {
    std::fs::create_dir_all(dir.join("dir")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("file"), b"canary file").unwrap();
    std::fs::write(dir.join("dir/inner"), b"inner").unwrap();
    std::fs::write(dir.join("etc/passwd"), b"canary:x:0:0::/:/bin/sh\n").unwrap();
    chmod(&dir.join("file"), 0o600);
    chmod(&dir.join("dir"), 0o750);
}

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
