//! The test bed the journey drives: a pod network, a control plane and a process kubelet
//! started together; the user's tools (kubectl, helm, curl, raftkv) run against it; the
//! RaftCluster's status read as the operator writes it; clients of the pods' HTTPS API with
//! the cluster's CA and root's password; and what a failed step prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use raftkv_client::{Credentials, Tls};
use raftkv_harness::logs::tail;
use raftkv_operator::crd::RaftClusterStatus;
use raftkv_testbed::network::Network;
use raftkv_testbed::{ControlPlane, Kubelet, KubeletConfig};
use serde_json::Value;

/// The namespace of the journey's RaftCluster, which has the same name.
pub const NS: &str = "demo";

/// The port of a raftkv pod's HTTP API (the chart's).
const HTTP_PORT: u16 = 8080;

/// How long one request to a pod may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// The repository, where the chart and the dashboard live.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// target/<profile>, where cargo put our binaries.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// `.tools/bin`, checked to hold every tool the journey runs.
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

/// What a client of the cluster needs with TLS and authentication on: the CA to trust (from
/// the pods' Secret), root's password (from the root Secret), and the operator's client
/// certificate (the only one besides the pods' that the peer port accepts); also written as
/// files for the user's tools.
pub struct Secure {
    pub ca_pem: Vec<u8>,
    pub password: String,
    /// `ca.crt`, `operator.crt`, `operator.key` in the test bed's directory.
    pub ca_file: PathBuf,
    pub operator_cert_file: PathBuf,
    pub operator_key_file: PathBuf,
}

impl Secure {
    pub fn credentials(&self) -> Credentials {
        Credentials::Basic {
            user: "root".into(),
            password: self.password.clone(),
        }
    }
}

pub struct Bed {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    cp: ControlPlane,
    pub kubelet: Kubelet,
    started: Instant,
    /// The cluster's CA and root's password, once the cluster made them.
    secure: OnceLock<Secure>,
}

impl Bed {
    /// The pod network, the control plane, and a kubelet that runs our debug binaries.
    pub async fn start() -> Bed {
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
        let net = Network::setup().expect("pod network");
        let cp = ControlPlane::start(&dir.path().join("control-plane"), &bin)
            .await
            .expect("control plane");
        let client = cp.client().await.expect("admin client");
        let target = target_dir();
        let kubelet = Kubelet::start(
            client,
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
            started,
            secure: OnceLock::new(),
        };
        eprintln!(
            "[{:>6.1}s] control plane and kubelet up",
            bed.started.elapsed().as_secs_f64()
        );
        bed
    }

    pub fn step(&self, n: u32, what: &str) {
        eprintln!("[{:>6.1}s] step {n}: {what}", self.started.elapsed().as_secs_f64());
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs one of the user's tools against the test bed; whether it succeeded, and its
    /// stdout and stderr.
    pub fn cmd(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut c = Command::new(self.bin.join(tool));
        c.args(args)
            .env("KUBECONFIG", &self.cp.admin_kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.path().join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.path().join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.path().join("helm/data"))
            .current_dir(root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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

    /// kubectl, which must succeed; its output.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let (ok, text) = self.cmd("kubectl", args, None);
        assert!(ok, "kubectl {args:?}: {text}");
        text
    }

    /// kubectl with `-o json`, which must succeed; its output parsed (null if it is not JSON).
    pub fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).unwrap_or(Value::Null)
    }

    /// The RaftCluster's status as the operator wrote it; `None` while there is none.
    pub fn status(&self) -> Option<RaftClusterStatus> {
        let (ok, text) = self.cmd("kubectl", &["-n", NS, "get", "raftcluster", "demo", "-o", "json"], None);
        if !ok {
            return None;
        }
        let cluster: Value = serde_json::from_str(&text).ok()?;
        serde_json::from_value(cluster.get("status")?.clone()).ok()
    }

    /// Waits until the RaftCluster's status satisfies `ok`.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&RaftClusterStatus) -> bool,
    ) -> RaftClusterStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if let Some(s) = s.as_ref().filter(|s| ok(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what} not reached within {timeout:?}; status: {}",
                shown(&s)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The pod the status names as the leader's.
    pub fn leader(&self) -> String {
        self.status()
            .and_then(|s| s.leader)
            .expect("the RaftCluster's status names a leader")
    }

    pub fn pod_ip(&self, pod: &str) -> Option<String> {
        self.kubelet.pod_ips().get(&(NS.to_string(), pod.to_string())).cloned()
    }

    /// The Secret `name` in the cluster's namespace: key -> bytes; empty if it does not exist.
    pub fn secret(&self, name: &str) -> BTreeMap<String, Vec<u8>> {
        let (ok, text) = self.cmd("kubectl", &["-n", NS, "get", "secret", name, "-o", "json"], None);
        if !ok {
            return BTreeMap::new();
        }
        let secret: Secret = serde_json::from_str(&text).expect("a Secret");
        secret.data.into_iter().flatten().map(|(k, v)| (k, v.0)).collect()
    }

    /// Reads the CA, root's password and the operator's certificate from the cluster's
    /// Secrets, as a user with access to the namespace would.
    pub fn load_secure(&self) -> &Secure {
        self.secure.get_or_init(|| {
            let pods = self.secret("demo-tls");
            let root = self.secret("demo-root");
            let operator = self.secret("demo-operator-tls");
            let file = |name: &str, bytes: &[u8]| {
                let path = self.dir.path().join(name);
                std::fs::write(&path, bytes).expect("write a PEM file");
                path
            };
            Secure {
                ca_pem: pods.get("ca.crt").cloned().expect("ca.crt in demo-tls"),
                password: String::from_utf8(root.get("password").cloned().expect("a root password"))
                    .expect("a text password"),
                ca_file: file("ca.crt", &pods["ca.crt"]),
                operator_cert_file: file("operator.crt", &operator["tls.crt"]),
                operator_key_file: file("operator.key", &operator["tls.key"]),
            }
        })
    }

    pub fn secure(&self) -> &Secure {
        self.secure
            .get()
            .expect("the cluster's Secrets are loaded (load_secure)")
    }

    /// The pod's DNS name under the headless Service: what its certificate names.
    pub fn pod_host(pod: &str) -> String {
        format!("{pod}.demo-peers.{NS}.svc.cluster.local")
    }

    /// A client of the HTTPS API of the raftkv pod `pod` at `ip`, as root, verifying the
    /// pod's certificate by its DNS name (resolved here to `ip`: the host has no cluster DNS).
    fn client_of(&self, pod: &str, ip: &str) -> raftkv_client::Client {
        let s = self.secure();
        let host = Bed::pod_host(pod);
        let tls = Tls::from_pem(Some(&s.ca_pem), None, None).expect("the cluster's CA");
        let mut config = (*tls.config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let addr = SocketAddr::new(ip.parse().expect("a pod IP"), HTTP_PORT);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .resolve(&host, addr)
            .build()
            .expect("an HTTPS client");
        raftkv_client::Client::builder(&format!("https://{host}:{HTTP_PORT}"))
            .timeout(NODE_TIMEOUT)
            .http_client(http)
            .credentials(s.credentials())
            .build()
            .expect("a client of the pod")
    }

    /// A client of the raftkv pod at `ip` (an endpoint address), which must run here.
    pub fn node(&self, ip: &str) -> raftkv_client::Client {
        let pod = self
            .kubelet
            .pod_ips()
            .into_iter()
            .find(|(_, a)| a == ip)
            .map(|((_, pod), _)| pod)
            .unwrap_or_else(|| panic!("no pod runs at {ip}"));
        self.client_of(&pod, ip)
    }

    /// A client of the raftkv pod named `pod`, which must run here.
    pub fn pod(&self, pod: &str) -> raftkv_client::Client {
        let ip = self.pod_ip(pod).unwrap_or_else(|| panic!("{pod} runs no process here"));
        self.client_of(pod, &ip)
    }

    /// Runs `program` with `args` in the network of the pod `pod` (its address, its
    /// /etc/hosts, so cluster names resolve): whether it succeeded, and its output.
    pub fn in_pod_network(&self, pod: &str, program: &str, args: &[&str]) -> (bool, String) {
        let netns = self
            .kubelet
            .pod_netns(NS, pod)
            .unwrap_or_else(|| panic!("{pod} runs no process here"));
        let out = Command::new("ip")
            .args(["netns", "exec", &netns, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Our `raftkv` binary (the CLI a user runs).
    pub fn raftkv_bin() -> PathBuf {
        target_dir().join("raftkv")
    }

    /// Everything a person needs to see when a step fails.
    fn dump(&self) {
        eprintln!("===== RaftCluster =====\n{}", shown(&self.status()));
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

/// A status as JSON, as `kubectl get -o json` shows it.
fn shown(s: &Option<RaftClusterStatus>) -> String {
    serde_json::to_string_pretty(s).unwrap_or_else(|e| format!("{s:?} ({e})"))
}

/// Prints the diagnostics if the test panics.
pub struct DumpOnPanic<'a>(pub &'a Bed);

impl Drop for DumpOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.dump();
        }
    }
}
