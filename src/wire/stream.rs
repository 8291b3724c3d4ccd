//! The laptop's zstd: the object stream, through which every object batch of a session goes,
//! compressed on a thread of its own while the link carries what it already made; and
//! [`compress`], for the single frames of patches, tar-splits and documents. Every frame stays
//! within the window the robot said it decodes.
//!
//! One stream rather than one per batch because most of what zstd finds in a layer is far
//! apart: the same library in two directories, a file and its older copy, a header in 500
//! sources. Measured on the deploy bench's 367 MB of binaries and code, zstd -9 with a 128 MiB
//! window over the whole stream gives 92 MB in 14 s of one core; zstd -19 over 4 MiB batches
//! gives 99 MB in over 4 minutes. The stream is flushed (`ZSTD_e_flush`) at the end of each
//! batch, so the robot can decode and commit every batch as it arrives.
//!
//! The level adapts between batches ([`Adapt`]), as `zstd --adapt` does: down a rung when the
//! link had to wait for the compressor, up when the compressor mostly waited for the link.
//! zstd cannot change the level inside a frame, so a change ends the frame and begins a new one
//! (the robot's decoder takes concatenated frames); the ladder's hysteresis keeps that rare,
//! because a new frame starts with an empty window.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use super::split::LayerInfo;
use crate::api::ObjectSpec;

/// Bytes of compressed output per chunk handed to the link.
const CHUNK: usize = 128 * 1024;
/// Chunks the compressor may run ahead of the link.
const AHEAD: usize = 8;

/// Work for the compressor thread.
pub(super) enum Job {
    /// Compress these contents, in order, as one batch.
    Batch(Vec<(ObjectSpec, Vec<u8>)>),
    /// Answer [`Out::Marker`] with this once everything before has been handed on (a
    /// layer read to its end carries its info).
    Marker(Option<Box<LayerInfo>>),
}

/// What the compressor hands to the link, in order.
pub(super) enum Out {
    /// A batch begins: its objects.
    Begin(Vec<ObjectSpec>),
    /// Compressed bytes of the current batch.
    Chunk(Vec<u8>),
    /// The current batch is complete (flushed): its uncompressed bytes.
    End(u64),
    /// Everything sent before the [`Job::Marker`] has been handed on.
    Marker(Option<Box<LayerInfo>>),
    /// Compression failed.
    Failed(io::Error),
}

/// The compressor thread and its two ends.
pub(super) struct Compressor {
    jobs: SyncSender<Job>,
    out: tokio::sync::mpsc::Receiver<Out>,
}

impl Compressor {
    /// Starts the thread: zstd at `level` (adapting below `max`, or fixed), a window of
    /// 2^`window_log` bytes, long-distance matching.
    pub(super) fn start(adapt: Adapt, window_log: u32) -> Compressor {
        let (jobs, job_rx) = sync_channel::<Job>(1);
        let (out_tx, out) = tokio::sync::mpsc::channel::<Out>(AHEAD);
        std::thread::Builder::new()
            .name("wire-compress".into())
            .spawn(move || {
                let failed = out_tx.clone();
                if let Err(e) = run(adapt, window_log, job_rx, out_tx) {
                    let _ = failed.blocking_send(Out::Failed(e));
                }
            })
            .expect("spawn the compressor thread");
        Compressor { jobs, out }
    }

    /// Where batches go (a reader thread may hold a clone).
    pub(super) fn jobs(&self) -> SyncSender<Job> {
        self.jobs.clone()
    }

    /// The next piece of output; `None` when the thread is gone.
    pub(super) async fn next(&mut self) -> Option<Out> {
        self.out.recv().await
    }
}

/// Hands compressed bytes on in chunks, counting the time the link keeps it waiting.
struct Sink {
    buf: Vec<u8>,
    out: tokio::sync::mpsc::Sender<Out>,
    blocked: Duration,
}

impl Sink {
    fn send(&mut self, o: Out) -> io::Result<()> {
        let t = Instant::now();
        let r = self.out.blocking_send(o);
        self.blocked += t.elapsed();
        r.map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the link side is gone"))
    }
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            let chunk = std::mem::take(&mut self.buf);
            self.send(Out::Chunk(chunk))?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.send(Out::Chunk(chunk))?;
        }
        Ok(())
    }
}

type Encoder = zstd::stream::write::Encoder<'static, Sink>;

fn encoder(sink: Sink, level: i32, window_log: u32) -> io::Result<Encoder> {
    let mut e = zstd::stream::write::Encoder::new(sink, level)?;
    e.window_log(window_log)?;
    e.long_distance_matching(true)?;
    Ok(e)
}

fn run(
    mut adapt: Adapt,
    window_log: u32,
    jobs: Receiver<Job>,
    out: tokio::sync::mpsc::Sender<Out>,
) -> io::Result<()> {
    let sink = Sink {
        buf: Vec::new(),
        out,
        blocked: Duration::ZERO,
    };
    let mut enc = encoder(sink, adapt.level, window_log)?;
    let mut level = adapt.level;
    let mut idle_since = Instant::now();
    while let Ok(job) = jobs.recv() {
        let batch = match job {
            Job::Marker(info) => {
                enc.get_mut().send(Out::Marker(info))?;
                idle_since = Instant::now();
                continue;
            }
            Job::Batch(b) => b,
        };
        let starved = idle_since.elapsed();
        let started = Instant::now();
        let total: u64 = batch.iter().map(|(_, b)| b.len() as u64).sum();
        let (specs, contents): (Vec<ObjectSpec>, Vec<Vec<u8>>) = batch.into_iter().unzip();
        enc.get_mut().blocked = Duration::ZERO;
        enc.get_mut().send(Out::Begin(specs))?;
        if adapt.level != level {
            // A new frame at the new level; the old frame's epilogue opens this batch's data.
            let sink = enc.finish()?;
            enc = encoder(sink, adapt.level, window_log)?;
            level = adapt.level;
        }
        for c in &contents {
            enc.write_all(c)?;
        }
        enc.flush()?;
        let sink = enc.get_mut();
        sink.send(Out::End(total))?;
        let blocked = sink.blocked;
        let busy = started.elapsed().saturating_sub(blocked);
        adapt.observe(busy, blocked, starved);
        idle_since = Instant::now();
    }
    Ok(())
}

/// The zstd levels batches move between, one rung at a time; each rung is roughly twice as
/// fast as the one above it (with a 128 MiB window on binaries, one core: 19 ≈ 1.4 MB/s,
/// 15 ≈ 4.7, 12 ≈ 12, 9 ≈ 27, 6 ≈ 45, 3 ≈ 105).
const LADDER: [i32; 8] = [1, 3, 6, 9, 12, 15, 17, 19];

/// Batches in a row that must agree before the level moves.
const STEADY: u32 = 2;

/// Picks the level of the next batch from how the last ones went.
#[derive(Debug, Clone, Copy)]
pub(super) struct Adapt {
    level: i32,
    max: i32,
    fixed: bool,
    down: u32,
    up: u32,
}

impl Adapt {
    /// Starts at `start`, never above `max`.
    pub(super) fn new(start: i32, max: i32) -> Adapt {
        Adapt {
            level: start.min(max),
            max,
            fixed: false,
            down: 0,
            up: 0,
        }
    }

    /// Always `level`.
    pub(super) fn fixed(level: i32) -> Adapt {
        Adapt {
            level,
            max: level,
            fixed: true,
            down: 0,
            up: 0,
        }
    }

    /// The level the next batch gets.
    #[cfg(test)]
    fn level(&self) -> i32 {
        self.level
    }

    /// One batch: `busy` compressing, `blocked` waiting for the link to take its output,
    /// `starved` waiting for contents before it began.
    fn observe(&mut self, busy: Duration, blocked: Duration, starved: Duration) {
        if self.fixed {
            return;
        }
        let rung = LADDER.iter().rposition(|l| *l <= self.level).unwrap_or(0);
        // The link never waited on us if we waited on it; we are the bottleneck when we
        // hardly ever waited on the link and were not waiting for contents either.
        let bottleneck = blocked * 10 < busy && starved < busy;
        let headroom = blocked > busy * 2;
        self.down = if bottleneck { self.down + 1 } else { 0 };
        self.up = if headroom { self.up + 1 } else { 0 };
        if self.down >= STEADY && rung > 0 {
            self.level = LADDER[rung - 1];
            self.down = 0;
        } else if self.up >= STEADY * 2 && self.level < self.max {
            self.level = LADDER
                .get(rung + 1)
                .copied()
                .unwrap_or(self.max)
                .min(self.max);
            self.up = 0;
        }
    }
}

/// zstd at `level` with a window covering `prefix` and `data` (at most 2^`max_window_log`,
/// what the robot decodes: a longer reference then only reaches back that far), long-distance
/// matching, and `prefix` as the reference prefix (zstd's `--patch-from`) when it is not
/// empty.
pub(super) fn compress(
    data: &[u8],
    prefix: &[u8],
    level: i32,
    max_window_log: u32,
) -> std::io::Result<Vec<u8>> {
    let window = super::window_log_for((prefix.len() + data.len()) as u64)
        .max(17)
        .min(max_window_log);
    let mut enc = if prefix.is_empty() {
        zstd::stream::write::Encoder::new(Vec::new(), level)?
    } else {
        zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, prefix)?
    };
    enc.window_log(window)?;
    enc.long_distance_matching(true)?;
    enc.set_pledged_src_size(Some(data.len() as u64))?;
    std::io::Write::write_all(&mut enc, data)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_level_follows_the_bottleneck_with_hysteresis() {
        let mut a = Adapt::new(9, 19);
        // One slow batch is not a trend.
        a.observe(ms(500), ms(0), ms(0));
        assert_eq!(a.level(), 9);
        a.observe(ms(500), ms(0), ms(0));
        assert_eq!(a.level(), 6);
        // Waiting for contents (the reader is slow): not the compressor's fault.
        a.observe(ms(500), ms(0), ms(900));
        a.observe(ms(500), ms(0), ms(900));
        assert_eq!(a.level(), 6);
        // The link is the bottleneck: up after four batches of headroom, never past max.
        for _ in 0..4 {
            a.observe(ms(100), ms(400), ms(0));
        }
        assert_eq!(a.level(), 9);
        let mut capped = Adapt::new(9, 9);
        for _ in 0..8 {
            capped.observe(ms(100), ms(400), ms(0));
        }
        assert_eq!(capped.level(), 9);
        let mut fixed = Adapt::fixed(3);
        for _ in 0..4 {
            fixed.observe(ms(500), ms(0), ms(0));
        }
        assert_eq!(fixed.level(), 3);
    }

    #[test]
    fn flushed_batches_decode_one_by_one_from_one_stream() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = Compressor::start(Adapt::new(3, 3), 20);
            let jobs = c.jobs();
            let spec = |d: &[u8]| ObjectSpec {
                digest: crate::oci::Digest::of(d),
                size: d.len() as u64,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                xattrs: Vec::new(),
            };
            let a = b"the same words again and again ".repeat(1000);
            let b = b"other words ".repeat(500);
            std::thread::spawn(move || {
                jobs.send(Job::Batch(vec![(spec(&a), a.clone())])).unwrap();
                jobs.send(Job::Batch(vec![(spec(&b), b.clone()), (spec(&a), a)]))
                    .unwrap();
                jobs.send(Job::Marker(None)).unwrap();
            });
            let mut dec = zstd::stream::raw::Decoder::new().unwrap();
            let mut batches = Vec::new();
            let mut data = Vec::new();
            loop {
                match c.next().await.unwrap() {
                    Out::Begin(specs) => {
                        assert!(!specs.is_empty());
                        data.clear();
                    }
                    Out::Chunk(z) => data.extend(z),
                    Out::End(total) => {
                        let mut got = vec![0u8; total as usize + 16];
                        let mut input = zstd::stream::raw::InBuffer::around(&data);
                        let mut output = zstd::stream::raw::OutBuffer::around(&mut got[..]);
                        use zstd::stream::raw::Operation;
                        while input.pos() < data.len() {
                            dec.run(&mut input, &mut output).unwrap();
                        }
                        let n = output.pos();
                        got.truncate(n);
                        assert_eq!(n as u64, total, "a flushed batch decodes whole");
                        batches.push(got);
                    }
                    Out::Marker(_) => break,
                    Out::Failed(e) => panic!("{e}"),
                }
            }
            assert_eq!(batches.len(), 2);
        });
    }

    #[test]
    fn a_patch_larger_than_the_robots_window_still_decodes_within_it() {
        // 3 MiB of noise and its edited copy: together more than a 2^21 window.
        let mut state = 7u64;
        let old: Vec<u8> = (0..3 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut new = old.clone();
        new[1 << 20..(1 << 20) + 5].copy_from_slice(b"edits");
        let z = compress(&new, &old, 3, 21).unwrap();
        let mut dec = zstd::stream::read::Decoder::with_ref_prefix(&z[..], &old[..]).unwrap();
        dec.window_log_max(21).unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut dec, &mut got).unwrap();
        assert_eq!(got, new);
        // A window that covers both finds the whole old file: a few hundred bytes.
        let small = compress(&new, &old, 3, 23).unwrap();
        assert!(small.len() < 4096, "{}", small.len());
        // The robot refuses a frame wider than its window instead of allocating it.
        let mut dec = zstd::stream::read::Decoder::with_ref_prefix(&small[..], &old[..]).unwrap();
        dec.window_log_max(21).unwrap();
        assert!(std::io::Read::read_to_end(&mut dec, &mut Vec::new()).is_err());
    }
}
