//! Moving leadership: to a chosen voter or to the most caught-up one (the SIGTERM hand-off,
//! `raftkv admin transfer-leader`, and removing the leader).
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{Admin, AdminError, Route};
use crate::pb::admin as pb;
use crate::types::NodeId;

impl Admin {
    /// The voter other than this node with the highest matched log index.
    pub(crate) fn most_caught_up_voter(&self, voters: &BTreeSet<NodeId>) -> Option<NodeId> {
        let m = crate::replica::raft_metrics(&self.raft);
        let repl = m.replication.unwrap_or_default();
        voters
            .iter()
            .filter(|v| **v != self.id)
            .max_by_key(|v| repl.get(v).cloned().flatten().map(|l| l.index))
            .copied()
    }

    /// Asks `to` to take over leadership and waits until someone other than this node leads.
    pub(crate) async fn transfer_leadership(&self, to: NodeId, timeout: Duration) -> Result<(), AdminError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| AdminError::Raft(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        loop {
            let leader = crate::replica::raft_metrics(&self.raft).current_leader;
            if leader.is_some() && leader != Some(self.id) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(AdminError::Timeout(format!(
                    "leadership did not move to node {to} within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves leadership to `to` (0: the most caught-up other voter), forwarded to the leader.
    pub(crate) async fn transfer_leadership_to(
        &self,
        to: NodeId,
    ) -> Result<pb::TransferLeadershipResponse, AdminError> {
        let req = pb::TransferLeadershipRequest { to };
        if let Route::Leader(l, addr) = self.route_patiently(Duration::from_secs(5)).await? {
            return Ok(self
                .leader_client(l, &addr)?
                .transfer_leadership(req)
                .await?
                .into_inner());
        }
        let voters: BTreeSet<NodeId> = self.raft.voter_ids().collect();
        let target = match to {
            0 => self
                .most_caught_up_voter(&voters)
                .ok_or_else(|| AdminError::Refused("there is no other voter to hand leadership to".into()))?,
            id if id == self.id => {
                return Ok(pb::TransferLeadershipResponse {
                    old_leader: self.id,
                    new_leader: self.id,
                })
            }
            id if !voters.contains(&id) => {
                return Err(AdminError::Refused(format!(
                    "node {id} is not a voter; only voters can lead"
                )))
            }
            id => id,
        };
        self.transfer_leadership(target, Duration::from_secs(10)).await?;
        let new_leader = crate::replica::raft_metrics(&self.raft).current_leader.unwrap_or(0);
        tracing::info!(to = target, new_leader, "leadership transferred");
        Ok(pb::TransferLeadershipResponse {
            old_leader: self.id,
            new_leader,
        })
    }
}
