//! How values are encoded at rest (the log, the state, snapshots) and on the wire (Raft
//! messages): postcard, a compact serde format. A leaf: it knows nothing of the crate.

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(io_err)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Wraps any error (redb's, postcard's) as an `io::Error`, the error type of openraft's
/// storage traits.
pub(crate) fn io_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> io::Error {
    io::Error::other(e)
}
