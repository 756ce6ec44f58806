//! The operator process: flags, the health/metrics server, leader election, the controller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Client, ResourceExt};

use crate::children::OperatorPods;
use crate::crd::RaftCluster;
use crate::http_server;
use crate::leader::{self, LeaseConfig};
use crate::metrics::OperatorMetrics;
use crate::nodes::GrpcNodes;
use crate::reconcile::{self, AddressMode, Context};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Watch RaftClusters in this namespace only (default: all namespaces).
    #[arg(long, env = "RAFTKV_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// The cluster's DNS domain, used in pod addresses.
    #[arg(long, env = "RAFTKV_OPERATOR_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// How to reach a pod's admin port.
    #[arg(long, env = "RAFTKV_OPERATOR_ADDRESS_MODE", value_enum, default_value_t = AddressMode::Dns)]
    pub address_mode: AddressMode,
    /// Listen address of /metrics, /healthz and /readyz.
    #[arg(long, env = "RAFTKV_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a Lease (needed when running more than one replica).
    #[arg(long, env = "RAFTKV_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    #[arg(long, env = "RAFTKV_OPERATOR_LEASE_NAME", default_value = "raftkv-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: this pod's namespace, or "default").
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: the pod name or hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Timeout of each admin call to a node (seconds).
    #[arg(long, default_value_t = 15)]
    pub node_timeout: u64,
    /// Labels of the operator's own pods (`key=value,...`). With it, every RaftCluster gets a
    /// NetworkPolicy that opens the peer port only to the cluster's pods and to pods with
    /// these labels in --operator-namespace; without it, no NetworkPolicies are made.
    #[arg(long, env = "RAFTKV_OPERATOR_POD_SELECTOR")]
    pub operator_pod_selector: Option<String>,
    /// The namespace the operator's pods run in (for the NetworkPolicies).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub operator_namespace: String,
}

/// `key=value,...` as labels.
fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--operator-pod-selector: {pair:?} is not key=value"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    anyhow::ensure!(!labels.is_empty(), "--operator-pod-selector names no label");
    Ok(labels)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| format!("raftkv-operator-{}", std::process::id()))
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster config or kubeconfig)")?;
    let metrics = Arc::new(OperatorMetrics::new().context("registering metrics")?);
    let operator_pods = match &args.operator_pod_selector {
        Some(s) => Some(OperatorPods {
            namespace: args.operator_namespace.clone(),
            labels: parse_labels(s)?,
        }),
        None => {
            tracing::warn!("no --operator-pod-selector: RaftClusters get no NetworkPolicy");
            None
        }
    };
    let ready = Arc::new(AtomicBool::new(false));
    http_server::serve(args.metrics_addr, metrics.clone(), ready.clone()).await?;

    let identity = args.identity.clone().unwrap_or_else(hostname);
    if args.leader_election {
        let lease_ns = args.lease_namespace.clone().unwrap_or_else(|| "default".into());
        let cfg = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: lease_ns.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(15),
        };
        let api: Api<Lease> = Api::namespaced(client.clone(), &lease_ns);
        ready.store(true, Ordering::Relaxed);
        tracing::info!(identity = %identity, lease = %cfg.name, "waiting for leadership");
        leader::acquire(&api, &cfg).await;
        metrics.is_leader.set(1);
        tracing::info!(identity = %identity, "leading");
        let controller = controller(client, &args, metrics.clone(), &identity, operator_pods);
        tokio::select! {
            _ = leader::hold(&api, &cfg) => {
                metrics.is_leader.set(0);
                anyhow::bail!("lost the leader lease; exiting so that a restart stands by again");
            }
            _ = controller => Ok(()),
        }
    } else {
        metrics.is_leader.set(1);
        ready.store(true, Ordering::Relaxed);
        controller(client, &args, metrics, &identity, operator_pods).await;
        Ok(())
    }
}

async fn controller(
    client: Client,
    args: &RunArgs,
    metrics: Arc<OperatorMetrics>,
    identity: &str,
    operator_pods: Option<OperatorPods>,
) {
    let api = |c: &Client| -> Api<RaftCluster> {
        match &args.namespace {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    };
    macro_rules! owned {
        ($t:ty) => {
            match &args.namespace {
                Some(ns) => Api::<$t>::namespaced(client.clone(), ns),
                None => Api::<$t>::all(client.clone()),
            }
        };
    }
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=raftkv-operator");
    let network_policies = operator_pods.is_some();
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes: Arc::new(GrpcNodes::new(Duration::from_secs(args.node_timeout))),
        cluster_domain: args.cluster_domain.clone(),
        address_mode: args.address_mode,
        metrics,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "raftkv-operator".into(),
                instance: Some(identity.to_string()),
            },
        ),
        operator_pods,
    });
    let mut controller = Controller::new(api(&client), watcher::Config::default())
        .owns(owned!(StatefulSet), managed.clone())
        .owns(owned!(Service), managed.clone())
        .owns(owned!(PodDisruptionBudget), managed.clone());
    if network_policies {
        controller = controller.owns(owned!(NetworkPolicy), managed.clone());
    }
    controller
        // Pods are not owned by the RaftCluster (the StatefulSet owns them), but their
        // readiness drives membership: map each back to its cluster by label.
        .watches(owned!(Pod), managed, |pod: Pod| {
            let ns = pod.namespace();
            pod.labels()
                .get("app.kubernetes.io/instance")
                .map(|name| {
                    let r = ObjectRef::<RaftCluster>::new(name);
                    match ns {
                        Some(ns) => r.within(&ns),
                        None => r,
                    }
                })
                .into_iter()
        })
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile round");
            }
        })
        .await;
}
