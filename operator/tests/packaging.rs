//! The Helm chart, the plain manifests and the Dockerfile: lint, render with every option, and
//! validate every rendered object against the Kubernetes API types (k8s-openapi is generated
//! from Kubernetes' OpenAPI schema; an object that does not survive a round trip through its
//! type has a misspelled or misplaced field).
//!
//! Needs helm (`scripts/tools.sh` builds it into .tools/bin; `scripts/test.sh` runs that).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> PathBuf {
    let local = root().join(".tools/bin/helm");
    if local.exists() {
        return local;
    }
    panic!("helm not found in .tools/bin: run scripts/tools.sh (scripts/test.sh does)");
}

fn run_helm(args: &[&str]) -> (bool, String) {
    let out = Command::new(helm())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "demo", "charts/raftkv", "--namespace", "kv"];
    args.extend_from_slice(extra);
    let (ok, text) = run_helm(&args);
    assert!(ok, "helm template {extra:?} failed:\n{text}");
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let v: Value = serde_yaml::with::singleton_map_recursive::deserialize(doc).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

/// The first place where `a` and `b` differ, as a JSON path.
fn diff(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    None => return Some(format!("{path}.{k} (dropped: not a field of this type)")),
                    Some(vb) => {
                        if let Some(d) = diff(&format!("{path}.{k}"), va, vb) {
                            return Some(d);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| diff(&format!("{path}[{i}]"), va, vb)),
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| format!("does not parse: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match diff("", doc, &back) {
        Some(d) => Err(d),
        None => Ok(()),
    }
}

/// Validates one rendered object by its kind.
fn validate(doc: &Value) -> Result<(), String> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    match kind {
        "Deployment" => round_trip::<Deployment>(doc),
        "StatefulSet" => round_trip::<StatefulSet>(doc),
        "Service" => round_trip::<Service>(doc),
        "ServiceAccount" => round_trip::<ServiceAccount>(doc),
        "ConfigMap" => round_trip::<ConfigMap>(doc),
        "Namespace" => round_trip::<Namespace>(doc),
        "NetworkPolicy" => round_trip::<NetworkPolicy>(doc),
        "Role" => round_trip::<Role>(doc),
        "RoleBinding" => round_trip::<RoleBinding>(doc),
        "ClusterRole" => round_trip::<ClusterRole>(doc),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc),
        "RaftCluster" => round_trip::<raftkv_operator::crd::RaftCluster>(doc),
        "ServiceMonitor" => {
            // No Rust type for the Prometheus Operator's CRD: check the fields it requires.
            let ok = doc["apiVersion"] == "monitoring.coreos.com/v1"
                && doc["spec"]["selector"].is_object()
                && doc["spec"]["endpoints"].as_array().is_some_and(|e| !e.is_empty());
            ok.then_some(()).ok_or_else(|| "incomplete ServiceMonitor".to_string())
        }
        other => Err(format!("unexpected kind {other:?}: add it to the validation")),
    }
    .map_err(|e| format!("{kind} {}: {e}", doc["metadata"]["name"]))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn the_chart_lints_strictly_with_default_and_all_options() {
    for values in [None, Some("charts/raftkv/ci/all-options-values.yaml")] {
        let mut args = vec!["lint", "--strict", "charts/raftkv"];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let (ok, text) = run_helm(&args);
        assert!(
            ok && !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "helm lint {values:?}:\n{text}"
        );
    }
}

#[test]
fn every_rendered_object_is_valid_with_default_values() {
    let docs = render(&[]);
    assert_eq!(
        kinds(&docs),
        [
            "NetworkPolicy",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment"
        ]
    );
    for d in &docs {
        validate(d).unwrap();
    }
    let dep = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"], "raftkv/raftkv:0.1.0",
        "the tag defaults to the chart's appVersion"
    );
    assert_restricted(&dep["spec"]["template"]["spec"]);
    let args = c["args"].to_string();
    assert!(
        args.contains("--operator-pod-selector=app.kubernetes.io/name=raftkv-operator,app.kubernetes.io/instance=demo"),
        "the operator knows its own pods' labels, for the clusters' NetworkPolicies: {args}"
    );
    let np = docs.iter().find(|d| d["kind"] == "NetworkPolicy").unwrap();
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"],
        "the operator's NetworkPolicy selects its pods"
    );
}

/// Pod Security "restricted", as the API server's admission checks it: non-root, no
/// privilege escalation, no capabilities, the runtime's seccomp profile; and a read-only root.
fn assert_restricted(pod: &Value) {
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{pod:#}");
    assert!(psc["runAsUser"].as_i64().is_some_and(|u| u > 0), "{pod:#}");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{pod:#}");
    for c in pod["containers"].as_array().unwrap() {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{c:#}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{c:#}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{c:#}");
        assert!(sc["capabilities"]["add"].is_null(), "{c:#}");
    }
}

#[test]
fn every_rendered_object_is_valid_with_every_option_enabled() {
    let docs = render(&["-f", "charts/raftkv/ci/all-options-values.yaml"]);
    let k = kinds(&docs);
    for expected in [
        "Role",
        "RoleBinding",
        "Deployment",
        "RaftCluster",
        "ServiceMonitor",
        "ConfigMap",
    ] {
        assert!(k.iter().any(|x| x == expected), "{expected} missing from {k:?}");
    }
    assert!(
        !k.iter().any(|x| x == "ClusterRole"),
        "watching one namespace needs no ClusterRole"
    );
    for d in &docs {
        validate(d).unwrap();
    }
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "apps")
        .unwrap();
    assert!(role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| !r["verbs"].as_array().unwrap().contains(&"*".into())));
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let dash: Value = serde_json::from_str(cm["data"]["raftkv.json"].as_str().unwrap()).expect("dashboard JSON");
    assert_eq!(dash["uid"], "raftkv-overview");
    let rc = docs.iter().find(|d| d["kind"] == "RaftCluster").unwrap();
    assert_eq!(rc["spec"]["replicas"], 5);
    assert_eq!(rc["spec"]["image"], "registry.example/raftkv:9.9.9");
    assert_eq!(rc["spec"]["tls"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(rc["spec"]["auth"]["enabled"], true);
    assert_eq!(
        rc["spec"]["networkPolicy"]["clientFrom"][0]["namespaceSelector"]["matchLabels"]["team"],
        "orders"
    );
    let np = docs.iter().find(|d| d["kind"] == "NetworkPolicy").unwrap();
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "apps")
        .unwrap();
    let secrets = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"] == serde_json::json!(["secrets"]))
        .expect("a rule for Secrets");
    assert_eq!(
        secrets["verbs"],
        serde_json::json!(["get", "create", "patch"]),
        "Secrets are never listed or watched"
    );
}

#[test]
fn the_chart_s_cluster_has_tls_and_authentication_on_by_default() {
    let docs = render(&["--set", "cluster.enabled=true"]);
    let rc = docs.iter().find(|d| d["kind"] == "RaftCluster").unwrap();
    assert_eq!(rc["spec"]["tls"]["enabled"], true);
    assert_eq!(rc["spec"]["auth"]["enabled"], true);
    assert_eq!(rc["spec"]["networkPolicy"]["enabled"], true);
    validate(rc).unwrap();
}

#[test]
fn bad_values_fail_at_install_time_with_a_clear_message() {
    for (set, expect) in [
        ("cluster.replicas=11", "/cluster/replicas"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("operator.addressMode=carrier-pigeon", "/operator/addressMode"),
        ("cluster.storage.size=lots", "/cluster/storage/size"),
        ("clusterr.enabled=true", "clusterr"),
    ] {
        let (ok, text) = run_helm(&["template", "x", "charts/raftkv", "--set", set]);
        assert!(!ok, "--set {set} was accepted");
        assert!(text.contains(expect), "--set {set}: {text}");
    }
}

#[test]
fn plain_manifests_match_the_chart_and_the_crd_generator() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name);
    let (ok, text) = run_helm(&[
        "template",
        "raftkv",
        "charts/raftkv",
        "--namespace",
        "raftkv-system",
        "--skip-crds",
    ]);
    assert!(ok, "{text}");
    std::fs::write(out("operator.yaml"), &text).unwrap();
    let (ok, text) = run_helm(&[
        "template",
        "demo",
        "charts/raftkv",
        "--namespace",
        "default",
        "--skip-crds",
        "--show-only",
        "templates/raftcluster.yaml",
        "--set",
        "cluster.enabled=true",
        "--set",
        "cluster.name=demo",
    ]);
    assert!(ok, "{text}");
    std::fs::write(out("example-cluster.yaml"), &text).unwrap();
    for f in ["operator.yaml", "example-cluster.yaml"] {
        let committed = std::fs::read_to_string(root().join("manifests").join(f)).unwrap_or_default();
        assert!(
            committed == std::fs::read_to_string(out(f)).unwrap(),
            "manifests/{f} drifted from the chart: run scripts/render-manifests.sh"
        );
    }
    let dash = std::fs::read_to_string(root().join("dashboards/raftkv.json")).unwrap();
    let chart_dash = std::fs::read_to_string(root().join("charts/raftkv/dashboards/raftkv.json")).unwrap();
    assert!(
        dash == chart_dash,
        "the chart's dashboard drifted: run scripts/render-manifests.sh"
    );
    // Every plain manifest is a valid object.
    for f in ["namespace.yaml", "operator.yaml", "example-cluster.yaml"] {
        let text = std::fs::read_to_string(root().join("manifests").join(f)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde_yaml::with::singleton_map_recursive::deserialize(doc).unwrap();
            if !v.is_null() {
                validate(&v).unwrap();
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_both_binaries_as_ci_does_and_runs_non_root() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let build = std::fs::read_to_string(root().join("scripts/build-release.sh")).unwrap();
    let ci_build = build.lines().last().unwrap().trim();
    assert_eq!(ci_build, "cargo build --release --locked --workspace");
    let run_lines: Vec<&str> = dockerfile.lines().filter(|l| l.contains("cargo build")).collect();
    assert!(
        !run_lines.is_empty()
            && run_lines
                .iter()
                .all(|l| l.trim_start_matches([' ', '&']).trim() == ci_build
                    || l.trim().ends_with(&format!("{ci_build} \\"))),
        "the Dockerfile builds with `{ci_build}`: {run_lines:?}"
    );
    let froms: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: a builder and a runtime");
    assert!(
        froms[1].contains("distroless/cc") && froms[1].contains("nonroot"),
        "{}",
        froms[1]
    );
    for needle in [
        "COPY Cargo.toml Cargo.lock",
        "COPY --from=builder /src/target/release/raftkv /usr/local/bin/raftkv",
        "COPY --from=builder /src/target/release/raftkv-operator /usr/local/bin/raftkv-operator",
        "USER 65532:65532",
        "EXPOSE 7000 8080",
        "ENTRYPOINT [\"/usr/local/bin/raftkv\"]",
        "org.opencontainers.image.title",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // The dependency layer comes before the sources are copied.
    let deps = dockerfile.find("COPY Cargo.toml").unwrap();
    let src = dockerfile.find("COPY src src").unwrap();
    assert!(deps < src);
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}

#[test]
fn the_validation_catches_misspelled_and_mistyped_fields() {
    let typo = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                  "spec": {"ports": [{"port": 80}], "selctor": {"a": "b"}}});
    assert!(validate(&typo).unwrap_err().contains("selctor"));
    let wrong_type = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                        "spec": {"ports": [{"port": "eighty"}]}});
    assert!(validate(&wrong_type).is_err());
    let ok = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}});
    validate(&ok).unwrap();
}
