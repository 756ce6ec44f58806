//! The user's whole journey on a real Kubernetes API server, with TLS and authentication on
//! as the chart's cluster has them: helm install into a namespace that enforces Pod Security
//! "restricted", a RaftCluster with certificates from the operator's CA (a short lifetime, so
//! that they are renewed during the journey) and root's password in a Secret; HTTPS, mutual
//! TLS between the pods and for the admin service, 401 without credentials; writes and reads,
//! scaling 3 -> 5 -> 3 under writes, a renewal without a restart, losing the leader pod,
//! losing a disk, a real Prometheus scraping the pods over HTTPS, and uninstalling.
//!
//! Needs root (network namespaces) and the control plane binaries (`scripts/k8s-tools.sh`,
//! which `scripts/test.sh` runs).
//!
//! [`bed`] starts the test bed and runs the user's tools; [`security`] holds the checks of
//! TLS, authentication and the pods' confinement; [`prometheus`] is the monitoring step; this
//! file is the story, one assertion per step.

mod bed;
mod prometheus;
mod security;

use std::time::{Duration, Instant};

use raftkv_client::{Client, Condition, Consistency};
use raftkv_operator::crd::RaftClusterStatus;

use bed::{Bed, DumpOnPanic, NS};

/// Short, so that the certificates are renewed (after two thirds of it) while the journey
/// runs; long enough that a renewal is never late (a third of it, 40 s, to spare).
const CERTIFICATE_LIFETIME: &str = "2m";

/// A key's value read through `node`; `None` if it is absent or the read failed.
async fn get(node: &Client, key: &str, consistency: Consistency) -> Option<String> {
    let value = node.get(key.as_bytes(), consistency).await.ok()??;
    Some(String::from_utf8_lossy(&value.value).into_owned())
}

fn voters(s: &RaftClusterStatus) -> usize {
    s.members.iter().filter(|m| m.role != "learner").count()
}

/// Every member is healthy, and there are some.
fn all_healthy(s: &RaftClusterStatus) -> bool {
    !s.members.is_empty() && s.members.iter().all(|m| m.healthy)
}

/// The status (`True`, `False`, `Unknown`) of the condition of type `t`; empty if absent.
fn condition(s: &RaftClusterStatus, t: &str) -> String {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

fn member_of_pod(s: &RaftClusterStatus, pod: &str) -> Option<u64> {
    s.members.iter().find(|m| m.pod.as_deref() == Some(pod)).map(|m| m.id)
}

fn is_leader(s: &RaftClusterStatus, pod: &str) -> bool {
    s.leader.as_deref() == Some(pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_journey_on_a_real_api_server() {
    let bed = Bed::start().await;
    let _dump = DumpOnPanic(&bed);

    bed.step(
        1,
        "helm install the chart into a namespace that enforces Pod Security \"restricted\"; the operator becomes ready",
    );
    bed.kubectl(&["apply", "-f", "manifests/namespace.yaml"]);
    let (ok, out) = bed.cmd(
        "helm",
        &[
            "install",
            "raftkv",
            "charts/raftkv",
            "--namespace",
            "raftkv-system",
            "--create-namespace",
            "--set",
            "image.tag=dev",
            "--set",
            "operator.logFormat=text",
            "--wait",
            "--timeout",
            "180s",
        ],
        None,
    );
    assert!(ok, "helm install: {out}");
    assert!(
        out.contains("curl"),
        "NOTES tell the user how to reach the cluster: {out}"
    );
    let dep = bed.kubectl_json(&["-n", "raftkv-system", "get", "deployment", "raftkv-operator"]);
    assert_eq!(dep["status"]["readyReplicas"], 1, "{dep:#}");

    bed.step(
        2,
        "kubectl apply a 3-replica RaftCluster with TLS and auth; it becomes Available with 3 voters, a leader, auth on",
    );
    bed.kubectl(&["create", "namespace", NS]);
    bed.kubectl(&[
        "label",
        "namespace",
        NS,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let (ok, out) = bed.cmd(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: raftkv.dev/v1alpha1\nkind: RaftCluster\nmetadata: {{name: demo, namespace: demo}}\n\
             spec:\n  replicas: 3\n  image: 'raftkv/raftkv:dev'\n\
             \x20 tls: {{enabled: true, certificateLifetime: {CERTIFICATE_LIFETIME}}}\n  auth: {{enabled: true}}\n"
        )),
    );
    assert!(ok, "kubectl apply: {out}");
    let s = bed
        .wait_status("3 voters, Available, auth on", Duration::from_secs(180), |s| {
            voters(s) == 3
                && condition(s, "Available") == "True"
                && s.leader.is_some()
                && s.ready_replicas == 3
                && s.auth_enabled == Some(true)
        })
        .await;
    let table = bed.kubectl(&["-n", NS, "get", "raftclusters"]);
    eprintln!("{table}");
    let leader = s.leader.as_deref().expect("a leader");
    assert!(table.contains("Running") && table.contains(leader), "{table}");
    assert!(s.certificates_not_after.is_some(), "{s:#?}");
    bed.load_secure();
    // What a renewal must leave alone: the pods, and their processes.
    let before_renewal = security::Incarnations::of(&bed, &["demo-0", "demo-1", "demo-2"]);
    let first_cert = bed
        .secret("demo-tls")
        .get("demo-0.crt")
        .cloned()
        .expect("demo-0's certificate");

    bed.step(
        3,
        "HTTPS only, 401 without credentials, mutual TLS on the peer port, pods confined as Pod Security says",
    );
    security::https_and_auth(&bed, "demo-0");
    security::peer_port_needs_a_cluster_certificate(&bed, "demo-1", "demo-0");
    security::pods_are_confined(&bed, "demo-0");
    security::policies_are_in_place(&bed);

    bed.step(
        4,
        "writes over HTTPS through the client Service's endpoints; every pod reads the same",
    );
    let slices = bed.kubectl_json(&[
        "-n",
        NS,
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=demo",
    ]);
    let endpoints: Vec<String> = slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        endpoints.len(),
        3,
        "the client Service has 3 ready endpoints: {slices:#}"
    );
    for (i, ep) in endpoints.iter().enumerate() {
        bed.node(ep)
            .put(format!("journey{i}").as_bytes(), format!("v{i}"), Condition::None)
            .await
            .expect("PUT through an endpoint");
    }
    for pod in ["demo-0", "demo-1", "demo-2"] {
        let node = bed.pod(pod);
        for i in 0..3 {
            assert_eq!(
                get(&node, &format!("journey{i}"), Consistency::Linearizable).await,
                Some(format!("v{i}")),
                "{pod}"
            );
        }
    }

    bed.step(
        5,
        "scale to 5 and back to 3 with a writer running throughout (the operator over mutual TLS)",
    );
    let stable: Vec<Client> = ["demo-0", "demo-1", "demo-2"].iter().map(|p| bed.pod(p)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (k, v) = (format!("w{n:05}"), format!("value{n}"));
                match stable[n % stable.len()]
                    .put(k.as_bytes(), v.clone(), Condition::None)
                    .await
                {
                    Ok(_) => acked.push((k, v)),
                    Err(e) => failed.push(format!("{k}: {e}")),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, failed)
        })
    };
    bed.kubectl(&["-n", NS, "scale", "raftcluster/demo", "--replicas=5"]);
    bed.wait_status("5 voters", Duration::from_secs(240), |s| {
        voters(s) == 5 && s.ready_replicas == 5 && all_healthy(s)
    })
    .await;
    bed.kubectl(&["-n", NS, "scale", "raftcluster/demo", "--replicas=3"]);
    bed.wait_status("back to 3 voters", Duration::from_secs(240), |s| {
        voters(s) == 3 && s.phase.as_deref() == Some("Running")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods = bed.kubectl(&["-n", NS, "get", "pods", "-o", "name"]);
        if !pods.contains("demo-3") && !pods.contains("demo-4") {
            break;
        }
        assert!(Instant::now() < deadline, "removed pods still there: {pods}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, failed) = writer.await.expect("writer");
    eprintln!("writer: {} acknowledged, {} failed", acked.len(), failed.len());
    assert!(
        failed.is_empty(),
        "writes failed while scaling: {:?}",
        &failed[..failed.len().min(5)]
    );
    let leader = bed.pod(&bed.leader());
    for (k, v) in &acked {
        assert_eq!(
            get(&leader, k, Consistency::Linearizable).await.as_deref(),
            Some(v.as_str()),
            "{k} lost"
        );
    }

    bed.step(
        6,
        "the certificates are renewed: the pods serve the new ones, nothing restarted",
    );
    security::renewed_without_a_restart(&bed, &first_cert, &before_renewal).await;

    bed.step(7, "delete the leader pod: a new leader; the pod rejoins with its data");
    let s = bed.status().expect("the RaftCluster's status");
    let old_leader = s.leader.clone().expect("a leader");
    let old_id = member_of_pod(&s, &old_leader).expect("leader's member id");
    bed.kubectl(&["-n", NS, "delete", "pod", &old_leader, "--wait=false"]);
    bed.wait_status("a new leader", Duration::from_secs(60), |s| {
        s.leader.is_some() && !is_leader(s, &old_leader)
    })
    .await;
    bed.wait_status(
        "the old leader's pod back with its data",
        Duration::from_secs(120),
        |s| member_of_pod(s, &old_leader) == Some(old_id) && s.ready_replicas == 3 && all_healthy(s),
    )
    .await;
    assert_eq!(
        get(&bed.pod(&old_leader), "journey0", Consistency::Stale)
            .await
            .as_deref(),
        Some("v0"),
        "the data survived"
    );

    bed.step(8, "a lost disk: the operator replaces the member");
    let s = bed.status().expect("the RaftCluster's status");
    let victim = ["demo-0", "demo-1", "demo-2"]
        .into_iter()
        .find(|p| !is_leader(&s, p))
        .expect("a pod that does not lead")
        .to_string();
    let old_id = member_of_pod(&s, &victim).expect("member id");
    let disk = bed
        .kubelet
        .claim_dir(NS, &format!("data-{victim}"))
        .await
        .expect("pvc dir");
    bed.kubelet.crash_and_wipe(NS, &victim).expect("wipe");
    assert_eq!(std::fs::read_dir(&disk).expect("the wiped volume").count(), 0);
    bed.kubectl(&["-n", NS, "delete", "pod", &victim, "--wait=false"]);
    let s = bed
        .wait_status("the member replaced", Duration::from_secs(180), |s| {
            voters(s) == 3
                && member_of_pod(s, &victim).is_some_and(|id| id != old_id)
                && s.ready_replicas == 3
                && all_healthy(s)
        })
        .await;
    assert!(
        s.members.iter().all(|m| m.id != old_id),
        "the stale member is gone: {s:#?}"
    );
    let replacement = bed.pod(&victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&replacement, "journey2", Consistency::Stale).await.as_deref() != Some("v2") {
        assert!(Instant::now() < deadline, "the replacement never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    bed.step(
        9,
        "a real Prometheus scrapes the pods over HTTPS by their annotations; the dashboard has data",
    );
    prometheus::prometheus_step(&bed).await;

    bed.step(
        10,
        "helm uninstall and deleting the RaftCluster leave no owned objects; PVCs and the root password stay",
    );
    bed.kubectl(&[
        "-n",
        NS,
        "delete",
        "raftcluster",
        "demo",
        "--wait=true",
        "--timeout=60s",
    ]);
    let (ok, out) = bed.cmd(
        "helm",
        &["uninstall", "raftkv", "--namespace", "raftkv-system", "--wait"],
        None,
    );
    assert!(ok, "helm uninstall: {out}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = bed.kubectl(&[
            "-n",
            NS,
            "get",
            "statefulsets,services,poddisruptionbudgets,networkpolicies,pods",
            "-o",
            "name",
        ]);
        let operator = bed.kubectl(&["-n", "raftkv-system", "get", "deployments,pods", "-o", "name"]);
        if left.trim().is_empty() && operator.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "objects left behind: {left} {operator}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pvcs = bed.kubectl(&["-n", NS, "get", "pvc", "-o", "name"]);
    assert!(pvcs.lines().count() >= 3, "PVCs are retained: {pvcs}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let secrets = bed.kubectl(&["-n", NS, "get", "secrets", "-o", "name"]);
        let owned_gone = ["demo-ca", "demo-tls", "demo-operator-tls"]
            .iter()
            .all(|s| !secrets.lines().any(|l| l == format!("secret/{s}")));
        if owned_gone {
            assert!(
                secrets.lines().any(|l| l == "secret/demo-root"),
                "the root password stays with the data: {secrets}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "certificate Secrets left behind: {secrets}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("[{:>6.1}s] journey complete", bed.elapsed().as_secs_f64());
}
