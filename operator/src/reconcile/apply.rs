//! Writing to the API server: the owned objects (server-side apply), the status, and Events.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER};
use crate::children;
use crate::crd::{RaftCluster, RaftClusterStatus};
use crate::names::Names;

async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj))
        .await?;
    Ok(())
}

pub(super) async fn apply_children(
    rc: &RaftCluster,
    ctx: &Context,
    n: &Names,
    replicas: u32,
    voters: u32,
) -> Result<(), Error> {
    let ns = &n.namespace;
    let c = ctx.client.clone();
    let svc: Api<Service> = Api::namespaced(c.clone(), ns);
    apply(&svc, &n.headless, &children::headless_service(rc, n)).await?;
    apply(&svc, &n.name, &children::client_service(rc, n)).await?;
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), ns);
    apply(&sts, &n.name, &children::statefulset(rc, n, replicas)).await?;
    let pdb: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), ns);
    if rc.spec.pod_disruption_budget.enabled {
        apply(&pdb, &n.name, &children::pdb(rc, n, voters)).await?;
    } else if pdb.get_opt(&n.name).await?.is_some() {
        pdb.delete(&n.name, &DeleteParams::default()).await?;
    }
    if let Some(operator) = &ctx.operator_pods {
        let np: Api<NetworkPolicy> = Api::namespaced(c, ns);
        if rc.spec.network_policy.enabled {
            apply(&np, &n.name, &children::network_policy(rc, n, operator)).await?;
        } else if np.get_opt(&n.name).await?.is_some() {
            np.delete(&n.name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

pub(super) async fn publish(ctx: &Context, rc: &RaftCluster, type_: EventType, reason: &str, note: &str) {
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

pub(super) async fn patch_status(
    rc: &RaftCluster,
    ctx: &Context,
    n: &Names,
    st: &RaftClusterStatus,
) -> Result<(), Error> {
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

pub(super) async fn write_invalid_status(rc: &RaftCluster, ctx: &Context, n: &Names, e: &Error) -> Result<(), Error> {
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
