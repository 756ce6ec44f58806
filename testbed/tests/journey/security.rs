//! The journey's security checks, made with the user's tools (curl, openssl, `raftkv admin`)
//! where a user would make them:
//! - the client port speaks HTTPS only, with a certificate from the cluster's CA, and wants
//!   credentials (401 without, the probes open);
//! - the peer port takes only a certificate from the cluster's CA, and the admin service root;
//! - the pods run as Pod Security "restricted" says (what the process kubelet enforces: the
//!   uid and groups, no new privileges, no capabilities, a read-only root), and the API
//!   server's admission refuses a pod that breaks it;
//! - the NetworkPolicy is made (the test bed has no network plugin to enforce it);
//! - certificates are renewed and served without a restart.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftkv_client::Condition;

use crate::bed::{Bed, NS};

/// The uid and gid the pods and the operator run as.
const NON_ROOT: &str = "65532";

/// curl against the pod `pod` by its DNS name (resolved to its IP), with `args` before the
/// URL of `path` on the client port; its exit status and output (the HTTP status last).
fn curl(bed: &Bed, pod: &str, scheme: &str, args: &[&str], path: &str) -> (Option<i32>, String) {
    let ip = bed.pod_ip(pod).expect("the pod's IP");
    let host = Bed::pod_host(pod);
    let resolve = format!("{host}:8080:{ip}");
    let url = format!("{scheme}://{host}:8080{path}");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--resolve", &resolve, "-w", "\n%{http_code}"])
        .args(args)
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The HTTP status curl printed last.
fn http_status(text: &str) -> &str {
    text.lines().last().unwrap_or_default().trim()
}

pub fn https_and_auth(bed: &Bed, pod: &str) {
    let s = bed.secure();
    let ca = s.ca_file.display().to_string();
    let root = format!("root:{}", s.password);

    let (code, out) = curl(bed, pod, "https", &["--cacert", &ca, "-u", &root], "/v1/status");
    assert_eq!(
        (code, http_status(&out)),
        (Some(0), "200"),
        "HTTPS with the CA and root: {out}"
    );
    assert!(out.contains("\"members\""), "root sees the details: {out}");

    let (code, out) = curl(bed, pod, "https", &["-u", &root], "/v1/status");
    assert_eq!(code, Some(60), "the system's roots do not vouch for the pod: {out}");

    let (code, out) = curl(bed, pod, "http", &["-u", &root], "/v1/status");
    assert!(
        code != Some(0) || http_status(&out).starts_with('4'),
        "plain text to the TLS port is refused: {out}"
    );

    let (code, out) = curl(
        bed,
        pod,
        "https",
        &["--cacert", &ca, "-X", "PUT", "--data-binary", "x"],
        "/v1/kv/anonymous",
    );
    assert_eq!((code, http_status(&out)), (Some(0), "401"), "no credentials: {out}");
    assert!(out.contains("\"unauthenticated\""), "the JSON error: {out}");
    let (_, out) = curl(
        bed,
        pod,
        "https",
        &["--cacert", &ca, "-u", "root:wrong", "-X", "PUT", "--data-binary", "x"],
        "/v1/kv/anonymous",
    );
    assert_eq!(http_status(&out), "401", "a wrong password: {out}");

    let (code, out) = curl(bed, pod, "https", &["--cacert", &ca], "/readyz");
    assert_eq!(
        (code, http_status(&out)),
        (Some(0), "200"),
        "the probes need no credentials: {out}"
    );
}

/// `raftkv admin status` from inside `from`'s network against `target`'s peer port, with `args`.
fn admin(bed: &Bed, from: &str, target: &str, scheme: &str, args: &[&str]) -> (bool, String) {
    let bin = Bed::raftkv_bin().display().to_string();
    let endpoint = format!("{scheme}{}:7000", Bed::pod_host(target));
    let mut a = vec!["admin", "--endpoint", &endpoint, "--timeout", "5"];
    a.extend_from_slice(args);
    a.push("status");
    bed.in_pod_network(from, &bin, &a)
}

pub fn peer_port_needs_a_cluster_certificate(bed: &Bed, from: &str, target: &str) {
    let s = bed.secure();
    let ca = s.ca_file.display().to_string();
    let cert = s.operator_cert_file.display().to_string();
    let key = s.operator_key_file.display().to_string();
    let root = format!("root:{}", s.password);

    let (ok, out) = admin(
        bed,
        from,
        target,
        "https://",
        &["--cacert", &ca, "--cert", &cert, "--key", &key, "--user", &root],
    );
    assert!(ok, "the operator's certificate and root: {out}");
    assert!(out.contains("leader"), "{out}");

    let (ok, out) = admin(bed, from, target, "https://", &["--cacert", &ca, "--user", &root]);
    assert!(!ok, "no client certificate is refused: {out}");
    let (ok, out) = admin(bed, from, target, "", &["--user", &root]);
    assert!(!ok, "plain text to the peer port is refused: {out}");
    // The operator's certificate names root (the admin service takes a certificate's
    // common name as the user): it is root without a password. A pod's certificate is from
    // the same CA, but names the pod: without root's credentials the admin service refuses it.
    let (ok, out) = admin(
        bed,
        from,
        target,
        "https://",
        &["--cacert", &ca, "--cert", &cert, "--key", &key],
    );
    assert!(ok, "the operator's certificate is root's: {out}");
    let pods = bed.secret("demo-tls");
    let write = |name: &str| {
        let path = bed.dir.path().join(name);
        std::fs::write(&path, &pods[name]).expect("write a PEM file");
        path.display().to_string()
    };
    let (pod_cert, pod_key) = (write(&format!("{from}.crt")), write(&format!("{from}.key")));
    let (ok, out) = admin(
        bed,
        from,
        target,
        "https://",
        &["--cacert", &ca, "--cert", &pod_cert, "--key", &pod_key],
    );
    assert!(!ok, "a pod's certificate without root's credentials is refused: {out}");
    assert!(
        out.contains("denied")
            || out.contains("permission")
            || out.contains("unauthenticated")
            || out.contains("PermissionDenied")
            || out.contains("Unauthenticated"),
        "refused by auth, not by TLS: {out}"
    );
    let (ok, out) = admin(
        bed,
        from,
        target,
        "https://",
        &["--cacert", &ca, "--cert", &pod_cert, "--key", &pod_key, "--user", &root],
    );
    assert!(ok, "a pod's certificate with root's credentials: {out}");
    eprintln!("peer port: only the cluster's certificates, with root: ok");
}

/// A process's `/proc/<pid>/status` field (the text after `name:`).
fn proc_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The options of the mount at `path` in the process's mount namespace.
fn mount_options(pid: u32, path: &str) -> String {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("the process's mounts");
    // `id parent major:minor root mountpoint options ...`; the last mount at a path wins.
    info.lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&path)).then(|| f.get(5).unwrap_or(&"").to_string())
        })
        .unwrap_or_default()
}

/// The process runs as the non-root user, with no new privileges and no capabilities.
fn assert_non_root(pid: u32, what: &str) {
    assert_eq!(
        proc_field(pid, "Uid"),
        format!("{NON_ROOT} {NON_ROOT} {NON_ROOT} {NON_ROOT}"),
        "{what}"
    );
    assert_eq!(
        proc_field(pid, "Gid"),
        format!("{NON_ROOT} {NON_ROOT} {NON_ROOT} {NON_ROOT}"),
        "{what}"
    );
    assert_eq!(proc_field(pid, "NoNewPrivs"), "1", "{what}");
    assert_eq!(proc_field(pid, "CapEff"), "0000000000000000", "{what}");
    assert_eq!(proc_field(pid, "CapBnd"), "0000000000000000", "{what}");
    assert!(mount_options(pid, "/").starts_with("ro"), "{what}: a read-only root");
}

pub fn pods_are_confined(bed: &Bed, pod: &str) {
    let pid = bed.kubelet.pod_pid(NS, pod).expect("the pod's process");
    assert_non_root(pid, pod);
    assert!(proc_field(pid, "Groups").split(' ').any(|g| g == NON_ROOT), "fsGroup");
    assert!(
        mount_options(pid, "/data").starts_with("rw"),
        "the data volume is writable"
    );
    assert!(mount_options(pid, "/tmp").starts_with("rw"), "/tmp is an emptyDir");
    assert!(
        mount_options(pid, "/etc/raftkv/tls").starts_with("ro"),
        "the certificates are read-only"
    );
    let operator = bed.kubectl(&["-n", "raftkv-system", "get", "pods", "-o", "name"]);
    let operator = operator
        .lines()
        .find_map(|l| l.strip_prefix("pod/"))
        .expect("the operator's pod");
    let pid = bed
        .kubelet
        .pod_pid("raftkv-system", operator)
        .expect("the operator's process");
    assert_non_root(pid, operator);

    // The API server's Pod Security admission, not the test bed, refuses this one: a pod
    // without a securityContext (a privileged one would be refused earlier, by the API
    // server's --allow-privileged=false).
    let (ok, out) = bed.cmd(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: unconfined, namespace: {NS}}}\n\
             spec: {{containers: [{{name: c, image: 'raftkv/raftkv:dev'}}]}}\n"
        )),
    );
    assert!(
        !ok && out.contains("violates PodSecurity") && out.contains("runAsNonRoot"),
        "an unconfined pod is refused: {out}"
    );
}

pub fn policies_are_in_place(bed: &Bed) {
    let np = bed.kubectl_json(&["-n", NS, "get", "networkpolicy", "demo"]);
    let rules = np["spec"]["ingress"].as_array().expect("ingress rules");
    let peer = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == 7000)
        .expect("a rule for the peer port");
    let from = peer["from"].to_string();
    assert!(
        from.contains("\"app.kubernetes.io/instance\":\"demo\"")
            && from.contains("\"kubernetes.io/metadata.name\":\"raftkv-system\"")
            && from.contains("raftkv-operator"),
        "the peer port is open to the cluster's pods and the operator only: {from}"
    );
}

/// The pods' uids, restart counts and process ids.
#[derive(Debug, PartialEq, Eq)]
pub struct Incarnations(BTreeMap<String, (String, i64, Option<u32>)>);

impl Incarnations {
    pub fn of(bed: &Bed, pods: &[&str]) -> Incarnations {
        Incarnations(
            pods.iter()
                .map(|p| {
                    let pod = bed.kubectl_json(&["-n", NS, "get", "pod", p]);
                    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                    let restarts = pod["status"]["containerStatuses"][0]["restartCount"]
                        .as_i64()
                        .unwrap_or(-1);
                    (p.to_string(), (uid, restarts, bed.kubelet.pod_pid(NS, p)))
                })
                .collect(),
        )
    }
}

/// The leaf certificate `pod` presents on `port` (PEM body, whitespace removed), as openssl
/// sees it; presenting the operator's certificate, which the peer port asks for.
fn served_certificate(bed: &Bed, pod: &str, port: u16) -> String {
    let s = bed.secure();
    let ip = bed.pod_ip(pod).expect("the pod's IP");
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("{ip}:{port}"),
            "-servername",
            &Bed::pod_host(pod),
        ])
        .args(["-CAfile", &s.ca_file.display().to_string()])
        .args(["-cert", &s.operator_cert_file.display().to_string()])
        .args(["-key", &s.operator_key_file.display().to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    pem_body(&String::from_utf8_lossy(&out.stdout))
}

/// The first certificate of a PEM text, its base64 only.
fn pem_body(text: &str) -> String {
    let begin = "-----BEGIN CERTIFICATE-----";
    let Some(start) = text.find(begin) else {
        return String::new();
    };
    let rest = &text[start + begin.len()..];
    let end = rest.find("-----END CERTIFICATE-----").unwrap_or(rest.len());
    rest[..end].split_whitespace().collect()
}

pub async fn renewed_without_a_restart(bed: &Bed, first: &[u8], before: &Incarnations) {
    let started = Instant::now();
    let first = pem_body(&String::from_utf8_lossy(first));
    let deadline = Instant::now() + Duration::from_secs(150);
    let renewed = loop {
        let now = bed
            .secret("demo-tls")
            .get("demo-0.crt")
            .map(|c| pem_body(&String::from_utf8_lossy(c)));
        if let Some(c) = now.filter(|c| !c.is_empty() && *c != first) {
            break c;
        }
        assert!(Instant::now() < deadline, "demo-0's certificate was not renewed");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "demo-0's certificate renewed ({:.0}s into this step)",
        started.elapsed().as_secs_f64()
    );
    // The kubelet updates the volume and the node reloads the files within seconds; by then
    // the Secret may have been renewed once more, so the served one is compared with both.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = bed
            .secret("demo-tls")
            .get("demo-0.crt")
            .map(|c| pem_body(&String::from_utf8_lossy(c)))
            .unwrap_or_default();
        let served = [8080, 7000].map(|port| served_certificate(bed, "demo-0", port));
        if served.iter().all(|s| *s == renewed || *s == current) && served.iter().all(|s| *s != first) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "demo-0 does not serve its renewed certificate on both ports (HTTP {}, peer {})",
            served[0] == first,
            served[1] == first
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = Incarnations::of(bed, &["demo-0", "demo-1", "demo-2"]);
    assert_eq!(&after, before, "no pod was recreated or restarted by the renewal");
    for pod in ["demo-0", "demo-1", "demo-2"] {
        bed.pod(pod)
            .put(format!("renewed-{pod}").as_bytes(), "ok", Condition::None)
            .await
            .unwrap_or_else(|e| panic!("a write through {pod} after the renewal: {e}"));
    }
    let events = bed.kubectl(&[
        "-n",
        NS,
        "get",
        "events",
        "--field-selector",
        "reason=CertificatesIssued",
    ]);
    assert!(events.contains("CertificatesIssued"), "renewals are Events: {events}");
}
