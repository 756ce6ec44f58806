//! The Node object and its heartbeat: a Ready condition renewed with the node's lease in
//! `kube-node-lease`, so that the node lifecycle controller never marks the node unreachable
//! and evicts its pods.

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{now, State};
use crate::network::GATEWAY;

/// The field manager of the kubelet's server-side applies.
const FIELD_MANAGER: &str = "testbed-kubelet";

impl State {
    /// Creates (or takes over) the Node, then reports it Ready.
    pub(super) async fn register_node(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.cfg.node, "labels": {
                "kubernetes.io/hostname": self.cfg.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        });
        nodes
            .patch(
                &self.cfg.node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&node),
            )
            .await
            .context("registering the node")?;
        self.heartbeat().await
    }

    /// Renews the Ready condition (with the node's addresses, capacity and info) and the lease.
    pub(super) async fn heartbeat(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let t = now();
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "testbed kubelet",
                            "lastHeartbeatTime": t, "lastTransitionTime": t}],
            "addresses": [{"type": "InternalIP", "address": GATEWAY}, {"type": "Hostname", "address": self.cfg.node}],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "nodeInfo": {"machineID": "testbed", "systemUUID": "testbed", "bootID": "testbed", "kernelVersion": "",
                         "osImage": "testbed", "containerRuntimeVersion": "process://0", "kubeletVersion": "v1.37.2",
                         "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}
        }});
        nodes
            .patch_status(&self.cfg.node, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        // A lease's renewTime is a MicroTime: microseconds, unlike the conditions' times.
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.cfg.node},
            "spec": {"holderIdentity": self.cfg.node, "leaseDurationSeconds": 40,
                     "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}});
        leases
            .patch(
                &self.cfg.node,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await?;
        Ok(())
    }
}
