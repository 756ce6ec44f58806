//! What the replica layer (`crate::replica`) records: the proposals it makes or forwards to the
//! leader, how forwarded writes fared, and how read indexes were confirmed.

use prometheus::{exponential_buckets, Histogram, IntCounterVec, IntGauge, Opts, Registry};

use super::{histogram, register};

pub(crate) struct ReplicaSeries {
    /// Client writes per proposal (one Raft entry) this node made or sent to the leader.
    pub(crate) proposal_commands: Histogram,
    /// Client writes sent to the leader, by result.
    pub(crate) forwarded: IntCounterVec,
    /// Read indexes obtained or given, by how they were confirmed.
    pub(crate) read_index_confirmations: IntCounterVec,
}

impl ReplicaSeries {
    pub(super) fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        // This series and the next are registered for their names (etcd's `proposals_failed`
        // and `proposals_pending`); nothing records into them yet, so they stay at 0.
        let proposals_failed = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "raftkv_raft_proposals_failed_total",
                    "Client writes proposed here that failed, by reason.",
                ),
                &["reason"],
            )?,
        )?;
        register(
            r,
            IntGauge::new(
                "raftkv_raft_proposals_pending",
                "Client writes proposed here and not yet answered.",
            )?,
        )?;
        let series = ReplicaSeries {
            forwarded: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "raftkv_raft_writes_forwarded_total",
                        "Client writes this node sent to the leader (in Propose RPCs), by result.",
                    ),
                    &["result"],
                )?,
            )?,
            read_index_confirmations: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "raftkv_read_index_confirmations_total",
                        "Read indexes this node obtained or gave, each shared by a batch of reads, by how: \
                         round (a heartbeat round), lease, vouch (a follower's call, answered on its \
                         word), echo (this leader's reads, on a follower's later call), leader (a \
                         follower's call to the leader).",
                    ),
                    &["via"],
                )?,
            )?,
            proposal_commands: histogram(
                r,
                "raftkv_raft_proposal_commands",
                "Client writes per proposal (one Raft entry) this node made or sent to the leader.",
                exponential_buckets(1.0, 2.0, 13).unwrap_or_default(),
            )?,
        };
        // Series with a fixed label set exist from the start, at 0, so that a dashboard or
        // alert that refers to them never sees "no data" where the truth is "none yet".
        for reason in ["timeout", "leader_changed", "stopped", "error"] {
            proposals_failed.with_label_values(&[reason]);
        }
        for result in ["ok", "not_leader", "unreachable", "error"] {
            series.forwarded.with_label_values(&[result]);
        }
        Ok(series)
    }
}
