//! The `RaftCluster` custom resource (group `raftkv.dev`, version `v1alpha1`).
//!
//! The Rust types are the source of truth: `raftkv-operator crd` prints the CRD generated from
//! them, and the copies in `manifests/` and the Helm chart are checked against it by a test.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, PodSecurityContext, ResourceRequirements, Toleration};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A replicated raftkv cluster: a StatefulSet of `raftkv serve` pods whose Raft membership the
/// operator keeps equal to `replicas`, one safe step at a time.
// Several `printcolumn(...)` attributes are how kube-derive declares several columns.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "raftkv.dev",
    version = "v1alpha1",
    kind = "RaftCluster",
    namespaced,
    status = "RaftClusterStatus",
    shortname = "rkv",
    category = "raftkv",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "desired members"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "ready members"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader",
        description = "pod of the Raft leader"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterSpec {
    /// Number of voting members (1 to 9). Odd numbers are recommended: an even number
    /// tolerates no more failures than the odd number below it.
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// Container image holding the `raftkv` binary.
    pub image: String,
    /// Image pull policy: Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory for each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub storage: StorageSpec,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub pod: PodOverrides,
    #[serde(default)]
    pub service: ServiceSpec,
    #[serde(default)]
    pub pod_disruption_budget: PdbSpec,
    #[serde(default)]
    pub tls: TlsSpec,
    #[serde(default)]
    pub auth: AuthSpec,
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Stop all membership actions (for manual disaster recovery); children are still kept.
    #[serde(default)]
    pub paused: bool,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The volume each node keeps its data on (one PVC per pod).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size, e.g. "1Gi".
    #[serde(default = "default_size")]
    pub size: String,
    /// Storage class; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_size() -> String {
    "1Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_size(),
            storage_class_name: None,
        }
    }
}

/// Raft timing, passed to every node.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftTuning {
    /// Leader heartbeat interval (ms).
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_ms: u32,
    /// Minimum election timeout (ms); must exceed the heartbeat several times.
    #[serde(default = "default_election")]
    #[schemars(range(min = 50, max = 60000))]
    pub election_timeout_ms: u32,
    /// Log entries between snapshots.
    #[serde(default = "default_snapshot")]
    #[schemars(range(min = 100))]
    pub snapshot_threshold: u64,
}

fn default_heartbeat() -> u32 {
    100
}
fn default_election() -> u32 {
    1000
}
fn default_snapshot() -> u64 {
    20_000
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: default_heartbeat(),
            election_timeout_ms: default_election(),
            snapshot_threshold: default_snapshot(),
        }
    }
}

/// What users may add to or override in the pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Replaces the default (pods preferably on different nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Replaces the default (non-root, uid/gid 65532).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
}

/// The client Service (HTTP API and metrics).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    /// Keep a PodDisruptionBudget with minAvailable = a quorum of voters.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Default for PdbSpec {
    fn default() -> Self {
        PdbSpec { enabled: true }
    }
}

/// TLS on every listener: HTTPS on the client port, mutual TLS on the peer port (Raft and
/// the admin service), where only the cluster's pods and the operator hold a certificate the
/// nodes accept. Chosen when the cluster is created: a running cluster cannot switch, since
/// its pods could not talk to each other half-way through the rollout.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    #[serde(default)]
    pub enabled: bool,
    /// A cert-manager Issuer or ClusterIssuer that signs the certificates. Without one the
    /// operator is the certificate authority: it keeps a CA in the Secret `<name>-ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// How long each certificate is valid, e.g. "2160h" (the default, 90 days) or "90m"; at
    /// least one minute. Certificates are renewed after two thirds of it, without restarting
    /// the pods: the nodes reload changed certificate files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_lifetime: Option<String>,
}

/// A cert-manager issuer, as cert-manager's own `issuerRef` names it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// Issuer (the default) or ClusterIssuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Default: cert-manager.io.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Authentication and roles on the nodes, as etcd has them.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The operator creates user `root` with role `root`, keeps its password in the Secret
    /// `<name>-root` (keys `username`, `password`; created once, never overwritten, and not
    /// deleted with the cluster: the users live in the cluster's data), and turns
    /// authentication on.
    #[serde(default)]
    pub enabled: bool,
}

/// The NetworkPolicy the operator keeps for the cluster's pods.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The peer port (Raft and the admin service) is open only to the cluster's own pods and
    /// the operator; the client port (HTTP API and metrics) as `clientFrom` says.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Who may reach the client port besides the cluster's pods and the operator (e.g. the
    /// applications' namespaces and Prometheus). Unset: everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_from: Option<Vec<NetworkPolicyPeer>>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            client_from: None,
        }
    }
}

/// What the operator observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterStatus {
    /// Pending, Bootstrapping, Scaling, Running, Degraded, QuorumLost or Paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Voting members (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Members whose pod is ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Pod of the current Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<LastAction>,
    /// When the first of the cluster's certificates expires (with spec.tls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates_not_after: Option<Time>,
    /// Whether the nodes have authentication on, as last seen (with spec.auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_enabled: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub id: u64,
    /// The pod this member runs in, if it still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// leader, voter or learner.
    pub role: String,
    pub raft_address: String,
    pub http_address: String,
    /// Reachable and caught up with the leader.
    pub healthy: bool,
    /// Entries behind the leader, as the leader sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastAction {
    /// Initialize, AddLearner, PromoteLearner, RemoveMember, TransferLeadership, ...
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub message: String,
    pub time: Time,
}

/// The CRD as YAML (what `raftkv-operator crd` prints).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&RaftCluster::crd())
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn crd_has_status_and_scale_subresources_and_printer_columns() {
        let crd = RaftCluster::crd();
        assert_eq!(crd.spec.group, "raftkv.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        let sub = v.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
        let cols: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .expect("printer columns")
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Replicas", "Ready", "Leader", "Phase", "Age"]);
    }

    #[test]
    fn replicas_are_bounded_in_the_schema() {
        let crd = serde_json::to_value(RaftCluster::crd()).expect("crd json");
        let replicas =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["replicas"];
        assert_eq!(replicas["minimum"].as_f64(), Some(1.0), "{replicas}");
        assert_eq!(replicas["maximum"].as_f64(), Some(9.0), "{replicas}");
        let required = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"];
        assert!(required.as_array().expect("required").contains(&"image".into()));
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let spec: RaftClusterSpec =
            serde_json::from_value(serde_json::json!({"replicas": 3, "image": "raftkv:1"})).unwrap();
        assert_eq!(spec.storage.size, "1Gi");
        assert_eq!(spec.raft.heartbeat_ms, 100);
        assert!(spec.pod_disruption_budget.enabled);
        assert!(!spec.paused);
    }
}
