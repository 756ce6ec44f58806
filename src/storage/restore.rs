//! Seeding a data directory from a backup: the first node of a new cluster.
//!
//! The restored node's log continues after the backup's last index and its store revision is
//! the backup's (so revisions keep increasing), its snapshot holds exactly the backed-up keys
//! and auth state (users, roles, and whether authentication is on, as etcd's restore keeps
//! them), and its membership is just itself: started with `serve`, it elects itself and serves;
//! others join it as usual.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use openraft::vote::RaftLeaderId;

use super::snapshot::{SnapshotReader, SnapshotWriter};
use super::{LogStore, StateMachine};
use crate::identity;
use crate::types::{LogId, Membership, NodeAddr, NodeId, SnapshotMeta, StoredMembership, Vote};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    #[error("backup {path} is unusable: {reason}")]
    BadBackup { path: PathBuf, reason: std::io::Error },
    #[error("data directory {0} already holds a node; restore needs an empty or new directory")]
    NotEmpty(PathBuf),
    #[error("{0}")]
    Identity(identity::IdentityError),
    #[error("writing the restored node: {0}")]
    Io(std::io::Error),
}

/// What `restore` produced.
#[derive(Debug)]
pub(crate) struct Restored {
    pub(crate) id: NodeId,
    pub(crate) keys: u64,
    /// The backup's last applied log index; the restored log continues after it.
    pub(crate) index: u64,
    pub(crate) cluster_id: String,
}

/// Checks a backup file end to end (format and checksum); returns its metadata and key count.
pub(crate) fn verify_backup(path: &Path) -> Result<(SnapshotMeta, u64), RestoreError> {
    let bad = |reason| RestoreError::BadBackup {
        path: path.to_path_buf(),
        reason,
    };
    let reader = SnapshotReader::open(path).map_err(bad)?;
    let meta = reader.meta().clone();
    let keys = reader.verify().map_err(bad)?;
    Ok((meta, keys))
}

impl From<std::io::Error> for RestoreError {
    fn from(e: std::io::Error) -> Self {
        RestoreError::Io(e)
    }
}

/// Seeds the empty `data_dir` from the backup file `backup` as node `id` at `addr` of a new
/// cluster (`cluster_id`, or a new random one).
pub(crate) async fn restore(
    backup: &Path,
    data_dir: &Path,
    id: NodeId,
    addr: NodeAddr,
    cluster_id: Option<String>,
) -> Result<Restored, RestoreError> {
    let (old_meta, keys) = verify_backup(backup)?;
    for f in ["raft-log.redb", "state.redb", "node-id"] {
        if data_dir.join(f).exists() {
            return Err(RestoreError::NotEmpty(data_dir.to_path_buf()));
        }
    }
    let id = identity::resolve_node_id(data_dir, Some(id)).map_err(RestoreError::Identity)?;
    let (term, index) = old_meta
        .last_log_id
        .map_or((1, 0), |l| (l.leader_id.term.max(1), l.index));
    let last = LogId::new(openraft::vote::leader_id_adv::LeaderId::new(term, id), index);
    let membership = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, addr)]))
        .map_err(|e| RestoreError::Io(std::io::Error::other(e.to_string())))?;
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: StoredMembership::new(Some(last), membership),
    };

    // Rewrite the backup as this node's snapshot, with the new metadata.
    let snapshots = data_dir.join("snapshots");
    std::fs::create_dir_all(&snapshots)?;
    let path = snapshots.join("restore.tmp.rkvs-in");
    {
        let mut reader = SnapshotReader::open(backup).map_err(|reason| RestoreError::BadBackup {
            path: backup.to_path_buf(),
            reason,
        })?;
        let mut w = SnapshotWriter::create(&path, &meta, reader.revision(), reader.auth())?;
        while let Some(r) = reader.next_record()? {
            w.record(&r.key, r.revision, &r.value)?;
        }
        w.finish()?;
    }
    let (log, sm) = super::open(data_dir)?;
    seed(&log, &sm, &meta, path, last, Vote::new(term, id)).await?;
    let cluster_id = cluster_id.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    identity::ClusterIdFile::new(data_dir).write(&cluster_id)?;
    Ok(Restored {
        id,
        keys,
        index,
        cluster_id,
    })
}

async fn seed(
    log: &LogStore,
    sm: &StateMachine,
    meta: &SnapshotMeta,
    snapshot: PathBuf,
    last: LogId,
    vote: Vote,
) -> std::io::Result<()> {
    let sm = sm.clone();
    let meta = meta.clone();
    tokio::task::spawn_blocking(move || sm.install_file(&meta, snapshot))
        .await
        .map_err(std::io::Error::other)??;
    log.seed_restored(last, vote).await
}
