//! The operator's own metrics: reconciles, errors, durations, membership actions, and per
//! cluster the members and ready members (bounded by the number of RaftClusters).

use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::crd::MemberStatus;
use crate::planner::Observed;

pub struct OperatorMetrics {
    registry: Registry,
    pub reconciles: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: Histogram,
    pub actions: IntCounterVec,
    pub ready_members: IntGaugeVec,
    pub voters: IntGaugeVec,
    pub desired: IntGaugeVec,
    pub certificate_expiry: IntGaugeVec,
    pub is_leader: IntGauge,
}

impl OperatorMetrics {
    pub fn new() -> Result<OperatorMetrics, prometheus::Error> {
        let r = Registry::new();
        let m = OperatorMetrics {
            reconciles: IntCounterVec::new(
                Opts::new("raftkv_operator_reconciles_total", "Reconciles by result."),
                &["result"],
            )?,
            errors: IntCounterVec::new(
                Opts::new("raftkv_operator_reconcile_errors_total", "Reconcile errors by kind."),
                &["kind"],
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new("raftkv_operator_reconcile_duration_seconds", "Time per reconcile.")
                    .buckets(exponential_buckets(0.001, 2.0, 16)?),
            )?,
            actions: IntCounterVec::new(
                Opts::new(
                    "raftkv_operator_membership_actions_total",
                    "Actions taken, by kind and result.",
                ),
                &["action", "result"],
            )?,
            ready_members: IntGaugeVec::new(
                Opts::new(
                    "raftkv_operator_cluster_ready_members",
                    "Members whose pod is ready, per cluster.",
                ),
                &["namespace", "name"],
            )?,
            voters: IntGaugeVec::new(
                Opts::new("raftkv_operator_cluster_voters", "Voting members, per cluster."),
                &["namespace", "name"],
            )?,
            desired: IntGaugeVec::new(
                Opts::new(
                    "raftkv_operator_cluster_desired_replicas",
                    "spec.replicas, per cluster.",
                ),
                &["namespace", "name"],
            )?,
            certificate_expiry: IntGaugeVec::new(
                Opts::new(
                    "raftkv_operator_certificate_expiry_timestamp_seconds",
                    "When the first of a cluster's certificates expires (Unix time), per cluster with TLS.",
                ),
                &["namespace", "name"],
            )?,
            is_leader: IntGauge::new("raftkv_operator_is_leader", "1 if this replica holds the leader lease.")?,
            registry: r,
        };
        m.registry.register(Box::new(m.reconciles.clone()))?;
        m.registry.register(Box::new(m.errors.clone()))?;
        m.registry.register(Box::new(m.duration.clone()))?;
        m.registry.register(Box::new(m.actions.clone()))?;
        m.registry.register(Box::new(m.ready_members.clone()))?;
        m.registry.register(Box::new(m.voters.clone()))?;
        m.registry.register(Box::new(m.desired.clone()))?;
        m.registry.register(Box::new(m.certificate_expiry.clone()))?;
        m.registry.register(Box::new(m.is_leader.clone()))?;
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    pub fn reconciled<T, E>(&self, result: &Result<T, E>, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
        self.reconciles
            .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
            .inc();
    }

    pub fn members(&self, ns: &str, name: &str, members: &[MemberStatus], o: &Observed) {
        let ready = crate::status::ready_members(members, o);
        let voters = members.iter().filter(|m| m.role != "learner").count();
        self.ready_members.with_label_values(&[ns, name]).set(ready as i64);
        self.voters.with_label_values(&[ns, name]).set(voters as i64);
        self.desired.with_label_values(&[ns, name]).set(o.desired as i64);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
