//! Prometheus metrics, named after etcd's where there is an equivalent (`has_leader`,
//! `leader_changes_seen_total`, proposals, WAL fsync and backend commit durations), plus what a
//! Raft operator needs beyond them (per-follower lag, snapshot activity, forwarding).
//!
//! Labels stay bounded: routes are templates, peers are node ids of the membership; never a
//! key or a client address.
//!
//! Each area registers its own series, beside the code that records them: [`raft`] (leader,
//! term, log indexes, membership: followed from openraft's metrics), [`replication`] (the
//! leader's view of each follower, followed likewise), [`replica`] (proposals, forwarding and
//! read indexes, recorded by the replica layer), [`storage`] (the log, the state machine and
//! snapshots, through the storage layer's observer traits), [`http`] (the client API),
//! [`grpc`] (Raft RPCs) and [`process`] (this node's identity and the process collector).

mod grpc;
mod http;
mod process;
mod raft;
mod replica;
mod replication;
mod storage;

use std::path::Path;
use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

pub(crate) use self::raft::follow_raft;
use crate::types::NodeId;

/// Every metric of a node, registered in its own registry.
pub(crate) struct Metrics {
    registry: Registry,
    raft: raft::RaftSeries,
    replication: replication::ReplicationSeries,
    /// What the replica layer (`crate::replica`) records.
    pub(crate) replica: replica::ReplicaSeries,
    storage: storage::StorageSeries,
    http: http::HttpSeries,
    grpc: grpc::RpcSeries,
}

impl Metrics {
    /// Creates the metrics of node `id` whose data lives in `data_dir`.
    pub(crate) fn new(id: NodeId, data_dir: &Path) -> Result<Arc<Metrics>, prometheus::Error> {
        let r = Registry::new();
        process::register_node(&r, id)?;
        let m = Metrics {
            raft: raft::RaftSeries::new(&r)?,
            replication: replication::ReplicationSeries::new(&r)?,
            replica: replica::ReplicaSeries::new(&r)?,
            storage: storage::StorageSeries::new(&r, data_dir)?,
            http: http::HttpSeries::new(&r)?,
            grpc: grpc::RpcSeries::new(&r)?,
            registry: r,
        };
        Ok(Arc::new(m))
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        self.storage.measure_files();
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Registers `collector` in `registry` and hands it back, to be kept and recorded into.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    register(registry, IntGauge::new(name, help)?)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    register(registry, IntCounter::new(name, help)?)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Result<Histogram, prometheus::Error> {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?,
    )
}

/// Latency buckets from 50 µs to ~26 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.00005, 2.0, 20).unwrap_or_default()
}
