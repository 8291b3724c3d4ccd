//! One `binfmt_misc` entry: the text the kernel shows for it ([`parse_entry`]), whether it
//! handles a QEMU architecture (the ELF magic and mask of each), and its registration line.

use super::*;

/// One `binfmt_misc` entry as the kernel shows it in `/proc/sys/fs/binfmt_misc/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name (its file name), e.g. `qemu-aarch64`.
    pub name: String,
    /// Whether the entry is enabled.
    pub enabled: bool,
    /// The interpreter the kernel runs the binary with.
    pub interpreter: PathBuf,
    /// The flag letters (`P`, `O`, `C`, `F`), as shown after `flags:`.
    pub flags: String,
    /// Byte offset of the magic in the file.
    pub offset: u64,
    /// The magic bytes (already masked by the kernel); empty for extension entries.
    pub magic: Vec<u8>,
    /// The mask; empty means all bits count.
    pub mask: Vec<u8>,
    /// The file-name extension, for `E` entries.
    pub extension: Option<String>,
}

impl Entry {
    /// Whether the entry has the `F` (fix-binary) flag containers need.
    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }

    /// Whether the kernel would hand a file starting with `header` to this entry (the kernel's
    /// `check_file`: every magic byte must equal the file's byte under the mask).
    pub fn matches(&self, header: &[u8]) -> bool {
        if self.extension.is_some() || self.magic.is_empty() {
            return false;
        }
        let Ok(offset) = usize::try_from(self.offset) else {
            return false;
        };
        let Some(window) = header.get(offset..offset + self.magic.len()) else {
            return false;
        };
        window
            .iter()
            .zip(&self.magic)
            .enumerate()
            .all(|(i, (b, m))| {
                let mask = self.mask.get(i).copied().unwrap_or(0xff);
                (b ^ m) & mask == 0
            })
    }

    /// The line that registers this entry again, with `F` added to its flags.
    pub fn registration_with_fix_binary(&self) -> String {
        let mut flags = self.flags.clone();
        if !flags.contains('F') {
            flags.push('F');
        }
        format!(
            ":{}:M:{}:{}:{}:{}:{}",
            self.name,
            if self.offset == 0 {
                String::new()
            } else {
                self.offset.to_string()
            },
            escape_hex(&self.magic),
            escape_hex(&self.mask),
            self.interpreter.display(),
            flags
        )
    }
}

/// The ELF identification and header fields that tell the architecture: class, data (endianness)
/// and `e_machine` (the `EM_*` numbers of `elf.h`).
pub(super) fn elf_kind(qemu: &str) -> Option<(u8, u8, u16)> {
    const LE: u8 = 1;
    const BE: u8 = 2;
    Some(match qemu {
        "x86_64" => (2, LE, 62),
        "aarch64" => (2, LE, 183),
        "arm" => (1, LE, 40),
        "i386" => (1, LE, 3),
        "riscv64" => (2, LE, 243),
        "ppc64le" => (2, LE, 21),
        "s390x" => (2, BE, 22),
        _ => return None,
    })
}

/// The first 20 bytes of an ELF file of this architecture and type (`ET_EXEC` = 2, `ET_DYN` = 3).
pub(super) fn elf_header(qemu: &str, e_type: u16) -> Option<[u8; 20]> {
    let (class, data, machine) = elf_kind(qemu)?;
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = class;
    h[5] = data;
    h[6] = 1; // EV_CURRENT
    let (t, m) = if data == 2 {
        (e_type.to_be_bytes(), machine.to_be_bytes())
    } else {
        (e_type.to_le_bytes(), machine.to_le_bytes())
    };
    h[16..18].copy_from_slice(&t);
    h[18..20].copy_from_slice(&m);
    Some(h)
}

/// Whether an entry runs this architecture's executables (static or PIE).
pub(super) fn handles(entry: &Entry, qemu: &str) -> bool {
    [2u16, 3]
        .iter()
        .filter_map(|t| elf_header(qemu, *t))
        .any(|h| entry.matches(&h))
}

/// The standard magic and mask, as in QEMU's `scripts/qemu-binfmt-conf.sh` and Debian's
/// `/usr/lib/binfmt.d/qemu-*.conf`, for the architectures a Duckiebot build needs.
pub(super) fn builtin_magic(qemu: &str) -> Option<(&'static str, &'static str)> {
    const MASK: &str =
        r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";
    Some(match qemu {
        "aarch64" => (
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
            MASK,
        ),
        "arm" => (
            r"\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
            MASK,
        ),
        "x86_64" => (
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
            r"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        ),
        _ => return None,
    })
}

pub(super) fn escape_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\x{b:02x}")).collect()
}

pub(super) fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses the text the kernel shows for an entry:
///
/// ```text
/// enabled
/// interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
/// flags: POF
/// offset 0
/// magic 7f454c460201010000000000000000000200b700
/// mask ffffffffffffff00fffffffffffffffffeffffff
/// ```
///
/// Extension entries show `extension .jar` instead of offset/magic/mask. Lines the kernel may
/// add in the future are ignored.
pub fn parse_entry(name: &str, text: &str) -> Result<Entry, String> {
    let mut enabled = None;
    let mut entry = Entry {
        name: name.to_string(),
        enabled: false,
        interpreter: PathBuf::new(),
        flags: String::new(),
        offset: 0,
        magic: Vec::new(),
        mask: Vec::new(),
        extension: None,
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let value = value.trim();
        match key {
            "enabled" => enabled = Some(true),
            "disabled" => enabled = Some(false),
            "interpreter" => entry.interpreter = PathBuf::from(value),
            "flags:" | "flags" => entry.flags = value.to_string(),
            "offset" => {
                entry.offset = value
                    .parse()
                    .map_err(|_| format!("offset `{value}` is not a number"))?
            }
            "magic" => {
                entry.magic =
                    parse_hex(value).ok_or_else(|| format!("magic `{value}` is not hex"))?
            }
            "mask" => {
                entry.mask = parse_hex(value).ok_or_else(|| format!("mask `{value}` is not hex"))?
            }
            "extension" => entry.extension = Some(value.to_string()),
            _ => {}
        }
    }
    entry.enabled = enabled.ok_or("no `enabled`/`disabled` line")?;
    if entry.interpreter.as_os_str().is_empty() {
        return Err("no `interpreter` line".to_string());
    }
    if entry.extension.is_none() && entry.magic.is_empty() {
        return Err("neither `magic` nor `extension`".to_string());
    }
    if !entry.mask.is_empty() && entry.mask.len() != entry.magic.len() {
        return Err(format!(
            "mask has {} bytes but magic has {}",
            entry.mask.len(),
            entry.magic.len()
        ));
    }
    Ok(entry)
}
