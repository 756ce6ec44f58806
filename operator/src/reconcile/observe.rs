//! Observing a cluster: its pods, StatefulSet and volumes from the API server, and each
//! running node's own view and the leader's membership from the admin service. What the
//! planner needs, and the details that status and actions need beside it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use raftkv_client::pb;

use super::{AddressMode, Context, Error};
use crate::crd::{MemberStatus, RaftCluster};
use crate::names::{self, Names, RAFT_PORT};
use crate::nodes::Access;
use crate::planner::{ClusterView, Member, NodeState, Observed, PodState};

/// What observing found, beyond the planner's input: details for status and actions.
pub(super) struct Observation {
    pub(super) observed: Observed,
    /// Admin address by ordinal (running pods).
    pub(super) addrs: BTreeMap<u32, String>,
    /// Pod IP by ordinal (pods that have one and are not terminating).
    pub(super) ips: BTreeMap<u32, IpAddr>,
    pub(super) members: Option<pb::MembersResponse>,
    pub(super) cluster_id: Option<String>,
}

/// Observes the cluster whose StatefulSet (if it exists) is `sts`, calling its nodes with
/// `access`.
pub(super) async fn observe(
    rc: &RaftCluster,
    ctx: &Context,
    n: &Names,
    sts: Option<StatefulSet>,
    access: &Access,
) -> Result<Observation, Error> {
    let ns = &n.namespace;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let selector = names::selector_string(&n.name);
    // A certificate names the pod's DNS names, never its IP: with TLS the pods are always
    // reached by name.
    let address_mode = if access.is_tls() {
        AddressMode::Dns
    } else {
        ctx.address_mode
    };
    let pods = pods_api.list(&ListParams::default().labels(&selector)).await?;
    let pvcs = pvc_api.list(&ListParams::default().labels(&selector)).await?;

    let mut pod_states = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    let mut ips = BTreeMap::new();
    for pod in &pods.items {
        let name = pod.name_any();
        let Some(ord) = n.ordinal_of(&name) else { continue };
        let status = pod.status.as_ref();
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()) {
            if !terminating {
                ips.insert(ord, ip);
            }
        }
        if running && !terminating {
            let addr = match address_mode {
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
        let answer = ctx.nodes.status(addr.clone(), access);
        let ord = *ord;
        async move { (ord, answer.await) }
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
        if let Ok(m) = ctx.nodes.members(addrs[ord].clone(), access).await {
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
        .filter_map(|p| n.ordinal_of(p.name_any().strip_prefix(&format!("{}-", names::DATA_VOLUME))?))
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
        ips,
        members,
        cluster_id,
    })
}

/// Reachable and caught up, as the leader sees it.
fn member_healthy(m: &pb::MemberStatus) -> bool {
    m.leader || (m.last_contact_ms.is_some_and(|ms| ms < 5_000) && m.lag.is_some_and(|l| l <= 1_000))
}

pub(super) fn member_statuses(obs: &Observation, n: &Names) -> Vec<MemberStatus> {
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
