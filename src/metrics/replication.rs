//! The leader's view of each follower: how far its log is replicated and when it last answered.
//! Only the leader knows these, so the series exist only while this node leads; they follow
//! openraft's metrics with the membership (see [`super::follow_raft`]).

use std::collections::BTreeSet;

use openraft::Instant as _;
use openraft::RaftMetrics;
use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};

use super::register;
use crate::types::TypeConfig;

pub(super) struct ReplicationSeries {
    peer_matched: IntGaugeVec,
    peer_lag: IntGaugeVec,
    peer_last_contact: GaugeVec,
}

impl ReplicationSeries {
    pub(super) fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        Ok(ReplicationSeries {
            peer_matched: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "raftkv_raft_peer_matched_index",
                        "Leader only: last log index replicated to each peer.",
                    ),
                    &["peer"],
                )?,
            )?,
            peer_lag: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "raftkv_raft_peer_lag_entries",
                        "Leader only: entries each peer is behind the leader's log.",
                    ),
                    &["peer"],
                )?,
            )?,
            peer_last_contact: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "raftkv_raft_peer_last_contact_seconds",
                        "Leader only: seconds since each peer last acknowledged the leader.",
                    ),
                    &["peer"],
                )?,
            )?,
        })
    }

    /// Sets the series of each peer openraft reports progress for, and removes those of
    /// `peers` (the ones set last time) that it no longer does.
    pub(super) fn refresh_peers(&self, m: &RaftMetrics<TypeConfig>, peers: &mut BTreeSet<String>) {
        let mut now_peers = BTreeSet::new();
        if let Some(repl) = &m.replication {
            let last = m.last_log_index.unwrap_or(0);
            let now = openraft::alias::InstantOf::<TypeConfig>::now();
            for (peer, matched) in repl {
                if *peer == m.id {
                    continue;
                }
                let p = peer.to_string();
                let matched = matched.as_ref().map_or(0, |l| l.index);
                self.peer_matched.with_label_values(&[&p]).set(matched as i64);
                self.peer_lag
                    .with_label_values(&[&p])
                    .set(last.saturating_sub(matched) as i64);
                if let Some(Some(t)) = m.heartbeat.as_ref().and_then(|h| h.get(peer)) {
                    let secs = now.saturating_duration_since(**t).as_secs_f64();
                    self.peer_last_contact.with_label_values(&[&p]).set(secs);
                }
                now_peers.insert(p);
            }
        }
        for gone in peers.difference(&now_peers) {
            let _ = self.peer_matched.remove_label_values(&[gone]);
            let _ = self.peer_lag.remove_label_values(&[gone]);
            let _ = self.peer_last_contact.remove_label_values(&[gone]);
        }
        *peers = now_peers;
    }
}
