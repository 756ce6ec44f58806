//! A node's view of itself and its cluster, read from openraft's metrics: what `/v1/status`,
//! the admin `Status` call and the readiness probe report. The JSON shapes are the client
//! crate's (`raftkv_client::model`), so the server and every client share one definition.

use std::time::Instant;

use openraft::{Instant as _, ServerState};
use raftkv_client::model::{self, LogPosition, Member, Role, Status};

use crate::replica::{Raft, Replica};
use crate::storage::AlarmCause;
use crate::types::{LogId, NodeId};

/// A log id as the status reports it.
pub(crate) fn position(id: &Option<LogId>) -> Option<LogPosition> {
    id.as_ref().map(|l| LogPosition {
        term: l.leader_id.term,
        index: l.index,
    })
}

/// A member as the admin service lists it.
pub(crate) fn pb_member(m: Member) -> crate::pb::admin::Member {
    crate::pb::admin::Member {
        id: m.id,
        raft_addr: m.raft_addr,
        http_addr: m.http_addr,
        voter: m.voter,
    }
}

/// The role's name in the status, as the metrics and logs name it too.
pub(crate) fn role(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

/// This node's view of itself and its cluster now.
pub(crate) fn read(raft: &Raft, cluster_id: Option<String>, started: Instant) -> Status {
    let m = crate::replica::raft_metrics(raft);
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
            Member {
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
    Status {
        id: m.id,
        cluster_id,
        role: role(m.state),
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index,
        committed: position(&m.local_committed),
        applied: position(&m.last_applied),
        snapshot: position(&m.snapshot),
        purged: position(&m.purged),
        members,
        membership_log_index: m.membership_config.log_id().as_ref().map(|l| l.index),
        joint: membership.get_joint_config().len() > 1,
        uptime_seconds: started.elapsed().as_secs(),
        // Filled in by `alarms` where the replica is at hand.
        alarms: Vec::new(),
    }
}

/// The alarms `replica`'s node has raised, as the status lists them (etcd's `alarm list`).
pub(crate) fn alarms(replica: &Replica) -> Vec<model::Alarm> {
    replica
        .space()
        .alarms()
        .into_iter()
        .map(|a| model::Alarm {
            member_id: replica.id(),
            alarm: model::AlarmType::NoSpace,
            cause: match a.cause {
                AlarmCause::Quota => model::AlarmCause::Quota,
                AlarmCause::DiskFull => model::AlarmCause::DiskFull,
                AlarmCause::WriteFailed => model::AlarmCause::WriteFailed,
            },
            reason: a.reason,
        })
        .collect()
}

/// Why a node is not ready to serve (the readiness probe's answer), or `None` if it is.
pub(crate) fn not_ready_reason(raft: &Raft) -> Option<String> {
    let m = crate::replica::raft_metrics(raft);
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
