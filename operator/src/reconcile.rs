//! One reconcile: observe (API server + the nodes' admin service) -> plan (pure) -> apply the
//! owned objects -> carry out at most one membership action -> write status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use raftkv::pb::admin as pb;
use serde::Serialize;
use serde_json::json;
use tracing::Instrument;

use crate::children::{self, Names, HTTP_PORT, RAFT_PORT};
use crate::crd::{LastAction, MemberStatus, RaftCluster, RaftClusterStatus};
use crate::metrics::OperatorMetrics;
use crate::nodes::Nodes;
use crate::planner::{self, Action, ClusterView, Member, NodeState, Observed, Plan, PodState};
use crate::status::{self, StatusInput};

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

/// What observing found, beyond the planner's input: details for status and actions.
struct Observation {
    observed: Observed,
    /// Admin address by ordinal (running pods).
    addrs: BTreeMap<u32, String>,
    members: Option<pb::MembersResponse>,
    cluster_id: Option<String>,
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
        write_invalid_status(rc, ctx, &n, &e).await?;
        return Err(e);
    }

    let obs = observe(rc, ctx, &n).await?;
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
    apply_children(rc, ctx, &n, plan.sts_replicas, voters.max(rc.spec.replicas as u32)).await?;

    let (last_action, action_error) = if rc.spec.paused {
        (None, None)
    } else {
        act(rc, ctx, &n, &obs, &plan.action).await
    };
    tracing::debug!(namespace = %n.namespace, name = %n.name, action = ?plan.action, "planned");

    let members = member_statuses(&obs, &n);
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
        selector: children::selector_string(&n.name),
        members,
        leader_pod,
        cluster_id: obs.cluster_id.clone(),
        last_action,
        action_error,
        previous: rc.status.as_ref(),
        now: Time(jiff::Timestamp::now()),
    });
    if rc.status.as_ref() != Some(&st) {
        patch_status(rc, ctx, &n, &st).await?;
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

async fn observe(rc: &RaftCluster, ctx: &Context, n: &Names) -> Result<Observation, Error> {
    let ns = &n.namespace;
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let selector = children::selector_string(&n.name);
    let sts = sts_api.get_opt(&n.name).await?;
    let pods = pods_api.list(&ListParams::default().labels(&selector)).await?;
    let pvcs = pvc_api.list(&ListParams::default().labels(&selector)).await?;

    let mut pod_states = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for pod in &pods.items {
        let name = pod.name_any();
        let Some(ord) = n.ordinal_of(&name) else { continue };
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if running && !terminating {
            let addr = match ctx.address_mode {
                AddressMode::Dns => Some(format!("{}:{RAFT_PORT}", n.pod_host(ord))),
                AddressMode::PodIp => status
                    .and_then(|s| s.pod_ip.clone())
                    .map(|ip| format!("{ip}:{RAFT_PORT}")),
            };
            if let Some(a) = addr {
                addrs.insert(ord, a);
            }
        }
        pod_states.insert(
            ord,
            PodState {
                name,
                running,
                ready,
                terminating,
                node: None,
            },
        );
    }

    // Ask every running node about itself, concurrently.
    let answers = join_all(addrs.iter().map(|(ord, addr)| {
        let nodes = ctx.nodes.clone();
        let (ord, addr) = (*ord, addr.clone());
        async move { (ord, nodes.status(addr).await) }
    }))
    .await;
    let mut statuses = BTreeMap::new();
    for (ord, answer) in answers {
        match answer {
            Ok(s) => {
                if let Some(p) = pod_states.get_mut(&ord) {
                    p.node = Some(NodeState {
                        id: s.id,
                        has_membership: !s.members.is_empty(),
                        member_of_own_view: s.members.iter().any(|m| m.id == s.id),
                    });
                }
                statuses.insert(ord, s);
            }
            Err(e) => tracing::debug!(ordinal = ord, error = %e, "node not answering"),
        }
    }
    let initialized = statuses.values().any(|s| !s.members.is_empty());
    let cluster_id = statuses.values().map(|s| s.cluster_id.clone()).find(|c| !c.is_empty());

    // The membership as the leader sees it (any member forwards the call to the leader).
    let mut members = None;
    for (ord, s) in &statuses {
        if !s.members.iter().any(|m| m.id == s.id) {
            continue;
        }
        if let Ok(m) = ctx.nodes.members(addrs[ord].clone()).await {
            if m.leader_id != 0 {
                members = Some(m);
                break;
            }
        }
    }
    let cluster = members.as_ref().map(|m| ClusterView {
        leader: m.leader_id,
        joint: m.joint,
        members: m
            .members
            .iter()
            .map(|x| Member {
                id: x.id,
                ordinal: n.ordinal_of(&x.raft_addr),
                voter: x.voter,
                healthy: member_healthy(x),
                lag: x.lag,
            })
            .collect(),
    });
    let pvc_ordinals: BTreeSet<u32> = pvcs
        .items
        .iter()
        .filter_map(|p| n.ordinal_of(p.name_any().strip_prefix(&format!("{}-", children::DATA_VOLUME))?))
        .collect();
    Ok(Observation {
        observed: Observed {
            desired: rc.spec.replicas.max(1) as u32,
            sts_replicas: sts.and_then(|s| s.spec?.replicas).map(|r| r.max(0) as u32),
            pods: pod_states,
            pvcs: pvc_ordinals,
            initialized,
            cluster,
        },
        addrs,
        members,
        cluster_id,
    })
}

/// Reachable and caught up, as the leader sees it.
fn member_healthy(m: &pb::MemberStatus) -> bool {
    m.leader || (m.last_contact_ms.is_some_and(|ms| ms < 5_000) && m.lag.is_some_and(|l| l <= 1_000))
}

fn member_statuses(obs: &Observation, n: &Names) -> Vec<MemberStatus> {
    let Some(m) = &obs.members else { return Vec::new() };
    m.members
        .iter()
        .map(|x| {
            let pod = n
                .ordinal_of(&x.raft_addr)
                .and_then(|o| obs.observed.pods.get(&o))
                .filter(|p| p.node.as_ref().is_some_and(|node| node.id == x.id))
                .map(|p| p.name.clone());
            MemberStatus {
                id: x.id,
                pod,
                role: if x.leader {
                    "leader"
                } else if x.voter {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                raft_address: x.raft_addr.clone(),
                http_address: x.http_addr.clone(),
                healthy: member_healthy(x),
                lag: x.lag,
            }
        })
        .collect()
}

async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj))
        .await?;
    Ok(())
}

async fn apply_children(rc: &RaftCluster, ctx: &Context, n: &Names, replicas: u32, voters: u32) -> Result<(), Error> {
    let ns = &n.namespace;
    let c = ctx.client.clone();
    let svc: Api<Service> = Api::namespaced(c.clone(), ns);
    apply(&svc, &n.headless, &children::headless_service(rc, n)).await?;
    apply(&svc, &n.name, &children::client_service(rc, n)).await?;
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), ns);
    apply(&sts, &n.name, &children::statefulset(rc, n, replicas)).await?;
    let pdb: Api<PodDisruptionBudget> = Api::namespaced(c, ns);
    if rc.spec.pod_disruption_budget.enabled {
        apply(&pdb, &n.name, &children::pdb(rc, n, voters)).await?;
    } else if pdb.get_opt(&n.name).await?.is_some() {
        pdb.delete(&n.name, &DeleteParams::default()).await?;
    }
    Ok(())
}

/// The admin address of a member other than `not`, preferring the leader.
fn via(obs: &Observation, not: Option<u64>) -> Option<String> {
    let m = obs.members.as_ref()?;
    let mut candidates: Vec<&pb::MemberStatus> = m.members.iter().filter(|x| Some(x.id) != not).collect();
    candidates.sort_by_key(|x| !x.leader);
    candidates.iter().find_map(|x| {
        obs.observed
            .pods
            .iter()
            .find(|(_, p)| p.node.as_ref().is_some_and(|node| node.id == x.id))
            .and_then(|(ord, _)| obs.addrs.get(ord).cloned())
    })
}

fn add_request(n: &Names, ordinal: u32, id: u64, catch_up_ms: u64) -> pb::AddMemberRequest {
    pb::AddMemberRequest {
        id,
        raft_addr: format!("{}:{RAFT_PORT}", n.pod_host(ordinal)),
        http_addr: format!("{}:{HTTP_PORT}", n.pod_host(ordinal)),
        catch_up_timeout_ms: catch_up_ms,
    }
}

/// Carries out the planned action; returns what to record as the last action and, if it
/// failed, why.
async fn act(
    rc: &RaftCluster,
    ctx: &Context,
    n: &Names,
    obs: &Observation,
    action: &Action,
) -> (Option<LastAction>, Option<String>) {
    let no_member = || "no member can be reached".to_string();
    let (member, ordinal, result): (Option<u64>, Option<u32>, Result<String, String>) = match action {
        Action::Steady | Action::Wait(_) => return (None, None),
        Action::Blocked(m) => {
            publish(ctx, rc, EventType::Warning, "Blocked", m).await;
            return (None, None);
        }
        Action::Initialize { ordinal } => {
            let node = obs.observed.pods.get(ordinal).and_then(|p| p.node.clone());
            match (node, obs.addrs.get(ordinal)) {
                (Some(node), Some(addr)) => {
                    let me = pb::Member {
                        id: node.id,
                        raft_addr: format!("{}:{RAFT_PORT}", n.pod_host(*ordinal)),
                        http_addr: format!("{}:{HTTP_PORT}", n.pod_host(*ordinal)),
                        voter: true,
                    };
                    (
                        Some(node.id),
                        Some(*ordinal),
                        ctx.nodes.initialize(addr.clone(), vec![me]).await,
                    )
                }
                _ => (None, Some(*ordinal), Err("pod 0 is not reachable".into())),
            }
        }
        Action::AddLearner { ordinal, id } => {
            let r = match via(obs, None) {
                Some(addr) => ctx.nodes.add_learner(addr, add_request(n, *ordinal, *id, 0)).await,
                None => Err(no_member()),
            };
            (Some(*id), Some(*ordinal), r)
        }
        Action::Promote { ordinal, id } => {
            let r = match via(obs, None) {
                Some(addr) => ctx.nodes.promote(addr, add_request(n, *ordinal, *id, 10_000)).await,
                None => Err(no_member()),
            };
            (Some(*id), Some(*ordinal), r)
        }
        Action::TransferLeadership { from } => {
            let r = match via(obs, None) {
                Some(addr) => ctx.nodes.transfer_leadership(addr, 0).await,
                None => Err(no_member()),
            };
            (Some(*from), None, r)
        }
        Action::RemoveMember { id, ordinal, .. } => {
            // The planner checked that the healthy voters left keep a quorum; `force` only
            // lifts the node's generic rails (e.g. 3 -> 2 voters), which the spec asked for.
            let r = match via(obs, Some(*id)) {
                Some(addr) => ctx.nodes.remove(addr, *id, true).await,
                None => Err(no_member()),
            };
            (Some(*id), *ordinal, r)
        }
        Action::ResetPod { ordinal } => {
            let r = reset_pod(ctx, n, *ordinal).await;
            (None, Some(*ordinal), r)
        }
        Action::DeletePvc { ordinal } => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &n.namespace);
            let r = api
                .delete(&n.pvc(*ordinal), &DeleteParams::default())
                .await
                .map(|_| format!("deleted volume {}", n.pvc(*ordinal)))
                .map_err(|e| e.to_string());
            (None, Some(*ordinal), r)
        }
    };
    let kind = action.kind();
    ctx.metrics
        .actions
        .with_label_values(&[kind, if result.is_ok() { "ok" } else { "error" }])
        .inc();
    let pod = ordinal.map(|o| n.pod(o));
    match result {
        Ok(msg) => {
            tracing::info!(namespace = %n.namespace, name = %n.name, action = kind, member = ?member, pod = ?pod, "{msg}");
            publish(ctx, rc, EventType::Normal, kind, &msg).await;
            let last = LastAction {
                action: kind.into(),
                member,
                pod,
                message: msg,
                time: Time(jiff::Timestamp::now()),
            };
            (Some(last), None)
        }
        Err(e) => {
            tracing::warn!(namespace = %n.namespace, name = %n.name, action = kind, member = ?member, error = %e, "action failed");
            publish(ctx, rc, EventType::Warning, &format!("{kind}Failed"), &e).await;
            (None, Some(e))
        }
    }
}

/// Recreates a pod with an empty volume: delete the claim (it goes once the pod is gone),
/// then the pod; the StatefulSet brings the pod back with a new claim.
async fn reset_pod(ctx: &Context, n: &Names, ordinal: u32) -> Result<String, String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &n.namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &n.namespace);
    if let Err(e) = pvcs.delete(&n.pvc(ordinal), &DeleteParams::default()).await {
        if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
            return Err(e.to_string());
        }
    }
    pods.delete(&n.pod(ordinal), &DeleteParams::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "recreating {} with an empty volume: its data belonged to a removed member",
        n.pod(ordinal)
    ))
}

async fn publish(ctx: &Context, rc: &RaftCluster, type_: EventType, reason: &str, note: &str) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &rc.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot publish event");
    }
}

async fn patch_status(rc: &RaftCluster, ctx: &Context, n: &Names, st: &RaftClusterStatus) -> Result<(), Error> {
    let api: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &n.namespace);
    let patch = json!({
        "apiVersion": "raftkv.dev/v1alpha1",
        "kind": "RaftCluster",
        "status": st,
    });
    api.patch_status(
        &rc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn write_invalid_status(rc: &RaftCluster, ctx: &Context, n: &Names, e: &Error) -> Result<(), Error> {
    let mut st = rc.status.clone().unwrap_or_default();
    st.phase = Some("Degraded".into());
    st.observed_generation = rc.metadata.generation;
    let cond = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "Degraded".into(),
        status: "True".into(),
        reason: "InvalidSpec".into(),
        message: format!("{e}; fix the spec"),
        observed_generation: rc.metadata.generation,
        last_transition_time: Time(jiff::Timestamp::now()),
    };
    st.conditions.retain(|c| c.type_ != "Degraded");
    st.conditions.push(cond);
    publish(ctx, rc, EventType::Warning, "InvalidSpec", &e.to_string()).await;
    patch_status(rc, ctx, n, &st).await
}
