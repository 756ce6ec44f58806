//! Cluster membership: bootstrap, adding and removing members, and the admin gRPC service
//! (`raftkv.admin.v1`) that exposes them.
//!
//! [`Admin`] holds the logic and the safety rails; it forwards to the leader whatever only the
//! leader can do, so every caller (the admin service, a joining node, the operator) may talk
//! to any member.

pub mod service;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tokio::sync::{mpsc, Mutex};

use crate::pb::admin as pb;
use crate::pb::admin::admin_client::AdminClient;
use crate::storage::StateMachine;
use crate::transport::client::Network;
use crate::transport::ClusterFence;
use crate::types::{NodeAddr, NodeId, Raft};
use status::NodeStatus;

/// Why an admin operation failed; each maps to a precise gRPC status and HTTP code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("node {0} is not a member of this cluster")]
    NotFound(NodeId),
    #[error("no leader is known (the cluster may have lost quorum or be electing); retry shortly")]
    NoLeader,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("forwarding to leader {leader} at {addr} failed: {message}")]
    Forward {
        leader: NodeId,
        addr: String,
        message: String,
    },
    #[error("raft error: {0}")]
    Raft(String),
    /// The leader's answer to a forwarded call, passed on unchanged.
    #[error("{}", .0.message())]
    Leader(tonic::Status),
}

impl From<AdminError> for tonic::Status {
    fn from(e: AdminError) -> Self {
        let msg = e.to_string();
        match e {
            AdminError::Invalid(_) => tonic::Status::invalid_argument(msg),
            AdminError::Refused(_) => tonic::Status::failed_precondition(msg),
            AdminError::NotFound(_) => tonic::Status::not_found(msg),
            AdminError::NoLeader | AdminError::Forward { .. } => tonic::Status::unavailable(msg),
            AdminError::Timeout(_) => tonic::Status::deadline_exceeded(msg),
            AdminError::Raft(_) => tonic::Status::internal(msg),
            AdminError::Leader(status) => status,
        }
    }
}

impl From<tonic::Status> for AdminError {
    fn from(s: tonic::Status) -> Self {
        AdminError::Leader(s)
    }
}

fn write_err<E: std::fmt::Debug + std::fmt::Display>(e: RaftError<crate::types::TypeConfig, E>) -> AdminError {
    AdminError::Raft(e.to_string())
}

/// Where a membership call must run: here, or at the leader.
enum Route {
    Local,
    Leader(NodeId, String),
}

/// Membership operations with their safety rails. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    raft: Raft,
    id: NodeId,
    fence: ClusterFence,
    network: Network,
    sm: StateMachine,
    /// One membership change at a time on this node (openraft also refuses overlapping ones).
    change_lock: Arc<Mutex<()>>,
    started: Instant,
    /// A learner counts as caught up when it is at most this many entries behind.
    pub catch_up_lag: u64,
    pub default_catch_up_timeout: Duration,
}

impl Admin {
    pub fn new(raft: Raft, id: NodeId, fence: ClusterFence, network: Network, sm: StateMachine) -> Self {
        Admin {
            raft,
            id,
            fence,
            network,
            sm,
            change_lock: Arc::default(),
            started: Instant::now(),
            catch_up_lag: 64,
            default_catch_up_timeout: Duration::from_secs(60),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus::read(&self.raft, self.fence.get(), self.started)
    }

    fn route(&self) -> Result<Route, AdminError> {
        let m = crate::types::metrics(&self.raft);
        match m.current_leader {
            Some(l) if l == self.id => Ok(Route::Local),
            Some(l) => {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.raft_addr.clone())
                    .ok_or(AdminError::NoLeader)?;
                Ok(Route::Leader(l, addr))
            }
            None => Err(AdminError::NoLeader),
        }
    }

    /// Waits up to `patience` for a leader to be known, then routes.
    async fn route_patiently(&self, patience: Duration) -> Result<Route, AdminError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.route() {
                Err(AdminError::NoLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    fn leader_client(&self, leader: NodeId, addr: &str) -> Result<AdminClient<tonic::transport::Channel>, AdminError> {
        let ch = self.network.channel(addr).map_err(|e| AdminError::Forward {
            leader,
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
        Ok(AdminClient::new(ch))
    }

    fn members_now(&self) -> Vec<pb::Member> {
        self.status().members.into_iter().map(pb::Member::from).collect()
    }

    fn done(&self, log_index: u64, message: String) -> pb::MembershipResponse {
        tracing::info!(log_index, "{message}");
        pb::MembershipResponse {
            log_index,
            members: self.members_now(),
            message,
        }
    }

    /// Bootstraps a new cluster with `members` (this node among them). A node that already
    /// has state answers `Refused`: a second bootstrap must never create a second cluster.
    pub async fn initialize(
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
    pub async fn add_learner(&self, req: pb::AddMemberRequest) -> Result<pb::MembershipResponse, AdminError> {
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
        let m = crate::types::metrics(&self.raft);
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
    pub async fn add_voter(
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
            let m = crate::types::metrics(&self.raft);
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
    pub async fn remove_member(&self, req: pb::RemoveMemberRequest) -> Result<pb::MembershipResponse, AdminError> {
        if let Route::Leader(l, addr) = self.route_patiently(Duration::from_secs(5)).await? {
            return Ok(self.leader_client(l, &addr)?.remove_member(req).await?.into_inner());
        }
        let _guard = self.change_lock.lock().await;
        let m = crate::types::metrics(&self.raft);
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

    /// The voter other than this node with the highest matched log index.
    pub fn most_caught_up_voter(&self, voters: &BTreeSet<NodeId>) -> Option<NodeId> {
        let m = crate::types::metrics(&self.raft);
        let repl = m.replication.unwrap_or_default();
        voters
            .iter()
            .filter(|v| **v != self.id)
            .max_by_key(|v| repl.get(v).cloned().flatten().map(|l| l.index))
            .copied()
    }

    /// Asks `to` to take over leadership and waits until someone other than this node leads.
    pub async fn transfer_leadership(&self, to: NodeId, timeout: Duration) -> Result<(), AdminError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| AdminError::Raft(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        loop {
            let leader = crate::types::metrics(&self.raft).current_leader;
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

    /// Replaces the voter set (every id must already be a member).
    pub async fn change_membership(
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
}

impl Admin {
    /// Moves leadership to `to` (0: the most caught-up other voter), forwarded to the leader.
    pub async fn transfer_leadership_to(&self, to: NodeId) -> Result<pb::TransferLeadershipResponse, AdminError> {
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
        let new_leader = crate::types::metrics(&self.raft).current_leader.unwrap_or(0);
        tracing::info!(to = target, new_leader, "leadership transferred");
        Ok(pb::TransferLeadershipResponse {
            old_leader: self.id,
            new_leader,
        })
    }

    /// The members with the leader's view of their progress (forwarded to the leader).
    pub async fn members(&self) -> Result<pb::MembersResponse, AdminError> {
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

    /// Takes a snapshot on this node now and waits (bounded) until it exists.
    pub async fn snapshot(&self) -> Result<pb::SnapshotResponse, AdminError> {
        let applied = crate::types::metrics(&self.raft).last_applied.map(|l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| AdminError::Raft(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = crate::types::metrics(&self.raft);
            if m.snapshot.is_some() && m.snapshot.map(|l| l.index) >= applied {
                return Ok(pb::SnapshotResponse {
                    snapshot: status::LogPosition::of(&m.snapshot).map(|p| pb::LogPosition {
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
    pub async fn backup_route(&self) -> Result<Option<AdminClient<tonic::transport::Channel>>, AdminError> {
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

    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }
}

fn validate_member(req: &pb::AddMemberRequest) -> Result<(), AdminError> {
    if req.id == 0 {
        return Err(AdminError::Invalid("node id 0 is reserved".into()));
    }
    for (name, addr) in [("raft_addr", &req.raft_addr), ("http_addr", &req.http_addr)] {
        if addr.is_empty() || !addr.contains(':') {
            return Err(AdminError::Invalid(format!("{name} {addr:?} must be host:port")));
        }
    }
    Ok(())
}

/// Fault tolerance of `n` voters: how many may fail with the rest still a quorum.
pub fn tolerance(n: usize) -> usize {
    n.saturating_sub(1) / 2
}

/// The rails for removing voter `id` from `voters`.
pub fn check_voter_removal(voters: &BTreeSet<NodeId>, id: NodeId, force: bool) -> Result<(), AdminError> {
    if force {
        return Ok(());
    }
    let n = voters.len();
    if n == 1 {
        return Err(AdminError::Refused(format!(
            "node {id} is the last voter; removing it would leave no cluster (use force to override)"
        )));
    }
    if tolerance(n) > 0 && tolerance(n - 1) == 0 {
        return Err(AdminError::Refused(format!(
            "removing node {id} leaves {} voters, which tolerate no failure (now {n} tolerate {}); add a member first or use force",
            n - 1,
            tolerance(n)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn tolerance_by_size() {
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(tolerance), [0, 0, 1, 1, 2, 2, 3]);
    }

    #[test]
    fn removal_rails() {
        assert!(matches!(
            check_voter_removal(&set(&[1]), 1, false),
            Err(AdminError::Refused(_))
        ));
        assert!(check_voter_removal(&set(&[1]), 1, true).is_ok());
        assert!(matches!(
            check_voter_removal(&set(&[1, 2, 3]), 3, false),
            Err(AdminError::Refused(_))
        ));
        assert!(check_voter_removal(&set(&[1, 2, 3]), 3, true).is_ok());
        assert!(check_voter_removal(&set(&[1, 2, 3, 4, 5]), 5, false).is_ok());
        assert!(check_voter_removal(&set(&[1, 2, 3, 4]), 4, false).is_ok());
        assert!(check_voter_removal(&set(&[1, 2]), 2, false).is_ok());
    }
}
