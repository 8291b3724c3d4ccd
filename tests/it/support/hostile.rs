//! Hostile layers, shared by the unpacker's tests (tests/it/layer.rs) and the robot import's
//! (tests/it/agent_store.rs): a raw tar writer that writes names as given (`..`, absolute paths,
//! NULs through PAX), and the attack corpus — each case a stack of layers and whether the last
//! one must be refused or is contained.
//!
//! Safety of the corpus itself: every escape target is a `canary` directory made by the test,
//! named by its absolute path computed at run time — never the host's `/etc`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dts::layer::{DevicePolicy, UnpackOptions};

/// One raw tar entry; names are written as given (no normalisation, `..` allowed).
#[derive(Clone)]
pub struct E {
    pub name: Vec<u8>,
    pub flag: u8,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    pub mode: u32,
    pub declared: Option<u64>,
    pub dev: (u32, u32),
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
}

impl E {
    pub fn new(name: impl AsRef<[u8]>, flag: u8) -> E {
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
    pub fn file(name: impl AsRef<[u8]>, data: &[u8]) -> E {
        E {
            data: data.to_vec(),
            ..E::new(name, b'0')
        }
    }
    pub fn dir(name: impl AsRef<[u8]>) -> E {
        E {
            mode: 0o755,
            ..E::new(name, b'5')
        }
    }
    pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> E {
        E {
            link: target.as_ref().to_vec(),
            mode: 0o777,
            ..E::new(name, b'2')
        }
    }
    pub fn hardlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> E {
        E {
            link: target.as_ref().to_vec(),
            ..E::new(name, b'1')
        }
    }
    pub fn chr(name: impl AsRef<[u8]>, major: u32, minor: u32) -> E {
        E {
            dev: (major, minor),
            mode: 0o666,
            ..E::new(name, b'3')
        }
    }
    pub fn mode(mut self, m: u32) -> E {
        self.mode = m;
        self
    }
    pub fn declared(mut self, n: u64) -> E {
        self.declared = Some(n);
        self
    }
}

pub fn pax_record(k: &[u8], v: &[u8]) -> Vec<u8> {
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

pub fn raw_header(
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

pub fn pad_to_block(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

/// Writes entries as raw headers (the `tar` crate's `Builder` would refuse `..`).
pub fn tar(entries: &[E]) -> Vec<u8> {
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
pub enum Expect {
    /// The last layer is refused with an error.
    Refused,
    /// Every layer applies; whatever it did stayed inside the root.
    Contained,
}

/// Assertions on (root, canary) after a case.
pub type Check = Box<dyn Fn(&Path, &Path)>;

pub struct Case {
    pub name: &'static str,
    pub layers: Vec<Vec<u8>>,
    pub expect: Expect,
    pub opts: UnpackOptions,
    /// Extra assertions on the root after the case.
    pub check: Option<Check>,
}

pub fn case(name: &'static str, expect: Expect, layers: Vec<Vec<E>>) -> Case {
    Case {
        name,
        layers: layers.iter().map(|l| tar(l)).collect(),
        expect,
        opts: UnpackOptions::default(),
        check: None,
    }
}

impl Case {
    pub fn check(mut self, f: impl Fn(&Path, &Path) + 'static) -> Case {
        self.check = Some(Box::new(f));
        self
    }
    pub fn opts(mut self, o: UnpackOptions) -> Case {
        self.opts = o;
        self
    }
}

/// The corpus; `canary` is the absolute path of the canary directory (the escape target).
pub fn corpus(canary: &Path) -> Vec<Case> {
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
pub fn inside(root: &Path, canary: &Path, tail: &str) -> PathBuf {
    root.join(canary.strip_prefix("/").unwrap()).join(tail)
}

/// The canary's absolute path, relative (as it appears under a root).
pub fn canary_rel(c: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(c.strip_prefix(b"/").unwrap_or(c)))
}

impl Case {
    /// Puts a second, empty PAX header before the last layer's entries.
    pub fn raw_prefix(mut self) -> Case {
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

pub fn make_canary(dir: &Path) {
    std::fs::create_dir_all(dir.join("dir")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("file"), b"canary file").unwrap();
    std::fs::write(dir.join("dir/inner"), b"inner").unwrap();
    std::fs::write(dir.join("etc/passwd"), b"canary:x:0:0::/:/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.join("file"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.join("dir"), std::fs::Permissions::from_mode(0o750)).unwrap();
}
