//! The objects a RaftCluster owns, built from its spec: pure functions, applied by the
//! reconciler with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SecurityContext, Service, ServicePort, ServiceSpec, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::RaftCluster;
use crate::names::{selector_labels, Names, DATA_VOLUME, HTTP_PORT, RAFT_PORT};

fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/managed-by".into(), "raftkv-operator".into());
    l.insert("app.kubernetes.io/component".into(), "node".into());
    l
}

fn owner(rc: &RaftCluster) -> Option<OwnerReference> {
    rc.controller_owner_ref(&())
}

fn meta(rc: &RaftCluster, n: &Names, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(n.namespace.clone()),
        labels: Some(labels(&n.name)),
        owner_references: owner(rc).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The majority of `voters`: the PodDisruptionBudget's minAvailable.
pub fn quorum(voters: u32) -> u32 {
    voters / 2 + 1
}

pub fn statefulset(rc: &RaftCluster, n: &Names, replicas: u32) -> StatefulSet {
    let spec = &rc.spec;
    let uid = rc.uid().unwrap_or_default();
    let advertise = |port: i32| {
        format!(
            "$(POD_NAME).{}.{}.svc.{}:{port}",
            n.headless, n.namespace, n.cluster_domain
        )
    };
    let args = vec![
        "serve".to_string(),
        "--data-dir=/data".into(),
        format!("--raft-addr=0.0.0.0:{RAFT_PORT}"),
        format!("--http-addr=0.0.0.0:{HTTP_PORT}"),
        format!("--advertise-raft-addr={}", advertise(RAFT_PORT)),
        format!("--advertise-http-addr={}", advertise(HTTP_PORT)),
        format!("--cluster-id={uid}"),
        format!("--heartbeat-ms={}", spec.raft.heartbeat_ms),
        format!("--election-timeout-ms={}", spec.raft.election_timeout_ms),
        format!("--snapshot-threshold={}", spec.raft.snapshot_threshold),
        "--log-format=json".into(),
    ];
    let env = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let container = Container {
        name: "raftkv".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(args),
        env: Some(vec![
            env("POD_NAME", "metadata.name"),
            env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("raft".into()),
                container_port: RAFT_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 2, 3)),
        // Generous: a slow node that still serves must not be killed (rqlite's lesson).
        liveness_probe: Some(probe("/healthz", 10, 6)),
        resources: spec.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: "/data".into(),
            ..Default::default()
        }]),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut pod_labels = labels(&n.name);
    pod_labels.extend(spec.pod.labels.clone());
    let mut annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
    ]);
    annotations.extend(spec.pod.annotations.clone());
    let affinity = spec.pod.affinity.clone().unwrap_or_else(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    topology_key: "kubernetes.io/hostname".into(),
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(&n.name)),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let security = spec.pod.security_context.clone().unwrap_or(PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        ..Default::default()
    });
    let mut requests = BTreeMap::new();
    requests.insert("storage".to_string(), Quantity(spec.storage.size.clone()));
    StatefulSet {
        metadata: meta(rc, n, &n.name),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas as i32),
            service_name: Some(n.headless.clone()),
            // The operator paces the set itself (one member at a time), and a missing pod must
            // not hold back the recreation of the others.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&n.name)),
                ..Default::default()
            },
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Retain".into()),
                when_scaled: Some("Retain".into()),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // SIGTERM hands leadership over and drains: well within 30 s.
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(security),
                    affinity: Some(affinity),
                    node_selector: (!spec.pod.node_selector.is_empty()).then(|| spec.pod.node_selector.clone()),
                    tolerations: (!spec.pod.tolerations.is_empty()).then(|| spec.pod.tolerations.clone()),
                    priority_class_name: spec.pod.priority_class_name.clone(),
                    enable_service_links: Some(false),
                    ..Default::default()
                }),
            },
            // PVCs carry no owner reference: deleting data is never a side effect.
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.into()),
                    labels: Some(selector_labels(&n.name)),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(requests),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Service port that targets the container port of the same name.
fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        ..Default::default()
    }
}

/// The headless Service that gives each pod its DNS name. It publishes pods that are not
/// ready: a joining pod must be reachable before it can become ready.
pub fn headless_service(rc: &RaftCluster, n: &Names) -> Service {
    let mut m = meta(rc, n, &n.headless);
    // What a ServiceMonitor selects: every pod, ready or not, once.
    m.labels
        .get_or_insert_with(BTreeMap::new)
        .insert("raftkv.dev/service".into(), "peers".into());
    Service {
        metadata: m,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&n.name)),
            ports: Some(vec![port("raft", RAFT_PORT), port("http", HTTP_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The client Service: the HTTP API and metrics of ready pods.
pub fn client_service(rc: &RaftCluster, n: &Names) -> Service {
    let mut m = meta(rc, n, &n.name);
    m.labels
        .get_or_insert_with(BTreeMap::new)
        .insert("raftkv.dev/service".into(), "client".into());
    if !rc.spec.service.annotations.is_empty() {
        m.annotations = Some(rc.spec.service.annotations.clone());
    }
    Service {
        metadata: m,
        spec: Some(ServiceSpec {
            type_: Some(rc.spec.service.type_.map_or("ClusterIP", |t| t.as_str()).to_string()),
            selector: Some(selector_labels(&n.name)),
            ports: Some(vec![port("http", HTTP_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Voluntary disruptions (drains, evictions) may never take away a quorum of the voters.
pub fn pdb(rc: &RaftCluster, n: &Names, voters: u32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(rc, n, &n.name),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(quorum(voters) as i32)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&n.name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RaftClusterSpec;

    fn rc() -> RaftCluster {
        let mut rc = RaftCluster::new(
            "demo",
            serde_json::from_value::<RaftClusterSpec>(serde_json::json!({"replicas": 3, "image": "raftkv:test"}))
                .unwrap(),
        );
        rc.metadata.namespace = Some("ns".into());
        rc.metadata.uid = Some("uid-1".into());
        rc
    }

    #[test]
    fn statefulset_runs_serve_with_stable_dns_and_probes() {
        let r = rc();
        let n = Names::of(&r, "example.org");
        let sts = statefulset(&r, &n, 2);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.service_name.as_deref(), Some("demo-peers"));
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let args = c.args.as_ref().unwrap();
        assert_eq!(args[0], "serve");
        assert!(args.contains(&"--advertise-raft-addr=$(POD_NAME).demo-peers.ns.svc.example.org:7000".to_string()));
        assert!(args.contains(&"--cluster-id=uid-1".to_string()));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
        assert_eq!(sts.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        let pvc = &spec.volume_claim_templates.as_ref().unwrap()[0];
        assert!(pvc.metadata.owner_references.is_none(), "PVCs are never owned");
    }

    #[test]
    fn headless_service_publishes_not_ready_pods() {
        let r = rc();
        let s = headless_service(&r, &Names::of(&r, "cluster.local"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
    }

    #[test]
    fn pdb_keeps_a_quorum() {
        assert_eq!([1, 2, 3, 4, 5, 7].map(quorum), [1, 2, 2, 3, 3, 4]);
        let r = rc();
        let p = pdb(&r, &Names::of(&r, "cluster.local"), 5);
        assert_eq!(p.spec.unwrap().min_available, Some(IntOrString::Int(3)));
    }
}
