//! File descriptors over the daemon's socket (`SCM_RIGHTS`): how `exec` hands the daemon the
//! client's own stdin, stdout and stderr, and the daemon hands back a terminal's master, so
//! the bytes an exec'd process reads and writes never pass through a copy loop of ours.
//!
//! Descriptors travel with the bytes of one line (a request, an answer); a receiver must read
//! with `recvmsg` — a plain `read` would close them — so both ends of a connection that may
//! carry them read through [`LineReader`].

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

/// The most descriptors one line carries (stdin, stdout, stderr).
pub const MAX_FDS: usize = 3;

/// Writes `bytes` on `conn` with `fds` attached to its first part.
pub fn send_with_fds(conn: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.is_empty() {
        return (&*conn).write_all(bytes);
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors for one message",
        ));
    }
    let sent = loop {
        match sendmsg(
            conn,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    (&*conn).write_all(&bytes[sent..])
}

/// Reads newline-ended lines from a socket with `recvmsg`, keeping the descriptors that come
/// along for [`LineReader::take_fds`].
pub struct LineReader {
    conn: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl LineReader {
    /// Reads from `conn` (a clone of the connection is fine: they share the socket).
    pub fn new(conn: UnixStream) -> LineReader {
        LineReader {
            conn,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// The next line without its newline; `None` at the end of the stream.
    pub fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                return Ok(Some(line));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = match recvmsg(
                &self.conn,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(rustix::io::Errno::INTR) => continue,
                r => r?,
            };
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = msg {
                    self.fds.extend(fds);
                }
            }
            if got.bytes == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            self.buf.extend_from_slice(&chunk[..got.bytes]);
        }
    }

    /// The descriptors received so far (with the lines read), in order.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};
    use std::os::fd::AsFd;

    #[test]
    fn lines_carry_descriptors_and_plain_lines_do_not() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"through the fd").unwrap();
        send_with_fds(&a, b"{\"op\":\"x\"}\nsecond", &[file.as_fd()]).unwrap();
        send_with_fds(&a, b" line\n", &[]).unwrap();
        drop(a);
        let mut r = LineReader::new(b);
        assert_eq!(r.read_line().unwrap().unwrap(), b"{\"op\":\"x\"}");
        let fds = r.take_fds();
        assert_eq!(fds.len(), 1);
        let mut got = std::fs::File::from(fds.into_iter().next().unwrap());
        got.rewind().unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the fd");
        assert_eq!(r.read_line().unwrap().unwrap(), b"second line");
        assert!(r.take_fds().is_empty());
        assert!(r.read_line().unwrap().is_none());
    }
}
