//! The two sockets a node serves on: bound here from `--raft-addr` / `--http-addr`, or handed
//! over already bound by the process that started this one.
//!
//! Handing over follows systemd's socket activation: `LISTEN_FDS=<n>` sockets start at file
//! descriptor 3, named in order by `LISTEN_FDNAMES` (`raft:http`), and, if `LISTEN_PID` is
//! set, only for that process. A test harness binds port 0 itself and hands the sockets over,
//! so no test ever races another process for a free port; a supervisor can do the same to keep
//! a port across restarts.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};

use anyhow::{bail, Context};

/// The first file descriptor of sockets handed over (systemd's `SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// A node's bound listeners, not yet serving.
#[derive(Debug)]
pub struct Listeners {
    pub(crate) raft: TcpListener,
    pub(crate) http: TcpListener,
}

impl Listeners {
    /// Listeners already bound by the caller (a test that bound port 0, say).
    pub fn new(raft: TcpListener, http: TcpListener) -> Listeners {
        Listeners { raft, http }
    }

    /// The sockets handed to this process for `raft` and `http`, or else new ones bound to
    /// `raft_addr` and `http_addr`.
    pub(crate) fn open(raft_addr: SocketAddr, http_addr: SocketAddr) -> anyhow::Result<Listeners> {
        let mut inherited = inherited()?;
        let raft = match inherited.remove("raft") {
            Some(l) => l,
            None => {
                TcpListener::bind(raft_addr).with_context(|| format!("cannot listen on --raft-addr {raft_addr}"))?
            }
        };
        let http = match inherited.remove("http") {
            Some(l) => l,
            None => {
                TcpListener::bind(http_addr).with_context(|| format!("cannot listen on --http-addr {http_addr}"))?
            }
        };
        if let Some(name) = inherited.keys().next() {
            bail!("a socket named {name:?} was handed over (LISTEN_FDNAMES); only \"raft\" and \"http\" are served");
        }
        Ok(Listeners { raft, http })
    }

    /// The address the Raft listener is bound to.
    pub fn raft_addr(&self) -> std::io::Result<SocketAddr> {
        self.raft.local_addr()
    }

    /// The address the HTTP listener is bound to.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Both as tokio listeners (which must be made from non-blocking sockets).
    pub(crate) fn into_tokio(self) -> std::io::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
        self.raft.set_nonblocking(true)?;
        self.http.set_nonblocking(true)?;
        Ok((
            tokio::net::TcpListener::from_std(self.raft)?,
            tokio::net::TcpListener::from_std(self.http)?,
        ))
    }
}

/// The listening sockets handed to this process, by name; none if nothing was handed over.
fn inherited() -> anyhow::Result<HashMap<String, TcpListener>> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(HashMap::new());
    };
    if let Ok(pid) = std::env::var("LISTEN_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(HashMap::new()); // meant for another process
        }
    }
    let count: RawFd = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=64).contains(n))
        .with_context(|| format!("LISTEN_FDS={count:?} is not a number of sockets"))?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    let mut sockets = HashMap::new();
    for i in 0..count {
        let fd = FIRST_FD + i;
        let Some(name) = names.get(i as usize).filter(|n| !n.is_empty()) else {
            bail!("socket {fd} was handed over without a name in LISTEN_FDNAMES (want \"raft:http\")");
        };
        ensure_listening_tcp(fd).with_context(|| format!("socket {fd} ({name}) handed over in LISTEN_FDS"))?;
        // SAFETY: `fd` is open, a listening TCP socket (checked above), and owned by nothing else
        // in this process: it was inherited for us to serve on.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        if sockets.insert(name.to_string(), listener).is_some() {
            bail!("two sockets are named {name:?} in LISTEN_FDNAMES");
        }
    }
    Ok(sockets)
}

/// Checks that `fd` is an open socket that listens for TCP connections.
fn ensure_listening_tcp(fd: RawFd) -> anyhow::Result<()> {
    use nix::sys::socket::{getsockopt, sockopt};
    // SAFETY: only borrowed for these queries; an fd that is not open fails them with EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let listening = getsockopt(&borrowed, sockopt::AcceptConn).context("not an open socket")?;
    let kind = getsockopt(&borrowed, sockopt::SockType).context("not an open socket")?;
    if kind != nix::sys::socket::SockType::Stream || !listening {
        bail!("not a listening stream socket");
    }
    Ok(())
}
