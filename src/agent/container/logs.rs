//! A container's output, kept on the robot with size-based rotation.
//!
//! The shim is the only writer; readers (`dt-agent logs`, `run` in the foreground) follow the
//! files while it writes. Lines are JSON, one per line of output, the way Docker's `json-file`
//! driver keeps them (`{"log":"text\n","stream":"stdout","time":"…"}`), so stdout and stderr
//! stay apart and every line has its time.
//!
//! ```text
//! <container>/logs/container.log      the current file
//!                  container.log.1    the previous one … up to .<max_files - 1>
//! ```
//!
//! Rotation renames (`.1` → `.2`, current → `.1`) and starts a new current file, so a reader
//! holding the old file reads it to its end and then moves on to the new one by noticing that
//! the path now names another inode.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use crate::api::container::{LogConfig, LogLine};
use crate::util::fs::{PathContext, PathError};

/// The current log file's name.
pub const CURRENT: &str = "container.log";

/// Appends lines to a container's log, rotating at the configured size.
pub struct LogWriter {
    dir: PathBuf,
    config: LogConfig,
    file: File,
    size: u64,
}

impl LogWriter {
    /// Opens (appending to) the current log in `dir`, creating `dir` if needed.
    pub fn open(dir: &Path, config: LogConfig) -> Result<LogWriter, PathError> {
        crate::util::fs::create_dir_all(dir)?;
        let path = dir.join(CURRENT);
        let file = open_append(&path)?;
        let size = file.metadata().at("stat", &path)?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            config,
            file,
            size,
        })
    }

    /// Writes one line (`text` as read, newline included when there was one).
    pub fn write(&mut self, stream: &str, text: &[u8]) -> Result<(), PathError> {
        if self.config.discard {
            return Ok(());
        }
        let line = LogLine {
            log: String::from_utf8_lossy(text).into_owned(),
            stream: stream.to_string(),
            time: crate::util::time::now_rfc3339_nanos(),
        };
        let mut bytes = serde_json::to_vec(&line).expect("a log line serialises");
        bytes.push(b'\n');
        if self.size > 0 && self.size + bytes.len() as u64 > self.config.max_size {
            self.rotate()?;
        }
        let path = self.dir.join(CURRENT);
        self.file.write_all(&bytes).at("write", &path)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), PathError> {
        let keep = self.config.max_files.max(1);
        let name = |i: u32| {
            if i == 0 {
                self.dir.join(CURRENT)
            } else {
                self.dir.join(format!("{CURRENT}.{i}"))
            }
        };
        if keep == 1 {
            let p = name(0);
            self.file.set_len(0).at("truncate", &p)?;
            self.file.seek(SeekFrom::Start(0)).at("seek", &p)?;
            self.size = 0;
            return Ok(());
        }
        let oldest = name(keep - 1);
        match fs::remove_file(&oldest) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e).at("remove", &oldest),
            _ => {}
        }
        for i in (0..keep - 1).rev() {
            let from = name(i);
            if from.exists() {
                fs::rename(&from, name(i + 1)).at("rename", &from)?;
            }
        }
        self.file = open_append(&name(0))?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, PathError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .at("open", path)
}

/// The log files of `dir`, oldest first.
fn files_oldest_first(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(&format!("{CURRENT}."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(dir.join(CURRENT));
    out
}

/// Follows a container's log: everything kept first (or the last `tail` lines), then what is
/// written afterwards, across rotations.
pub struct LogReader {
    dir: PathBuf,
    reader: Option<BufReader<File>>,
    inode: u64,
    pending: std::collections::VecDeque<LogLine>,
    partial: Vec<u8>,
}

impl LogReader {
    /// Starts reading `dir`'s log. With `tail`, only the last `tail` lines already written are
    /// returned before new ones.
    pub fn open(dir: &Path, tail: Option<usize>) -> Result<LogReader, PathError> {
        let mut pending = std::collections::VecDeque::new();
        let files = files_oldest_first(dir);
        let (last, older) = files.split_last().expect("current is always listed");
        for f in older {
            if let Ok(file) = File::open(f) {
                for line in BufReader::new(file).lines().map_while(Result::ok) {
                    if let Ok(l) = serde_json::from_str::<LogLine>(&line) {
                        pending.push_back(l);
                    }
                }
            }
        }
        let mut r = LogReader {
            dir: dir.to_path_buf(),
            reader: None,
            inode: 0,
            pending,
            partial: Vec::new(),
        };
        if let Ok(file) = File::open(last) {
            r.inode = file.metadata().at("stat", last)?.ino();
            r.reader = Some(BufReader::new(file));
        }
        r.drain_current()?;
        if let Some(n) = tail {
            while r.pending.len() > n {
                r.pending.pop_front();
            }
        }
        Ok(r)
    }

    /// Reads what the current file has now.
    fn drain_current(&mut self) -> Result<(), PathError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(());
        };
        let path = self.dir.join(CURRENT);
        loop {
            let mut buf = Vec::new();
            let n = reader.read_until(b'\n', &mut buf).at("read", &path)?;
            if n == 0 {
                return Ok(());
            }
            self.partial.extend_from_slice(&buf);
            if self.partial.ends_with(b"\n") {
                let line = std::mem::take(&mut self.partial);
                if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                    self.pending.push_back(l);
                }
            }
        }
    }

    /// The lines available now, without waiting; follows a rotation when the current file
    /// was replaced.
    pub fn poll(&mut self) -> Result<Vec<LogLine>, PathError> {
        self.drain_current()?;
        let path = self.dir.join(CURRENT);
        if let Ok(meta) = fs::metadata(&path)
            && (self.reader.is_none() || meta.ino() != self.inode)
        {
            // The file we read was rotated away (and is drained); the new one starts at 0.
            if let Ok(file) = File::open(&path) {
                self.inode = file.metadata().at("stat", &path)?.ino();
                self.reader = Some(BufReader::new(file));
                self.partial.clear();
                self.drain_current()?;
            }
        }
        Ok(self.pending.drain(..).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_size_and_readers_follow() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            max_size: 300,
            max_files: 3,
            discard: false,
        };
        let mut w = LogWriter::open(dir.path(), cfg).unwrap();
        let mut r = LogReader::open(dir.path(), None).unwrap();
        let mut seen = Vec::new();
        for i in 0..40 {
            w.write(
                if i % 2 == 0 { "stdout" } else { "stderr" },
                format!("line {i}\n").as_bytes(),
            )
            .unwrap();
            if i % 3 == 0 {
                seen.extend(r.poll().unwrap());
            }
        }
        seen.extend(r.poll().unwrap());
        let texts: Vec<String> = seen.iter().map(|l| l.log.clone()).collect();
        let want: Vec<String> = (0..40).map(|i| format!("line {i}\n")).collect();
        assert_eq!(texts, want, "a follower sees every line exactly once");
        assert_eq!(seen[1].stream, "stderr");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["container.log", "container.log.1", "container.log.2"]
        );
        for n in &names {
            assert!(fs::metadata(dir.path().join(n)).unwrap().len() <= 300);
        }
        // A new reader gets what is kept, oldest first; tail keeps the end.
        let all = LogReader::open(dir.path(), None).unwrap().poll().unwrap();
        assert!(all.len() < 40 && all.last().unwrap().log == "line 39\n");
        let tail = LogReader::open(dir.path(), Some(2))
            .unwrap()
            .poll()
            .unwrap();
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1].log, "line 39\n");
    }
}
