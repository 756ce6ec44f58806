//! The process kubelet: registers a Node, binds pending pods to it, provisions their volumes,
//! and runs each pod's container as a local process of our own binaries, in a network
//! namespace of its own, with the pod's command, args and env (downward API included), its
//! volumes bind-mounted at their paths (a per-PVC directory that outlives the pod, the
//! service-account token), readiness and liveness probes reported in pod status, restarts,
//! and deletion by SIGTERM, grace period, SIGKILL.
//!
//! What it does not do: images (an image maps to one of our binaries), resource limits, user
//! ids and read-only root filesystems (processes run as the test's user, root).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::ResourceExt;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::network::{Network, PodNet, GATEWAY};
use crate::process::Proc;

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

struct Probe {
    path: String,
    port: u16,
    period: Duration,
    failure_threshold: u32,
    next: Instant,
    failures: u32,
}

struct PodRt {
    ns: String,
    name: String,
    net: PodNet,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<(String, PathBuf)>,
    proc: Option<Proc>,
    restarts: u32,
    started_at: String,
    last_exit: Option<i32>,
    restart_at: Option<Instant>,
    ready: bool,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    terminating: Option<Instant>,
    container: String,
    image: String,
    log: PathBuf,
    last_status: Value,
}

struct State {
    client: kube::Client,
    cfg: KubeletConfig,
    net: Network,
    pods: Mutex<HashMap<String, PodRt>>,
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
        let mut pods = self.state.pods.lock().unwrap_or_else(|p| p.into_inner());
        for (_, mut rt) in pods.drain() {
            if let Some(p) = rt.proc.as_mut() {
                p.kill();
            }
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `$(VAR)` references in args, expanded from the container's env (as the kubelet does).
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

impl Kubelet {
    /// Starts the kubelet on `net` (set up before the control plane, which listens on it).
    pub async fn start(client: kube::Client, cfg: KubeletConfig, net: Network) -> anyhow::Result<Kubelet> {
        std::fs::create_dir_all(cfg.dir.join("logs"))?;
        std::fs::create_dir_all(cfg.dir.join("volumes"))?;
        let state = Arc::new(State {
            client,
            net,
            cfg,
            pods: Mutex::default(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?,
        });
        state.register_node().await?;
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut last_heartbeat = Instant::now();
            loop {
                if let Err(e) = s.tick().await {
                    tracing::warn!(error = %format!("{e:#}"), "kubelet tick");
                }
                if last_heartbeat.elapsed() > Duration::from_secs(10) {
                    if let Err(e) = s.heartbeat().await {
                        tracing::warn!(error = %e, "node heartbeat");
                    }
                    last_heartbeat = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Ok(Kubelet { state, task })
    }

    /// The log file of a pod's container.
    pub fn log_of(&self, ns: &str, pod: &str) -> PathBuf {
        self.state.cfg.dir.join("logs").join(format!("{ns}_{pod}.log"))
    }

    /// A lost disk: kills the pod's process (as a machine failure would) and empties its
    /// persistent volumes. The pod is not restarted; delete it to let its controller replace it.
    pub fn crash_and_wipe(&self, ns: &str, pod: &str) -> anyhow::Result<()> {
        let mut rts = self.state.pods.lock().unwrap_or_else(|p| p.into_inner());
        let rt = rts
            .values_mut()
            .find(|rt| rt.ns == ns && rt.name == pod)
            .ok_or_else(|| anyhow!("pod {ns}/{pod} is not running here"))?;
        if let Some(p) = rt.proc.as_mut() {
            p.kill();
        }
        rt.terminating = Some(Instant::now());
        let volumes = self.state.cfg.dir.join("volumes");
        for (_, src) in &rt.mounts {
            if src.starts_with(&volumes) {
                std::fs::remove_dir_all(src)?;
                std::fs::create_dir_all(src)?;
            }
        }
        Ok(())
    }

    /// Pod name -> IP of the pods running here.
    pub fn pod_ips(&self) -> BTreeMap<(String, String), String> {
        let rts = self.state.pods.lock().unwrap_or_else(|p| p.into_inner());
        rts.values()
            .map(|rt| ((rt.ns.clone(), rt.name.clone()), rt.net.ip.clone()))
            .collect()
    }
}

impl State {
    async fn register_node(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.cfg.node, "labels": {
                "kubernetes.io/hostname": self.cfg.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        });
        nodes
            .patch(
                &self.cfg.node,
                &PatchParams::apply("testbed-kubelet").force(),
                &Patch::Apply(&node),
            )
            .await
            .context("registering the node")?;
        self.heartbeat().await
    }

    async fn heartbeat(&self) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let t = now();
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "testbed kubelet",
                            "lastHeartbeatTime": t, "lastTransitionTime": t}],
            "addresses": [{"type": "InternalIP", "address": GATEWAY}, {"type": "Hostname", "address": self.cfg.node}],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "nodeInfo": {"machineID": "testbed", "systemUUID": "testbed", "bootID": "testbed", "kernelVersion": "",
                         "osImage": "testbed", "containerRuntimeVersion": "process://0", "kubeletVersion": "v1.37.2",
                         "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}
        }});
        nodes
            .patch_status(&self.cfg.node, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.cfg.node},
            "spec": {"holderIdentity": self.cfg.node, "leaseDurationSeconds": 40,
                     "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}});
        leases
            .patch(
                &self.cfg.node,
                &PatchParams::apply("testbed-kubelet").force(),
                &Patch::Apply(&lease),
            )
            .await?;
        Ok(())
    }

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
        let gone: Vec<String> = {
            let rts = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            rts.keys().filter(|k| !seen.contains(k)).cloned().collect()
        };
        for uid in gone {
            let rt = self.pods.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
            if let Some(mut rt) = rt {
                if let Some(p) = rt.proc.as_mut() {
                    p.kill();
                }
            }
            self.net.remove_pod(&uid);
        }
        self.write_hosts(&pods);
        Ok(())
    }

    /// Pod DNS names through their headless Service: `<hostname>.<subdomain>.<ns>.svc...`.
    fn write_hosts(&self, pods: &[Pod]) {
        let rts = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries = Vec::new();
        for pod in pods {
            let Some(rt) = rts.get(&pod.uid().unwrap_or_default()) else {
                continue;
            };
            let ns = pod.namespace().unwrap_or_default();
            let mut names = vec![];
            if let Some(spec) = &pod.spec {
                let host = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
                if let Some(sub) = &spec.subdomain {
                    names.push(format!("{host}.{sub}.{ns}.svc.cluster.local"));
                    names.push(format!("{host}.{sub}.{ns}.svc"));
                    names.push(format!("{host}.{sub}"));
                }
                names.push(host);
            }
            entries.push((rt.net.ip.clone(), names));
        }
        drop(rts);
        self.net.write_hosts(&entries);
    }

    async fn bind(&self, pod: &Pod) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name_any()},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": self.cfg.node}});
        let _: Value = api
            .create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding)
            .await?;
        Ok(())
    }

    /// A PersistentVolume (a directory here) for every claim that waits for one.
    async fn provision_volumes(&self) -> anyhow::Result<()> {
        let claims: Api<PersistentVolumeClaim> = Api::all(self.client.clone());
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        for pvc in claims.list(&ListParams::default()).await?.items {
            let bound = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).is_some();
            if bound || pvc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = pvc.uid().unwrap_or_default();
            let name = format!("pv-{uid}");
            if pvs.get_opt(&name).await?.is_some() {
                continue;
            }
            let spec = pvc.spec.clone().unwrap_or_default();
            let size = spec
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").cloned())
                .map(|q| q.0)
                .unwrap_or_else(|| "1Gi".into());
            let dir = self.cfg.dir.join("volumes").join(&name);
            std::fs::create_dir_all(&dir)?;
            let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                "spec": {"capacity": {"storage": size}, "accessModes": spec.access_modes.unwrap_or_default(),
                         "persistentVolumeReclaimPolicy": "Retain",
                         "storageClassName": spec.storage_class_name.unwrap_or_default(),
                         "hostPath": {"path": dir.display().to_string()},
                         "claimRef": {"namespace": pvc.namespace(), "name": pvc.name_any(), "uid": uid}}});
            pvs.create(&PostParams::default(), &serde_json::from_value(pv)?).await?;
        }
        Ok(())
    }

    /// Host directories for the container's volume mounts; `None` until every volume exists.
    async fn volumes(&self, pod: &Pod, c: &Container) -> anyhow::Result<Option<Vec<(String, PathBuf)>>> {
        let ns = pod.namespace().unwrap_or_default();
        let spec = pod.spec.as_ref().ok_or_else(|| anyhow!("pod without spec"))?;
        let mut out = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(v) = spec.volumes.iter().flatten().find(|v| v.name == m.name) else {
                continue;
            };
            if let Some(claim) = &v.persistent_volume_claim {
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
                let Some(pvc) = claims.get_opt(&claim.claim_name).await? else {
                    return Ok(None);
                };
                let Some(pv_name) = pvc.spec.and_then(|s| s.volume_name) else {
                    return Ok(None);
                };
                let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
                let pv = pvs.get(&pv_name).await?;
                let Some(path) = pv.spec.and_then(|s| s.host_path).map(|h| h.path) else {
                    return Err(anyhow!("volume {pv_name} is not a hostPath volume"));
                };
                out.push((m.mount_path.clone(), PathBuf::from(path)));
            } else if v
                .projected
                .as_ref()
                .is_some_and(|p| p.sources.iter().flatten().any(|s| s.service_account_token.is_some()))
            {
                let dir = self.token_dir(pod).await?;
                out.push((m.mount_path.clone(), dir));
            } else {
                let dir = self
                    .cfg
                    .dir
                    .join("emptydir")
                    .join(pod.uid().unwrap_or_default())
                    .join(&v.name);
                std::fs::create_dir_all(&dir)?;
                out.push((m.mount_path.clone(), dir));
            }
        }
        Ok(Some(out))
    }

    /// The service-account token, CA and namespace files, as the kubelet projects them.
    async fn token_dir(&self, pod: &Pod) -> anyhow::Result<PathBuf> {
        let ns = pod.namespace().unwrap_or_default();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7200,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()}}});
        let resp: Value = api
            .create_subresource("token", &sa, &PostParams::default(), &req)
            .await
            .context("requesting a service-account token")?;
        let token = resp["status"]["token"]
            .as_str()
            .ok_or_else(|| anyhow!("no token in TokenRequest"))?;
        let dir = self.cfg.dir.join("tokens").join(pod.uid().unwrap_or_default());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("token"), token)?;
        std::fs::write(dir.join("ca.crt"), &self.cfg.ca_pem)?;
        std::fs::write(dir.join("namespace"), &ns)?;
        Ok(dir)
    }

    /// Starts a pod that is not running yet, keeps a running one going (restarts, probes),
    /// and reports its status.
    async fn sync(&self, pod: &Pod) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let known = self.pods.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&uid);
        if !known {
            let Some(rt) = self.prepare(pod).await? else {
                return Ok(());
            };
            self.pods
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid.clone(), rt);
        }
        self.run(&uid);
        self.probe(&uid).await;
        self.report(&uid).await
    }

    async fn prepare(&self, pod: &Pod) -> anyhow::Result<Option<PodRt>> {
        let spec = pod.spec.as_ref().ok_or_else(|| anyhow!("pod without spec"))?;
        let c = spec
            .containers
            .first()
            .ok_or_else(|| anyhow!("pod without containers"))?;
        let Some(mounts) = self.volumes(pod, c).await? else {
            return Ok(None);
        };
        let uid = pod.uid().unwrap_or_default();
        let net = self.net.add_pod(&uid)?;
        let ns = pod.namespace().unwrap_or_default();
        let mut env = vec![
            ("KUBERNETES_SERVICE_HOST".to_string(), GATEWAY.to_string()),
            ("KUBERNETES_SERVICE_PORT".to_string(), self.cfg.api_port.to_string()),
            ("HOSTNAME".to_string(), pod.name_any()),
        ];
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                expand(v, &env)
            } else if let Some(f) = e.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
                match f.field_path.as_str() {
                    "metadata.name" => pod.name_any(),
                    "metadata.namespace" => ns.clone(),
                    "metadata.uid" => uid.clone(),
                    "status.podIP" => net.ip.clone(),
                    "spec.nodeName" => self.cfg.node.clone(),
                    "spec.serviceAccountName" => spec.service_account_name.clone().unwrap_or_default(),
                    other => return Err(anyhow!("unsupported downward API field {other}")),
                }
            } else {
                continue;
            };
            env.push((e.name.clone(), value));
        }
        let command = c
            .command
            .clone()
            .unwrap_or_else(|| vec![self.cfg.default_entrypoint.clone()]);
        let bin = self
            .cfg
            .binaries
            .get(&command[0])
            .ok_or_else(|| anyhow!("no binary for command {:?} (image {:?})", command[0], c.image))?;
        let mut argv = vec![bin.display().to_string()];
        argv.extend(command[1..].iter().map(|a| expand(a, &env)));
        argv.extend(c.args.iter().flatten().map(|a| expand(a, &env)));
        let port_of = |p: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| -> Option<u16> {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            match p {
                IntOrString::Int(i) => u16::try_from(*i).ok(),
                IntOrString::String(name) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|cp| cp.name.as_deref() == Some(name))
                    .and_then(|cp| u16::try_from(cp.container_port).ok()),
            }
        };
        let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| -> Option<Probe> {
            let p = p.as_ref()?;
            let g = p.http_get.as_ref()?;
            Some(Probe {
                path: g.path.clone().unwrap_or_else(|| "/".into()),
                port: port_of(&g.port)?,
                period: Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64),
                failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
                next: Instant::now() + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64),
                failures: 0,
            })
        };
        Ok(Some(PodRt {
            ns: ns.clone(),
            name: pod.name_any(),
            net,
            argv,
            env,
            mounts,
            proc: None,
            restarts: 0,
            started_at: now(),
            last_exit: None,
            restart_at: Some(Instant::now()),
            ready: false,
            readiness: probe(&c.readiness_probe),
            liveness: probe(&c.liveness_probe),
            terminating: None,
            container: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            log: self.cfg.dir.join("logs").join(format!("{ns}_{}.log", pod.name_any())),
            last_status: Value::Null,
        }))
    }

    /// Starts the container process if it is due (first start, or a restart after backoff).
    fn run(&self, uid: &str) {
        let mut rts = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rt) = rts.get_mut(uid) else { return };
        if rt.terminating.is_some() {
            return;
        }
        if let Some(p) = rt.proc.as_mut() {
            if let Some(code) = p.exited() {
                rt.proc = None;
                rt.last_exit = Some(code);
                rt.ready = false;
                let backoff = Duration::from_secs(u64::from(rt.restarts.min(5)) * 2);
                rt.restart_at = Some(Instant::now() + backoff);
                tracing::info!(pod = %rt.name, code, "container exited");
            }
        }
        if rt.proc.is_none() && rt.restart_at.is_some_and(|t| Instant::now() >= t) {
            match spawn(rt) {
                Ok(p) => {
                    if rt.last_exit.is_some() {
                        rt.restarts += 1;
                    }
                    rt.proc = Some(p);
                    rt.restart_at = None;
                    rt.started_at = now();
                    for probe in [&mut rt.readiness, &mut rt.liveness].into_iter().flatten() {
                        probe.failures = 0;
                    }
                }
                Err(e) => tracing::warn!(pod = %rt.name, error = %e, "cannot start container"),
            }
        }
    }

    async fn probe(&self, uid: &str) {
        let targets: Vec<(bool, String)> = {
            let mut rts = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            let Some(rt) = rts.get_mut(uid) else { return };
            if rt.proc.is_none() || rt.terminating.is_some() {
                return;
            }
            let ip = rt.net.ip.clone();
            let mut t = Vec::new();
            for (live, p) in [(false, &mut rt.readiness), (true, &mut rt.liveness)] {
                if let Some(p) = p {
                    if Instant::now() >= p.next {
                        p.next = Instant::now() + p.period;
                        t.push((live, format!("http://{ip}:{}{}", p.port, p.path)));
                    }
                }
            }
            if rt.readiness.is_none() {
                rt.ready = true;
            }
            t
        };
        for (live, url) in targets {
            let ok = self
                .http
                .get(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let mut rts = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            let Some(rt) = rts.get_mut(uid) else { return };
            if live {
                let Some(p) = rt.liveness.as_mut() else { continue };
                p.failures = if ok { 0 } else { p.failures + 1 };
                if p.failures >= p.failure_threshold {
                    tracing::info!(pod = %rt.name, "liveness probe failed: restarting");
                    if let Some(proc) = rt.proc.as_mut() {
                        proc.kill();
                    }
                }
            } else {
                rt.ready = ok;
            }
        }
    }

    /// Patches the pod's status when it changed.
    async fn report(&self, uid: &str) -> anyhow::Result<()> {
        let (ns, name, status) = {
            let rts = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            let Some(rt) = rts.get(uid) else { return Ok(()) };
            let running = rt.proc.is_some() && rt.terminating.is_none();
            let ready = running && rt.ready;
            let r = if ready { "True" } else { "False" };
            let state = if running {
                json!({"running": {"startedAt": rt.started_at}})
            } else {
                json!({"waiting": {"reason": if rt.restarts > 0 || rt.last_exit.is_some() { "CrashLoopBackOff" } else { "ContainerCreating" }}})
            };
            let last_state = match rt.last_exit {
                Some(code) => json!({"terminated": {"exitCode": code, "finishedAt": rt.started_at}}),
                None => json!({}),
            };
            let status = json!({"status": {
                "phase": "Running", "hostIP": GATEWAY, "podIP": rt.net.ip, "podIPs": [{"ip": rt.net.ip}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": r},
                    {"type": "Ready", "status": r}],
                "containerStatuses": [{"name": rt.container, "image": rt.image, "imageID": "", "ready": ready,
                    "started": running, "restartCount": rt.restarts, "state": state, "lastState": last_state}]
            }});
            if status == rt.last_status {
                return Ok(());
            }
            (rt.ns.clone(), rt.name.clone(), status)
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut with_start = status.clone();
        with_start["status"]["startTime"] = json!(now());
        // A merge patch replaces podIPs instead of appending (a strategic merge would append).
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&with_start))
            .await?;
        if let Some(rt) = self.pods.lock().unwrap_or_else(|p| p.into_inner()).get_mut(uid) {
            rt.last_status = status;
        }
        Ok(())
    }

    /// Deletion: SIGTERM, the grace period, SIGKILL, then the final delete (uid-guarded: the
    /// StatefulSet recreates a pod of the same name at once).
    async fn terminate(&self, pod: &Pod) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        let done = {
            let mut rts = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            match rts.get_mut(&uid) {
                None => true,
                Some(rt) => {
                    let deadline = *rt.terminating.get_or_insert_with(|| {
                        if let Some(p) = &rt.proc {
                            p.signal(Signal::SIGTERM);
                        }
                        Instant::now() + Duration::from_secs(grace)
                    });
                    match rt.proc.as_mut() {
                        None => true,
                        Some(p) => {
                            if p.exited().is_some() {
                                true
                            } else if Instant::now() >= deadline {
                                p.kill();
                                true
                            } else {
                                false
                            }
                        }
                    }
                }
            }
        };
        if !done {
            return Ok(());
        }
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
        self.net.remove_pod(&uid);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Runs the container's process in the pod's network namespace, in a mount namespace of its
/// own where each volume is bind-mounted at its path.
fn spawn(rt: &PodRt) -> anyhow::Result<Proc> {
    let mut script = String::from("set -e\n");
    for (i, (path, _)) in rt.mounts.iter().enumerate() {
        script.push_str(&format!(
            "mkdir -p \"{path}\"\nmount --bind \"$MOUNT_SRC_{i}\" \"{path}\"\n"
        ));
    }
    script.push_str("exec \"$@\"\n");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &rt.net.netns,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
    ])
    .arg(&script)
    .arg("sh")
    .args(&rt.argv)
    .env_clear()
    .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    .env("RUST_BACKTRACE", "1");
    for (i, (_, src)) in rt.mounts.iter().enumerate() {
        cmd.env(format!("MOUNT_SRC_{i}"), src);
    }
    for (k, v) in &rt.env {
        cmd.env(k, v);
    }
    Proc::spawn(&rt.name, &mut cmd, &rt.log)
}

/// The directory of a pod's PVC volume on this host, found through the API.
pub async fn pvc_dir(client: &kube::Client, ns: &str, pvc: &str) -> anyhow::Result<PathBuf> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pv_name = claims
        .get(pvc)
        .await?
        .spec
        .and_then(|s| s.volume_name)
        .ok_or_else(|| anyhow!("{pvc} is not bound"))?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let path = pvs
        .get(&pv_name)
        .await?
        .spec
        .and_then(|s| s.host_path)
        .map(|h| h.path)
        .ok_or_else(|| anyhow!("{pv_name} has no host path"))?;
    Ok(Path::new(&path).to_path_buf())
}
