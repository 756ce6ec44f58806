//! Who each certificate is for: the names a node's certificate must carry (every name the
//! operator, its peers and clients reach it by) and the operator's own client identity.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::authority::Leaf;
use crate::names::Names;

/// The operator's certificate names the user `root`: a node that takes the common name of a
/// client certificate as the user (`--client-cert-auth`) sees the operator as root. Only the
/// operator holds a certificate with this name from the cluster's CA.
pub(crate) const OPERATOR_COMMON_NAME: &str = "root";

/// Loopback, for a process in the pod itself (probes, `raftkv kv` run in the container).
fn loopback() -> Vec<IpAddr> {
    vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]
}

/// The client Service's names, from the shortest (same namespace) to the fully qualified.
fn client_service_names(n: &Names) -> Vec<String> {
    vec![
        n.name.clone(),
        format!("{}.{}", n.name, n.namespace),
        format!("{}.{}.svc", n.name, n.namespace),
        format!("{}.{}.svc.{}", n.name, n.namespace, n.cluster_domain),
    ]
}

/// Pod `ordinal`'s certificate: its names under the headless Service (each form a resolver's
/// search path accepts), the client Service's names, localhost, and the pod's IP once it has
/// one (what its EndpointSlice entries and Prometheus' pod discovery connect to; a pod that
/// comes back with another IP gets a new certificate).
pub(crate) fn pod(n: &Names, ordinal: u32, ip: Option<IpAddr>) -> Leaf {
    let pod = n.pod(ordinal);
    let mut dns = vec![
        n.pod_host(ordinal),
        format!("{pod}.{}.{}.svc", n.headless, n.namespace),
        format!("{pod}.{}.{}", n.headless, n.namespace),
        format!("{pod}.{}", n.headless),
    ];
    dns.extend(client_service_names(n));
    dns.push("localhost".into());
    let mut ips = loopback();
    ips.extend(ip);
    Leaf {
        common_name: pod,
        dns_names: dns,
        ips,
        server: true,
    }
}

/// The names of one certificate shared by every pod (cert-manager's): wildcards under the
/// headless Service, the client Service, localhost.
pub(crate) fn shared_names(n: &Names) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec![
        format!("*.{}.{}.svc.{}", n.headless, n.namespace, n.cluster_domain),
        format!("*.{}.{}.svc", n.headless, n.namespace),
        format!("*.{}.{}", n.headless, n.namespace),
        format!("*.{}", n.headless),
    ];
    dns.extend(client_service_names(n));
    dns.push("localhost".into());
    (dns, loopback())
}

/// The operator's client certificate: no names to serve under.
pub(crate) fn operator() -> Leaf {
    Leaf {
        common_name: OPERATOR_COMMON_NAME.into(),
        dns_names: vec![],
        ips: vec![],
        server: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RaftCluster, RaftClusterSpec};

    #[test]
    fn a_pods_certificate_names_it_under_the_headless_service_the_client_service_and_localhost() {
        let spec = serde_json::from_value::<RaftClusterSpec>(serde_json::json!({"replicas": 3, "image": "raftkv:1"}))
            .expect("a spec");
        let mut rc = RaftCluster::new("demo", spec);
        rc.metadata.namespace = Some("ns".into());
        let leaf = pod(&Names::of(&rc, "cluster.local"), 2, None);
        assert_eq!(leaf.common_name, "demo-2");
        assert_eq!(
            leaf.dns_names,
            [
                "demo-2.demo-peers.ns.svc.cluster.local",
                "demo-2.demo-peers.ns.svc",
                "demo-2.demo-peers.ns",
                "demo-2.demo-peers",
                "demo",
                "demo.ns",
                "demo.ns.svc",
                "demo.ns.svc.cluster.local",
                "localhost"
            ]
        );
        assert_eq!(leaf.ips, loopback());
        assert!(leaf.server);
        let ip: IpAddr = "10.244.0.7".parse().expect("an ip");
        let with_ip = pod(&Names::of(&rc, "cluster.local"), 2, Some(ip));
        assert_eq!(with_ip.ips[2], ip);
    }
}
