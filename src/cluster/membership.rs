//! Membership changes: bootstrap, adding a learner, promoting it once it has caught up,
//! removing a member, replacing the voter set, and listing the members, each forwarded to the
//! leader when this node does not lead.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};

use super::error::write_err;
use super::rails::{check_voter_removal, validate_member};
use super::{Admin, AdminError, Route};
use crate::pb::admin as pb;
use crate::types::{NodeAddr, NodeId};
use tokio::sync::mpsc;

impl Admin {
    /// Bootstraps a new cluster with `members` (this node among them). A node that already
    /// has state answers `Refused`: a second bootstrap must never create a second cluster.
    pub(crate) async fn initialize(
        &self,
        members: Vec<pb::Member>,
        cluster_id: Option<String>,
    ) -> Result<pb::MembershipResponse, AdminError> {
        if members.is_empty() {
            return Err(AdminError::Invalid("initialize needs at least one member".into()));
        }
        let mut nodes = BTreeMap::new();
        for m in &members {
            if m.id == 0 || m.raft_addr.is_empty() || m.http_addr.is_empty() {
                return Err(AdminError::Invalid(format!(
                    "member {} needs a non-zero id and both addresses",
                    m.id
                )));
            }
            nodes.insert(
                m.id,
                NodeAddr {
                    raft_addr: m.raft_addr.clone(),
                    http_addr: m.http_addr.clone(),
                },
            );
        }
        if !nodes.contains_key(&self.id) {
            return Err(AdminError::Invalid(format!(
                "this node ({}) must be one of the initial members",
                self.id
            )));
        }
        let _guard = self.change_lock.lock().await;
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| AdminError::Raft(e.to_string()))?
        {
            return Err(AdminError::Refused(
                "this node already belongs to a cluster; initialize is a no-op".into(),
            ));
        }
        let id = cluster_id
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        self.fence
            .adopt(&id)
            .map_err(|e| AdminError::Raft(format!("cannot persist cluster id: {e}")))?;
        self.raft.initialize(nodes).await.map_err(write_err)?;
        Ok(self.done(0, format!("initialized cluster {id} with {} member(s)", members.len())))
    }

    /// Adds a learner, returning once the change is committed.
    pub(crate) async fn add_learner(&self, req: pb::AddMemberRequest) -> Result<pb::MembershipResponse, AdminError> {
        validate_member(&req)?;
        if let Route::Leader(l, addr) = self.route_patiently(Duration::from_secs(5)).await? {
            return Ok(self.leader_client(l, &addr)?.add_learner(req).await?.into_inner());
        }
        let _guard = self.change_lock.lock().await;
        self.add_learner_locked(&req).await
    }

    async fn add_learner_locked(&self, req: &pb::AddMemberRequest) -> Result<pb::MembershipResponse, AdminError> {
        let node = NodeAddr {
            raft_addr: req.raft_addr.clone(),
            http_addr: req.http_addr.clone(),
        };
        let m = crate::replica::raft_metrics(&self.raft);
        if let Some(existing) = m.membership_config.membership().get_node(&req.id) {
            if *existing == node {
                return Ok(self.done(0, format!("node {} is already a member", req.id)));
            }
            return Err(AdminError::Refused(format!(
                "node {} is already a member with other addresses ({existing}); remove it first",
                req.id
            )));
        }
        let resp = self.raft.add_learner(req.id, node, false).await.map_err(write_err)?;
        Ok(self.done(resp.log_id.index, format!("added node {} as learner", req.id)))
    }

    /// Adds a learner, waits until it has caught up, then promotes it to voter, reporting each
    /// stage on `progress` (a caller that is not listening does not slow it down).
    pub(crate) async fn add_voter(
        &self,
        req: pb::AddMemberRequest,
        progress: Option<mpsc::Sender<pb::AddVoterProgress>>,
    ) -> Result<pb::MembershipResponse, AdminError> {
        validate_member(&req)?;
        let report = |stage: &str, lag: u64, message: String| {
            if let Some(p) = &progress {
                let _ = p.try_send(pb::AddVoterProgress {
                    stage: stage.to_string(),
                    lag,
                    message,
                    result: None,
                });
            }
        };
        if let Route::Leader(l, addr) = self.route_patiently(Duration::from_secs(5)).await? {
            let mut stream = self.leader_client(l, &addr)?.add_voter(req).await?.into_inner();
            while let Some(msg) = stream.message().await? {
                match msg.result {
                    Some(result) => return Ok(result),
                    None => report(&msg.stage, msg.lag, msg.message),
                }
            }
            return Err(AdminError::Raft(format!("leader {l} ended AddVoter without a result")));
        }
        let _guard = self.change_lock.lock().await;
        if self.raft.voter_ids().any(|v| v == req.id) {
            return Ok(self.done(0, format!("node {} is already a voter", req.id)));
        }
        let added = self.add_learner_locked(&req).await?;
        report("learner_added", 0, added.message);
        let timeout = match req.catch_up_timeout_ms {
            0 => self.default_catch_up_timeout,
            ms => Duration::from_millis(ms),
        };
        self.wait_caught_up(req.id, timeout, |lag| {
            report(
                "catching_up",
                lag,
                format!("learner {} is {lag} entries behind", req.id),
            )
        })
        .await?;
        let resp = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])), false)
            .await
            .map_err(write_err)?;
        Ok(self.done(resp.log_id.index, format!("promoted node {} to voter", req.id)))
    }

    async fn wait_caught_up(&self, id: NodeId, timeout: Duration, on_lag: impl Fn(u64)) -> Result<(), AdminError> {
        let deadline = Instant::now() + timeout;
        let mut lag = None;
        let mut last_report = Instant::now();
        loop {
            let m = crate::replica::raft_metrics(&self.raft);
            if m.state != ServerState::Leader {
                return Err(AdminError::Raft(
                    "lost leadership while waiting for the learner to catch up; retry".into(),
                ));
            }
            let last = m.last_log_index.unwrap_or(0);
            // `None` means the learner has not acknowledged anything yet: not reached.
            if let Some(Some(matched)) = m.replication.as_ref().and_then(|r| r.get(&id)) {
                let matched = matched.index;
                let behind = last.saturating_sub(matched);
                if behind <= self.catch_up_lag {
                    return Ok(());
                }
                lag = Some(behind);
                if last_report.elapsed() >= Duration::from_secs(1) {
                    on_lag(behind);
                    last_report = Instant::now();
                }
            }
            if Instant::now() >= deadline {
                return Err(AdminError::Timeout(match lag {
                    Some(l) => {
                        format!("learner {id} is still {l} entries behind after {timeout:?}; it stays a learner")
                    }
                    None => format!(
                        "learner {id} has not been reached in {timeout:?}; check its raft address; it stays a learner"
                    ),
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Removes a member, with the safety rails unless `force`.
    pub(crate) async fn remove_member(
        &self,
        req: pb::RemoveMemberRequest,
    ) -> Result<pb::MembershipResponse, AdminError> {
        if let Route::Leader(l, addr) = self.route_patiently(Duration::from_secs(5)).await? {
            return Ok(self.leader_client(l, &addr)?.remove_member(req).await?.into_inner());
        }
        let _guard = self.change_lock.lock().await;
        let m = crate::replica::raft_metrics(&self.raft);
        let membership = m.membership_config.membership();
        if membership.get_node(&req.id).is_none() {
            return Err(AdminError::NotFound(req.id));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&req.id) {
            check_voter_removal(&voters, req.id, req.force)?;
            if req.id == self.id {
                return self.transfer_then_forward_removal(req, &voters).await;
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([req.id])), false)
                .await
                .map_err(write_err)?;
        }
        let resp = self
            .raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([req.id])), false)
            .await
            .map_err(write_err)?;
        Ok(self.done(resp.log_id.index, format!("removed node {}", req.id)))
    }

    /// Removing the leader: hand leadership to the most caught-up other voter, then let the
    /// new leader do the removal.
    async fn transfer_then_forward_removal(
        &self,
        req: pb::RemoveMemberRequest,
        voters: &BTreeSet<NodeId>,
    ) -> Result<pb::MembershipResponse, AdminError> {
        let target = self
            .most_caught_up_voter(voters)
            .ok_or_else(|| AdminError::Refused("no other voter to hand leadership to".into()))?;
        self.transfer_leadership(target, Duration::from_secs(10)).await?;
        let (l, addr) = match self.route_patiently(Duration::from_secs(5)).await? {
            Route::Leader(l, addr) => (l, addr),
            Route::Local => {
                return Err(AdminError::Raft(
                    "leadership came back to the node being removed; retry".into(),
                ))
            }
        };
        Ok(self.leader_client(l, &addr)?.remove_member(req).await?.into_inner())
    }

    /// Replaces the voter set (every id must already be a member).
    pub(crate) async fn change_membership(
        &self,
        req: pb::ChangeMembershipRequest,
    ) -> Result<pb::MembershipResponse, AdminError> {
        if req.voters.is_empty() {
            return Err(AdminError::Invalid("the voter set cannot be empty".into()));
        }
        if let Route::Leader(l, addr) = self.route_patiently(Duration::from_secs(5)).await? {
            return Ok(self.leader_client(l, &addr)?.change_membership(req).await?.into_inner());
        }
        let _guard = self.change_lock.lock().await;
        let voters: BTreeSet<NodeId> = req.voters.iter().copied().collect();
        let resp = self.raft.change_membership(voters, true).await.map_err(|e| match e {
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => AdminError::Refused(c.to_string()),
            other => write_err(other),
        })?;
        Ok(self.done(resp.log_id.index, format!("voters are now {:?}", req.voters)))
    }

    /// The members with the leader's view of their progress (forwarded to the leader).
    pub(crate) async fn members(&self) -> Result<pb::MembersResponse, AdminError> {
        if let Route::Leader(l, addr) = self.route_patiently(Duration::from_secs(5)).await? {
            return Ok(self
                .leader_client(l, &addr)?
                .members(pb::MembersRequest {})
                .await?
                .into_inner());
        }
        let s = self.status();
        Ok(pb::MembersResponse {
            leader_id: s.leader.unwrap_or(0),
            membership_log_index: s.membership_log_index.unwrap_or(0),
            joint: s.joint,
            members: s
                .members
                .into_iter()
                .map(|m| pb::MemberStatus {
                    leader: Some(m.id) == s.leader,
                    id: m.id,
                    raft_addr: m.raft_addr,
                    http_addr: m.http_addr,
                    voter: m.voter,
                    matched_index: m.matched_index,
                    lag: m.lag,
                    last_contact_ms: m.last_contact_ms,
                })
                .collect(),
        })
    }
}
