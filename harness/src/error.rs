//! What can go wrong while driving a local cluster; every variant names the node or the file.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// An error of the harness: starting, waiting for or stopping nodes, or a tool beside them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, directory, socket or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A node's process ended while the harness waited for it to become ready.
    #[error("{node} exited with {status} before it was ready; see its log {}", log.display())]
    Exited {
        node: String,
        status: ExitStatus,
        log: PathBuf,
    },
    /// A condition did not hold within its time.
    #[error("{what} within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// The caller asked for something the cluster's state does not allow.
    #[error("{0}")]
    Usage(String),
    /// A tool beside the nodes (Prometheus, the `raftkv` CLI) misbehaved.
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The harness's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
