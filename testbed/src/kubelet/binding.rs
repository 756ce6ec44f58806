//! Scheduling, reduced to what one node needs: every pod that no node has claimed is bound to
//! this one, through the pod's `binding` subresource as kube-scheduler would.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::State;

impl State {
    /// Binds `pod` to this node. Fails harmlessly when another pass bound it first.
    pub(super) async fn bind(&self, pod: &Pod) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name_any()},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": self.cfg.node}});
        let _: Value = api
            .create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding)
            .await?;
        Ok(())
    }
}
