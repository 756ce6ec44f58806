//! One reconcile: observe (API server + the nodes' admin service) -> plan (pure) -> apply the
//! owned objects -> carry out at most one membership action -> write status.

mod act;
mod apply;
mod auth;
mod certificates;
mod observe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::Recorder;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use crate::children::OperatorPods;
use crate::crd::RaftCluster;
use crate::metrics::OperatorMetrics;
use crate::names::{self, Names};
use crate::nodes::Nodes;
use crate::planner::{self, Action, Plan};
use crate::status::{self, StatusInput};
use crate::tls::Mode;
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
    /// The operator's own pods, which each cluster's NetworkPolicy admits to the peer port;
    /// `None`: no NetworkPolicies are made (the operator does not know who it is).
    pub operator_pods: Option<OperatorPods>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("authentication: {0}")]
    Auth(String),
}

impl Error {
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Serialize(_) => "serialize",
            Error::Tls(_) => "tls",
            Error::Auth(_) => "auth",
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
    if s.tls.enabled {
        crate::tls::lifetime(&s.tls).map_err(Error::InvalidSpec)?;
    }
    if let Some(r) = &s.tls.issuer_ref {
        if r.name.trim().is_empty() {
            return Err(Error::InvalidSpec("tls.issuerRef.name must not be empty".into()));
        }
    }
    Ok(())
}

/// A running cluster keeps the TLS it was made with: pods with and without TLS (or with
/// certificates from two CAs) cannot talk to each other, so a rollout would stop half-way.
fn tls_unchanged(rc: &RaftCluster, sts: Option<&StatefulSet>) -> Result<(), Error> {
    let Some(args) = sts
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.args.as_ref())
    else {
        return Ok(());
    };
    let (was, wanted) = (Mode::of_args(args), Mode::of(&rc.spec.tls));
    if was != wanted {
        return Err(Error::InvalidSpec(format!(
            "the cluster runs with {} and spec.tls asks for {}: TLS cannot change on a running cluster; \
             set spec.tls back, or make a new cluster and restore a backup into it",
            was.describe(),
            wanted.describe()
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
    let sts = Api::<StatefulSet>::namespaced(ctx.client.clone(), &n.namespace)
        .get_opt(&n.name)
        .await?;
    if let Err(e) = validate(rc).and_then(|()| tls_unchanged(rc, sts.as_ref())) {
        apply::write_invalid_status(rc, ctx, &n, &e).await?;
        return Err(e);
    }

    // What the operator needs to call the nodes: its certificate, root's password.
    let mut certs = certificates::prepare(rc, ctx, &n).await?;
    let credentials = auth::root_credentials(rc, ctx, &n).await?;
    let access = certs.access(credentials)?;

    let obs = observe::observe(rc, ctx, &n, sts, &access).await?;
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
    // Every pod the StatefulSet has or is about to have finds its certificate at its start.
    let highest_pod = obs.observed.pods.keys().next_back().map_or(0, |o| o + 1);
    let pods = plan
        .sts_replicas
        .max(obs.observed.sts_replicas.unwrap_or(0))
        .max(highest_pod);
    certificates::issue_pods(&mut certs, rc, ctx, &n, pods, &obs.ips).await?;
    apply::apply_children(rc, ctx, &n, plan.sts_replicas, voters.max(rc.spec.replicas as u32)).await?;

    let (last_action, action_error) = if rc.spec.paused {
        (None, None)
    } else {
        act::act(rc, ctx, &n, &obs, &access, &plan.action).await
    };
    let (auth_enabled, auth_error) = if obs.members.is_some() {
        auth::ensure(rc, ctx, &n, &obs, &access).await
    } else {
        (None, None)
    };
    let action_error = action_error.or(auth_error);
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
        certificates_not_after: certs.validity.map(|v| Time(v.not_after)),
        auth_enabled: auth_enabled.or_else(|| rc.status.as_ref().and_then(|s| s.auth_enabled)),
    });
    if let Some(v) = certs.validity {
        ctx.metrics
            .certificate_expiry
            .with_label_values(&[&n.namespace, &n.name])
            .set(v.not_after.as_second());
    }
    if rc.status.as_ref() != Some(&st) {
        apply::patch_status(rc, ctx, &n, &st).await?;
    }
    let next = match plan.action {
        Action::Steady | Action::Blocked(_) => Duration::from_secs(30),
        _ if rc.spec.paused => Duration::from_secs(30),
        _ => Duration::from_secs(2),
    };
    // Back when the first certificate is due, not up to a requeue period later.
    let renewal = certs.validity.map(|v| {
        let until = v.renew_at.duration_since(jiff::Timestamp::now());
        Duration::try_from(until).unwrap_or_default() + Duration::from_secs(1)
    });
    Ok(Requeue::requeue(renewal.map_or(next, |r| r.min(next))))
}

/// Invalid spec: wait for the user to change it; requeue for transient errors with backoff.
pub fn error_policy(_rc: Arc<RaftCluster>, e: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.errors.with_label_values(&[e.kind()]).inc();
    tracing::warn!(error = %e, "reconcile failed");
    match e {
        Error::InvalidSpec(_) => Requeue::await_change(),
        // A Secret that is not as it must be waits for a person; Secrets are not watched, so
        // it is looked at again.
        Error::Tls(_) | Error::Auth(_) => Requeue::requeue(Duration::from_secs(30)),
        _ => Requeue::requeue(Duration::from_secs(5)),
    }
}
