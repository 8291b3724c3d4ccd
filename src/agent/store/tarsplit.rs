//! Layer metadata that rebuilds a layer's exact tar, like containers/tar-split: the raw bytes
//! of the tar (header blocks, PAX and long-name records, padding, end marker) in order, with
//! each regular file's body replaced by its size and content digest.
//!
//! ```text
//! layers/<diff_id hex>/tar-split.zst    zstd of the record stream below
//!
//! record stream:  "dts-tar-split\n" 0x01           magic, format version 1
//!                 'R' len:u32le bytes[len]          raw tar bytes (1 ..= 1 MiB per record)
//!                 'F' size:u64le sha256[32]         a file body: `size` bytes of that object
//!                 'E' tar_len:u64le diff_id[32]     end: the tar's length and sha256
//! ```
//!
//! The stream's sha256 (before compression, so the compression level does not matter) is the
//! layer metadata's digest, which the laptop can compute and send. Reading is strict and
//! bounded: a damaged file is an error naming it, never a panic or a large allocation.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::oci::Digest;

/// File name of a layer's tar-split.
pub(crate) const FILE_NAME: &str = "tar-split.zst";
const MAGIC: &[u8] = b"dts-tar-split\n\x01";
/// Largest raw record: bounds what a reader allocates, and what a writer buffers.
const RAW_CHUNK: usize = 1 << 20;
/// zstd level: headers are mostly zero blocks and compress ~10× at the fast levels already.
const ZSTD_LEVEL: i32 = 3;

fn digest_of(h: Sha256) -> Digest {
    Digest::from_hex(&hex::encode(h.finalize())).expect("sha256 is a digest")
}

/// Writes a tar-split while a layer is read.
pub(crate) struct SplitWriter {
    enc: zstd::stream::write::Encoder<'static, File>,
    hasher: Sha256,
    pending: Vec<u8>,
    tar_len: u64,
    files: u64,
}

impl SplitWriter {
    /// Creates `path` (which must not exist).
    pub(crate) fn create(path: &Path) -> io::Result<SplitWriter> {
        let f = File::options().write(true).create_new(true).open(path)?;
        let enc = zstd::stream::write::Encoder::new(f, ZSTD_LEVEL)?;
        let mut w = SplitWriter {
            enc,
            hasher: Sha256::new(),
            pending: Vec::new(),
            tar_len: 0,
            files: 0,
        };
        w.put(MAGIC)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.enc.write_all(bytes)
    }

    /// Raw tar bytes, in order.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(bytes);
        self.tar_len += bytes.len() as u64;
        while self.pending.len() >= RAW_CHUNK {
            let rest = self.pending.split_off(RAW_CHUNK);
            let chunk = std::mem::replace(&mut self.pending, rest);
            self.put_raw(&chunk)?;
        }
        Ok(())
    }

    fn put_raw(&mut self, chunk: &[u8]) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let mut rec = Vec::with_capacity(5);
        rec.push(b'R');
        rec.extend((chunk.len() as u32).to_le_bytes());
        self.put(&rec)?;
        self.put(chunk)
    }

    fn flush_raw(&mut self) -> io::Result<()> {
        let chunk = std::mem::take(&mut self.pending);
        self.put_raw(&chunk)
    }

    /// A file body of `size` bytes with content `digest`.
    pub(crate) fn file(&mut self, size: u64, digest: &Digest) -> io::Result<()> {
        self.flush_raw()?;
        let mut rec = Vec::with_capacity(41);
        rec.push(b'F');
        rec.extend(size.to_le_bytes());
        rec.extend(hex::decode(digest.hex()).expect("digest hex"));
        self.tar_len += size;
        self.files += 1;
        self.put(&rec)
    }

    /// Ends the stream with the layer's diff_id; returns (stream digest, tar length, files).
    /// The file is not fsynced (the import syncs the file system once).
    pub(crate) fn finish(mut self, diff_id: &Digest) -> io::Result<(Digest, u64, u64)> {
        self.flush_raw()?;
        let mut rec = Vec::with_capacity(41);
        rec.push(b'E');
        rec.extend(self.tar_len.to_le_bytes());
        rec.extend(hex::decode(diff_id.hex()).expect("digest hex"));
        self.put(&rec)?;
        self.enc.finish()?;
        Ok((digest_of(self.hasher), self.tar_len, self.files))
    }
}

/// One record of a tar-split.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// Raw tar bytes.
    Raw(Vec<u8>),
    /// A file body.
    File {
        /// Its size.
        size: u64,
        /// Its content digest.
        digest: Digest,
    },
}

/// Why a tar-split could not be read or does not rebuild its layer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SplitError {
    #[error("read tar-split `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tar-split `{}` is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("object {0} is missing")]
    MissingObject(Digest),
    #[error("object `{}`: {reason}", path.display())]
    BadObject { path: PathBuf, reason: String },
}

/// Reads a tar-split record by record, hashing the stream.
pub(crate) struct SplitReader {
    path: PathBuf,
    dec: Box<dyn Read>,
    hasher: Sha256,
    end: Option<(u64, Digest)>,
}

impl SplitReader {
    pub(crate) fn open(path: &Path) -> Result<SplitReader, SplitError> {
        let io_err = |source| SplitError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = File::open(path).map_err(io_err)?;
        let dec = zstd::stream::read::Decoder::new(f).map_err(io_err)?;
        let mut r = SplitReader {
            path: path.to_path_buf(),
            dec: Box::new(BufReader::new(dec)),
            hasher: Sha256::new(),
            end: None,
        };
        let mut magic = vec![0u8; MAGIC.len()];
        r.exact(&mut magic)?;
        if magic != MAGIC {
            return Err(r.damaged("not a dts tar-split (bad magic or version)"));
        }
        Ok(r)
    }

    fn damaged(&self, reason: impl Into<String>) -> SplitError {
        SplitError::Damaged {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), SplitError> {
        match self.dec.read_exact(buf) {
            Ok(()) => {
                self.hasher.update(&*buf);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.damaged("it ends before its end record"))
            }
            Err(e) => Err(SplitError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }

    fn digest32(&mut self) -> Result<Digest, SplitError> {
        let mut d = [0u8; 32];
        self.exact(&mut d)?;
        Ok(Digest::from_hex(&hex::encode(d)).expect("32 bytes are a digest"))
    }

    fn u64(&mut self) -> Result<u64, SplitError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The next record, or `None` after the end record (which must be the last bytes).
    pub(crate) fn next_record(&mut self) -> Result<Option<Record>, SplitError> {
        if self.end.is_some() {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.exact(&mut tag)?;
        match tag[0] {
            b'R' => {
                let mut l = [0u8; 4];
                self.exact(&mut l)?;
                let len = u32::from_le_bytes(l) as usize;
                if len == 0 || len > RAW_CHUNK {
                    return Err(self.damaged(format!("a raw record of {len} bytes")));
                }
                let mut buf = vec![0u8; len];
                self.exact(&mut buf)?;
                Ok(Some(Record::Raw(buf)))
            }
            b'F' => {
                let size = self.u64()?;
                let digest = self.digest32()?;
                Ok(Some(Record::File { size, digest }))
            }
            b'E' => {
                let len = self.u64()?;
                let diff_id = self.digest32()?;
                let mut extra = [0u8; 1];
                match self.dec.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(self.damaged("bytes after the end record")),
                    Err(e) => {
                        return Err(SplitError::Io {
                            path: self.path.clone(),
                            source: e,
                        });
                    }
                }
                self.end = Some((len, diff_id));
                Ok(None)
            }
            t => Err(self.damaged(format!("unknown record type {t:#04x}"))),
        }
    }

    /// After the last record: (stream digest, tar length, diff_id) from the end record.
    pub(crate) fn finish(self) -> Result<(Digest, u64, Digest), SplitError> {
        match self.end {
            Some((len, diff_id)) => Ok((digest_of(self.hasher), len, diff_id)),
            None => Err(SplitError::Damaged {
                path: self.path,
                reason: "read stopped before the end record".into(),
            }),
        }
    }
}

/// What rebuilding a layer from its tar-split gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rebuilt {
    /// sha256 of the rebuilt tar.
    pub diff_id: Digest,
    /// Its length.
    pub size: u64,
    /// Digest of the tar-split stream itself.
    pub split_digest: Digest,
    /// The diff_id and length the end record claims.
    pub claimed: (Digest, u64),
    /// Content digests of its file bodies, in order.
    pub objects: Vec<Digest>,
}

/// Rebuilds the tar `split` describes, streaming each body from the object `find` gives for
/// its digest, and hashes it; `out` receives the tar bytes (use `io::sink()` to only hash).
pub(crate) fn rebuild(
    split: &Path,
    find: &mut dyn FnMut(&Digest) -> Option<PathBuf>,
    out: &mut dyn Write,
) -> Result<Rebuilt, SplitError> {
    let mut r = SplitReader::open(split)?;
    let mut h = Sha256::new();
    let mut size = 0u64;
    let mut objects = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let out_err = |e: io::Error| SplitError::Io {
        path: PathBuf::from("<rebuilt tar>"),
        source: e,
    };
    while let Some(rec) = r.next_record()? {
        match rec {
            Record::Raw(bytes) => {
                h.update(&bytes);
                out.write_all(&bytes).map_err(out_err)?;
                size += bytes.len() as u64;
            }
            Record::File { size: n, digest } => {
                let path =
                    find(&digest).ok_or_else(|| SplitError::MissingObject(digest.clone()))?;
                let bad = |reason: String| SplitError::BadObject {
                    path: path.clone(),
                    reason,
                };
                let mut f = File::open(&path).map_err(|e| bad(format!("open: {e}")))?;
                let len = f.metadata().map_err(|e| bad(format!("stat: {e}")))?.len();
                if len != n {
                    return Err(bad(format!("has {len} bytes, the layer needs {n}")));
                }
                let mut left = n;
                while left > 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let got = f
                        .read(&mut buf[..want])
                        .map_err(|e| bad(format!("read: {e}")))?;
                    if got == 0 {
                        return Err(bad("ends early".into()));
                    }
                    h.update(&buf[..got]);
                    out.write_all(&buf[..got]).map_err(out_err)?;
                    left -= got as u64;
                }
                size += n;
                objects.push(digest);
            }
        }
    }
    let (split_digest, len, claimed) = r.finish()?;
    Ok(Rebuilt {
        diff_id: digest_of(h),
        size,
        split_digest,
        claimed: (claimed, len),
        objects,
    })
}

/// The content digests a tar-split names, without reading any object.
pub(crate) fn objects_of(split: &Path) -> Result<Vec<Digest>, SplitError> {
    let mut r = SplitReader::open(split)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        if let Record::File { digest, .. } = rec {
            out.push(digest);
        }
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(FILE_NAME);
        let obj = t.path().join("obj");
        std::fs::write(&obj, b"hello").unwrap();
        let body = Digest::of(b"hello");
        let mut tar = vec![7u8; 512];
        tar.extend(b"hello");
        tar.extend([0u8; 507 + 1024]);
        let diff = Digest::of(&tar);

        let mut w = SplitWriter::create(&p).unwrap();
        w.raw(&[7u8; 300]).unwrap();
        w.raw(&[7u8; 212]).unwrap();
        w.file(5, &body).unwrap();
        w.raw(&[0u8; 507 + 1024]).unwrap();
        let (sd, len, files) = w.finish(&diff).unwrap();
        assert_eq!((len, files), (tar.len() as u64, 1));

        let mut out = Vec::new();
        let r = rebuild(&p, &mut |d| (d == &body).then(|| obj.clone()), &mut out).unwrap();
        assert_eq!(out, tar);
        assert_eq!(r.diff_id, diff);
        assert_eq!(r.claimed, (diff.clone(), tar.len() as u64));
        assert_eq!(r.split_digest, sd);
        assert_eq!(objects_of(&p).unwrap(), vec![body.clone()]);

        // A missing object, a wrong-sized one.
        let e = rebuild(&p, &mut |_| None, &mut io::sink()).unwrap_err();
        assert!(matches!(e, SplitError::MissingObject(_)), "{e}");
        std::fs::write(&obj, b"hell").unwrap();
        let e = rebuild(&p, &mut |_| Some(obj.clone()), &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("4 bytes"), "{e}");

        // Damaged streams are errors naming the file.
        for bad in [
            b"dts-tar-split\n\x02".to_vec(),
            [MAGIC, b"R\0\0\0\0"].concat(),
            [MAGIC, b"X"].concat(),
            [MAGIC, b"R\x05\0\0\0ab"].concat(),
            [MAGIC, b"E", &[0u8; 40], b"junk"].concat(),
        ] {
            let q = t.path().join("bad.zst");
            std::fs::write(&q, zstd::encode_all(&bad[..], 1).unwrap()).unwrap();
            let e = objects_of(&q).unwrap_err();
            assert!(e.to_string().contains("bad.zst"), "{e}");
        }
    }
}
