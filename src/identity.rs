//! Who a node is: its node id and the id of the cluster it belongs to, both kept as small
//! files in the data directory.
//!
//! A node id is never reused: a node whose data directory was wiped comes back with a new id
//! and joins as a new member (reusing an id lets a node with a forgotten log vote).

use std::io;
use std::path::{Path, PathBuf};

use crate::types::NodeId;

const NODE_ID_FILE: &str = "node-id";
const CLUSTER_ID_FILE: &str = "cluster-id";

/// Writes `contents` to `path` atomically (temp file, fsync, rename, fsync of the directory).
fn write_atomic(path: &Path, contents: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Errors of resolving a node's id.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path} holds {found:?}, which is not a node id (a non-zero unsigned integer)")]
    Corrupt { path: PathBuf, found: String },
    #[error(
        "the data directory {dir} belongs to node {stored}, but --id {requested} was given; \
         a node id never changes (use another data directory for a new node)"
    )]
    Mismatch {
        dir: PathBuf,
        stored: NodeId,
        requested: NodeId,
    },
    #[error("node id 0 is reserved; choose a positive --id")]
    Zero,
}

/// Returns this node's id: the stored one, else `requested`, else a fresh random one. The
/// result is stored before it is returned.
pub(crate) fn resolve_node_id(data_dir: &Path, requested: Option<NodeId>) -> Result<NodeId, IdentityError> {
    let path = data_dir.join(NODE_ID_FILE);
    let io_err = |error| IdentityError::Io {
        path: path.clone(),
        error,
    };
    if requested == Some(0) {
        return Err(IdentityError::Zero);
    }
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let stored: NodeId = s
                .trim()
                .parse()
                .ok()
                .filter(|id| *id != 0)
                .ok_or_else(|| IdentityError::Corrupt {
                    path: path.clone(),
                    found: s.trim().to_string(),
                })?;
            match requested {
                Some(r) if r != stored => Err(IdentityError::Mismatch {
                    dir: data_dir.to_path_buf(),
                    stored,
                    requested: r,
                }),
                _ => Ok(stored),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io_err)?;
            // Random ids keep two nodes that start from empty disks from colliding; 2^53 keeps
            // them exact in JSON consumers that read numbers as doubles.
            let id = requested.unwrap_or_else(|| rand::random_range(1..(1u64 << 53)));
            write_atomic(&path, &format!("{id}\n")).map_err(io_err)?;
            Ok(id)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// The `cluster-id` file of a data directory.
pub(crate) struct ClusterIdFile {
    path: PathBuf,
}

impl ClusterIdFile {
    pub(crate) fn new(data_dir: &Path) -> Self {
        ClusterIdFile {
            path: data_dir.join(CLUSTER_ID_FILE),
        }
    }

    pub(crate) fn read(&self) -> io::Result<Option<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn write(&self, id: &str) -> io::Result<()> {
        write_atomic(&self.path, &format!("{id}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = resolve_node_id(dir.path(), None).unwrap();
        assert_ne!(a, 0);
        assert_eq!(resolve_node_id(dir.path(), None).unwrap(), a);
        assert_eq!(resolve_node_id(dir.path(), Some(a)).unwrap(), a);
    }

    #[test]
    fn requested_id_is_stored_and_a_different_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve_node_id(dir.path(), Some(7)).unwrap(), 7);
        assert_eq!(resolve_node_id(dir.path(), None).unwrap(), 7);
        assert!(matches!(
            resolve_node_id(dir.path(), Some(8)),
            Err(IdentityError::Mismatch { stored: 7, .. })
        ));
    }

    #[test]
    fn corrupt_and_zero_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(resolve_node_id(dir.path(), Some(0)), Err(IdentityError::Zero)));
        std::fs::write(dir.path().join(NODE_ID_FILE), "banana").unwrap();
        assert!(matches!(
            resolve_node_id(dir.path(), None),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
