//! The Raft series (leader, term, elections, log indexes, membership, entries committed and
//! applied), and the task that follows openraft's metrics to keep them, and the per-follower
//! series of [`super::replication`], current.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::alias::WatchReceiverOf;
use openraft::async_runtime::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use super::{counter, gauge, register, Metrics};
use crate::types::{LogId, NodeId, TypeConfig};

/// openraft's metrics as a Raft handle publishes them (`Raft::metrics()`).
pub(crate) type RaftMetricsWatch = WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>;

/// How often, at most, the membership and per-peer series follow openraft's metrics.
const PEER_REFRESH: Duration = Duration::from_millis(100);

pub(super) struct RaftSeries {
    has_leader: IntGauge,
    is_leader: IntGauge,
    term: IntGauge,
    leader_changes: IntCounter,
    elections: IntCounter,
    commit_index: IntGauge,
    applied_index: IntGauge,
    last_log_index: IntGauge,
    purged_index: IntGauge,
    snapshot_index: IntGauge,
    members: IntGaugeVec,
    proposals_committed: IntCounter,
    proposals_applied: IntCounter,
}

impl RaftSeries {
    pub(super) fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        Ok(RaftSeries {
            has_leader: gauge(r, "raftkv_raft_has_leader", "1 if this node knows a leader, else 0.")?,
            is_leader: gauge(r, "raftkv_raft_is_leader", "1 if this node is the leader, else 0.")?,
            term: gauge(r, "raftkv_raft_term", "The current Raft term.")?,
            leader_changes: counter(
                r,
                "raftkv_raft_leader_changes_seen_total",
                "Leader changes seen by this node.",
            )?,
            elections: counter(
                r,
                "raftkv_raft_elections_started_total",
                "Elections this node started as a candidate.",
            )?,
            commit_index: gauge(
                r,
                "raftkv_raft_commit_index",
                "The last log index known to be committed.",
            )?,
            applied_index: gauge(
                r,
                "raftkv_raft_applied_index",
                "The last log index applied to the state machine.",
            )?,
            last_log_index: gauge(
                r,
                "raftkv_raft_last_log_index",
                "The last log index in this node's log.",
            )?,
            purged_index: gauge(r, "raftkv_raft_purged_index", "The last log index purged from the log.")?,
            snapshot_index: gauge(
                r,
                "raftkv_raft_snapshot_index",
                "The last log index in the current snapshot.",
            )?,
            members: register(
                r,
                IntGaugeVec::new(
                    Opts::new("raftkv_raft_members", "Members of the cluster by role."),
                    &["role"],
                )?,
            )?,
            proposals_committed: counter(
                r,
                "raftkv_raft_proposals_committed_total",
                "Log entries this node has seen committed.",
            )?,
            proposals_applied: counter(
                r,
                "raftkv_raft_proposals_applied_total",
                "Log entries this node has applied.",
            )?,
        })
    }
}

/// Follows openraft's metrics: updates the Raft gauges and counters, and logs leader changes
/// and elections (the events an operator looks for in logs).
///
/// openraft publishes new metrics several times per write (commit, apply, each follower's
/// progress). Each change is looked at, cheaply, in place: the counters, the indexes and the
/// leader and role that the logs report. The membership and per-peer series, which mean
/// cloning the whole metrics and formatting labels, are refreshed at most every
/// [`PEER_REFRESH`] (and on every change of leader or role): done on every change they would
/// cost a clone and a round of label formatting per write on every node.
pub(crate) async fn follow_raft(metrics: Arc<Metrics>, mut rx: RaftMetricsWatch) {
    let mut last_leader: Option<NodeId> = None;
    let mut last_state = ServerState::Learner;
    let mut last_committed: Option<u64> = None;
    let mut last_applied: Option<u64> = None;
    let mut peers: BTreeSet<String> = Default::default();
    let mut refreshed: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let raft = &metrics.raft;
    loop {
        let heavy = {
            let m = rx.borrow_watched();
            let index = |l: &Option<LogId>| l.as_ref().map_or(0, |l| l.index) as i64;
            raft.has_leader.set(m.current_leader.is_some() as i64);
            raft.is_leader.set((m.state == ServerState::Leader) as i64);
            raft.term.set(m.current_term as i64);
            raft.commit_index.set(index(&m.local_committed));
            raft.applied_index.set(index(&m.last_applied));
            raft.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
            raft.purged_index.set(index(&m.purged));
            raft.snapshot_index.set(index(&m.snapshot));

            let committed = m.local_committed.as_ref().map(|l| l.index);
            if let (Some(prev), Some(now)) = (last_committed, committed) {
                raft.proposals_committed.inc_by(now.saturating_sub(prev));
            }
            last_committed = committed.or(last_committed);
            let applied = m.last_applied.as_ref().map(|l| l.index);
            if let (Some(prev), Some(now)) = (last_applied, applied) {
                raft.proposals_applied.inc_by(now.saturating_sub(prev));
            }
            last_applied = applied.or(last_applied);

            let turned = m.current_leader != last_leader || m.state != last_state;
            if m.current_leader != last_leader {
                if let Some(leader) = m.current_leader {
                    raft.leader_changes.inc();
                    if leader == m.id {
                        tracing::info!(term = m.current_term, "became leader");
                    } else {
                        tracing::info!(term = m.current_term, leader, "leader changed");
                    }
                } else {
                    tracing::info!(term = m.current_term, "no leader known");
                }
                last_leader = m.current_leader;
            }
            if m.state != last_state {
                if m.state == ServerState::Candidate {
                    raft.elections.inc();
                    tracing::info!(term = m.current_term, "election started");
                }
                last_state = m.state;
            }
            let due = turned || refreshed.is_none_or(|t| t.elapsed() >= PEER_REFRESH);
            due.then(|| m.clone())
        };
        if let Some(m) = heavy {
            refreshed = Some(Instant::now());
            refresh_members(&metrics, &m, &mut peers);
        }

        // Changes arrive through the watch; the tick keeps "seconds since contact" moving.
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tick.tick() => refreshed = None,
        }
    }
}

/// The membership gauges, and the per-peer series, which exist only while this node leads
/// (only the leader knows them).
fn refresh_members(metrics: &Metrics, m: &RaftMetrics<TypeConfig>, peers: &mut BTreeSet<String>) {
    let membership = m.membership_config.membership();
    let voters = membership.voter_ids().count();
    let all = membership.nodes().count();
    let members = &metrics.raft.members;
    members.with_label_values(&["voter"]).set(voters as i64);
    members.with_label_values(&["learner"]).set((all - voters) as i64);
    metrics.replication.refresh_peers(m, peers);
}
