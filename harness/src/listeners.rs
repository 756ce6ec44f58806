//! Listeners the harness binds before a node starts, handed to the node by the systemd
//! socket-activation convention.
//!
//! A test that asks the OS for a free port, releases it and lets the node bind it later races
//! every other test doing the same. Here the harness binds `127.0.0.1:0` itself and keeps the
//! socket until the node runs on it: the child finds the Raft listener at fd 3 and the HTTP
//! listener at fd 4, announced by `LISTEN_FDS=2` and `LISTEN_FDNAMES=raft:http`. `LISTEN_PID` is
//! not set: its value would have to be the child's pid, which the parent does not know before
//! the fork. Once the child has started, the parent drops its copies, so a node that is killed
//! refuses connections as one that bound its own port does. A restart binds the same address
//! again (std sets `SO_REUSEADDR`, so connections of the old process in `TIME_WAIT` are no
//! obstacle).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The first fd that socket activation passes (0-2 are stdio).
const FIRST_FD: RawFd = 3;

/// The environment that announces the handed-over listeners, and that a node started on
/// addresses of its own must not inherit from the harness's environment.
pub(crate) const ACTIVATION_ENV: [&str; 3] = ["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"];

/// A node's Raft and HTTP listeners, bound and listening, not yet handed over.
#[derive(Debug)]
pub(crate) struct Listeners {
    raft: TcpListener,
    http: TcpListener,
}

impl Listeners {
    /// Two fresh listeners on loopback ports the OS picks.
    pub(crate) fn loopback() -> io::Result<Listeners> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Listeners::bind(any, any)
    }

    /// Listeners on exactly these addresses (a restart takes its ports back).
    pub(crate) fn bind(raft: SocketAddr, http: SocketAddr) -> io::Result<Listeners> {
        let bind = |addr: SocketAddr| {
            TcpListener::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))
        };
        Ok(Listeners {
            raft: bind(raft)?,
            http: bind(http)?,
        })
    }

    pub(crate) fn raft_addr(&self) -> io::Result<SocketAddr> {
        self.raft.local_addr()
    }

    pub(crate) fn http_addr(&self) -> io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Arranges for the child of `cmd` to find the listeners at fds 3 and 4, announced in its
    /// environment. `self` must outlive `cmd.spawn()`: the child duplicates the parent's fds.
    pub(crate) fn hand_over(&self, cmd: &mut Command) {
        for (name, value) in activation_env(&NAMES) {
            cmd.env(name, value);
        }
        cmd.env_remove("LISTEN_PID");
        let fds = [self.raft.as_raw_fd(), self.http.as_raw_fd()];
        // SAFETY: the closure runs in the forked child before exec and calls only fcntl and
        // dup2, which are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || place(&fds));
        }
    }
}

/// The names of the handed-over listeners, in fd order (the node matches them to its flags).
const NAMES: [&str; 2] = ["raft", "http"];

/// `LISTEN_FDS` and `LISTEN_FDNAMES` for listeners with these names, in fd order.
fn activation_env(names: &[&str]) -> [(&'static str, String); 2] {
    [
        ("LISTEN_FDS", names.len().to_string()),
        ("LISTEN_FDNAMES", names.join(":")),
    ]
}

/// In the child: puts `fds[i]` at fd `3 + i`, without the close-on-exec flag.
///
/// Every fd is first copied above the target range (close-on-exec, so the copies vanish at
/// exec): placing one fd with `dup2` would otherwise close another that still sits on a target
/// number. `dup2` clears close-on-exec on the fd it creates.
fn place<const N: usize>(fds: &[RawFd; N]) -> io::Result<()> {
    let above = FIRST_FD + N as RawFd;
    let mut high = [0 as RawFd; N];
    for (slot, fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl on an fd number; an invalid one is reported as an error.
        let copy = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        *slot = copy;
    }
    for (target, fd) in (FIRST_FD..).zip(high) {
        // SAFETY: dup2 between fd numbers; errors are reported.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream;
    use std::process::Stdio;

    #[test]
    fn the_environment_names_the_listeners_in_fd_order() {
        assert_eq!(
            activation_env(&NAMES),
            [
                ("LISTEN_FDS", "2".to_string()),
                ("LISTEN_FDNAMES", "raft:http".to_string())
            ]
        );
    }

    #[test]
    fn loopback_listeners_get_distinct_ports_and_can_be_bound_again_once_dropped() {
        let l = Listeners::loopback().expect("bind loopback");
        let (raft, http) = (l.raft_addr().expect("addr"), l.http_addr().expect("addr"));
        assert!(raft.ip().is_loopback() && raft.port() != 0);
        assert_ne!(raft.port(), http.port());
        assert!(Listeners::bind(raft, http).is_err(), "the ports are held");
        drop(l);
        let again = Listeners::bind(raft, http).expect("bind the same ports again");
        assert_eq!(again.raft_addr().expect("addr"), raft);
    }

    /// A child started with the listeners finds them at fds 3 and 4 and can accept on them; the
    /// parent's copies are closed after the spawn, as the harness does.
    #[test]
    fn a_child_accepts_on_the_handed_over_fds() {
        let l = Listeners::loopback().expect("bind loopback");
        let http = l.http_addr().expect("addr");
        // python3 can accept on an inherited listening socket in one line, and is on every
        // machine this project runs on.
        let script = "import os, socket, sys\n\
                      assert os.environ['LISTEN_FDS'] == '2', os.environ\n\
                      assert os.environ['LISTEN_FDNAMES'] == 'raft:http'\n\
                      assert 'LISTEN_PID' not in os.environ\n\
                      s = socket.socket(fileno=4)\n\
                      c, _ = s.accept()\n\
                      c.sendall(b'hello from fd 4')\n\
                      c.close()\n";
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).env("LISTEN_PID", "1").stdout(Stdio::null());
        l.hand_over(&mut cmd);
        let mut child = cmd.spawn().expect("spawn python3");
        drop(l);
        let mut conn = TcpStream::connect(http).expect("connect to the child's listener");
        let mut got = String::new();
        conn.read_to_string(&mut got).expect("read");
        assert_eq!(got, "hello from fd 4");
        let status = child.wait().expect("wait");
        assert!(status.success(), "child checks failed: {status}");
        // The child has exited and the parent holds no copy: the port refuses connections.
        assert!(
            TcpStream::connect(http).is_err(),
            "nothing listens once the child is gone"
        );
    }
}
