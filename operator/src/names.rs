//! Names and addresses derived from a cluster's name, in one place so that every part (the
//! objects built, the nodes observed, the actions taken) agrees on them.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::crd::RaftCluster;

pub const RAFT_PORT: i32 = 7000;
pub const HTTP_PORT: i32 = 8080;
pub const DATA_VOLUME: &str = "data";
/// Where the pods find their certificates (the Secret `<name>-tls`, mounted read-only).
pub const TLS_DIR: &str = "/etc/raftkv/tls";

/// The names of a cluster's objects and the addresses of its pods.
#[derive(Debug, Clone)]
pub struct Names {
    pub name: String,
    pub namespace: String,
    pub headless: String,
    pub cluster_domain: String,
}

impl Names {
    pub fn of(rc: &RaftCluster, cluster_domain: &str) -> Names {
        let name = rc.name_any();
        Names {
            headless: format!("{name}-peers"),
            namespace: rc.namespace().unwrap_or_else(|| "default".into()),
            cluster_domain: cluster_domain.to_string(),
            name,
        }
    }

    pub fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    /// The pod's stable DNS name through the headless Service.
    pub fn pod_host(&self, ordinal: u32) -> String {
        format!(
            "{}.{}.{}.svc.{}",
            self.pod(ordinal),
            self.headless,
            self.namespace,
            self.cluster_domain
        )
    }

    /// The Secret the pods mount their certificates from.
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.name)
    }

    /// The Secret of the operator's own CA for this cluster (never mounted).
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.name)
    }

    /// The Secret of the operator's client certificate for this cluster.
    pub fn operator_tls_secret(&self) -> String {
        format!("{}-operator-tls", self.name)
    }

    /// The Secret of the `root` user's password.
    pub fn root_secret(&self) -> String {
        format!("{}-root", self.name)
    }

    pub fn pvc(&self, ordinal: u32) -> String {
        format!("{DATA_VOLUME}-{}", self.pod(ordinal))
    }

    /// The ordinal of a pod name or of an advertised address (`<pod>.<headless>...:port`).
    pub fn ordinal_of(&self, pod_or_addr: &str) -> Option<u32> {
        let host = pod_or_addr.split(':').next()?;
        let pod = host.split('.').next()?;
        if host.contains('.') && !host.starts_with(&format!("{}.{}.", pod, self.headless)) {
            return None;
        }
        pod.strip_prefix(&format!("{}-", self.name))?.parse().ok()
    }
}

/// Labels that select a cluster's pods.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "raftkv".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

/// The selector as a string (for the scale subresource and listing pods).
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RaftClusterSpec;

    #[test]
    fn names_and_ordinals() {
        let spec =
            serde_json::from_value::<RaftClusterSpec>(serde_json::json!({"replicas": 3, "image": "raftkv:test"}))
                .expect("a valid spec");
        let mut rc = RaftCluster::new("demo", spec);
        rc.metadata.namespace = Some("ns".into());
        let n = Names::of(&rc, "cluster.local");
        assert_eq!(n.pod_host(2), "demo-2.demo-peers.ns.svc.cluster.local");
        assert_eq!(n.ordinal_of("demo-2.demo-peers.ns.svc.cluster.local:7000"), Some(2));
        assert_eq!(n.ordinal_of("demo-11"), Some(11));
        assert_eq!(n.ordinal_of("other-2.other-peers.ns.svc.cluster.local:7000"), None);
        assert_eq!(n.ordinal_of("demo-x"), None);
    }
}
