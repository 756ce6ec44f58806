//! The user's whole journey on a real Kubernetes API server: helm install, a RaftCluster,
//! writes and reads, scaling 3 -> 5 -> 3 under writes, losing the leader pod, losing a disk,
//! a real Prometheus scraping the pods, and uninstalling.
//!
//! Needs root (network namespaces) and the control plane binaries (`scripts/k8s-tools.sh`,
//! which `scripts/test.sh` runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raftkv_testbed::kubelet::{pvc_dir, KubeletConfig};
use raftkv_testbed::{ControlPlane, Kubelet};
use serde_json::Value;

const NS: &str = "demo";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// target/<profile>, where cargo put our binaries.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

fn tools() -> PathBuf {
    let bin = root().join(".tools/bin");
    for t in ["etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm"] {
        assert!(
            bin.join(t).exists(),
            "{t} missing from .tools/bin: run scripts/k8s-tools.sh and scripts/tools.sh"
        );
    }
    bin
}

struct Bed {
    dir: tempfile::TempDir,
    bin: PathBuf,
    cp: ControlPlane,
    kubelet: Kubelet,
    client: kube::Client,
    started: Instant,
}

impl Bed {
    fn step(&self, n: u32, what: &str) {
        eprintln!("[{:>6.1}s] step {n}: {what}", self.started.elapsed().as_secs_f64());
    }

    fn cmd(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut c = Command::new(self.bin.join(tool));
        c.args(args)
            .env("KUBECONFIG", &self.cp.admin_kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.path().join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.path().join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.path().join("helm/data"))
            .current_dir(root())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("spawn tool");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().expect("tool output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let (ok, text) = self.cmd("kubectl", args, None);
        assert!(ok, "kubectl {args:?}: {text}");
        text
    }

    fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let (ok, text) = self.cmd("kubectl", &a, None);
        assert!(ok, "kubectl {args:?}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn status(&self) -> Value {
        let (ok, text) = self.cmd("kubectl", &["-n", NS, "get", "raftcluster", "demo", "-o", "json"], None);
        if !ok {
            return Value::Null;
        }
        serde_json::from_str::<Value>(&text)
            .map(|v| v["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Waits until the RaftCluster's status satisfies `ok`.
    async fn wait_status(&self, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not reached within {timeout:?}; status: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn pod_ip(&self, pod: &str) -> Option<String> {
        self.kubelet.pod_ips().get(&(NS.to_string(), pod.to_string())).cloned()
    }

    /// Everything a person needs to see when a step fails.
    fn dump(&self) {
        eprintln!("===== RaftCluster =====\n{:#}", self.status());
        let (_, pods) = self.cmd("kubectl", &["get", "pods", "-A", "-o", "wide"], None);
        eprintln!("===== pods =====\n{pods}");
        let (_, events) = self.cmd(
            "kubectl",
            &["-n", NS, "get", "events", "--sort-by=.lastTimestamp"],
            None,
        );
        eprintln!("===== events =====\n{}", tail(&events, 40));
        for cp in ["kube-controller-manager", "kube-apiserver"] {
            let text = std::fs::read_to_string(self.cp.dir.join(format!("logs/{cp}.log"))).unwrap_or_default();
            let errors: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with('E') || l.contains("rror"))
                .collect();
            eprintln!(
                "===== {cp} (errors) =====\n{}",
                errors[errors.len().saturating_sub(20)..].join("\n")
            );
        }
        let logs = self.dir.path().join("kubelet/logs");
        if let Ok(entries) = std::fs::read_dir(&logs) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                eprintln!("===== {} =====\n{}", e.file_name().to_string_lossy(), tail(&text, 40));
            }
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Prints the diagnostics if the test panics.
struct DumpOnPanic<'a>(&'a Bed);
impl Drop for DumpOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.dump();
        }
    }
}

async fn put(http: &reqwest::Client, ip: &str, key: &str, value: &str) -> Result<u64, String> {
    let r = http
        .put(format!("http://{ip}:8080/v1/kv/{key}"))
        .body(value.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status} {body}"));
    }
    body["revision"]
        .as_u64()
        .ok_or_else(|| format!("no revision in {body}"))
}

async fn get(http: &reqwest::Client, ip: &str, key: &str, consistency: &str) -> Option<String> {
    let r = http
        .get(format!("http://{ip}:8080/v1/kv/{key}?consistency={consistency}"))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.text().await.ok()
}

fn voters(s: &Value) -> usize {
    s["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] != "learner").count())
}

fn all_healthy(s: &Value) -> bool {
    s["members"]
        .as_array()
        .is_some_and(|m| m.iter().all(|m| m["healthy"] == true))
}

fn condition(s: &Value, t: &str) -> String {
    s["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == t))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

fn member_of_pod(s: &Value, pod: &str) -> Option<u64> {
    s["members"].as_array()?.iter().find(|m| m["pod"] == pod)?["id"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_journey_on_a_real_api_server() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the test bed needs root (network namespaces)"
    );
    let bin = tools();
    // RAFTKV_TESTBED_KEEP=1 keeps the test bed's directory (logs, volumes) for a post-mortem.
    let keep = std::env::var_os("RAFTKV_TESTBED_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("raftkv-testbed-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("tempdir");
    if keep {
        eprintln!("test bed directory: {}", dir.path().display());
    }
    let started = Instant::now();
    let net = raftkv_testbed::network::Network::setup().expect("pod network");
    let cp = ControlPlane::start(&dir.path().join("control-plane"), &bin)
        .await
        .expect("control plane");
    let client = cp.client().await.expect("admin client");
    let target = target_dir();
    let kubelet = Kubelet::start(
        client.clone(),
        KubeletConfig {
            node: "testbed".into(),
            dir: dir.path().join("kubelet"),
            binaries: BTreeMap::from([
                ("raftkv".to_string(), target.join("raftkv")),
                ("raftkv-operator".to_string(), target.join("raftkv-operator")),
            ]),
            default_entrypoint: "raftkv".into(),
            api_port: cp.api_port,
            ca_pem: cp.ca_pem().expect("ca"),
        },
        net,
    )
    .await
    .expect("kubelet");
    let bed = Bed {
        dir,
        bin,
        cp,
        kubelet,
        client,
        started,
    };
    let _dump = DumpOnPanic(&bed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    eprintln!(
        "[{:>6.1}s] control plane and kubelet up",
        bed.started.elapsed().as_secs_f64()
    );

    bed.step(1, "helm install the chart; the operator becomes ready");
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
        "kubectl apply a 3-replica RaftCluster; it becomes Available with 3 voters and a leader",
    );
    bed.kubectl(&["create", "namespace", NS]);
    let (ok, out) = bed.cmd(
        "kubectl",
        &["apply", "-f", "-"],
        Some(
            "apiVersion: raftkv.dev/v1alpha1\nkind: RaftCluster\nmetadata: {name: demo, namespace: demo}\n\
              spec: {replicas: 3, image: 'raftkv/raftkv:dev'}\n",
        ),
    );
    assert!(ok, "kubectl apply: {out}");
    let s = bed
        .wait_status("3 voters, Available", Duration::from_secs(180), |s| {
            voters(s) == 3 && condition(s, "Available") == "True" && s["leader"].is_string() && s["readyReplicas"] == 3
        })
        .await;
    let table = bed.kubectl(&["-n", NS, "get", "raftclusters"]);
    eprintln!("{table}");
    assert!(
        table.contains("Running") && table.contains(s["leader"].as_str().unwrap()),
        "{table}"
    );

    bed.step(
        3,
        "curl writes through the client Service's endpoints; every pod reads the same",
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
        put(&http, ep, &format!("journey{i}"), &format!("v{i}"))
            .await
            .expect("PUT through an endpoint");
    }
    for pod in ["demo-0", "demo-1", "demo-2"] {
        let ip = bed.pod_ip(pod).expect("pod ip");
        for i in 0..3 {
            assert_eq!(
                get(&http, &ip, &format!("journey{i}"), "linearizable").await,
                Some(format!("v{i}")),
                "{pod}"
            );
        }
    }

    bed.step(4, "scale to 5 and back to 3 with a writer running throughout");
    let stable: Vec<String> = ["demo-0", "demo-1", "demo-2"]
        .iter()
        .map(|p| bed.pod_ip(p).unwrap())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (k, v) = (format!("w{n:05}"), format!("value{n}"));
                match put(&http, &stable[n % stable.len()], &k, &v).await {
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
        voters(s) == 5 && s["readyReplicas"] == 5 && all_healthy(s)
    })
    .await;
    bed.kubectl(&["-n", NS, "scale", "raftcluster/demo", "--replicas=3"]);
    bed.wait_status("back to 3 voters", Duration::from_secs(240), |s| {
        voters(s) == 3 && s["phase"] == "Running"
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
    let leader_ip = bed.pod_ip(bed.status()["leader"].as_str().unwrap()).unwrap();
    for (k, v) in &acked {
        assert_eq!(
            get(&http, &leader_ip, k, "linearizable").await.as_deref(),
            Some(v.as_str()),
            "{k} lost"
        );
    }

    bed.step(5, "delete the leader pod: a new leader; the pod rejoins with its data");
    let s = bed.status();
    let old_leader = s["leader"].as_str().unwrap().to_string();
    let old_id = member_of_pod(&s, &old_leader).expect("leader's member id");
    bed.kubectl(&["-n", NS, "delete", "pod", &old_leader, "--wait=false"]);
    bed.wait_status("a new leader", Duration::from_secs(60), |s| {
        s["leader"].is_string() && s["leader"] != old_leader.as_str()
    })
    .await;
    bed.wait_status(
        "the old leader's pod back with its data",
        Duration::from_secs(120),
        |s| member_of_pod(s, &old_leader) == Some(old_id) && s["readyReplicas"] == 3 && all_healthy(s),
    )
    .await;
    let ip = bed.pod_ip(&old_leader).unwrap();
    assert_eq!(
        get(&http, &ip, "journey0", "stale").await.as_deref(),
        Some("v0"),
        "the data survived"
    );

    bed.step(6, "a lost disk: the operator replaces the member");
    let s = bed.status();
    let victim = ["demo-0", "demo-1", "demo-2"]
        .into_iter()
        .find(|p| s["leader"] != *p)
        .unwrap()
        .to_string();
    let old_id = member_of_pod(&s, &victim).expect("member id");
    let disk = pvc_dir(&bed.client, NS, &format!("data-{victim}"))
        .await
        .expect("pvc dir");
    bed.kubelet.crash_and_wipe(NS, &victim).expect("wipe");
    assert_eq!(std::fs::read_dir(&disk).unwrap().count(), 0);
    bed.kubectl(&["-n", NS, "delete", "pod", &victim, "--wait=false"]);
    let s = bed
        .wait_status("the member replaced", Duration::from_secs(180), |s| {
            voters(s) == 3
                && member_of_pod(s, &victim).is_some_and(|id| id != old_id)
                && s["readyReplicas"] == 3
                && all_healthy(s)
        })
        .await;
    assert!(
        s["members"].as_array().unwrap().iter().all(|m| m["id"] != old_id),
        "the stale member is gone: {s:#}"
    );
    let ip = bed.pod_ip(&victim).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&http, &ip, "journey2", "stale").await.as_deref() != Some("v2") {
        assert!(Instant::now() < deadline, "the replacement never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    bed.step(
        7,
        "a real Prometheus scrapes the pods by their annotations; the dashboard has data",
    );
    prometheus_step(&bed).await;

    bed.step(
        8,
        "helm uninstall and deleting the RaftCluster leave no owned objects; PVCs stay",
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
            "statefulsets,services,poddisruptionbudgets,pods",
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
    eprintln!("[{:>6.1}s] journey complete", bed.started.elapsed().as_secs_f64());
}

/// Scrape targets from the pods' prometheus.io annotations, labelled as the chart's
/// ServiceMonitor labels them.
fn write_targets(bed: &Bed, path: &Path) {
    let pods = bed.kubectl_json(&["get", "pods", "-A"]);
    let mut groups = Vec::new();
    for p in pods["items"].as_array().into_iter().flatten() {
        let a = &p["metadata"]["annotations"];
        let ip = p["status"]["podIP"].as_str();
        if a["prometheus.io/scrape"] != "true" || ip.is_none() {
            continue;
        }
        let port = a["prometheus.io/port"].as_str().unwrap_or("8080");
        let path = a["prometheus.io/path"].as_str().unwrap_or("/metrics");
        let mut labels = serde_json::json!({
            "namespace": p["metadata"]["namespace"], "pod": p["metadata"]["name"], "__metrics_path__": path,
        });
        if let Some(c) = p["metadata"]["labels"]["app.kubernetes.io/instance"].as_str() {
            labels["cluster"] = c.into();
        }
        groups.push(serde_json::json!({"targets": [format!("{}:{port}", ip.unwrap_or_default())], "labels": labels}));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&groups).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn prometheus_step(bed: &Bed) {
    let prom = Path::new("/usr/bin/prometheus");
    assert!(
        prom.exists(),
        "Debian's prometheus package is needed (scripts/test.sh installs it)"
    );
    let dir = bed.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Debian's Prometheus is built without Kubernetes discovery, so the test discovers the pods
    // itself, exactly as the usual annotation-driven `kubernetes_sd` relabelling would (the
    // chart's prometheus.io/* annotations; `cluster` from the instance label), and hands the
    // targets to Prometheus through file-based discovery.
    let targets = dir.join("targets.json");
    write_targets(bed, &targets);
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: kubernetes-pods\n    \
         file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
        targets.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let mut child = Command::new(prom)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(std::fs::File::create(dir.join("log")).unwrap())
        .stderr(std::fs::File::create(dir.join("log.err")).unwrap())
        .spawn()
        .expect("start prometheus");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut child);
    let http = reqwest::Client::new();
    let query = move |q: String| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        write_targets(bed, &targets);
        let up = query("sum(up{namespace=\"demo\", cluster=\"demo\"})".into()).await;
        let v = up
            .as_ref()
            .and_then(|u| u["data"]["result"][0]["value"][1].as_str().map(str::to_string));
        if v.as_deref() == Some("3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not find 3 raftkv pods up: {up:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Traffic while the dashboard is evaluated, so that rates have samples.
    let leader = bed.status()["leader"].as_str().unwrap().to_string();
    let ip = bed.pod_ip(&leader).unwrap();
    let traffic = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for i in 0..600 {
            put(&http, &ip, &format!("prom{i}"), "x")
                .await
                .expect("PUT during the Prometheus step");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let rate = "sum(rate(raftkv_http_requests_total{cluster=\"demo\", method=\"PUT\"}[15s]))";
    loop {
        let v = query(rate.to_string()).await.unwrap_or(Value::Null);
        let x: f64 = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        if x > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no write rate in Prometheus: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("dashboards/raftkv.json")).unwrap()).unwrap();
    let mut with_data: BTreeMap<String, bool> = BTreeMap::new();
    let mut total = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", "demo")
                .replace("$cluster", "demo")
                .replace("$__rate_interval", "15s");
            let v = query(expr.clone()).await.unwrap_or(Value::Null);
            assert_eq!(v["status"], "success", "{}: {expr}: {v}", panel["title"]);
            total += 1;
            let has = v["data"]["result"].as_array().is_some_and(|r| !r.is_empty());
            *with_data
                .entry(panel["title"].as_str().unwrap_or("").to_string())
                .or_default() |= has;
        }
    }
    traffic.abort();
    let empty: Vec<&String> = with_data.iter().filter(|(_, d)| !**d).map(|(t, _)| t).collect();
    eprintln!(
        "dashboard: {total} queries, {} panels; panels without data: {empty:?}",
        with_data.len()
    );
    for must in [
        "Leader",
        "Members",
        "Requests per second",
        "Commit vs applied index",
        "Log fsync latency (journal group commit; checkpoint into redb)",
        "Replication lag per follower (entries)",
        "Write latency (PUT)",
        "Resident memory",
    ] {
        assert_eq!(
            with_data.get(must),
            Some(&true),
            "panel {must:?} shows no data in the cluster"
        );
    }
}
