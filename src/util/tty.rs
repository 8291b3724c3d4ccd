//! The terminal of an interactive `exec` or `run -it`: raw mode for as long as a guard
//! lives, and window sizes. Both ends use it: `dts duckiebot exec -it`/`run -it` on the
//! laptop's terminal, `dt-agent exec -it`/`start -ai` on the SSH session's terminal and the
//! pseudo-terminal whose size it sets, the shim on a container's terminal's master.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::termios::{self, OptionalActions, Termios, Winsize};

/// A terminal in raw mode until dropped: bytes pass unchanged (Ctrl-C is a byte, not a signal;
/// no echo, no line editing), and the saved settings come back on every way out that unwinds.
pub struct RawMode {
    fd: BorrowedFd<'static>,
    saved: Termios,
}

impl RawMode {
    /// Puts `fd` in raw mode when it is a terminal; `None` when it is not.
    pub fn enter(fd: BorrowedFd<'static>) -> std::io::Result<Option<RawMode>> {
        if !termios::isatty(fd) {
            return Ok(None);
        }
        let saved = termios::tcgetattr(fd)?;
        make_raw(fd)?;
        Ok(Some(RawMode { fd, saved }))
    }

    /// Puts the saved settings back now (as dropping does).
    pub fn restore(&self) {
        let _ = termios::tcsetattr(self.fd, OptionalActions::Now, &self.saved);
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Sets `fd`, a terminal, to raw mode for good (a pseudo-terminal nobody types on).
pub fn make_raw(fd: impl AsFd) -> std::io::Result<()> {
    let fd = fd.as_fd();
    let mut t = termios::tcgetattr(fd)?;
    t.make_raw();
    termios::tcsetattr(fd, OptionalActions::Now, &t)?;
    Ok(())
}

/// The window size of terminal `fd` as (rows, columns); `None` when it is not a terminal or
/// reports none.
pub fn size(fd: impl AsFd) -> Option<(u16, u16)> {
    let w = termios::tcgetwinsize(fd).ok()?;
    (w.ws_row > 0 && w.ws_col > 0).then_some((w.ws_row, w.ws_col))
}

/// Sets terminal `fd`'s window size; the foreground process group gets SIGWINCH.
pub fn set_size(fd: impl AsFd, (rows, cols): (u16, u16)) -> std::io::Result<()> {
    termios::tcsetwinsize(
        fd,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// The size of the first of stdin, stdout, stderr that is a terminal.
pub fn own_size() -> Option<(u16, u16)> {
    size(std::io::stdin())
        .or_else(|| size(std::io::stdout()))
        .or_else(|| size(std::io::stderr()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_takes_raw_mode_and_sizes_and_gets_its_settings_back() {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        set_size(&master, (33, 101)).unwrap();
        assert_eq!(size(&slave), Some((33, 101)));
        let before = termios::tcgetattr(&slave).unwrap();
        assert!(before.local_modes.contains(termios::LocalModes::ICANON));
        // SAFETY: the file outlives the guard (both end with this test).
        let fd: BorrowedFd<'static> =
            unsafe { BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&slave)) };
        {
            let _raw = RawMode::enter(fd).unwrap().expect("a terminal");
            let raw = termios::tcgetattr(&slave).unwrap();
            assert!(!raw.local_modes.contains(termios::LocalModes::ICANON));
            assert!(!raw.local_modes.contains(termios::LocalModes::ISIG));
        }
        let after = termios::tcgetattr(&slave).unwrap();
        assert!(after.local_modes.contains(termios::LocalModes::ICANON));
        let file = tempfile::tempfile().unwrap();
        // SAFETY: as above.
        let fd: BorrowedFd<'static> =
            unsafe { BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&file)) };
        assert!(RawMode::enter(fd).unwrap().is_none());
        assert_eq!(size(&file), None);
    }
}
