//! A node's view of itself and its cluster, read from openraft's metrics: what `/v1/status`,
//! the admin `Status` call and the readiness probe report.

use std::time::Instant;

use openraft::{Instant as _, ServerState};
use serde::Serialize;

use crate::types::{LogId, NodeId, Raft};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogPosition {
    pub term: u64,
    pub index: u64,
}

impl LogPosition {
    pub fn of(id: &Option<LogId>) -> Option<LogPosition> {
        id.as_ref().map(|l| LogPosition {
            term: l.leader_id.term,
            index: l.index,
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub raft_addr: String,
    pub http_addr: String,
    pub voter: bool,
    /// Leader only: the last log index known to be replicated to this member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
    /// Leader only: entries this member is behind the leader's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Leader only: milliseconds since this member last acknowledged the leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_contact_ms: Option<u64>,
}

impl From<MemberInfo> for crate::pb::admin::Member {
    fn from(m: MemberInfo) -> Self {
        crate::pb::admin::Member {
            id: m.id,
            raft_addr: m.raft_addr,
            http_addr: m.http_addr,
            voter: m.voter,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub cluster_id: Option<String>,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed: Option<LogPosition>,
    pub applied: Option<LogPosition>,
    pub snapshot: Option<LogPosition>,
    pub purged: Option<LogPosition>,
    pub members: Vec<MemberInfo>,
    /// The membership's log index; a membership change in progress shows as `joint: true`.
    pub membership_log_index: Option<u64>,
    pub joint: bool,
    pub uptime_seconds: u64,
}

pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl NodeStatus {
    pub fn read(raft: &Raft, cluster_id: Option<String>, started: Instant) -> NodeStatus {
        let m = crate::types::metrics(raft);
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log = m.last_log_index.unwrap_or(0);
        let now = openraft::alias::InstantOf::<crate::types::TypeConfig>::now();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.as_ref().map_or(0, |l| l.index));
                let contact = m
                    .heartbeat
                    .as_ref()
                    .and_then(|h| h.get(id))
                    .and_then(|t| t.as_ref())
                    .map(|t| now.saturating_duration_since(**t).as_millis() as u64);
                MemberInfo {
                    id: *id,
                    raft_addr: node.raft_addr.clone(),
                    http_addr: node.http_addr.clone(),
                    voter: voters.contains(id),
                    matched_index: if *id == m.id { m.last_log_index } else { matched },
                    lag: if *id == m.id && m.state == ServerState::Leader {
                        Some(0)
                    } else {
                        matched.map(|x| last_log.saturating_sub(x))
                    },
                    last_contact_ms: if *id == m.id { None } else { contact },
                }
            })
            .collect();
        NodeStatus {
            id: m.id,
            cluster_id,
            role: role_name(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed: LogPosition::of(&m.local_committed),
            applied: LogPosition::of(&m.last_applied),
            snapshot: LogPosition::of(&m.snapshot),
            purged: LogPosition::of(&m.purged),
            members,
            membership_log_index: m.membership_config.log_id().as_ref().map(|l| l.index),
            joint: membership.get_joint_config().len() > 1,
            uptime_seconds: started.elapsed().as_secs(),
        }
    }
}

/// Why a node is not ready to serve (the readiness probe's answer), or `None` if it is.
pub fn not_ready_reason(raft: &Raft) -> Option<String> {
    let m = crate::types::metrics(raft);
    if m.running_state.is_err() {
        return Some("raft has stopped".into());
    }
    if m.membership_config.membership().get_node(&m.id).is_none() {
        return Some("not a member of any cluster yet".into());
    }
    if m.current_leader.is_none() {
        return Some("no leader known".into());
    }
    let committed = m.local_committed.as_ref().map(|l| l.index);
    let applied = m.last_applied.as_ref().map(|l| l.index);
    if applied < committed {
        return Some(format!(
            "applying committed entries ({} of {})",
            applied.unwrap_or(0),
            committed.unwrap_or(0)
        ));
    }
    None
}
