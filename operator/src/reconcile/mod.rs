//! One reconcile: observe (API server + the nodes' admin service) -> plan (pure) -> apply the
//! owned objects -> carry out at most one membership action -> write status.

mod act;
mod apply;
mod observe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::Recorder;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use crate::crd::RaftCluster;
use crate::metrics::OperatorMetrics;
use crate::names::{self, Names};
use crate::nodes::Nodes;
use crate::planner::{self, Action, Plan};
use crate::status::{self, StatusInput};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "raftkv-operator";

/// How the operator reaches a pod's admin port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AddressMode {
    /// `<pod>.<headless service>.<namespace>.svc.<cluster domain>`
    Dns,
    /// The pod's IP from its status.
    PodIp,
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: kube::Client,
    pub nodes: Arc<dyn Nodes>,
    pub cluster_domain: String,
    pub address_mode: AddressMode,
    pub metrics: Arc<OperatorMetrics>,
    pub recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Serialize(_) => "serialize",
        }
    }
}

fn validate(rc: &RaftCluster) -> Result<(), Error> {
    let s = &rc.spec;
    if !(1..=9).contains(&s.replicas) {
        return Err(Error::InvalidSpec(format!(
            "replicas must be 1..=9, not {}",
            s.replicas
        )));
    }
    if s.image.trim().is_empty() {
        return Err(Error::InvalidSpec("image must not be empty".into()));
    }
    if s.raft.election_timeout_ms <= s.raft.heartbeat_ms * 2 {
        return Err(Error::InvalidSpec(format!(
            "raft.electionTimeoutMs ({}) must exceed twice raft.heartbeatMs ({})",
            s.raft.election_timeout_ms, s.raft.heartbeat_ms
        )));
    }
    Ok(())
}

pub async fn reconcile(rc: Arc<RaftCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        namespace = %rc.namespace().unwrap_or_default(),
        name = %rc.name_any()
    );
    let result = reconcile_inner(&rc, &ctx).instrument(span).await;
    ctx.metrics.reconciled(&result, started.elapsed());
    result
}

async fn reconcile_inner(rc: &RaftCluster, ctx: &Context) -> Result<Requeue, Error> {
    if rc.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children; PVCs stay.
        return Ok(Requeue::await_change());
    }
    let n = Names::of(rc, &ctx.cluster_domain);
    if let Err(e) = validate(rc) {
        apply::write_invalid_status(rc, ctx, &n, &e).await?;
        return Err(e);
    }

    let obs = observe::observe(rc, ctx, &n).await?;
    let plan = if rc.spec.paused {
        Plan {
            sts_replicas: obs.observed.sts_replicas.unwrap_or(1).max(1),
            action: Action::Wait("paused".into()),
        }
    } else {
        planner::plan(&obs.observed)
    };
    let voters = obs
        .members
        .as_ref()
        .map_or(0, |m| m.members.iter().filter(|m| m.voter).count() as u32);
    apply::apply_children(rc, ctx, &n, plan.sts_replicas, voters.max(rc.spec.replicas as u32)).await?;

    let (last_action, action_error) = if rc.spec.paused {
        (None, None)
    } else {
        act::act(rc, ctx, &n, &obs, &plan.action).await
    };
    tracing::debug!(namespace = %n.namespace, name = %n.name, action = ?plan.action, "planned");

    let members = observe::member_statuses(&obs, &n);
    ctx.metrics.members(&n.namespace, &n.name, &members, &obs.observed);
    let leader_pod = obs
        .members
        .as_ref()
        .and_then(|m| m.members.iter().find(|x| x.leader))
        .and_then(|l| n.ordinal_of(&l.raft_addr))
        .map(|o| n.pod(o));
    let st = status::build(&StatusInput {
        observed: &obs.observed,
        plan: &plan,
        paused: rc.spec.paused,
        generation: rc.metadata.generation,
        selector: names::selector_string(&n.name),
        members,
        leader_pod,
        cluster_id: obs.cluster_id.clone(),
        last_action,
        action_error,
        previous: rc.status.as_ref(),
        now: Time(jiff::Timestamp::now()),
    });
    if rc.status.as_ref() != Some(&st) {
        apply::patch_status(rc, ctx, &n, &st).await?;
    }
    Ok(match plan.action {
        Action::Steady | Action::Blocked(_) => Requeue::requeue(Duration::from_secs(30)),
        _ if rc.spec.paused => Requeue::requeue(Duration::from_secs(30)),
        _ => Requeue::requeue(Duration::from_secs(2)),
    })
}

/// Invalid spec: wait for the user to change it; requeue for transient errors with backoff.
pub fn error_policy(_rc: Arc<RaftCluster>, e: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.errors.with_label_values(&[e.kind()]).inc();
    tracing::warn!(error = %e, "reconcile failed");
    match e {
        Error::InvalidSpec(_) => Requeue::await_change(),
        _ => Requeue::requeue(Duration::from_secs(5)),
    }
}
