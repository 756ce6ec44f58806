//! Carrying out the planned action: one membership call through a member's admin service,
//! or one pod or volume deletion; each recorded as an Event and counted.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams};
use kube::runtime::events::EventType;
use raftkv_client::pb;

use super::apply::publish;
use super::observe::Observation;
use super::Context;
use crate::crd::{LastAction, RaftCluster};
use crate::names::{Names, HTTP_PORT, RAFT_PORT};
use crate::nodes::Access;
use crate::planner::Action;

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
pub(super) async fn act(
    rc: &RaftCluster,
    ctx: &Context,
    n: &Names,
    obs: &Observation,
    access: &Access,
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
                        ctx.nodes.initialize(addr.clone(), access, vec![me]).await,
                    )
                }
                _ => (None, Some(*ordinal), Err("pod 0 is not reachable".into())),
            }
        }
        Action::AddLearner { ordinal, id } => {
            let r = match via(obs, None) {
                Some(addr) => {
                    ctx.nodes
                        .add_learner(addr, access, add_request(n, *ordinal, *id, 0))
                        .await
                }
                None => Err(no_member()),
            };
            (Some(*id), Some(*ordinal), r)
        }
        Action::Promote { ordinal, id } => {
            let r = match via(obs, None) {
                Some(addr) => {
                    ctx.nodes
                        .promote(addr, access, add_request(n, *ordinal, *id, 10_000))
                        .await
                }
                None => Err(no_member()),
            };
            (Some(*id), Some(*ordinal), r)
        }
        Action::TransferLeadership { from } => {
            let r = match via(obs, None) {
                Some(addr) => ctx.nodes.transfer_leadership(addr, access, 0).await,
                None => Err(no_member()),
            };
            (Some(*from), None, r)
        }
        Action::RemoveMember { id, ordinal, .. } => {
            // The planner checked that the healthy voters left keep a quorum; `force` only
            // lifts the node's generic rails (e.g. 3 -> 2 voters), which the spec asked for.
            let r = match via(obs, Some(*id)) {
                Some(addr) => ctx.nodes.remove(addr, access, *id, true).await,
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
