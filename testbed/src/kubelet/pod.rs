//! A pod's life on this node: prepared once from its spec (network, volumes, the container's
//! argv and env), kept running by [`State::sync`], and ended by [`State::terminate`] when it
//! is deleted: SIGTERM, the grace period, SIGKILL, then the final delete.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::ResourceExt;
use nix::sys::signal::Signal;
use serde_json::Value;

use super::probes::Probe;
use super::secrets::SecretVolume;
use super::security::RunAs;
use super::volumes::Mounts;
use super::{now, State};
use crate::network::{PodNet, GATEWAY};
use crate::process::Proc;

/// A pod's one container and everything needed to (re)start it and report on it.
pub(super) struct PodRuntime {
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) net: PodNet,
    pub(super) argv: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) mounts: Mounts,
    /// The Secret volumes among the mounts, and when they were last brought up to date.
    pub(super) secrets: Vec<SecretVolume>,
    pub(super) secrets_checked: Instant,
    /// Who the process runs as and what it may not do (its securityContext).
    pub(super) run_as: RunAs,
    /// The running process; `None` before the first start and between an exit and its restart.
    pub(super) proc: Option<Proc>,
    pub(super) restarts: u32,
    pub(super) started_at: String,
    pub(super) last_exit: Option<i32>,
    /// When the next start is due (after the restart backoff); `None` while running.
    pub(super) restart_at: Option<Instant>,
    pub(super) ready: bool,
    pub(super) readiness: Option<Probe>,
    pub(super) liveness: Option<Probe>,
    /// Set when deletion began (or the process was crashed on purpose): no more restarts.
    pub(super) terminating: Option<Instant>,
    pub(super) container: String,
    pub(super) image: String,
    pub(super) log: PathBuf,
    /// The status last written to the API, so that an unchanged one is not written again.
    pub(super) last_status: Value,
}

impl PodRuntime {
    /// SIGKILLs the container's process (group) and reaps it, if it runs.
    pub(super) fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }
}

/// `$(VAR)` references in args, expanded from the container's env (as the kubelet does).
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

impl State {
    /// Starts a pod that is not running yet, keeps a running one going (restarts, probes),
    /// and reports its status.
    pub(super) async fn sync(&self, pod: &Pod) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let known = self.pods().contains_key(&uid);
        if !known {
            let Some(rt) = self.prepare(pod).await? else {
                return Ok(());
            };
            self.pods().insert(uid.clone(), rt);
        }
        self.refresh_secrets(&uid).await;
        self.run(&uid);
        self.probe(&uid).await;
        self.report(&uid).await
    }

    /// The runtime of a pod about to start; `None` while one of its volumes does not exist.
    async fn prepare(&self, pod: &Pod) -> anyhow::Result<Option<PodRuntime>> {
        let spec = pod.spec.as_ref().ok_or_else(|| anyhow!("pod without spec"))?;
        let c = spec
            .containers
            .first()
            .ok_or_else(|| anyhow!("pod without containers"))?;
        // Refused before anything is set up, as the kubelet refuses it.
        let run_as = RunAs::of(pod, c)?;
        let Some((mounts, secrets)) = self.mounts(pod, c).await? else {
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
        Ok(Some(PodRuntime {
            ns: ns.clone(),
            name: pod.name_any(),
            net,
            argv,
            env,
            mounts,
            secrets,
            secrets_checked: Instant::now(),
            run_as,
            proc: None,
            restarts: 0,
            started_at: now(),
            last_exit: None,
            restart_at: Some(Instant::now()),
            ready: false,
            readiness: Probe::of(&c.readiness_probe, c),
            liveness: Probe::of(&c.liveness_probe, c),
            terminating: None,
            container: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            log: self.cfg.log_path(&ns, &pod.name_any()),
            last_status: Value::Null,
        }))
    }

    /// Deletion: SIGTERM, the grace period, SIGKILL, then the final delete (uid-guarded: the
    /// StatefulSet recreates a pod of the same name at once). Called on every tick until the
    /// process is gone.
    pub(super) async fn terminate(&self, pod: &Pod) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        let done = {
            let mut rts = self.pods();
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
        self.pods().remove(&uid);
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
