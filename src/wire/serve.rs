//! The robot's end: `dt-agent serve --stdio`. Reads frames on stdin, writes frames on stdout
//! (nothing else ever goes to stdout), one request at a time, with blocking I/O.
//!
//! It holds the store's shared lock for the session (so `gc` waits), stages what arrives in one
//! staging area (see `agent::store::ingest`), and relays daemon requests to `dt-agent daemon`
//! over its socket without looking at their kind (only `logs` streams).

use std::io::{Read, Write};
use std::path::Path;

use super::frame::{DataReader, Frame, Kind, read_frame, write_frame};
use super::{
    ClientHello, FromRobot, MAJOR, MINOR, PREFIX_HEX, RobotHello, RobotImage, ToRobot, WireError,
    bitmap_encode, check_version, robot_window_log,
};
use crate::agent::daemon::{Client, ClientError};
use crate::agent::store::{AgentStore, AgentStoreError, Ingest, MAX_SPLIT_BYTES, RefEntry};
use crate::api::{ErrorClass, ObjectSpec, RemoteError, Request};
use crate::oci::{Platform, Reference};
use crate::store::MAX_MANIFEST_BYTES;

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The wire failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] AgentStoreError),
    /// A `fetch` from a lab hub failed (its message names the hub).
    #[error(transparent)]
    Fetch(#[from] crate::agent::fetch::FetchError),
}

/// The robot's hello: platform, hostname, agent version, named images.
pub fn robot_hello(store: &AgentStore) -> Result<RobotHello, AgentStoreError> {
    let mut images = Vec::new();
    for (name, entry) in store.refs()? {
        let Ok((_, config)) = store.image_config(&entry.manifest) else {
            continue; // fsck reports it; the laptop just sees no such image
        };
        let diff_ids = config.rootfs.diff_ids;
        images.push(RobotImage {
            name,
            digest: entry.digest,
            manifest: entry.manifest,
            snapshot: store.has_snapshot(&crate::agent::store::snapshot_id(&diff_ids)),
            diff_ids,
        });
    }
    Ok(RobotHello {
        platform: Platform::host().normalized(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        free_bytes: store.free_bytes().unwrap_or(0),
        images,
        has_objects: has_objects(store),
        protocol: format!("{MAJOR}.{MINOR}"),
        window_log_max: window_log_max(),
        warnings: crate::agent::status::store_runtime_warnings(store),
        roles: crate::agent::devices::role_paths(),
    })
}

/// The largest zstd window this robot's decoders take: from its word size, the memory the agent
/// may use and what is available now. Every decoder of the session is held to it, so a frame
/// asking for more is refused instead of allocated.
pub fn window_log_max() -> u32 {
    use crate::agent::memory::{available_bytes, memory_bytes};
    robot_window_log(usize::BITS, memory_bytes(), available_bytes())
}

/// Whether any object is stored (a cut transfer leaves objects without images). Unreadable
/// counts as yes: the laptop then asks about contents rather than assuming.
fn has_objects(store: &AgentStore) -> bool {
    let Ok(dirs) = std::fs::read_dir(store.objects_dir()) else {
        return true;
    };
    for d in dirs {
        let Ok(d) = d else { return true };
        match std::fs::read_dir(d.path()) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return true;
                }
            }
            Err(_) => return true,
        }
    }
    false
}

/// Serves one session on `input`/`output` with the store at `root`. Returns at `bye` or at
/// the end of `input`; a failure is also sent to the laptop as an `error` message.
pub fn serve(root: &Path, input: &mut dyn Read, output: &mut dyn Write) -> Result<(), ServeError> {
    let result = serve_inner(root, input, output);
    if let Err(e) = &result {
        let msg = FromRobot::Error {
            message: e.to_string(),
            bad_input: is_bad_input(e),
        };
        let _ = write_frame(output, &Frame::control(&msg));
        let _ = output.flush();
    }
    result
}

/// The laptop of a `fetch`, over this session: progress goes out as `fetch_progress`, a fresh
/// credential is asked with `need_credential` and read from the next message. The first
/// failure of the session is kept (and ends the fetch: the laptop counts as gone).
struct FetchLaptop<'a> {
    input: &'a mut dyn Read,
    output: &'a mut dyn Write,
    broken: Result<(), WireError>,
}

impl crate::agent::fetch::Laptop for FetchLaptop<'_> {
    fn progress(&mut self, bytes: u64) -> bool {
        if self.broken.is_ok() {
            self.broken = send(self.output, &FromRobot::FetchProgress { bytes });
        }
        self.broken.is_ok()
    }

    fn credential(&mut self) -> Option<Option<String>> {
        if self.broken.is_ok() {
            self.broken = send(self.output, &FromRobot::NeedCredential);
        }
        self.broken.as_ref().ok()?;
        match read_message(self.input) {
            Ok(Some(ToRobot::Credential(c))) => Some(c.authorization),
            Ok(Some(other)) => {
                let op = serde_json::to_value(&other)
                    .ok()
                    .and_then(|v| v["op"].as_str().map(String::from))
                    .unwrap_or_default();
                self.broken = Err(WireError::Protocol(format!(
                    "expected `credential` during a fetch, got `{op}`"
                )));
                None
            }
            Ok(None) => {
                self.broken = Err(WireError::Closed);
                None
            }
            Err(e) => {
                self.broken = Err(e);
                None
            }
        }
    }
}

fn send(output: &mut dyn Write, msg: &FromRobot) -> Result<(), WireError> {
    write_frame(output, &Frame::control(msg))?;
    output.flush().map_err(WireError::Io)
}

fn serve_inner(
    root: &Path,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> Result<(), ServeError> {
    let Some(first) = read_frame(input)? else {
        return Ok(());
    };
    let (major, minor, body) = first.parse_hello()?;
    let store = AgentStore::open(root)?;
    let hello = robot_hello(&store)?;
    // Our hello goes first either way, so the laptop can name both versions.
    write_frame(output, &Frame::hello(MAJOR, MINOR, &hello))?;
    output.flush().map_err(WireError::Io)?;
    if let Err(WireError::Version { robot, laptop }) = check_version(major, minor) {
        // From here "robot" is us: name the laptop's version as the other one.
        return Err(WireError::Version {
            robot: laptop,
            laptop: robot,
        }
        .into());
    }
    let _client: ClientHello = serde_json::from_slice(body).unwrap_or_default();
    let window_log = hello.window_log_max;
    let mut ingest: Option<Ingest<'_>> = None;
    // The session's object stream: one zstd decoder across every `objects` batch.
    let mut stream: Option<zstd::stream::raw::Decoder<'static>> = None;
    loop {
        let Some(msg) = read_message(input)? else {
            return Ok(());
        };
        match msg {
            ToRobot::Bye => return Ok(()),
            ToRobot::Query {
                layers,
                chains,
                docs,
            } => {
                let docs_dir = root.join("images/sha256");
                send(
                    output,
                    &FromRobot::Have {
                        layers: layers.iter().map(|d| store.layer_split_digest(d)).collect(),
                        chains: chains.iter().map(|c| store.has_snapshot(c)).collect(),
                        docs: docs
                            .iter()
                            .map(|d| docs_dir.join(d.hex()).is_file())
                            .collect(),
                    },
                )?;
            }
            ToRobot::Contents { prefixes } => send(output, &contents_answer(&store, &prefixes)?)?,
            ToRobot::Layer {
                diff_id,
                split_digest,
                split_size,
                base,
            } => {
                let split = receive_split(
                    &store,
                    input,
                    &diff_id,
                    split_size,
                    base.as_ref(),
                    window_log,
                )?;
                let ing = ingest_of(&store, &mut ingest)?;
                ing.put_layer(&diff_id, &split_digest, &split)?;
            }
            ToRobot::Objects { objects } => {
                let ing = ingest_of(&store, &mut ingest)?;
                receive_objects(ing, &mut stream, input, &objects, window_log)?;
            }
            ToRobot::Patch { object, base } => {
                let old = read_content(&store, &base, object.size, window_log)?;
                let ing = ingest_of(&store, &mut ingest)?;
                let mut data = DataReader::new(input);
                {
                    let mut dec = decoder(&mut data, &old, window_log)?;
                    ing.put_object(&object, &mut dec)?;
                }
                data.finish()?;
                ing.commit_objects()?;
            }
            ToRobot::Sync => {
                let ing = ingest_of(&store, &mut ingest)?;
                ing.commit_objects()?;
                send(
                    output,
                    &FromRobot::Synced {
                        objects_committed: ing.objects_committed(),
                    },
                )?;
            }
            ToRobot::Document { digest, size } => {
                if size > MAX_MANIFEST_BYTES.max(crate::store::MAX_CONFIG_BYTES) {
                    return Err(WireError::Protocol(format!(
                        "a document of {size} bytes ({digest})"
                    ))
                    .into());
                }
                let mut data = DataReader::new(input);
                let bytes = decode_all(&mut data, &[], size + 1, window_log)?;
                data.finish()?;
                store.put_document(&digest, &bytes)?;
            }
            ToRobot::Image {
                names,
                digest,
                media_type,
                manifest,
            } => {
                let refs = parse_names(&names)?;
                let ing = ingest_of(&store, &mut ingest)?;
                let built = ing.build_image(
                    &refs,
                    &RefEntry {
                        digest,
                        media_type,
                        manifest,
                    },
                )?;
                send(output, &FromRobot::Image(built))?;
            }
            ToRobot::Resolve { images } => send(output, &resolve_answer(&store, &images)?)?,
            ToRobot::Credential(_) => {
                return Err(WireError::Protocol(
                    "a `credential` the robot did not ask for (none outside a fetch)".into(),
                )
                .into());
            }
            ToRobot::Fetch { hub } => {
                let mut laptop = FetchLaptop {
                    input: &mut *input,
                    output: &mut *output,
                    broken: Ok(()),
                };
                let fetched = crate::agent::fetch::fetch(&store, &hub, window_log, &mut laptop);
                laptop.broken?;
                send(output, &FromRobot::Fetched(fetched?))?;
            }
            ToRobot::Daemon { request } => relay(root, &request, output)?,
        }
    }
}

/// Reads the laptop's next message after the hello; `None` at the end of `input`. Every name
/// a message carries is a checked type (`api::names`), so one naming `../x` fails here as a
/// protocol error, which ends the session as bad input.
pub fn read_message(input: &mut dyn Read) -> Result<Option<ToRobot>, WireError> {
    let Some(frame) = read_frame(input)? else {
        return Ok(None);
    };
    if frame.kind == Kind::Data || frame.kind == Kind::Hello {
        return Err(WireError::Protocol(format!(
            "an unexpected {:?} frame",
            frame.kind
        )));
    }
    frame.message().map(Some)
}

/// Whether a session ended through the laptop's fault (a message out of step or naming what
/// may not be named, another major version, content that does not verify): the `error` it
/// gets says so, and `dt-agent serve` exits 2.
pub fn is_bad_input(e: &ServeError) -> bool {
    match e {
        ServeError::Store(s) => s.is_bad_input() || matches!(s, AgentStoreError::Corrupt { .. }),
        ServeError::Wire(w) => matches!(w, WireError::Version { .. } | WireError::Protocol(_)),
        ServeError::Fetch(f) => f.is_bad_input(),
    }
}

/// The answer to a `contents` query: which of the `prefixes` (each `PREFIX_HEX` hex digits of
/// a content digest) some stored object starts with, as a bitmap.
fn contents_answer(store: &AgentStore, prefixes: &str) -> Result<FromRobot, ServeError> {
    if !prefixes.len().is_multiple_of(PREFIX_HEX) {
        return Err(WireError::Protocol("a contents query cut short".into()).into());
    }
    let index = crate::agent::store::content_index_of(store)?;
    let known: std::collections::HashSet<&str> =
        index.keys().map(|d| &d.hex()[..PREFIX_HEX]).collect();
    let have: Vec<bool> = (0..prefixes.len() / PREFIX_HEX)
        .map(|i| known.contains(&prefixes[i * PREFIX_HEX..(i + 1) * PREFIX_HEX]))
        .collect();
    Ok(FromRobot::Contents {
        have: bitmap_encode(&have),
    })
}

/// The answer to a `resolve` query: each name as this store holds it for its platform. A
/// name that does not parse is the laptop's protocol error (it parsed it before asking).
fn resolve_answer(
    store: &AgentStore,
    images: &[crate::api::ResolveQuery],
) -> Result<FromRobot, ServeError> {
    let mut out = Vec::with_capacity(images.len());
    for q in images {
        let name = Reference::parse(&q.name)
            .map_err(|e| WireError::Protocol(format!("an image name `{}`: {e}", q.name)))?;
        out.push(store.resolve(&name, &q.platform)?);
    }
    Ok(FromRobot::Resolved { images: out })
}

/// Reads the tar-split of a `layer` message from its data frames: bounds its announced size,
/// decodes it against the `base` layer's tar-split when one is named, and checks it is exactly
/// `split_size` bytes.
fn receive_split(
    store: &AgentStore,
    input: &mut dyn Read,
    diff_id: &crate::oci::Digest,
    split_size: u64,
    base: Option<&crate::oci::Digest>,
    window_log: u32,
) -> Result<Vec<u8>, ServeError> {
    if split_size > MAX_SPLIT_BYTES {
        return Err(WireError::Protocol(format!(
            "a tar-split of {split_size} bytes for layer {diff_id}"
        ))
        .into());
    }
    let prefix = match base {
        Some(b) => store.layer_split(b)?,
        None => Vec::new(),
    };
    let mut data = DataReader::new(input);
    let split = decode_all(&mut data, &prefix, split_size + 1, window_log)?;
    data.finish()?;
    if split.len() as u64 != split_size {
        return Err(WireError::Protocol(format!(
            "layer {diff_id}: a tar-split of {} bytes, {split_size} announced",
            split.len()
        ))
        .into());
    }
    Ok(split)
}

/// Stores one `objects` batch: reads its data frames through the session's object `stream`
/// (started on the first batch), checks no bytes are left over, and commits the objects.
fn receive_objects(
    ing: &mut Ingest<'_>,
    stream: &mut Option<zstd::stream::raw::Decoder<'static>>,
    input: &mut dyn Read,
    objects: &[ObjectSpec],
    window_log: u32,
) -> Result<(), ServeError> {
    if stream.is_none() {
        let mut dec = zstd::stream::raw::Decoder::new().map_err(WireError::Io)?;
        dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(window_log))
            .map_err(WireError::Io)?;
        *stream = Some(dec);
    }
    let mut batch = BatchReader {
        dec: stream.as_mut().expect("just set"),
        data: DataReader::new(input),
        input: Vec::new(),
        pos: 0,
        done: false,
    };
    for spec in objects {
        ing.put_object(spec, &mut batch)?;
    }
    let mut extra = [0u8; 1];
    if batch.read(&mut extra).map_err(WireError::Io)? != 0 {
        return Err(
            WireError::Protocol("more object bytes than the batch announced".into()).into(),
        );
    }
    batch.data.finish()?;
    ing.commit_objects()?;
    Ok(())
}

/// The names of an `image` message, parsed; a bad one is the laptop's protocol error.
fn parse_names(names: &[String]) -> Result<Vec<Reference>, WireError> {
    names
        .iter()
        .map(|n| {
            Reference::parse(n)
                .map_err(|e| WireError::Protocol(format!("an image name `{n}`: {e}")))
        })
        .collect()
}

/// One batch's part of the session's object stream, as the plain bytes of its contents: reads
/// the batch's data frames into the session's decoder until they end.
struct BatchReader<'s, 'd> {
    dec: &'s mut zstd::stream::raw::Decoder<'static>,
    data: DataReader<'d>,
    input: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for BatchReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos == self.input.len() && !self.done {
                self.input.resize(64 * 1024, 0);
                let n = self.data.read(&mut self.input)?;
                self.input.truncate(n);
                self.pos = 0;
                self.done = n == 0;
            }
            let mut input = InBuffer::around(&self.input[self.pos..]);
            let mut output = OutBuffer::around(buf);
            self.dec.run(&mut input, &mut output)?;
            self.pos += input.pos();
            if output.pos() > 0 {
                return Ok(output.pos());
            }
            if self.done && self.pos == self.input.len() {
                return Ok(0);
            }
        }
    }
}

fn ingest_of<'s, 'a>(
    store: &'s AgentStore,
    slot: &'a mut Option<Ingest<'s>>,
) -> Result<&'a mut Ingest<'s>, AgentStoreError> {
    if slot.is_none() {
        *slot = Some(store.begin_ingest()?);
    }
    Ok(slot.as_mut().expect("just set"))
}

fn decoder<'a, R: Read + 'a>(
    r: R,
    prefix: &'a [u8],
    window_log: u32,
) -> Result<zstd::stream::read::Decoder<'a, std::io::BufReader<R>>, WireError> {
    let mut dec = if prefix.is_empty() {
        zstd::stream::read::Decoder::new(r)
    } else {
        zstd::stream::read::Decoder::with_ref_prefix(std::io::BufReader::new(r), prefix)
    }
    .map_err(WireError::Io)?;
    dec.window_log_max(window_log).map_err(WireError::Io)?;
    Ok(dec)
}

/// Decodes a whole zstd stream of at most `limit` bytes, whose window is at most 2^`window_log`.
fn decode_all(
    data: &mut DataReader<'_>,
    prefix: &[u8],
    limit: u64,
    window_log: u32,
) -> Result<Vec<u8>, WireError> {
    let dec = decoder(data, prefix, window_log)?;
    let mut out = Vec::new();
    dec.take(limit)
        .read_to_end(&mut out)
        .map_err(|e| WireError::Protocol(format!("a payload that does not decompress: {e}")))?;
    Ok(out)
}

/// Any variant of content `d`, read whole (the reference prefix of a patch). The old and the
/// new file must fit the session's window together (the laptop only patches when they do),
/// checked before anything is read: a 32-bit robot cannot even hold a 4 GiB file in memory.
fn read_content(
    store: &AgentStore,
    d: &crate::oci::Digest,
    new_size: u64,
    window_log: u32,
) -> Result<Vec<u8>, ServeError> {
    let index = crate::agent::store::content_index_of(store)?;
    let Some(p) = index.get(d) else {
        return Err(WireError::Protocol(format!(
            "a patch against content {d}, which this robot does not have"
        ))
        .into());
    };
    let io = |action: &'static str| {
        move |e| {
            AgentStoreError::Io(crate::util::fs::PathError {
                action,
                path: p.clone(),
                source: e,
            })
        }
    };
    let old_size = std::fs::metadata(p).map_err(io("stat"))?.len();
    let window = 1u64 << window_log;
    if old_size.saturating_add(new_size) > window {
        return Err(WireError::Protocol(format!(
            "a patch of {new_size} bytes against {d} ({old_size} bytes): more than this robot's {} MiB window",
            window >> 20
        ))
        .into());
    }
    Ok(std::fs::read(p).map_err(io("read"))?)
}

/// Relays one request to the daemon and its answer (or log lines) back.
fn relay(root: &Path, request: &Request, output: &mut dyn Write) -> Result<(), WireError> {
    let answer = |e: ClientError| match e {
        ClientError::Remote(error) => FromRobot::DaemonError { error },
        other => FromRobot::DaemonError {
            error: RemoteError::from_error(ErrorClass::Failed, &other),
        },
    };
    if let Request::Exec { .. } | Request::Attach { .. } = request {
        // Its streams are file descriptors of a local client: over SSH it has its own channel.
        let error = RemoteError::new(
            ErrorClass::BadInput,
            "exec and attach are not relayed: run `dt-agent exec` or `dt-agent start -a` on its own SSH channel (as `dts duckiebot exec` and `run -it` do)",
        );
        return send(output, &FromRobot::DaemonError { error });
    }
    let mut client = match Client::connect(root) {
        Ok(c) => c,
        Err(e) => return send(output, &answer(e)),
    };
    if let Request::Logs { .. } = request {
        let mut failed: Option<WireError> = None;
        let r = client.logs(request, &mut |line| {
            if failed.is_none()
                && let Err(e) = send(output, &FromRobot::DaemonLine { line })
            {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        match r {
            Ok(exit_code) => send(output, &FromRobot::DaemonEnd { exit_code }),
            Err(e) => send(output, &answer(e)),
        }
    } else if let Request::Deploy { notices: true, .. } = request {
        let mut failed: Option<WireError> = None;
        let r = client.call_with_notices(request, &mut |message| {
            if failed.is_none()
                && let Err(e) = send(output, &FromRobot::DaemonNotice { message })
            {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        match r {
            Ok(value) => send(output, &FromRobot::DaemonOk { value }),
            Err(e) => send(output, &answer(e)),
        }
    } else {
        match client.call(request) {
            Ok(value) => send(output, &FromRobot::DaemonOk { value }),
            Err(e) => send(output, &answer(e)),
        }
    }
}
