//! Just enough of the DNS message format (RFC 1035 §4) to pull TXT records out of an mDNS
//! response with their raw bytes. mdns-sd decodes TXT records into `key=value` strings and drops
//! records whose length bytes do not add up — which is exactly what python-zeroconf writes for
//! Duckietown's containers (a bogus leading length byte) — so the browser keeps a passive
//! listener that reads the raw RDATA with this parser.
//!
//! Input is whatever arrives on UDP port 5353: every read is bounds-checked, compression
//! pointers are followed at most [`MAX_JUMPS`] times, names are limited to 255 bytes, and a
//! malformed record ends the walk with the records read so far. Never panics.

/// Resource record type TXT.
const TYPE_TXT: u16 = 16;
/// Most compression pointers followed for one name (stops pointer loops).
const MAX_JUMPS: usize = 32;
/// Longest name, in wire bytes (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;

/// A TXT record as it was on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxtRecord {
    /// The owner name, labels joined with `.`, with a trailing `.` (not unescaped: a `.`
    /// inside a label is indistinguishable, which only matters for names we reject anyway).
    pub name: String,
    /// Time to live; 0 is a goodbye (RFC 6762 §10.1).
    pub ttl: u32,
    /// RDATA, untouched.
    pub rdata: Vec<u8>,
}

/// The TXT records of a DNS response's answer and additional sections (authority records of
/// probes and all records of queries are skipped). Names that are not UTF-8 are skipped.
pub fn txt_records(packet: &[u8]) -> Vec<TxtRecord> {
    let mut out = Vec::new();
    let Some(header) = packet.get(..12) else {
        return out;
    };
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & 0x8000 == 0 {
        return out;
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    let mut pos = 12;
    for _ in 0..qd {
        let Some(end) = skip_name(packet, pos) else {
            return out;
        };
        pos = end + 4;
    }
    for index in 0..an + ns + ar {
        let Some((name, end)) = read_name(packet, pos) else {
            return out;
        };
        let Some(fixed) = packet.get(end..end + 10) else {
            return out;
        };
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let Some(rdata) = packet.get(end + 10..end + 10 + rdlen) else {
            return out;
        };
        pos = end + 10 + rdlen;
        let in_authority = (an..an + ns).contains(&index);
        if rtype == TYPE_TXT
            && !in_authority
            && let Some(name) = name
        {
            out.push(TxtRecord {
                name,
                ttl,
                rdata: rdata.to_vec(),
            });
        }
    }
    out
}

/// The position after the name starting at `pos`, without decoding it.
fn skip_name(packet: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *packet.get(pos)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + usize::from(len),
            0xC0 => {
                packet.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

/// Reads the name at `pos`: `(Some(name) or None if not UTF-8, position after it)`; `None`
/// when it is malformed.
fn read_name(packet: &[u8], start: usize) -> Option<(Option<String>, usize)> {
    let end = skip_name(packet, start)?;
    let mut bytes: Vec<u8> = Vec::new();
    let mut pos = start;
    let mut jumps = 0;
    loop {
        let len = *packet.get(pos)?;
        match len & 0xC0 {
            0x00 if len == 0 => break,
            0x00 => {
                let label = packet.get(pos + 1..pos + 1 + usize::from(len))?;
                bytes.extend_from_slice(label);
                bytes.push(b'.');
                if bytes.len() > MAX_NAME {
                    return None;
                }
                pos += 1 + usize::from(len);
            }
            0xC0 => {
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return None;
                }
                let lo = *packet.get(pos + 1)?;
                pos = usize::from(u16::from_be_bytes([len & 0x3F, lo]));
            }
            _ => return None,
        }
    }
    if bytes.is_empty() {
        bytes.push(b'.');
    }
    Some((String::from_utf8(bytes).ok(), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response with one question, an answer TXT (compressed name) and an additional A.
    fn sample() -> Vec<u8> {
        let mut p = vec![0, 0, 0x84, 0, 0, 1, 0, 1, 0, 0, 0, 1];
        // question: DT::ROBOT_TYPE::bot._duckietown._tcp.local. TXT IN
        let name_at = p.len();
        for l in ["DT::ROBOT_TYPE::bot", "_duckietown", "_tcp", "local"] {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&[0, 16, 0, 1]);
        // answer: pointer to the question's name
        p.extend_from_slice(&[0xC0, name_at as u8, 0, 16, 0x80, 1, 0, 0, 0x11, 0x94]);
        let txt = b"\x15{\"type\": \"duckiebot\"}";
        p.extend_from_slice(&(txt.len() as u16).to_be_bytes());
        p.extend_from_slice(txt);
        // additional: bot.local A
        for l in ["bot", "local"] {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4, 10, 0, 0, 2]);
        p
    }

    #[test]
    fn reads_txt_with_compressed_name() {
        let r = txt_records(&sample());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "DT::ROBOT_TYPE::bot._duckietown._tcp.local.");
        assert_eq!(r[0].ttl, 4500);
        assert_eq!(r[0].rdata, b"\x15{\"type\": \"duckiebot\"}");
    }

    #[test]
    fn queries_truncations_and_loops_are_harmless() {
        let mut q = sample();
        q[2] = 0; // a query
        assert!(txt_records(&q).is_empty());
        let full = sample();
        for cut in 0..full.len() {
            let _ = txt_records(&full[..cut]);
        }
        // A pointer to itself.
        let mut looped = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 1, 0, 0]);
        assert!(txt_records(&looped).is_empty());
        // Non-UTF-8 owner name: skipped, but the walk goes on.
        let mut bad = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        bad.extend_from_slice(&[2, 0xff, 0xfe, 0, 0, 16, 0, 1, 0, 0, 0, 1, 0, 1, 0]);
        assert!(txt_records(&bad).is_empty());
    }
}
