//! The client listener's limits, from the `serve` flags and the process's open-file limit.
//!
//! Every client connection holds a file descriptor; a node that runs out of them can no longer
//! accept a connection, open a file or reach a peer. So the soft `RLIMIT_NOFILE` is raised to
//! the hard limit at start (the soft default, often 1024, is far below what a server needs),
//! and the connection cap is kept below it, with a reserve for everything else the node opens.

use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use crate::api::HttpLimits;
use crate::config::LimitArgs;

/// Descriptors kept for everything but client connections (data files, the Raft listener and
/// its peers, admin clients), at most half of the limit.
const RESERVED_DESCRIPTORS: u64 = 256;

/// The client listener's limits; raises the open-file limit first.
pub(super) fn http_limits(args: &LimitArgs) -> HttpLimits {
    let asked = u64::from(args.max_client_connections);
    let max_connections = match raise_fd_limit() {
        Some(files) => {
            let allowed = files - RESERVED_DESCRIPTORS.min(files / 2);
            if asked > allowed {
                tracing::warn!(
                    "--max-client-connections {asked} lowered to {allowed}: this process may open {files} files \
                     and keeps the rest for its data and peers (raise the hard limit, ulimit -Hn, for more)"
                );
            }
            asked.min(allowed)
        }
        None => asked,
    };
    HttpLimits {
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        header_timeout: Duration::from_millis(args.http_header_timeout_ms),
        body_timeout: Duration::from_millis(args.http_body_timeout_ms),
        idle_timeout: Duration::from_millis(args.http_idle_timeout_ms),
        max_header_bytes: usize::try_from(args.http_max_header_bytes).unwrap_or(usize::MAX),
        max_concurrent_streams: args.max_concurrent_streams,
        h2_keepalive_interval: (args.http2_keepalive_interval_ms > 0)
            .then(|| Duration::from_millis(args.http2_keepalive_interval_ms)),
        h2_keepalive_timeout: Duration::from_millis(args.http2_keepalive_timeout_ms),
    }
}

/// Raises the soft limit on open files to the hard limit, where allowed; returns the soft
/// limit in force afterwards (`None` if it cannot be read).
pub(super) fn raise_fd_limit() -> Option<u64> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return None;
        }
    };
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::debug!(from = soft, to = hard, "raised the open-file limit");
            Some(hard)
        }
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            Some(soft)
        }
    }
}
