//! Prometheus metrics, named after etcd's where there is an equivalent (`has_leader`,
//! `leader_changes_seen_total`, proposals, WAL fsync and backend commit durations), plus what a
//! Raft operator needs beyond them (per-follower lag, snapshot activity, forwarding).
//!
//! Labels stay bounded: routes are templates, peers are node ids of the membership; never a
//! key or a client address.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::storage::log_store::CommitObserver;
use crate::storage::state_machine::StateObserver;
use crate::types::{NodeId, Raft};

/// Every metric of a node, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    db_files: Vec<(&'static str, PathBuf)>,

    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub term: IntGauge,
    pub leader_changes: IntCounter,
    pub elections: IntCounter,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub last_log_index: IntGauge,
    pub purged_index: IntGauge,
    pub snapshot_index: IntGauge,
    pub members: IntGaugeVec,
    pub peer_matched: IntGaugeVec,
    pub peer_lag: IntGaugeVec,
    pub peer_last_contact: prometheus::GaugeVec,
    pub proposals_committed: IntCounter,
    pub proposals_applied: IntCounter,
    pub proposals_failed: IntCounterVec,
    pub proposals_pending: IntGauge,

    pub log_append_duration: Histogram,
    pub log_append_batch: Histogram,
    pub log_checkpoint_duration: Histogram,
    pub apply_duration: Histogram,
    pub state_flush_duration: Histogram,
    pub entries_applied: IntCounter,
    pub db_size: IntGaugeVec,
    pub snapshot_build_duration: Histogram,
    pub snapshot_install_duration: Histogram,
    pub snapshot_size: IntGauge,
    pub snapshots_built: IntCounter,
    pub snapshots_installed: IntCounter,

    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub forwarded: IntCounterVec,
    pub proposal_commands: Histogram,
    pub read_index_confirmations: IntCounterVec,
    pub rpcs: IntCounterVec,
    pub rpc_duration: HistogramVec,
}

/// Latency buckets from 50 µs to ~26 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.00005, 2.0, 20).unwrap_or_default()
}

macro_rules! reg {
    ($registry:expr, $metric:expr) => {{
        let m = $metric;
        $registry.register(Box::new(m.clone()))?;
        m
    }};
}

impl Metrics {
    /// Creates the metrics of node `id` whose data lives in `data_dir`.
    pub fn new(id: NodeId, data_dir: &std::path::Path) -> Result<Arc<Metrics>, prometheus::Error> {
        let r = Registry::new();
        let info = IntGaugeVec::new(
            Opts::new(
                "raftkv_node_info",
                "Constant 1, labelled with this node's id and version.",
            ),
            &["node_id", "version"],
        )?;
        r.register(Box::new(info.clone()))?;
        info.with_label_values(&[&id.to_string(), env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        let g = |name: &str, help: &str| IntGauge::new(name, help);
        let c = |name: &str, help: &str| IntCounter::new(name, help);
        let h = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        };
        let m = Metrics {
            db_files: vec![
                ("log", data_dir.join("raft-log.redb")),
                ("state", data_dir.join("state.redb")),
            ],
            has_leader: reg!(
                r,
                g("raftkv_raft_has_leader", "1 if this node knows a leader, else 0.")?
            ),
            is_leader: reg!(r, g("raftkv_raft_is_leader", "1 if this node is the leader, else 0.")?),
            term: reg!(r, g("raftkv_raft_term", "The current Raft term.")?),
            leader_changes: reg!(
                r,
                c(
                    "raftkv_raft_leader_changes_seen_total",
                    "Leader changes seen by this node."
                )?
            ),
            elections: reg!(
                r,
                c(
                    "raftkv_raft_elections_started_total",
                    "Elections this node started as a candidate."
                )?
            ),
            commit_index: reg!(
                r,
                g("raftkv_raft_commit_index", "The last log index known to be committed.")?
            ),
            applied_index: reg!(
                r,
                g(
                    "raftkv_raft_applied_index",
                    "The last log index applied to the state machine."
                )?
            ),
            last_log_index: reg!(
                r,
                g("raftkv_raft_last_log_index", "The last log index in this node's log.")?
            ),
            purged_index: reg!(
                r,
                g("raftkv_raft_purged_index", "The last log index purged from the log.")?
            ),
            snapshot_index: reg!(
                r,
                g(
                    "raftkv_raft_snapshot_index",
                    "The last log index in the current snapshot."
                )?
            ),
            members: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new("raftkv_raft_members", "Members of the cluster by role."),
                    &["role"]
                )?
            ),
            peer_matched: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "raftkv_raft_peer_matched_index",
                        "Leader only: last log index replicated to each peer."
                    ),
                    &["peer"]
                )?
            ),
            peer_lag: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "raftkv_raft_peer_lag_entries",
                        "Leader only: entries each peer is behind the leader's log."
                    ),
                    &["peer"]
                )?
            ),
            peer_last_contact: reg!(
                r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "raftkv_raft_peer_last_contact_seconds",
                        "Leader only: seconds since each peer last acknowledged the leader."
                    ),
                    &["peer"]
                )?
            ),
            proposals_committed: reg!(
                r,
                c(
                    "raftkv_raft_proposals_committed_total",
                    "Log entries this node has seen committed."
                )?
            ),
            proposals_applied: reg!(
                r,
                c(
                    "raftkv_raft_proposals_applied_total",
                    "Log entries this node has applied."
                )?
            ),
            proposals_failed: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "raftkv_raft_proposals_failed_total",
                        "Client writes proposed here that failed, by reason."
                    ),
                    &["reason"]
                )?
            ),
            proposals_pending: reg!(
                r,
                g(
                    "raftkv_raft_proposals_pending",
                    "Client writes proposed here and not yet answered."
                )?
            ),

            log_append_duration: reg!(
                r,
                h(
                    "raftkv_storage_log_append_duration_seconds",
                    "Time to write and fsync one group commit of log entries to the journal (etcd: wal_fsync_duration).",
                    latency_buckets()
                )?
            ),
            log_append_batch: reg!(
                r,
                h(
                    "raftkv_storage_log_append_batch_entries",
                    "Log entries written per group commit.",
                    exponential_buckets(1.0, 2.0, 14).unwrap_or_default()
                )?
            ),
            log_checkpoint_duration: reg!(
                r,
                h(
                    "raftkv_storage_log_checkpoint_duration_seconds",
                    "Time to write one checkpoint of journaled log entries into redb (one durable commit).",
                    latency_buckets()
                )?
            ),
            apply_duration: reg!(
                r,
                h(
                    "raftkv_storage_apply_duration_seconds",
                    "Time to apply one batch of committed entries to the state machine's in-memory layer.",
                    latency_buckets()
                )?
            ),
            state_flush_duration: reg!(
                r,
                h(
                    "raftkv_storage_state_flush_duration_seconds",
                    "Time to write applied changes to the state database in one transaction (etcd: backend_commit_duration).",
                    latency_buckets()
                )?
            ),
            entries_applied: reg!(
                r,
                c(
                    "raftkv_storage_entries_applied_total",
                    "Log entries applied to the state machine."
                )?
            ),
            db_size: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new("raftkv_storage_db_size_bytes", "Size of each database file."),
                    &["db"]
                )?
            ),
            snapshot_build_duration: reg!(
                r,
                h(
                    "raftkv_snapshot_build_duration_seconds",
                    "Time to build a snapshot.",
                    latency_buckets()
                )?
            ),
            snapshot_install_duration: reg!(
                r,
                h(
                    "raftkv_snapshot_install_duration_seconds",
                    "Time to install a snapshot received from the leader.",
                    latency_buckets()
                )?
            ),
            snapshot_size: reg!(
                r,
                g(
                    "raftkv_snapshot_size_bytes",
                    "Size of the last snapshot built or installed."
                )?
            ),
            snapshots_built: reg!(r, c("raftkv_snapshots_built_total", "Snapshots built by this node.")?),
            snapshots_installed: reg!(
                r,
                c(
                    "raftkv_snapshots_installed_total",
                    "Snapshots installed from the leader."
                )?
            ),

            http_requests: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "raftkv_http_requests_total",
                        "HTTP requests by route template, method and status code."
                    ),
                    &["route", "method", "code"]
                )?
            ),
            http_duration: reg!(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "raftkv_http_request_duration_seconds",
                        "HTTP request latency by route and method."
                    )
                    .buckets(latency_buckets()),
                    &["route", "method"]
                )?
            ),
            forwarded: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "raftkv_raft_writes_forwarded_total",
                        "Client writes this node sent to the leader (in Propose RPCs), by result."
                    ),
                    &["result"]
                )?
            ),
            read_index_confirmations: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "raftkv_read_index_confirmations_total",
                        "Read indexes this node obtained or gave, each shared by a batch of reads, by how: \
                         round (a heartbeat round), lease, vouch (a follower's call, answered on its \
                         word), echo (this leader's reads, on a follower's later call), leader (a \
                         follower's call to the leader)."
                    ),
                    &["via"]
                )?
            ),
            proposal_commands: reg!(
                r,
                h(
                    "raftkv_raft_proposal_commands",
                    "Client writes per proposal (one Raft entry) this node made or sent to the leader.",
                    exponential_buckets(1.0, 2.0, 13).unwrap_or_default()
                )?
            ),
            rpcs: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "raftkv_grpc_raft_rpcs_total",
                        "Raft RPCs sent, by peer, method and result."
                    ),
                    &["peer", "method", "result"]
                )?
            ),
            rpc_duration: reg!(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "raftkv_grpc_raft_rpc_duration_seconds",
                        "Raft RPC round-trip time by peer and method (etcd: peer_round_trip_time)."
                    )
                    .buckets(latency_buckets()),
                    &["peer", "method"]
                )?
            ),
            registry: r,
        };
        // Series with a fixed label set exist from the start, at 0, so that a dashboard or
        // alert that refers to them never sees "no data" where the truth is "none yet".
        for reason in ["timeout", "leader_changed", "stopped", "error"] {
            m.proposals_failed.with_label_values(&[reason]);
        }
        for result in ["ok", "not_leader", "unreachable", "error"] {
            m.forwarded.with_label_values(&[result]);
        }
        Ok(Arc::new(m))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for (db, path) in &self.db_files {
            if let Ok(meta) = std::fs::metadata(path) {
                self.db_size.with_label_values(&[db]).set(meta.len() as i64);
            }
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Records one HTTP request.
    pub fn http_request(&self, route: &str, method: &str, status: axum::http::StatusCode, elapsed: Duration) {
        self.http_duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
        self.http_requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
    }

    /// Records one Raft RPC to `peer`.
    pub fn rpc(&self, peer: NodeId, method: &str, result: &str, elapsed: Option<Duration>) {
        let peer = peer.to_string();
        self.rpcs.with_label_values(&[&peer, method, result]).inc();
        if let Some(d) = elapsed {
            self.rpc_duration
                .with_label_values(&[&peer, method])
                .observe(d.as_secs_f64());
        }
    }
}

impl CommitObserver for Metrics {
    fn committed(&self, entries: usize, elapsed: Duration) {
        self.log_append_duration.observe(elapsed.as_secs_f64());
        self.log_append_batch.observe(entries as f64);
    }

    fn checkpointed(&self, elapsed: Duration) {
        self.log_checkpoint_duration.observe(elapsed.as_secs_f64());
    }
}

impl StateObserver for Metrics {
    fn applied(&self, entries: usize, elapsed: Duration) {
        self.apply_duration.observe(elapsed.as_secs_f64());
        self.entries_applied.inc_by(entries as u64);
    }
    fn flushed(&self, _keys: usize, elapsed: Duration) {
        self.state_flush_duration.observe(elapsed.as_secs_f64());
    }
    fn snapshot_built(&self, bytes: u64, elapsed: Duration) {
        self.snapshot_build_duration.observe(elapsed.as_secs_f64());
        self.snapshot_size.set(bytes as i64);
        self.snapshots_built.inc();
    }
    fn snapshot_installed(&self, bytes: u64, elapsed: Duration) {
        self.snapshot_install_duration.observe(elapsed.as_secs_f64());
        self.snapshot_size.set(bytes as i64);
        self.snapshots_installed.inc();
    }
}

/// Follows openraft's metrics: updates the Raft gauges and counters, and logs leader changes
/// and elections (the events an operator looks for in logs).
///
/// openraft publishes new metrics several times per write (commit, apply, each follower's
/// progress). Each change is looked at, cheaply, in place: the counters, the indexes and the
/// leader and role that the logs report. The membership and per-peer series, which mean
/// cloning the whole metrics and formatting labels, are refreshed at most every
/// [`PEER_REFRESH`] (and on every change of leader or role): done on every change they cost
/// the three nodes 5% of their processor time per write at 1,000 writes a second.
pub async fn follow_raft(metrics: Arc<Metrics>, raft: Raft) {
    use openraft::async_runtime::WatchReceiver;
    let mut rx = raft.metrics();
    let mut last_leader: Option<NodeId> = None;
    let mut last_state = ServerState::Learner;
    let mut last_committed: Option<u64> = None;
    let mut last_applied: Option<u64> = None;
    let mut peers: std::collections::BTreeSet<String> = Default::default();
    let mut refreshed: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let heavy = {
            let m = rx.borrow_watched();
            let index = |l: &Option<crate::types::LogId>| l.as_ref().map_or(0, |l| l.index) as i64;
            metrics.has_leader.set(m.current_leader.is_some() as i64);
            metrics.is_leader.set((m.state == ServerState::Leader) as i64);
            metrics.term.set(m.current_term as i64);
            metrics.commit_index.set(index(&m.local_committed));
            metrics.applied_index.set(index(&m.last_applied));
            metrics.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
            metrics.purged_index.set(index(&m.purged));
            metrics.snapshot_index.set(index(&m.snapshot));

            let committed = m.local_committed.as_ref().map(|l| l.index);
            if let (Some(prev), Some(now)) = (last_committed, committed) {
                metrics.proposals_committed.inc_by(now.saturating_sub(prev));
            }
            last_committed = committed.or(last_committed);
            let applied = m.last_applied.as_ref().map(|l| l.index);
            if let (Some(prev), Some(now)) = (last_applied, applied) {
                metrics.proposals_applied.inc_by(now.saturating_sub(prev));
            }
            last_applied = applied.or(last_applied);

            let turned = m.current_leader != last_leader || m.state != last_state;
            if m.current_leader != last_leader {
                if let Some(leader) = m.current_leader {
                    metrics.leader_changes.inc();
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
                    metrics.elections.inc();
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

/// How often, at most, the membership and per-peer series follow openraft's metrics.
const PEER_REFRESH: Duration = Duration::from_millis(100);

/// The membership gauges, and the per-peer series, which exist only while this node leads
/// (only the leader knows them).
fn refresh_members(
    metrics: &Metrics,
    m: &openraft::RaftMetrics<crate::types::TypeConfig>,
    peers: &mut std::collections::BTreeSet<String>,
) {
    use openraft::Instant as _;
    let membership = m.membership_config.membership();
    let voters = membership.voter_ids().count();
    let all = membership.nodes().count();
    metrics.members.with_label_values(&["voter"]).set(voters as i64);
    metrics
        .members
        .with_label_values(&["learner"])
        .set((all - voters) as i64);

    let mut now_peers = std::collections::BTreeSet::new();
    if let Some(repl) = &m.replication {
        let last = m.last_log_index.unwrap_or(0);
        let now = openraft::alias::InstantOf::<crate::types::TypeConfig>::now();
        for (peer, matched) in repl {
            if *peer == m.id {
                continue;
            }
            let p = peer.to_string();
            let matched = matched.as_ref().map_or(0, |l| l.index);
            metrics.peer_matched.with_label_values(&[&p]).set(matched as i64);
            metrics
                .peer_lag
                .with_label_values(&[&p])
                .set(last.saturating_sub(matched) as i64);
            if let Some(Some(t)) = m.heartbeat.as_ref().and_then(|h| h.get(peer)) {
                let secs = now.saturating_duration_since(**t).as_secs_f64();
                metrics.peer_last_contact.with_label_values(&[&p]).set(secs);
            }
            now_peers.insert(p);
        }
    }
    for gone in peers.difference(&now_peers) {
        let _ = metrics.peer_matched.remove_label_values(&[gone]);
        let _ = metrics.peer_lag.remove_label_values(&[gone]);
        let _ = metrics.peer_last_contact.remove_label_values(&[gone]);
    }
    *peers = now_peers;
}
