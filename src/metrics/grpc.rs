//! The Raft RPCs this node sends: how many, by peer, method and result, and their round-trip
//! time.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::{latency_buckets, register, Metrics};
use crate::types::NodeId;

pub(super) struct RpcSeries {
    rpcs: IntCounterVec,
    duration: HistogramVec,
}

impl RpcSeries {
    pub(super) fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        Ok(RpcSeries {
            rpcs: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "raftkv_grpc_raft_rpcs_total",
                        "Raft RPCs sent, by peer, method and result.",
                    ),
                    &["peer", "method", "result"],
                )?,
            )?,
            duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "raftkv_grpc_raft_rpc_duration_seconds",
                        "Raft RPC round-trip time by peer and method (etcd: peer_round_trip_time).",
                    )
                    .buckets(latency_buckets()),
                    &["peer", "method"],
                )?,
            )?,
        })
    }
}

impl Metrics {
    /// Records one Raft RPC to `peer`.
    pub(crate) fn rpc(&self, peer: NodeId, method: &str, result: &str, elapsed: Option<Duration>) {
        let peer = peer.to_string();
        self.grpc.rpcs.with_label_values(&[&peer, method, result]).inc();
        if let Some(d) = elapsed {
            self.grpc
                .duration
                .with_label_values(&[&peer, method])
                .observe(d.as_secs_f64());
        }
    }
}
