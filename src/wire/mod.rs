//! The wire between `dts` and `dt-agent serve --stdio` (docs/wire.md): versioned,
//! length-prefixed frames over the SSH channel's stdin/stdout, JSON control messages, zstd
//! payload streams.
//!
//! ```text
//! laptop                                         robot (dt-agent serve --stdio)
//! H  magic, 2.2, {client}               ──▶
//!                                       ◀──      H  magic, 2.2, {platform, hostname,
//!                                                   agent_version, images: name → manifest,
//!                                                   diff_ids, has_objects}
//! query {layers, chains, docs}          ──▶                      one round trip: what the
//!                                       ◀──      have {split digests, snapshots, documents}
//! per missing layer (a robot without objects: no contents query, and the
//! layer's tar-split follows its objects):
//!   contents {digests not in the base}  ──▶
//!                                       ◀──      contents {have: bitmap}
//!   layer {diff_id, split digest, base} + D…     the tar-split, zstd against the base
//!                                                layer's tar-split (ref prefix)
//!   objects {specs} + D…                         the batch's contents: the next part of the
//!                                                session's one zstd stream, flushed at the
//!                                                batch's end; committed (final names) per batch
//!   patch {spec, base content} + D…              a large changed file: zstd with the old
//!                                                file as ref prefix (`--patch-from`)
//! sync                                  ──▶ ◀──  synced {objects committed} (a barrier;
//!                                                a transfer needs none: `image` is one)
//! document {digest} + D…                         manifests, configs (verified, stored)
//! image {names, digest, manifest}       ──▶ ◀──  image {chain id, snapshot built, …}
//! resolve {names, platforms}           ──▶ ◀──  resolved {held image or null per name}
//!                                                (2.3: images the robot holds, for a deploy)
//! daemon {request}                      ──▶ ◀──  daemon_ok | daemon_line… daemon_end |
//!                                                daemon_error   (relayed to dt-agent daemon)
//! ```
//!
//! The first frame each way is a hello with a magic and the protocol version; a different
//! major version fails with both versions named and the fix. Minor versions only add optional
//! fields. Every payload is verified on the robot before it gets a final name: objects by their
//! content digest, tar-splits by the digest the laptop sent (and their end record's diff_id),
//! documents by theirs; rebuilding a layer's whole tar to recompute its diff_id is `dt-agent
//! fsck`'s, off the deploy's critical path. Objects are committed per batch, so a cut link or a
//! killed agent loses at most the batch in flight, and the next deploy's queries find the rest.
//!
//! **Deltas.** A changed file at a path the base layer also has, of at least
//! [`PATCH_MIN`] bytes, travels as a zstd patch: the old content is the compressor's reference
//! prefix (zstd's `--patch-from` mode: `ZSTD_CCtx_refPrefix` with long-distance matching and a
//! window covering the old and new file), which the robot decodes against its own copy of the
//! old object. Tar-splits travel the same way against the base layer's tar-split, so a
//! one-file change in a 2,000-file layer costs a few hundred bytes of metadata.

#[cfg(feature = "workstation")]
pub mod client;
pub mod frame;
#[cfg(feature = "workstation")]
mod memo;
pub mod serve;
#[cfg(feature = "workstation")]
pub mod split;
#[cfg(feature = "workstation")]
mod stream;

use serde::{Deserialize, Serialize};

use crate::api::{
    BuiltImage, Fetched, FreshCredential, HeldImage, HubFetch, LogLine, ObjectSpec, RemoteError,
    Request, ResolveQuery,
};
use crate::oci::{Digest, Platform};

/// The first bytes of each hello.
pub const MAGIC: &[u8; 8] = b"DTSWIRE\n";
/// Protocol major version: a different one on the other end cannot talk to us. 2: one object
/// stream per session instead of one zstd stream per batch.
pub const MAJOR: u16 = 2;
/// Protocol minor version: only optional additions. 1: the robot's hello says the largest
/// zstd window it decodes ([`RobotHello::window_log_max`]). 2: a `daemon_error` carries the
/// robot's cause chain (`causes`, [`RemoteError`]); older laptops ignore it. 3: `resolve`
/// asks the robot's store what image names mean there ([`ToRobot::Resolve`]); a laptop sends
/// it only to a robot whose hello says 2.3 or later ([`RobotHello::resolves`]). 4: a
/// `deploy` may be answered by `daemon_notice`s first. 5: the robot has `dt-agent exec`
/// (which `dts duckiebot exec` runs over its own SSH channel, [`RobotHello::execs`]) and a
/// `logs` request takes `since`/`until`. 6: the robot's daemon starts a container with a
/// client attached (`dt-agent start -a`, which `dts duckiebot run -i/-t` runs over its own SSH
/// channel, [`RobotHello::attaches`]) and a container config may ask for a terminal. 7: `fetch`
/// asks the robot to GET layer blobs from a lab hub itself ([`ToRobot::Fetch`],
/// [`RobotHello::fetches`]; `deploy --via`); an older robot is sent everything directly.
/// 8: a fetched layer may come in parts pushed while the robot fetches them
/// ([`crate::api::HubBlob::parts`], `wait_ms`); the laptop uses the hub only with 2.8 robots.
/// 9: during a `fetch` whose `refresh` is set, a robot whose hub refuses the credential asks
/// for a fresh one ([`FromRobot::NeedCredential`], [`ToRobot::Credential`]); a 2.8 robot fails
/// that fetch instead.
pub const MINOR: u16 = 9;
/// Changed files at least this large travel as zstd patches against the base's version.
pub const PATCH_MIN: u64 = 64 * 1024;
/// Hex digits of a content digest in a [`ToRobot::Contents`] query.
pub const PREFIX_HEX: usize = 16;
/// Largest zstd window any decoder accepts (2 GiB: the `--patch-from` limit of 64-bit zstd).
pub const MAX_WINDOW_LOG: u32 = 31;
/// Largest zstd window 32-bit zstd accepts (`ZSTD_WINDOWLOG_MAX_32`): asking an armhf
/// decoder for more fails with "Parameter is out of bound".
pub const MAX_WINDOW_LOG_32: u32 = 30;
/// The window a robot below [`SMALL_ROBOT_BYTES`] of memory decodes: 16 MiB. The session's
/// object stream holds one window, a patch holds the old file and its own window beside it,
/// so `dt-agent serve` stays under 64 MiB resident next to ROS on a 1 GB Raspberry Pi 3. On
/// the bench's 367 MB cold deploy a 16 MiB window costs ~4 % more bytes than 128 MiB.
pub const SMALL_ROBOT_WINDOW_LOG: u32 = 24;
/// The smallest window a robot asks for, however little memory is free: 1 MiB (the object
/// stream's smallest).
pub const MIN_WINDOW_LOG: u32 = 20;
/// Robots with less memory than this get [`SMALL_ROBOT_WINDOW_LOG`].
pub const SMALL_ROBOT_BYTES: u64 = 2 << 30;
/// What a robot whose hello does not say (protocol 2.0) is sent at most: the object stream's
/// window before 2.1 (its patches could ask for more; a 2.0 armhf robot fails either way).
pub const LEGACY_WINDOW_LOG: u32 = 27;

/// Why the wire failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The channel failed.
    #[error("the connection to the robot failed: {0}")]
    Io(#[source] std::io::Error),
    /// The channel closed in the middle of a frame or an exchange.
    #[error("the connection to the robot closed unexpectedly")]
    Closed,
    /// The two ends speak different major versions.
    #[error(
        "the robot's dt-agent speaks wire protocol {robot}, this dts speaks {laptop}; re-provision the robot to upgrade dt-agent (`dts duckiebot provision`)"
    )]
    Version {
        /// The robot's version (`major.minor`).
        robot: String,
        /// Ours.
        laptop: String,
    },
    /// The other end sent something out of step.
    #[error("wire protocol error: {0}")]
    Protocol(String),
    /// The laptop could not make a fresh lab hub credential the robot asked for (2.9).
    #[error("a fresh credential for the lab hub: {0}")]
    Credential(String),
    /// The robot refused or failed; its message names the thing.
    #[error("the robot: {message}")]
    Robot {
        /// What it said.
        message: String,
        /// Whether the request was at fault (exit 2).
        bad_input: bool,
    },
    /// The daemon refused or failed a relayed request.
    #[error(transparent)]
    Daemon(#[from] RemoteError),
    /// The laptop store could not give an image or layer.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A local file (the layer cache) failed.
    #[error(transparent)]
    Path(#[from] crate::util::fs::PathError),
    /// What the transfer stores would not fit on the robot (checked before any content goes).
    #[error(
        "the robot has {} free and this deploy needs about {} more, leaving less than the {} \
         a robot keeps free; free space on it (`dts duckiebot rollback`/older releases are \
         removed as new ones commit; `dt-agent gc` on the robot frees what no release uses) \
         or deploy less",
        crate::util::human_size(*free),
        crate::util::human_size(*needed),
        crate::util::human_size(*reserve)
    )]
    NoSpace {
        /// Bytes the transfer would store (files rounded to blocks).
        needed: u64,
        /// Bytes free in the robot's store, as its hello said.
        free: u64,
        /// Bytes kept free ([`client::SPACE_RESERVE`]).
        reserve: u64,
    },
    /// A layer on the laptop could not be read.
    #[error("layer {diff_id}: {reason}")]
    Layer {
        /// The layer.
        diff_id: Digest,
        /// What went wrong.
        reason: String,
    },
}

impl WireError {
    /// Whether the input (an image, a request) is at fault rather than the link or robot.
    pub fn is_bad_input(&self) -> bool {
        match self {
            WireError::Robot { bad_input, .. } => *bad_input,
            WireError::Daemon(e) => e.is_bad_input(),
            WireError::Store(e) => e.is_bad_input(),
            _ => false,
        }
    }
}

/// The laptop's hello body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientHello {
    /// `dts <version>`.
    pub client: String,
}

/// An image named on the robot, as its hello lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobotImage {
    /// The full name (`docker.io/duckietown/dt-core:daffy`).
    pub name: String,
    /// What the name points at (manifest or index).
    pub digest: Digest,
    /// The manifest used on the robot.
    pub manifest: Digest,
    /// Its layers.
    pub diff_ids: Vec<Digest>,
    /// Whether its snapshot is present.
    pub snapshot: bool,
}

/// The robot's hello body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobotHello {
    /// Its platform (what images must be built for).
    pub platform: Platform,
    /// Its hostname.
    pub hostname: String,
    /// `dt-agent` version.
    pub agent_version: String,
    /// Bytes free in its store.
    pub free_bytes: u64,
    /// Its named images.
    pub images: Vec<RobotImage>,
    /// Whether its store holds any object. When it holds none, the laptop sends every content
    /// of a layer without asking which it has, reading each layer once.
    #[serde(default = "yes")]
    pub has_objects: bool,
    /// The protocol version it speaks (`major.minor`), filled in from the hello frame.
    #[serde(default)]
    pub protocol: String,
    /// The largest zstd window (log2 bytes) its decoders accept ([`robot_window_log`]): no
    /// frame the laptop sends may need more. Absent before protocol 2.1.
    #[serde(default = "legacy_window_log")]
    pub window_log_max: u32,
    /// What its owner should fix (an OCI runtime with a known hole); `deploy` prints them.
    /// Absent from older robots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Its device roles, each with the paths it grants (device nodes on the robot and in the
    /// container, bind mounts; empty where the hardware is absent), from its `robot.yaml`:
    /// a deploy turns compose's `privileged` and host-path `devices` into these roles. Absent
    /// from older robots, and when the robot has no `robot.yaml` a profile serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

impl RobotHello {
    /// Whether the robot answers [`ToRobot::Resolve`] (protocol 2.3 or later): an older one
    /// would end the session on the unknown `op`.
    pub fn resolves(&self) -> bool {
        self.speaks(3)
    }

    /// Whether the robot's agent has `dt-agent exec` (protocol 2.5 or later): an older one
    /// would refuse the command line.
    pub fn execs(&self) -> bool {
        self.speaks(5)
    }

    /// Whether the robot's agent has `dt-agent start -a` and containers with a terminal
    /// (protocol 2.6 or later): an older one would refuse the command line, and would run a
    /// config asking for a terminal without one.
    pub fn attaches(&self) -> bool {
        self.speaks(6)
    }

    /// Whether the robot's agent fetches layer blobs from a hub (protocol 2.8 or later): a 2.6
    /// one would end the session on the unknown `op`, a 2.7 one not know a layer's parts.
    pub fn fetches(&self) -> bool {
        self.speaks(8)
    }

    /// Whether the robot speaks our major version at `minor` or later.
    fn speaks(&self, minor: u16) -> bool {
        let mut parts = self
            .protocol
            .split('.')
            .map(|p| p.parse::<u16>().unwrap_or(0));
        let (major, theirs) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        major == MAJOR && theirs >= minor
    }
}

fn yes() -> bool {
    true
}

fn legacy_window_log() -> u32 {
    LEGACY_WINDOW_LOG
}

/// The largest zstd window a robot decodes, from its word size (`usize::BITS`), the memory the
/// agent may use (RAM, or a smaller cgroup limit) and the memory available now (`None` when
/// unknown): what 32-bit zstd accepts at most; 16 MiB below 2 GiB of memory, and above that an
/// eighth of the memory (4 GiB → 512 MiB), so that a patch against a large file cannot crowd out
/// the robot's software; and at most a quarter of what is available now, but never under
/// [`MIN_WINDOW_LOG`].
pub fn robot_window_log(word_bits: u32, memory: Option<u64>, available: Option<u64>) -> u32 {
    let word_cap = if word_bits < 64 {
        MAX_WINDOW_LOG_32
    } else {
        MAX_WINDOW_LOG
    };
    let memory_cap = match memory {
        Some(m) if m < SMALL_ROBOT_BYTES => SMALL_ROBOT_WINDOW_LOG,
        // floor(log2(m / 8)); at least the small robots' window.
        Some(m) => floor_log2(m / 8).max(SMALL_ROBOT_WINDOW_LOG),
        None => LEGACY_WINDOW_LOG,
    };
    let available_cap = available.map_or(MAX_WINDOW_LOG, |a| floor_log2(a / 4));
    word_cap
        .min(memory_cap)
        .min(available_cap)
        .max(MIN_WINDOW_LOG)
}

/// floor(log2(n)); 0 for 0.
fn floor_log2(n: u64) -> u32 {
    63u32.saturating_sub(n.leading_zeros())
}

/// Laptop → robot.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToRobot {
    /// What of these does the robot have? Answered by [`FromRobot::Have`].
    Query {
        /// Layers by diff_id.
        layers: Vec<Digest>,
        /// Snapshots by chain id.
        chains: Vec<Digest>,
        /// Manifests, indexes, configs.
        docs: Vec<Digest>,
    },
    /// Which of these contents does the robot have (any metadata variant)? Answered by
    /// [`FromRobot::Contents`]. Contents are named by the first [`PREFIX_HEX`] hex digits of
    /// their sha256, concatenated: a 2,000-file layer asks in 32 KB, not 140. A false "have"
    /// (odds ~n·m/2^64) cannot corrupt anything: the image then fails to build, naming the
    /// missing objects, and nothing is named.
    Contents {
        /// Concatenated hex prefixes.
        prefixes: String,
    },
    /// A layer's tar-split follows as a data stream: zstd of the record stream, with the
    /// tar-split of `base` (a layer the robot has) as the reference prefix when given.
    Layer {
        /// The layer.
        diff_id: Digest,
        /// sha256 of the uncompressed record stream.
        split_digest: Digest,
        /// Its length.
        split_size: u64,
        /// The base layer.
        base: Option<Digest>,
    },
    /// The contents of `objects`, in order, follow as data frames: the next part of the
    /// session's object stream. Every `objects` batch of a session continues one zstd stream
    /// (a new frame may begin at any batch, when the laptop changes level), flushed at the
    /// end of each batch, so each decodes whole on arrival. Committed as a batch.
    Objects {
        /// The objects.
        objects: Vec<ObjectSpec>,
    },
    /// One object follows as a zstd stream whose reference prefix is the content `base`.
    Patch {
        /// The object.
        object: ObjectSpec,
        /// The content it is a patch against (the robot has it).
        base: Digest,
    },
    /// Commit what was received; answered by [`FromRobot::Synced`].
    Sync,
    /// A manifest, index or config follows as a zstd stream.
    Document {
        /// Its digest.
        digest: Digest,
        /// Its length.
        size: u64,
    },
    /// Build the image's snapshot, commit its layers, name it. Answered by
    /// [`FromRobot::Image`].
    Image {
        /// Names to give it.
        names: Vec<String>,
        /// The top document (manifest or index).
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// The manifest used on the robot.
        manifest: Digest,
    },
    /// What do these names mean in the robot's store, for these platforms? Answered by
    /// [`FromRobot::Resolved`]. Since 2.3: sent only when the robot's hello says it speaks it.
    Resolve {
        /// The names, each with the platform wanted.
        images: Vec<ResolveQuery>,
    },
    /// GET these layer blobs from a lab hub and commit them as `dt-agent image import` would
    /// (decompressed, diff_id and digest verified). Answered by [`FromRobot::FetchProgress`]s,
    /// then [`FromRobot::Fetched`]. Since 2.7: sent only when the robot's hello says it
    /// speaks it. A hub the robot cannot use ends the session with an `error` naming it.
    Fetch {
        /// The hub, its credential and the blobs.
        hub: HubFetch,
    },
    /// The answer to [`FromRobot::NeedCredential`] (2.9): the credential for the rest of the
    /// fetch under way.
    Credential(FreshCredential),
    /// A request for `dt-agent daemon`, relayed over its socket.
    Daemon {
        /// The request.
        request: Request,
    },
    /// The end of the session.
    Bye,
}

/// Robot → laptop.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FromRobot {
    /// The answer to [`ToRobot::Query`], in the query's order.
    Have {
        /// For each layer: its tar-split digest if the layer is complete here.
        layers: Vec<Option<Digest>>,
        /// For each chain id: whether its snapshot is here.
        chains: Vec<bool>,
        /// For each document: whether it is here.
        docs: Vec<bool>,
    },
    /// The answer to [`ToRobot::Contents`]: a bitmap, hex, bit i (LSB first in each byte) set
    /// when content i is here.
    Contents {
        /// The bitmap.
        have: String,
    },
    /// The answer to [`ToRobot::Sync`].
    Synced {
        /// Objects this session committed so far.
        objects_committed: u64,
    },
    /// The answer to [`ToRobot::Image`].
    Image(BuiltImage),
    /// The answer to [`ToRobot::Resolve`], in the query's order: the image the robot holds
    /// whole under that name, or null.
    Resolved {
        /// One per name asked.
        images: Vec<Option<HeldImage>>,
    },
    /// Bytes of hub blobs downloaded so far by a `fetch` (about one per MiB).
    FetchProgress {
        /// Blob bytes so far, all blobs of the request.
        bytes: u64,
    },
    /// The answer to [`ToRobot::Fetch`].
    Fetched(Fetched),
    /// During a `fetch` whose `refresh` is set: the hub refused the credential (`401`/`403`;
    /// a pull token can expire during a long layer), send a fresh one (2.9). Answered by
    /// [`ToRobot::Credential`].
    NeedCredential,
    /// A daemon request's answer.
    DaemonOk {
        /// The value.
        value: serde_json::Value,
    },
    /// One log line of a streamed request.
    DaemonLine {
        /// The line.
        line: LogLine,
    },
    /// Why a deploy waits, before its answer (since 2.4; only to a `deploy` request with
    /// `notices`).
    DaemonNotice {
        /// What to tell the user.
        message: String,
    },
    /// The end of a streamed request.
    DaemonEnd {
        /// The container's exit code, if it exited.
        exit_code: Option<i32>,
    },
    /// The daemon refused or failed.
    DaemonError {
        /// Its error.
        error: RemoteError,
    },
    /// The robot failed; the session ends.
    Error {
        /// What went wrong, naming the thing.
        message: String,
        /// Whether the request was at fault.
        bad_input: bool,
    },
}

/// A bitmap as hex, bit i LSB-first in byte i/8.
pub fn bitmap_encode(bits: &[bool]) -> String {
    let mut bytes = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().enumerate() {
        if *b {
            bytes[i / 8] |= 1 << (i % 8);
        }
    }
    hex::encode(bytes)
}

/// The inverse of [`bitmap_encode`] for `n` bits.
pub fn bitmap_decode(s: &str, n: usize) -> Result<Vec<bool>, WireError> {
    let bytes = hex::decode(s).map_err(|e| WireError::Protocol(format!("a bitmap: {e}")))?;
    if bytes.len() != n.div_ceil(8) {
        return Err(WireError::Protocol(format!(
            "a bitmap of {} bytes for {n} entries",
            bytes.len()
        )));
    }
    Ok((0..n).map(|i| bytes[i / 8] & (1 << (i % 8)) != 0).collect())
}

/// Checks the peer's version against ours.
pub fn check_version(major: u16, minor: u16) -> Result<(), WireError> {
    if major != MAJOR {
        return Err(WireError::Version {
            robot: format!("{major}.{minor}"),
            laptop: format!("{MAJOR}.{MINOR}"),
        });
    }
    Ok(())
}

/// The zstd window log that covers `bytes` (a reference prefix plus what is compressed).
pub fn window_log_for(bytes: u64) -> u32 {
    let mut log = 10;
    while log < MAX_WINDOW_LOG && (1u64 << log) < bytes {
        log += 1;
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_and_versions() {
        let bits = vec![true, false, false, true, true, false, false, false, true];
        let s = bitmap_encode(&bits);
        assert_eq!(bitmap_decode(&s, bits.len()).unwrap(), bits);
        assert!(bitmap_decode(&s, 20).is_err());
        assert!(check_version(MAJOR, MINOR + 3).is_ok());
        let e = check_version(MAJOR + 1, 0).unwrap_err().to_string();
        assert!(e.contains(&format!("{}.0", MAJOR + 1)), "{e}");
        assert!(e.contains(&format!("{MAJOR}.{MINOR}")), "{e}");
        assert!(
            e.contains("re-provision the robot to upgrade dt-agent"),
            "{e}"
        );
        assert_eq!(window_log_for(1 << 20), 20);
        assert_eq!(window_log_for((1 << 20) + 1), 21);
        assert_eq!(window_log_for(1), 10);
    }

    #[test]
    fn robot_windows_follow_word_size_and_memory() {
        const GIB: u64 = 1 << 30;
        // A Raspberry Pi 3 on a 32-bit OS: 1 GB.
        assert_eq!(
            robot_window_log(32, Some(GIB - (64 << 20)), None),
            SMALL_ROBOT_WINDOW_LOG
        );
        // A 1 GB robot on a 64-bit OS too.
        assert_eq!(
            robot_window_log(64, Some(GIB), None),
            SMALL_ROBOT_WINDOW_LOG
        );
        // Just under 2 GiB is small; 2 GiB is not (256 MiB).
        assert_eq!(
            robot_window_log(64, Some(2 * GIB - 1), None),
            SMALL_ROBOT_WINDOW_LOG
        );
        assert_eq!(robot_window_log(64, Some(2 * GIB), None), 28);
        // A Jetson Nano (4 GB): 512 MiB.
        assert_eq!(robot_window_log(64, Some(4 * GIB), None), 29);
        // Lots of memory: 64-bit zstd's limit, 32-bit zstd's on 32 bits.
        assert_eq!(robot_window_log(64, Some(64 * GIB), None), MAX_WINDOW_LOG);
        assert_eq!(
            robot_window_log(32, Some(64 * GIB), None),
            MAX_WINDOW_LOG_32
        );
        // Unknown memory: what 2.0 robots were sent.
        assert_eq!(robot_window_log(64, None, None), LEGACY_WINDOW_LOG);
        assert_eq!(robot_window_log(32, None, None), LEGACY_WINDOW_LOG);
        // A Jetson whose ROS stack left 200 MiB: 32 MiB (a quarter, rounded down to a power
        // of two); a robot with next to nothing free still gets the smallest window.
        assert_eq!(robot_window_log(64, Some(4 * GIB), Some(200 << 20)), 25);
        assert_eq!(
            robot_window_log(32, Some(GIB), Some(1 << 20)),
            MIN_WINDOW_LOG
        );
        // Plenty available changes nothing.
        assert_eq!(
            robot_window_log(32, Some(GIB), Some(GIB)),
            SMALL_ROBOT_WINDOW_LOG
        );
    }

    #[test]
    fn a_hello_without_a_window_is_a_legacy_robot() {
        let json = r#"{"platform":{"architecture":"arm","os":"linux","variant":"v7"},
            "hostname":"hf","agent_version":"0.1.0","free_bytes":1,"images":[]}"#;
        let h: RobotHello = serde_json::from_str(json).unwrap();
        assert_eq!(h.window_log_max, LEGACY_WINDOW_LOG);
        assert!(h.has_objects);
    }

    /// `resolve` (2.3) goes only to robots that say they speak it: an older one would end the
    /// session on the unknown `op`.
    #[test]
    fn only_a_2_3_robot_is_asked_to_resolve() {
        let json = r#"{"platform":{"architecture":"amd64","os":"linux"},
            "hostname":"r","agent_version":"0.1.0","free_bytes":1,"images":[]}"#;
        let mut h: RobotHello = serde_json::from_str(json).unwrap();
        for (protocol, resolves) in [
            ("2.2", false),
            ("2.3", true),
            ("2.10", true),
            ("3.3", false),
            ("", false),
        ] {
            h.protocol = protocol.into();
            assert_eq!(h.resolves(), resolves, "{protocol}");
        }
        for (protocol, execs) in [("2.4", false), ("2.5", true), ("3.5", false)] {
            h.protocol = protocol.into();
            assert_eq!(h.execs(), execs, "{protocol}");
        }
        for (protocol, attaches) in [("2.5", false), ("2.6", true), ("3.6", false)] {
            h.protocol = protocol.into();
            assert_eq!(h.attaches(), attaches, "{protocol}");
        }
        for (protocol, fetches) in [("2.7", false), ("2.8", true), ("3.8", false)] {
            h.protocol = protocol.into();
            assert_eq!(h.fetches(), fetches, "{protocol}");
        }
        let m = ToRobot::Resolve {
            images: vec![ResolveQuery {
                name: "ubuntu".into(),
                platform: Platform::host(),
            }],
        };
        let back: ToRobot = frame::Frame::control(&m).message().unwrap();
        assert!(matches!(back, ToRobot::Resolve { images } if images[0].name == "ubuntu"));
    }

    #[test]
    fn messages_round_trip() {
        let m = ToRobot::Daemon {
            request: Request::Ps { all: true },
        };
        let f = frame::Frame::control(&m);
        let back: ToRobot = f.message().unwrap();
        assert!(matches!(
            back,
            ToRobot::Daemon {
                request: Request::Ps { all: true }
            }
        ));
    }
}
