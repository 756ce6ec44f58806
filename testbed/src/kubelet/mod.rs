//! The process kubelet: registers a Node, binds pending pods to it, provisions their volumes,
//! and runs each pod's container as a local process of our own binaries, in a network
//! namespace of its own, with the pod's command, args and env (downward API included), its
//! volumes bind-mounted at their paths (a per-PVC directory that outlives the pod, the
//! service-account token), readiness and liveness probes reported in pod status, restarts,
//! and deletion by SIGTERM, grace period, SIGKILL.
//!
//! It holds processes to their securityContext where a process can be (uid, gid, groups,
//! fsGroup on volumes, a read-only root filesystem, no privilege escalation, no
//! capabilities; see `security.rs` for what is and is not enforced), and keeps Secret volumes
//! up to date while pods run, as the kubelet's atomic writer does (`secrets.rs`).
//!
//! What it does not do: images (an image maps to one of our binaries), resource limits,
//! seccomp profiles.
//!
//! One loop does everything, a tick every 250 ms: provision volumes, bind, start, probe,
//! report and stop pods, rewrite the pods' /etc/hosts; the node heartbeat rides on it. Each
//! job is a file of its own here, all of them methods of the one shared [`State`].

mod binding;
mod container;
mod hosts;
mod node_status;
mod pod;
mod pod_status;
mod probes;
mod secrets;
mod security;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

use crate::network::Network;
use pod::PodRuntime;

/// How often the loop looks at the API server.
const TICK: Duration = Duration::from_millis(250);
/// How often the Node's status and its lease are renewed (the lease lasts 40 s).
const HEARTBEAT: Duration = Duration::from_secs(10);

pub struct KubeletConfig {
    pub node: String,
    /// Volumes, tokens and container logs live here.
    pub dir: PathBuf,
    /// Command name (an image's entrypoint or a container's command) -> binary on this host.
    pub binaries: BTreeMap<String, PathBuf>,
    /// The command an image runs when the container names none.
    pub default_entrypoint: String,
    pub api_port: u16,
    pub ca_pem: String,
}

impl KubeletConfig {
    /// The log file of a pod's container.
    fn log_path(&self, ns: &str, pod: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{ns}_{pod}.log"))
    }

    /// Where persistent volumes live: a directory each, which outlives its pods.
    fn volumes_dir(&self) -> PathBuf {
        self.dir.join("volumes")
    }
}

/// What the loop and the [`Kubelet`] handle share.
struct State {
    client: kube::Client,
    cfg: KubeletConfig,
    net: Network,
    /// Pod uid -> its running container; a pod is here from its first start to its deletion.
    pods: Mutex<HashMap<String, PodRuntime>>,
    /// The probes' client: a probe that takes longer than a second fails; HTTPS is not verified.
    http: reqwest::Client,
}

/// A running kubelet; dropping it stops every pod process and removes the pod networks.
pub struct Kubelet {
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        for (_, mut rt) in self.state.pods().drain() {
            rt.kill();
        }
    }
}

/// A timestamp as the API's `Time` fields carry it (whole seconds).
fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Kubelet {
    /// Starts the kubelet on `net` (set up before the control plane, which listens on it).
    pub async fn start(client: kube::Client, cfg: KubeletConfig, net: Network) -> anyhow::Result<Kubelet> {
        std::fs::create_dir_all(cfg.dir.join("logs"))?;
        std::fs::create_dir_all(cfg.volumes_dir())?;
        let state = Arc::new(State {
            client,
            net,
            cfg,
            pods: Mutex::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                // The kubelet does not verify the certificates of HTTPS probes.
                .danger_accept_invalid_certs(true)
                .build()?,
        });
        state.register_node().await?;
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut last_heartbeat = Instant::now();
            loop {
                if let Err(e) = s.tick().await {
                    tracing::warn!(error = %format!("{e:#}"), "kubelet tick");
                }
                if last_heartbeat.elapsed() > HEARTBEAT {
                    if let Err(e) = s.heartbeat().await {
                        tracing::warn!(error = %e, "node heartbeat");
                    }
                    last_heartbeat = Instant::now();
                }
                tokio::time::sleep(TICK).await;
            }
        });
        Ok(Kubelet { state, task })
    }

    /// The log file of a pod's container.
    pub fn log_of(&self, ns: &str, pod: &str) -> PathBuf {
        self.state.cfg.log_path(ns, pod)
    }

    /// A lost disk: kills the pod's process (as a machine failure would) and empties its
    /// persistent volumes. The pod is not restarted; delete it to let its controller replace it.
    pub fn crash_and_wipe(&self, ns: &str, pod: &str) -> anyhow::Result<()> {
        let mut rts = self.state.pods();
        let rt = rts
            .values_mut()
            .find(|rt| rt.ns == ns && rt.name == pod)
            .ok_or_else(|| anyhow!("pod {ns}/{pod} is not running here"))?;
        rt.kill();
        rt.terminating = Some(Instant::now());
        self.state.wipe_persistent_volumes(rt)
    }

    /// Pod name -> IP of the pods running here.
    pub fn pod_ips(&self) -> BTreeMap<(String, String), String> {
        self.state
            .pods()
            .values()
            .map(|rt| ((rt.ns.clone(), rt.name.clone()), rt.net.ip.clone()))
            .collect()
    }

    /// The network namespace of the pod `ns/pod` running here (for `ip netns exec`, which
    /// also gives a command the pod's /etc/hosts).
    pub fn pod_netns(&self, ns: &str, pod: &str) -> Option<String> {
        self.state
            .pods()
            .values()
            .find(|rt| rt.ns == ns && rt.name == pod)
            .map(|rt| rt.net.netns.clone())
    }

    /// The process id of the pod's container, while it runs.
    pub fn pod_pid(&self, ns: &str, pod: &str) -> Option<u32> {
        self.state
            .pods()
            .values()
            .find(|rt| rt.ns == ns && rt.name == pod)
            .and_then(|rt| rt.proc.as_ref().map(|p| p.id()))
    }

    /// The host directory of the persistent volume bound to the claim `ns/pvc`.
    pub async fn claim_dir(&self, ns: &str, pvc: &str) -> anyhow::Result<PathBuf> {
        self.state.claim_dir(ns, pvc).await
    }
}

impl State {
    /// The pods running here. Poisoning is ignored: the drop that kills the pods' processes
    /// must still work after a panic, and a half-updated runtime is harmless in a test bed.
    fn pods(&self) -> MutexGuard<'_, HashMap<String, PodRuntime>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One pass over the API: every pod is bound, run, or stopped, as its spec says.
    async fn tick(&self) -> anyhow::Result<()> {
        self.provision_volumes().await?;
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let pods = pods_api.list(&ListParams::default()).await?.items;
        let mut seen = Vec::new();
        for pod in &pods {
            let uid = pod.uid().unwrap_or_default();
            let spec = pod.spec.as_ref();
            let node = spec.and_then(|s| s.node_name.clone());
            let deleting = pod.metadata.deletion_timestamp.is_some();
            match node {
                None if !deleting => {
                    if let Err(e) = self.bind(pod).await {
                        tracing::debug!(pod = %pod.name_any(), error = %e, "bind");
                    }
                }
                Some(n) if n == self.cfg.node => {
                    seen.push(uid.clone());
                    if deleting {
                        self.terminate(pod).await?;
                    } else if let Err(e) = self.sync(pod).await {
                        tracing::warn!(pod = %pod.name_any(), error = %format!("{e:#}"), "cannot run pod");
                    }
                }
                _ => {}
            }
        }
        // Pods that are gone from the API: stop them.
        let gone: Vec<String> = self.pods().keys().filter(|k| !seen.contains(k)).cloned().collect();
        for uid in gone {
            let rt = self.pods().remove(&uid);
            if let Some(mut rt) = rt {
                rt.kill();
            }
            self.net.remove_pod(&uid);
        }
        self.write_hosts(&pods);
        Ok(())
    }
}
