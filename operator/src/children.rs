//! The objects a RaftCluster owns, built from its spec: pure functions, applied by the
//! reconciler with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::RaftCluster;
use crate::names::{selector_labels, Names, DATA_VOLUME, HTTP_PORT, RAFT_PORT, TLS_DIR};
use crate::tls::Mode;

/// The uid and gid the nodes run as (the image's `nonroot` user), and the group that owns
/// their volumes.
pub const NODE_UID: i64 = 65532;

/// The security context of Pod Security's "restricted" level, for a container.
pub(crate) fn restricted_container() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// The labels of every object the operator makes for the cluster `name`.
pub(crate) fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/managed-by".into(), "raftkv-operator".into());
    l.insert("app.kubernetes.io/component".into(), "node".into());
    l
}

fn owner(rc: &RaftCluster) -> Option<OwnerReference> {
    rc.controller_owner_ref(&())
}

/// An owned object's metadata: the cluster's namespace and labels, owned by the RaftCluster.
pub(crate) fn meta(rc: &RaftCluster, n: &Names, name: &str) -> ObjectMeta {
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
    let mut args = vec![
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
    let tls = Mode::of(&spec.tls);
    if let Some((cert, key)) = tls.files() {
        let ca = format!("{TLS_DIR}/ca.crt");
        // etcd's flags. Peers (Raft and the admin service) must present a certificate from
        // the cluster's CA: only the pods and the operator have one. Clients of the HTTP API
        // prove who they are with credentials (spec.auth), not certificates.
        args.extend([
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca}"),
            "--peer-client-cert-auth".into(),
        ]);
    }
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
            // The kubelet does not verify the certificate of an HTTPS probe.
            scheme: (tls != Mode::Off).then(|| "HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    // The root filesystem is read-only: the node writes only to its data volume, and /tmp is
    // an emptyDir for anything that wants a scratch file.
    let mut mounts = vec![
        VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: "/data".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".into())),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if tls != Mode::Off {
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(n.tls_secret()),
                // Readable by the node's group (fsGroup) only: the keys are in here.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
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
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container()),
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
        run_as_user: Some(NODE_UID),
        run_as_group: Some(NODE_UID),
        // The data volume and the certificates belong to this group, so the node can use them.
        fs_group: Some(NODE_UID),
        // A large volume is not walked on every start once its owner is right.
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(runtime_default()),
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
                    volumes: Some(volumes),
                    // The nodes never talk to the Kubernetes API.
                    automount_service_account_token: Some(false),
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

/// The operator's pods, which the NetworkPolicy lets reach the peer port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Traffic to the cluster's pods: the peer port (Raft and the admin service) from the
/// cluster's own pods and the operator only; the client port (HTTP API, metrics, probes) from
/// `spec.networkPolicy.clientFrom`, the cluster's pods and the operator, or from anyone if that
/// is unset. What leaves the pods is not restricted: they need their peers and DNS.
pub fn network_policy(rc: &RaftCluster, n: &Names, operator: &OperatorPods) -> NetworkPolicy {
    let own_pods = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(&n.name)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let operator_pods = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                operator.namespace.clone(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(operator.labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tcp = |port: i32| NetworkPolicyPort {
        protocol: Some("TCP".into()),
        port: Some(IntOrString::Int(port)),
        ..Default::default()
    };
    let client_from = rc.spec.network_policy.client_from.clone().map(|mut from| {
        from.push(own_pods.clone());
        from.push(operator_pods.clone());
        from
    });
    NetworkPolicy {
        metadata: meta(rc, n, &n.name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&n.name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(RAFT_PORT)]),
                    from: Some(vec![own_pods, operator_pods]),
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(HTTP_PORT)]),
                    from: client_from,
                },
            ]),
            ..Default::default()
        }),
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
    fn pods_meet_pod_security_restricted_with_a_writable_data_volume_and_tmp() {
        let mut r = rc();
        r.spec.tls.enabled = true;
        let sts = serde_json::to_value(statefulset(&r, &Names::of(&r, "cluster.local"), 3)).unwrap();
        let pod = &sts["spec"]["template"]["spec"];
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true);
        assert_eq!(psc["runAsUser"], NODE_UID);
        assert_eq!(psc["runAsGroup"], NODE_UID);
        assert_eq!(psc["fsGroup"], NODE_UID, "the volumes belong to the node's group");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(pod["automountServiceAccountToken"], false);
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        assert_eq!(mounts, ["/data", "/tmp", TLS_DIR]);
        let tls = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "tls")
            .unwrap();
        assert_eq!(
            tls["secret"]["defaultMode"], 0o440,
            "keys readable by the node's group only"
        );
    }

    #[test]
    fn without_tls_the_pods_have_no_certificate_flags_or_volume() {
        let r = rc();
        let sts = statefulset(&r, &Names::of(&r, "cluster.local"), 3);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert!(args.iter().all(|a| !a.contains("cert-file")), "{args:?}");
        assert!(pod.volumes.unwrap().iter().all(|v| v.name != "tls"));
        let probe = pod.containers[0].readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(probe.scheme, None);
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
