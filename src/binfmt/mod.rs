//! Whether this kernel can execute another platform's binaries, and registering QEMU user
//! emulation in `binfmt_misc` when it cannot.
//!
//! A RUN step for `linux/arm64` on an x86-64 laptop executes arm64 ELF files inside the image's
//! root filesystem. The kernel runs them through a `binfmt_misc` entry that names a QEMU user
//! emulator. That entry must carry the `F` (fix-binary) flag: without it the kernel opens the
//! interpreter by path every time a foreign binary starts, and inside the build container that
//! path is looked up in the image's root filesystem, where QEMU is absent. With `F` the kernel
//! opens the interpreter once, at registration, and uses that open file in every mount namespace
//! (kernel `Documentation/admin-guide/binfmt-misc.rst`).
//!
//! ```text
//! /proc/sys/fs/binfmt_misc/            the binfmt_misc filesystem (mounted by systemd or by us)
//! ├── status                           `enabled` or `disabled`, for all entries
//! ├── register                         write `:name:M:offset:magic:mask:interpreter:flags` here
//! └── qemu-aarch64                     one file per entry; see [`parse_entry`]
//! ```
//!
//! [`check`] only reads; [`ensure`] also mounts `binfmt_misc` and registers QEMU (from Debian's
//! `qemu-user-static`) when the process is root and nothing is registered. It never changes or
//! removes an entry someone else registered: a disabled entry or one without `F` is an error that
//! says how to fix it. Nothing here prints.

use std::io;
use std::path::{Path, PathBuf};

use crate::oci::Platform;
use crate::util::fs::{PathContext, PathError};

mod entry;

pub use entry::{Entry, parse_entry};
use entry::{builtin_magic, handles};

/// Where the kernel's `binfmt_misc` filesystem lives.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// Directories holding systemd-binfmt registration files, highest precedence first
/// (`binfmt.d(5)`); Debian's qemu-user-static installs `qemu-<arch>.conf` into the last one.
const BINFMT_D: [&str; 4] = [
    "/etc/binfmt.d",
    "/run/binfmt.d",
    "/usr/local/lib/binfmt.d",
    "/usr/lib/binfmt.d",
];

/// An entry larger than this is not something the kernel wrote.
const ENTRY_LIMIT: u64 = 64 * 1024;

/// How the kernel runs a platform's binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// The CPU runs them itself.
    Native,
    /// Through this `binfmt_misc` entry (enabled, with the `F` flag).
    Emulated(Entry),
}

/// Why a platform's binaries cannot be run here. Every message ends with the fix.
#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    /// dts does not know the QEMU name for this architecture.
    #[error(
        "no QEMU emulator is known for `{platform}`: dts can emulate linux/amd64, linux/arm64, linux/arm/v7, linux/386, linux/riscv64, linux/ppc64le and linux/s390x"
    )]
    Unsupported {
        /// The platform asked for.
        platform: String,
    },
    /// `/proc/sys/fs/binfmt_misc` is not mounted.
    #[error(
        "binfmt_misc is not mounted at `{}`, so the kernel cannot run {platform} binaries through QEMU; mount it as root: `mount -t binfmt_misc binfmt_misc {}`",
        dir.display(),
        dir.display()
    )]
    NotMounted {
        /// The directory that should hold it.
        dir: PathBuf,
        /// The platform asked for.
        platform: String,
    },
    /// `binfmt_misc` is switched off as a whole.
    #[error(
        "binfmt_misc is disabled (`{}` says `disabled`), so the kernel runs no emulator; enable it as root: `echo 1 > {}`",
        status.display(),
        status.display()
    )]
    GloballyDisabled {
        /// The status file.
        status: PathBuf,
    },
    /// No entry handles the platform's ELF files.
    #[error(
        "this kernel cannot run {platform} binaries: binfmt_misc has no entry for `{qemu}`{skipped}; {hint}"
    )]
    NotRegistered {
        /// The platform asked for.
        platform: String,
        /// The QEMU name (`aarch64`, `arm`).
        qemu: String,
        /// Entries that could not be read, if any (`, and unreadable entries: …`).
        skipped: String,
        /// How to register it.
        hint: String,
    },
    /// The entry exists but is disabled.
    #[error(
        "binfmt_misc entry `{}` for {platform} is disabled; enable it as root: `echo 1 > {}` (or `update-binfmts --enable {name}`)",
        entry.display(),
        entry.display()
    )]
    Disabled {
        /// The platform asked for.
        platform: String,
        /// The entry's file.
        entry: PathBuf,
        /// The entry's name.
        name: String,
    },
    /// The entry lacks the `F` flag, so it cannot work inside a container.
    #[error(
        "binfmt_misc entry `{}` runs {platform} binaries with `{}` but without the F (fix-binary) flag (flags: `{flags}`): without F the kernel opens the interpreter by path each time a foreign binary starts, and inside a build container that path is looked up in the image's root filesystem, where QEMU does not exist, so every RUN would fail with `no such file or directory`; with F the kernel opens it once when the entry is registered. Re-register it with F as root (the interpreter must be a static QEMU, e.g. from Debian's qemu-user-static): `echo -1 > {}` then `echo '{registration}' > {}/register`",
        entry.display(),
        interpreter.display(),
        entry.display(),
        BINFMT_MISC
    )]
    NoFixBinary {
        /// The platform asked for.
        platform: String,
        /// The entry's file.
        entry: PathBuf,
        /// Its interpreter.
        interpreter: PathBuf,
        /// Its flags.
        flags: String,
        /// The registration line with `F` added.
        registration: String,
    },
    /// Nothing to register: no static QEMU is installed.
    #[error(
        "cannot register QEMU for {platform}: none of {} exists; install it: `apt-get install qemu-user-static binfmt-support`",
        searched.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
    )]
    NoInterpreter {
        /// The platform asked for.
        platform: String,
        /// The interpreters looked for.
        searched: Vec<PathBuf>,
    },
    /// An entry file did not have the kernel's format.
    #[error("parse binfmt_misc entry `{}`: {reason}", path.display())]
    Parse {
        /// The entry's file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Mounting `binfmt_misc` failed.
    #[error("mount binfmt_misc at `{}`: {source}", dir.display())]
    Mount {
        /// Where.
        dir: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Writing the registration failed.
    #[error("register `{line}` in binfmt_misc: {source}")]
    Register {
        /// The line written to `register`.
        line: String,
        /// The error.
        #[source]
        source: PathError,
    },
    /// Reading an entry or a configuration file failed.
    #[error(transparent)]
    Io(#[from] PathError),
}

/// The QEMU name of a platform's CPU, as in `qemu-<name>-static`: `aarch64`, `arm`, `x86_64`…
pub fn qemu_arch(platform: &Platform) -> Option<&'static str> {
    let p = platform.clone().normalized();
    Some(match p.architecture.as_str() {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "arm" => "arm",
        "386" => "i386",
        "riscv64" => "riscv64",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        _ => return None,
    })
}

/// Whether the CPU this program runs on executes `platform`'s binaries without emulation.
pub fn is_native(platform: &Platform) -> bool {
    native_on(std::env::consts::ARCH, platform)
}

/// [`is_native`] for a host architecture given in Rust's spelling (`x86_64`, `aarch64`, `arm`).
/// An aarch64 host is taken to run 32-bit arm binaries itself (AArch32 support, as on every
/// Raspberry Pi); x86-64 runs i386.
pub fn native_on(host_arch: &str, platform: &Platform) -> bool {
    let p = platform.clone().normalized();
    if p.os != "linux" {
        return false;
    }
    matches!(
        (host_arch, p.architecture.as_str()),
        ("x86_64", "amd64" | "386")
            | ("x86", "386")
            | ("aarch64", "arm64" | "arm")
            | ("arm", "arm")
            | ("riscv64", "riscv64")
            | ("powerpc64", "ppc64le")
            | ("s390x", "s390x")
    )
}

/// The entries of a `binfmt_misc` directory.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The entries that parsed, by name.
    pub entries: Vec<Entry>,
    /// `(name, reason)` of those that did not, so callers can name them.
    pub unreadable: Vec<(String, String)>,
}

/// Reads every entry in a `binfmt_misc` directory.
pub fn read_entries(dir: &Path) -> Result<Listing, BinfmtError> {
    let mut entries = Vec::new();
    let mut unreadable = Vec::new();
    let listing = std::fs::read_dir(dir).at("list", dir)?;
    let mut names = Vec::new();
    for item in listing {
        let item = item.at("list", dir)?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name != "register" && name != "status" {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let text = match crate::util::fs::read_limited(&path, ENTRY_LIMIT) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            // Unregistered between listing and reading.
            Err(e) if e.source.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        match parse_entry(&name, &text) {
            Ok(entry) => entries.push(entry),
            Err(reason) => unreadable.push((name, reason)),
        }
    }
    Ok(Listing {
        entries,
        unreadable,
    })
}

/// How to register QEMU for an architecture, as one sentence with commands.
fn register_hint(qemu: &str) -> String {
    let mut hint = format!(
        "install QEMU user emulation, which registers it with the F flag: `apt-get install qemu-user-static binfmt-support` then `update-binfmts --enable qemu-{qemu}`"
    );
    if let Some((magic, mask)) = builtin_magic(qemu) {
        hint.push_str(&format!(
            ", or register it by hand as root: `echo ':qemu-{qemu}:M::{magic}:{mask}:/usr/bin/qemu-{qemu}-static:F' > {BINFMT_MISC}/register`"
        ));
    }
    hint.push_str("; run as root, dts registers it itself when qemu-user-static is installed");
    hint
}

/// Whether `platform`'s binaries run here, reading the host's `binfmt_misc`. Does not change
/// anything; see [`ensure`].
pub fn check(platform: &Platform) -> Result<Support, BinfmtError> {
    check_in(Path::new(BINFMT_MISC), std::env::consts::ARCH, platform)
}

/// [`check`] against a `binfmt_misc` directory and a host architecture (Rust spelling) given by
/// the caller, so tests can use fixture directories.
pub fn check_in(dir: &Path, host_arch: &str, platform: &Platform) -> Result<Support, BinfmtError> {
    if native_on(host_arch, platform) {
        return Ok(Support::Native);
    }
    let qemu = qemu_arch(platform).ok_or_else(|| BinfmtError::Unsupported {
        platform: platform.to_string(),
    })?;
    if !dir.join("register").exists() {
        return Err(BinfmtError::NotMounted {
            dir: dir.to_path_buf(),
            platform: platform.to_string(),
        });
    }
    let status = dir.join("status");
    match crate::util::fs::read_limited(&status, ENTRY_LIMIT) {
        Ok(bytes) if String::from_utf8_lossy(&bytes).trim() == "disabled" => {
            return Err(BinfmtError::GloballyDisabled { status });
        }
        Ok(_) => {}
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let Listing {
        entries,
        unreadable,
    } = read_entries(dir)?;
    let candidates: Vec<&Entry> = entries.iter().filter(|e| handles(e, qemu)).collect();
    if let Some(good) = candidates.iter().find(|e| e.enabled && e.fix_binary()) {
        return Ok(Support::Emulated((*good).clone()));
    }
    if let Some(no_f) = candidates.iter().find(|e| e.enabled) {
        return Err(BinfmtError::NoFixBinary {
            platform: platform.to_string(),
            entry: dir.join(&no_f.name),
            interpreter: no_f.interpreter.clone(),
            flags: no_f.flags.clone(),
            registration: no_f.registration_with_fix_binary(),
        });
    }
    if let Some(off) = candidates.first() {
        return Err(BinfmtError::Disabled {
            platform: platform.to_string(),
            entry: dir.join(&off.name),
            name: off.name.clone(),
        });
    }
    let skipped = if unreadable.is_empty() {
        String::new()
    } else {
        format!(
            ", and these entries could not be parsed: {}",
            unreadable
                .iter()
                .map(|(n, r)| format!("`{n}` ({r})"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Err(BinfmtError::NotRegistered {
        platform: platform.to_string(),
        qemu: qemu.to_string(),
        skipped,
        hint: register_hint(qemu),
    })
}

/// Makes sure `platform`'s binaries run here: [`check`], and when `binfmt_misc` is not mounted
/// or has no entry for the platform and this process is root, mount it and register the static
/// QEMU from `qemu-user-static` with the `F` flag. Entries someone else registered are never
/// changed; a disabled entry or one without `F` is returned as an error naming the fix.
pub fn ensure(platform: &Platform) -> Result<Support, BinfmtError> {
    let dir = Path::new(BINFMT_MISC);
    let root = rustix::process::geteuid().is_root();
    let first = check(platform);
    match first {
        Err(BinfmtError::NotMounted { .. }) if root => {
            mount_binfmt_misc(dir)?;
            match check(platform) {
                Err(BinfmtError::NotRegistered { .. }) => register(dir, platform)?,
                other => return other,
            }
        }
        Err(BinfmtError::NotRegistered { .. }) if root => register(dir, platform)?,
        other => return other,
    }
    check(platform)
}

fn mount_binfmt_misc(dir: &Path) -> Result<(), BinfmtError> {
    use rustix::mount::{MountFlags, mount};
    match mount(
        "binfmt_misc",
        dir,
        "binfmt_misc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    ) {
        Ok(()) => Ok(()),
        // Someone mounted it meanwhile.
        Err(rustix::io::Errno::BUSY) if dir.join("register").exists() => Ok(()),
        Err(e) => Err(BinfmtError::Mount {
            dir: dir.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Registers QEMU for `platform` in the `binfmt_misc` directory `dir`.
fn register(dir: &Path, platform: &Platform) -> Result<(), BinfmtError> {
    let qemu = qemu_arch(platform).ok_or_else(|| BinfmtError::Unsupported {
        platform: platform.to_string(),
    })?;
    let mut confs = Vec::new();
    for d in BINFMT_D {
        let path = Path::new(d).join(format!("qemu-{qemu}.conf"));
        match std::fs::read_to_string(&path) {
            Ok(text) => confs.push(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PathError {
                    action: "read",
                    path,
                    source,
                }
                .into());
            }
        }
    }
    let (line, searched) = registration_line(qemu, &confs, &|p: &Path| p.exists());
    let Some(line) = line else {
        return Err(BinfmtError::NoInterpreter {
            platform: platform.to_string(),
            searched,
        });
    };
    let reg = dir.join("register");
    match std::fs::write(&reg, line.as_bytes()) {
        Ok(()) => Ok(()),
        // Registered by someone else since we looked; the caller checks again.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(source) => Err(BinfmtError::Register {
            line,
            source: PathError {
                action: "write",
                path: reg,
                source,
            },
        }),
    }
}

/// The line to write to `register` for QEMU `qemu`: the first systemd-binfmt configuration
/// (`confs`, highest precedence first) whose interpreter exists, with `F` added to its flags; or
/// else the standard magic with `/usr/bin/qemu-<arch>-static`. Also returns the interpreters
/// looked for, for the error when none exists.
pub fn registration_line(
    qemu: &str,
    confs: &[String],
    exists: &dyn Fn(&Path) -> bool,
) -> (Option<String>, Vec<PathBuf>) {
    let mut searched = Vec::new();
    for text in confs {
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            // `:name:type:offset:magic:mask:interpreter:flags`; the first character is the
            // delimiter. Magic and mask are `\x` escaped, so they hold no `:`.
            let Some(delim) = line.chars().next() else {
                continue;
            };
            let fields: Vec<&str> = line[delim.len_utf8()..].split(delim).collect();
            if fields.len() < 6 || fields[1] != "M" {
                continue;
            }
            let interpreter = PathBuf::from(fields[5]);
            searched.push(interpreter.clone());
            if !exists(&interpreter) {
                continue;
            }
            let mut fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            if fields.len() < 7 {
                fields.push(String::new());
            }
            if !fields[6].contains('F') {
                fields[6].push('F');
            }
            let d = delim.to_string();
            return (Some(format!("{d}{}", fields.join(&d))), searched);
        }
    }
    let interpreter = PathBuf::from(format!("/usr/bin/qemu-{qemu}-static"));
    searched.push(interpreter.clone());
    match builtin_magic(qemu) {
        Some((magic, mask)) if exists(&interpreter) => (
            Some(format!(
                ":qemu-{qemu}:M::{magic}:{mask}:{}:F",
                interpreter.display()
            )),
            searched,
        ),
        _ => (None, searched),
    }
}

#[cfg(test)]
mod tests {
    use super::entry::parse_hex;
    use super::*;

    const AARCH64_POF: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";
    const ARM_OC: &str = "enabled\ninterpreter /usr/bin/qemu-arm\nflags: OC\noffset 0\nmagic 7f454c4601010100000000000000000002002800\nmask ffffffffffffff00fffffffffffffffffeffffff\n";
    const JAR: &str = "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n";

    fn fixture(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("register"), "").unwrap();
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        for (name, text) in entries {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn parses_kernel_entries() {
        let e = parse_entry("qemu-aarch64", AARCH64_POF).unwrap();
        assert!(e.enabled && e.fix_binary());
        assert_eq!(
            e.interpreter,
            Path::new("/usr/libexec/qemu-binfmt/aarch64-binfmt-P")
        );
        assert_eq!(e.flags, "POF");
        assert_eq!(e.magic.len(), 20);
        assert_eq!(e.mask[7], 0);
        assert!(handles(&e, "aarch64"));
        assert!(!handles(&e, "arm") && !handles(&e, "x86_64"));

        let arm = parse_entry("qemu-arm", ARM_OC).unwrap();
        assert!(!arm.fix_binary());
        assert!(handles(&arm, "arm"));

        let jar = parse_entry("jar", JAR).unwrap();
        assert_eq!(jar.extension.as_deref(), Some(".jar"));
        assert!(!handles(&jar, "arm"));

        let off = parse_entry("qemu-arm", &ARM_OC.replace("enabled", "disabled")).unwrap();
        assert!(!off.enabled);

        for (bad, why) in [
            ("interpreter /x\nmagic 00\n", "enabled"),
            ("enabled\nmagic 00\n", "interpreter"),
            ("enabled\ninterpreter /x\n", "magic"),
            ("enabled\ninterpreter /x\nmagic 0g\n", "hex"),
            (
                "enabled\ninterpreter /x\nmagic 0011\nmask ff\n",
                "mask has 1",
            ),
            ("enabled\ninterpreter /x\noffset x\nmagic 00\n", "number"),
        ] {
            let err = parse_entry("e", bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn native_platforms() {
        assert!(native_on("x86_64", &Platform::amd64()));
        assert!(!native_on("x86_64", &Platform::arm64()));
        assert!(!native_on("x86_64", &Platform::armhf()));
        assert!(native_on("aarch64", &Platform::arm64()));
        assert!(native_on("aarch64", &Platform::armhf()));
        assert!(native_on("arm", &Platform::armhf()));
        assert!(!native_on("arm", &Platform::arm64()));
        let dir = fixture(&[]);
        assert_eq!(
            check_in(dir.path(), "x86_64", &Platform::amd64()).unwrap(),
            Support::Native
        );
    }

    #[test]
    fn registered_with_f_is_supported() {
        let dir = fixture(&[("qemu-aarch64", AARCH64_POF), ("jar", JAR)]);
        match check_in(dir.path(), "x86_64", &Platform::arm64()).unwrap() {
            Support::Emulated(e) => assert_eq!(e.name, "qemu-aarch64"),
            other => panic!("{other:?}"),
        }
        // Any name works: what counts is the magic.
        let dir = fixture(&[("aarch64", AARCH64_POF)]);
        assert!(matches!(
            check_in(dir.path(), "x86_64", &Platform::arm64()),
            Ok(Support::Emulated(_))
        ));
    }

    #[test]
    fn unregistered_platform_is_a_typed_error_with_the_fix() {
        let dir = fixture(&[("qemu-aarch64", AARCH64_POF), ("broken", "nonsense")]);
        let err = check_in(dir.path(), "x86_64", &Platform::armhf()).unwrap_err();
        assert!(matches!(err, BinfmtError::NotRegistered { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("linux/arm/v7"), "{msg}");
        assert!(msg.contains("apt-get install qemu-user-static binfmt-support"));
        assert!(msg.contains("update-binfmts --enable qemu-arm"));
        assert!(msg.contains(r":qemu-arm:M::\x7f\x45\x4c\x46\x01"), "{msg}");
        assert!(msg.contains(":/usr/bin/qemu-arm-static:F' > /proc/sys/fs/binfmt_misc/register"));
        assert!(msg.contains("`broken`"), "{msg}");
    }

    #[test]
    fn entry_without_f_explains_why_and_how() {
        let dir = fixture(&[("qemu-arm", ARM_OC)]);
        let err = check_in(dir.path(), "x86_64", &Platform::armhf()).unwrap_err();
        let BinfmtError::NoFixBinary {
            ref registration,
            ref flags,
            ..
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(flags, "OC");
        assert_eq!(
            registration,
            r":qemu-arm:M::\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-arm:OCF"
        );
        let msg = err.to_string();
        assert!(msg.contains("image's root filesystem"), "{msg}");
        assert!(msg.contains("echo -1 > "), "{msg}");
        assert!(msg.contains("/qemu-arm`"), "{msg}");
    }

    #[test]
    fn disabled_entries_and_binfmt() {
        let dir = fixture(&[("qemu-arm", &ARM_OC.replace("enabled", "disabled"))]);
        let err = check_in(dir.path(), "x86_64", &Platform::armhf()).unwrap_err();
        assert!(matches!(err, BinfmtError::Disabled { .. }), "{err:?}");
        assert!(err.to_string().contains("echo 1 > "));

        let dir = fixture(&[("qemu-aarch64", AARCH64_POF)]);
        std::fs::write(dir.path().join("status"), "disabled\n").unwrap();
        let err = check_in(dir.path(), "x86_64", &Platform::arm64()).unwrap_err();
        assert!(
            matches!(err, BinfmtError::GloballyDisabled { .. }),
            "{err:?}"
        );

        let empty = tempfile::tempdir().unwrap();
        let err = check_in(empty.path(), "x86_64", &Platform::arm64()).unwrap_err();
        assert!(matches!(err, BinfmtError::NotMounted { .. }), "{err:?}");
        assert!(err.to_string().contains("mount -t binfmt_misc"));

        let err = check_in(dir.path(), "x86_64", &Platform::linux("mips64", None)).unwrap_err();
        assert!(matches!(err, BinfmtError::Unsupported { .. }), "{err:?}");
    }

    #[test]
    fn registration_lines() {
        let debian = r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF";
        let all = |_: &Path| true;
        let none = |_: &Path| false;
        // Debian's file as is: it already has F.
        let (line, _) = registration_line("aarch64", &[format!("# c\n{debian}\n")], &all);
        assert_eq!(line.as_deref(), Some(debian));
        // F is added when missing.
        let no_f = debian.replace(":OPF", ":OP");
        let (line, _) = registration_line("aarch64", &[no_f], &all);
        assert!(line.unwrap().ends_with(":OPF"));
        // No configuration: the static binary with the standard magic.
        let (line, searched) = registration_line("arm", &[], &all);
        let line = line.unwrap();
        assert!(
            line.starts_with(r":qemu-arm:M::\x7f\x45\x4c\x46\x01"),
            "{line}"
        );
        assert!(line.ends_with(":/usr/bin/qemu-arm-static:F"), "{line}");
        assert_eq!(searched, vec![PathBuf::from("/usr/bin/qemu-arm-static")]);
        // Nothing installed.
        let (line, searched) = registration_line("aarch64", &[debian.to_string()], &none);
        assert_eq!(line, None);
        assert_eq!(searched.len(), 2);
        // What we generate is what the kernel parses back.
        let (line, _) = registration_line("arm", &[], &all);
        let fields: Vec<&str> = line.as_ref().unwrap().split(':').collect();
        let unescape = |s: &str| parse_hex(&s.replace(r"\x", "")).unwrap();
        let entry = Entry {
            name: "qemu-arm".into(),
            enabled: true,
            interpreter: "/usr/bin/qemu-arm-static".into(),
            flags: "F".into(),
            offset: 0,
            magic: unescape(fields[4]),
            mask: unescape(fields[5]),
            extension: None,
        };
        assert!(handles(&entry, "arm") && !handles(&entry, "aarch64"));
    }

    #[test]
    fn host_entries_parse() {
        // Whatever the host has registered must parse (read-only; nothing is changed).
        let dir = Path::new(BINFMT_MISC);
        if !dir.join("register").exists() {
            crate::util::skip_test("binfmt_misc is not mounted");
            return;
        }
        let listing = read_entries(dir).unwrap();
        assert!(listing.unreadable.is_empty(), "{:?}", listing.unreadable);
    }
}
