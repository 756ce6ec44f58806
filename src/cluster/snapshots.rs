//! Snapshots on demand and where a backup is taken (the leader, after a ReadIndex round).
use std::time::{Duration, Instant};

use super::{status, Admin, AdminError, Route};
use crate::pb::admin as pb;

impl Admin {
    /// Takes a snapshot on this node now and waits (bounded) until it exists.
    pub(crate) async fn snapshot(&self) -> Result<pb::SnapshotResponse, AdminError> {
        let applied = crate::replica::raft_metrics(&self.raft).last_applied.map(|l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| AdminError::Raft(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = crate::replica::raft_metrics(&self.raft);
            if m.snapshot.is_some() && m.snapshot.map(|l| l.index) >= applied {
                return Ok(pb::SnapshotResponse {
                    snapshot: status::position(&m.snapshot).map(|p| pb::LogPosition {
                        term: p.term,
                        index: p.index,
                    }),
                });
            }
            if Instant::now() >= deadline {
                return Err(AdminError::Timeout("the snapshot did not complete within 60s".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where a backup must be taken: `None` here (after a ReadIndex round), or the leader's
    /// admin client to forward to.
    pub(crate) async fn backup_route(&self) -> Result<Option<super::PeerAdmin>, AdminError> {
        match self.route_patiently(Duration::from_secs(5)).await? {
            Route::Leader(l, addr) => Ok(Some(self.leader_client(l, &addr)?)),
            Route::Local => {
                let read = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex),
                )
                .await
                .map_err(|_| AdminError::Timeout("could not confirm leadership for the backup".into()))?;
                read.map_err(|e| AdminError::Raft(e.to_string()))?;
                Ok(None)
            }
        }
    }
}
