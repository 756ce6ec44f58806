//! Certificates from cert-manager, for clusters that name an issuer (`spec.tls.issuerRef`):
//! the operator applies two `cert-manager.io/v1` Certificates and cert-manager issues and
//! renews them into Secrets of the same names. cert-manager is not a dependency of the
//! operator: the objects are built as JSON here and applied as dynamic objects.
//!
//! A StatefulSet mounts one Secret into all of its pods, and cert-manager writes one
//! certificate per Secret, so the nodes share one certificate whose names cover every pod
//! (`*.<headless>.<namespace>.svc...`) and the client Service. The operator's own client
//! certificate is the second Certificate.

use std::time::Duration;

use kube::api::ApiResource;
use kube::core::GroupVersionKind;
use serde_json::{json, Value};

use super::leaves;
use crate::crd::{IssuerRef, RaftCluster};
use crate::names::Names;

/// cert-manager's Certificate kind.
pub(crate) fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

fn issuer(r: &IssuerRef) -> Value {
    json!({
        "name": r.name,
        "kind": r.kind.as_deref().unwrap_or("Issuer"),
        "group": r.group.as_deref().unwrap_or("cert-manager.io"),
    })
}

/// A Go duration (what cert-manager parses) of whole seconds.
fn go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn certificate(
    rc: &RaftCluster,
    n: &Names,
    name: &str,
    issuer_ref: &IssuerRef,
    lifetime: Duration,
    spec: Value,
) -> Value {
    let mut spec = spec;
    spec["secretName"] = json!(name);
    spec["issuerRef"] = issuer(issuer_ref);
    spec["duration"] = json!(go_duration(lifetime));
    // Renewal after two thirds of the lifetime, as the operator's own CA does.
    spec["renewBefore"] = json!(go_duration(lifetime / 3));
    spec["privateKey"] = json!({"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"});
    spec["secretTemplate"] = json!({"labels": crate::children::labels(&n.name)});
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": serde_json::to_value(crate::children::meta(rc, n, name)).unwrap_or(Value::Null),
        "spec": spec,
    })
}

/// The nodes' certificate (Secret `<name>-tls`): every pod's names by wildcard, the client
/// Service's names, and localhost; for serving and for calling peers.
pub(crate) fn nodes_certificate(rc: &RaftCluster, n: &Names, issuer_ref: &IssuerRef, lifetime: Duration) -> Value {
    let (dns, ips) = leaves::shared_names(n);
    certificate(
        rc,
        n,
        &n.tls_secret(),
        issuer_ref,
        lifetime,
        json!({
            "commonName": n.name,
            "dnsNames": dns,
            "ipAddresses": ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        }),
    )
}

/// The operator's client certificate (Secret `<name>-operator-tls`).
pub(crate) fn operator_certificate(rc: &RaftCluster, n: &Names, issuer_ref: &IssuerRef, lifetime: Duration) -> Value {
    certificate(
        rc,
        n,
        &n.operator_tls_secret(),
        issuer_ref,
        lifetime,
        json!({
            "commonName": leaves::OPERATOR_COMMON_NAME,
            "usages": ["digital signature", "key encipherment", "client auth"],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RaftClusterSpec;

    fn rc() -> RaftCluster {
        let mut rc = RaftCluster::new(
            "demo",
            serde_json::from_value::<RaftClusterSpec>(json!({"replicas": 3, "image": "raftkv:test",
                "tls": {"enabled": true, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}))
            .expect("a spec"),
        );
        rc.metadata.namespace = Some("ns".into());
        rc.metadata.uid = Some("uid-1".into());
        rc
    }

    #[test]
    fn the_nodes_certificate_covers_every_pod_and_the_client_service() {
        let r = rc();
        let n = Names::of(&r, "cluster.local");
        let issuer_ref = r.spec.tls.issuer_ref.clone().expect("an issuer");
        let c = nodes_certificate(&r, &n, &issuer_ref, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(c["apiVersion"], "cert-manager.io/v1");
        assert_eq!(c["metadata"]["name"], "demo-tls");
        assert_eq!(c["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
        let spec = &c["spec"];
        assert_eq!(spec["secretName"], "demo-tls");
        assert_eq!(
            spec["issuerRef"],
            json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(spec["duration"], "7776000s");
        assert_eq!(spec["renewBefore"], "2592000s");
        let dns: Vec<&str> = spec["dnsNames"]
            .as_array()
            .expect("dns names")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for name in [
            "*.demo-peers.ns.svc.cluster.local",
            "*.demo-peers.ns.svc",
            "demo.ns.svc.cluster.local",
            "demo",
            "localhost",
        ] {
            assert!(dns.contains(&name), "{name} missing from {dns:?}");
        }
        assert_eq!(spec["ipAddresses"], json!(["127.0.0.1", "::1"]));
        assert!(spec["usages"]
            .as_array()
            .expect("usages")
            .contains(&json!("client auth")));
        assert_eq!(spec["privateKey"]["rotationPolicy"], "Always");
    }

    #[test]
    fn the_operator_certificate_is_a_client_certificate_for_root() {
        let r = rc();
        let n = Names::of(&r, "cluster.local");
        let issuer_ref = IssuerRef {
            name: "ca".into(),
            kind: None,
            group: None,
        };
        let c = operator_certificate(&r, &n, &issuer_ref, Duration::from_secs(3600));
        assert_eq!(c["spec"]["secretName"], "demo-operator-tls");
        assert_eq!(c["spec"]["commonName"], "root");
        assert_eq!(c["spec"]["issuerRef"]["kind"], "Issuer");
        assert!(!c["spec"]["usages"]
            .as_array()
            .expect("usages")
            .contains(&json!("server auth")));
    }
}
