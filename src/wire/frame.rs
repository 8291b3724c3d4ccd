//! Frames: `len:u32be kind:u8 payload[len-1]`, both directions, in blocking (the robot) and
//! async (the laptop) flavours.
//!
//! ```text
//! 'H'  hello     magic "DTSWIRE\n", major:u16be, minor:u16be, then a JSON body
//! 'C'  control   one JSON message (ToRobot / FromRobot)
//! 'Z'  control   the same, zstd-compressed (large queries)
//! 'D'  data      the next bytes of the current payload stream (a zstd stream);
//!                an empty 'D' frame ends the stream
//! ```

use std::io::{self, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{MAGIC, WireError};

/// Largest frame accepted (kind byte included).
pub const MAX_FRAME: usize = 4 << 20;
/// Data frames are cut at this size.
pub const DATA_CHUNK: usize = 256 * 1024;
/// Control messages larger than this are sent zstd-compressed (`'Z'`).
const COMPRESS_CONTROL_ABOVE: usize = 1024;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The first frame each way.
    Hello,
    /// A JSON message.
    Control,
    /// A zstd-compressed JSON message.
    CompressedControl,
    /// A chunk of a payload stream (empty: its end).
    Data,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Hello => b'H',
            Kind::Control => b'C',
            Kind::CompressedControl => b'Z',
            Kind::Data => b'D',
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            b'H' => Kind::Hello,
            b'C' => Kind::Control,
            b'Z' => Kind::CompressedControl,
            b'D' => Kind::Data,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its kind.
    pub kind: Kind,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.payload.len());
        out.extend(((self.payload.len() + 1) as u32).to_be_bytes());
        out.push(self.kind.byte());
        out.extend_from_slice(&self.payload);
        out
    }

    /// A hello frame: magic, version, JSON body.
    pub fn hello(major: u16, minor: u16, body: &impl serde::Serialize) -> Frame {
        let mut payload = MAGIC.to_vec();
        payload.extend(major.to_be_bytes());
        payload.extend(minor.to_be_bytes());
        payload.extend(serde_json::to_vec(body).expect("serialisable"));
        Frame {
            kind: Kind::Hello,
            payload,
        }
    }

    /// A control frame carrying `msg` (compressed when large).
    pub fn control(msg: &impl serde::Serialize) -> Frame {
        let json = serde_json::to_vec(msg).expect("serialisable");
        if json.len() > COMPRESS_CONTROL_ABOVE {
            let z = zstd::encode_all(&json[..], 6).expect("in-memory compression");
            if z.len() < json.len() {
                return Frame {
                    kind: Kind::CompressedControl,
                    payload: z,
                };
            }
        }
        Frame {
            kind: Kind::Control,
            payload: json,
        }
    }

    /// A data frame.
    pub fn data(bytes: Vec<u8>) -> Frame {
        Frame {
            kind: Kind::Data,
            payload: bytes,
        }
    }

    /// Splits a hello payload: (major, minor, JSON body).
    pub fn parse_hello(&self) -> Result<(u16, u16, &[u8]), WireError> {
        let p = &self.payload;
        if self.kind != Kind::Hello || p.len() < MAGIC.len() + 4 || &p[..MAGIC.len()] != MAGIC {
            return Err(WireError::Protocol(
                "the peer does not speak the dts wire protocol (no hello); is this dt-agent?"
                    .into(),
            ));
        }
        let m = MAGIC.len();
        let major = u16::from_be_bytes([p[m], p[m + 1]]);
        let minor = u16::from_be_bytes([p[m + 2], p[m + 3]]);
        Ok((major, minor, &p[m + 4..]))
    }

    /// Decodes a control frame's message.
    pub fn message<T: serde::de::DeserializeOwned>(&self) -> Result<T, WireError> {
        let json = match self.kind {
            Kind::Control => std::borrow::Cow::Borrowed(&self.payload[..]),
            Kind::CompressedControl => std::borrow::Cow::Owned(
                zstd::stream::read::Decoder::new(&self.payload[..])
                    .and_then(|d| {
                        let mut v = Vec::new();
                        d.take(MAX_FRAME as u64 * 8).read_to_end(&mut v)?;
                        Ok(v)
                    })
                    .map_err(|e| WireError::Protocol(format!("a compressed message: {e}")))?,
            ),
            k => {
                return Err(WireError::Protocol(format!(
                    "expected a message, got a {k:?} frame"
                )));
            }
        };
        serde_json::from_slice(&json)
            .map_err(|e| WireError::Protocol(format!("a message we cannot read: {e}")))
    }
}

fn parse_header(h: [u8; 5]) -> Result<(usize, Kind), WireError> {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(WireError::Protocol(format!(
            "a frame of {len} bytes (at most {MAX_FRAME}); the stream is out of step"
        )));
    }
    let kind = Kind::from_byte(h[4]).ok_or_else(|| {
        WireError::Protocol(format!(
            "unknown frame kind {:#04x}; the stream is out of step",
            h[4]
        ))
    })?;
    Ok((len - 1, kind))
}

/// Reads one frame; `None` at a clean end of stream (before any byte of a frame).
pub fn read_frame(r: &mut dyn Read) -> Result<Option<Frame>, WireError> {
    let mut h = [0u8; 5];
    let mut got = 0;
    while got < h.len() {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(WireError::Closed),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    let (len, kind) = parse_header(h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            WireError::Io(e)
        }
    })?;
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame (not flushed).
pub fn write_frame(w: &mut dyn Write, f: &Frame) -> Result<(), WireError> {
    w.write_all(&f.encode()).map_err(WireError::Io)
}

/// Reads one frame; `None` at a clean end of stream.
pub async fn read_frame_async<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<Option<Frame>, WireError> {
    let mut h = [0u8; 5];
    let mut got = 0;
    while got < h.len() {
        match r.read(&mut h[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(WireError::Closed),
            Ok(n) => got += n,
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    let (len, kind) = parse_header(h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            WireError::Io(e)
        }
    })?;
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame (not flushed).
pub async fn write_frame_async<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    f: &Frame,
) -> Result<(), WireError> {
    w.write_all(&f.encode()).await.map_err(WireError::Io)
}

/// The payload stream that follows a message, as a reader: the bytes of the data frames up to
/// the empty one.
pub struct DataReader<'a> {
    inner: &'a mut dyn Read,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl<'a> DataReader<'a> {
    /// Reads data frames from `inner`.
    pub fn new(inner: &'a mut dyn Read) -> Self {
        DataReader {
            inner,
            chunk: Vec::new(),
            pos: 0,
            ended: false,
        }
    }

    /// Skips whatever is left of the stream, through its end frame.
    pub fn finish(mut self) -> Result<u64, WireError> {
        let mut skipped = (self.chunk.len() - self.pos) as u64;
        self.pos = self.chunk.len();
        while !self.ended {
            skipped += self.next_chunk()? as u64;
            self.pos = self.chunk.len();
        }
        Ok(skipped)
    }

    fn next_chunk(&mut self) -> Result<usize, WireError> {
        match read_frame(self.inner)? {
            None => Err(WireError::Closed),
            Some(f) if f.kind == Kind::Data => {
                if f.payload.is_empty() {
                    self.ended = true;
                }
                self.chunk = f.payload;
                self.pos = 0;
                Ok(self.chunk.len())
            }
            Some(f) => Err(WireError::Protocol(format!(
                "a {:?} frame inside a data stream",
                f.kind
            ))),
        }
    }
}

impl Read for DataReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            self.next_chunk().map_err(io::Error::other)?;
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Cuts a payload into data frames, with the empty end frame.
pub fn data_frames(payload: &[u8]) -> Vec<Frame> {
    let mut out: Vec<Frame> = payload
        .chunks(DATA_CHUNK)
        .map(|c| Frame::data(c.to_vec()))
        .collect();
    out.push(Frame::data(Vec::new()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_garbage() {
        let frames = vec![
            Frame::hello(1, 2, &serde_json::json!({"x": 1})),
            Frame::control(&serde_json::json!({"op": "bye"})),
            Frame::control(&serde_json::json!({"big": "a".repeat(5000)})),
            Frame::data(vec![1, 2, 3]),
            Frame::data(Vec::new()),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            write_frame(&mut bytes, f).unwrap();
        }
        assert_eq!(frames[2].kind, Kind::CompressedControl);
        let mut r = &bytes[..];
        let mut back = Vec::new();
        while let Some(f) = read_frame(&mut r).unwrap() {
            back.push(f);
        }
        assert_eq!(back, frames);
        let (major, minor, body) = back[0].parse_hello().unwrap();
        assert_eq!((major, minor, body), (1, 2, &b"{\"x\":1}"[..]));
        let v: serde_json::Value = back[2].message().unwrap();
        assert_eq!(v["big"].as_str().unwrap().len(), 5000);

        // A truncated frame, a zero length, an unknown kind, a frame too large.
        let e = read_frame(&mut &bytes[..7]).unwrap_err();
        assert!(matches!(e, WireError::Closed), "{e}");
        for bad in [
            vec![0u8, 0, 0, 0, b'C'],
            vec![0, 0, 0, 1, b'?'],
            vec![0xff, 0, 0, 0, b'D'],
        ] {
            let e = read_frame(&mut &bad[..]).unwrap_err();
            assert!(e.to_string().contains("out of step"), "{e}");
        }
        // Not a hello.
        assert!(back[1].parse_hello().is_err());
    }

    #[test]
    fn data_streams_end_at_the_empty_frame() {
        let payload: Vec<u8> = (0..(DATA_CHUNK * 2 + 10)).map(|i| i as u8).collect();
        let mut bytes = Vec::new();
        for f in data_frames(&payload) {
            write_frame(&mut bytes, &f).unwrap();
        }
        write_frame(&mut bytes, &Frame::control(&1)).unwrap();
        let mut r = &bytes[..];
        let mut d = DataReader::new(&mut r);
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        assert_eq!(got, payload);
        d.finish().unwrap();
        let next = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(next.message::<i32>().unwrap(), 1);

        // finish() skips an unread stream.
        let mut bytes = Vec::new();
        for f in data_frames(b"abc") {
            write_frame(&mut bytes, &f).unwrap();
        }
        let mut r = &bytes[..];
        assert_eq!(DataReader::new(&mut r).finish().unwrap(), 3);
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn async_and_blocking_agree() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let f = Frame::control(&serde_json::json!({"op": "query"}));
        write_frame_async(&mut a, &f).await.unwrap();
        drop(a);
        assert_eq!(read_frame_async(&mut b).await.unwrap(), Some(f));
        assert_eq!(read_frame_async(&mut b).await.unwrap(), None);
    }
}
