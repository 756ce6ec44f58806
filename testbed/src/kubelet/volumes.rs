//! Volumes, as a node with local disks provides them: a PersistentVolume (a host directory)
//! for every claim that waits for one, the directories a container's mounts resolve to
//! (claims, the projected service-account token, Secrets, emptyDirs), given to the pod's
//! `fsGroup` as the kubelet gives them, and the wipe of a lost disk.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use k8s_openapi::api::core::v1::{Container, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::pod::PodRuntime;
use super::secrets::SecretVolume;
use super::security::give_to_group;
use super::State;

/// One of a container's mounts.
#[derive(Debug, Clone)]
pub(super) struct Mount {
    /// The path inside the container.
    pub(super) path: String,
    /// The host directory bind-mounted there.
    pub(super) src: PathBuf,
    /// Mounted read-only: as the volumeMount asks, and always for Secrets and the projected
    /// token, as the kubelet mounts them.
    pub(super) read_only: bool,
}

/// A container's mounts.
pub(super) type Mounts = Vec<Mount>;

impl State {
    /// A PersistentVolume (a directory here) for every claim that waits for one.
    pub(super) async fn provision_volumes(&self) -> anyhow::Result<()> {
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
            let dir = self.cfg.volumes_dir().join(&name);
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

    /// Host directories for the container's volume mounts, and the Secret volumes among them
    /// (kept up to date while the pod runs); `None` until every volume exists.
    pub(super) async fn mounts(&self, pod: &Pod, c: &Container) -> anyhow::Result<Option<(Mounts, Vec<SecretVolume>)>> {
        let ns = pod.namespace().unwrap_or_default();
        let spec = pod.spec.as_ref().ok_or_else(|| anyhow!("pod without spec"))?;
        let psc = spec.security_context.clone().unwrap_or_default();
        let fs_group = psc.fs_group.and_then(|g| u32::try_from(g).ok());
        let on_root_mismatch = psc.fs_group_change_policy.as_deref() == Some("OnRootMismatch");
        let pod_dir = |kind: &str, name: &str| self.cfg.dir.join(kind).join(pod.uid().unwrap_or_default()).join(name);
        let mut out = Vec::new();
        let mut secrets = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(v) = spec.volumes.iter().flatten().find(|v| v.name == m.name) else {
                continue;
            };
            let asked = m.read_only == Some(true);
            let mount = |src: PathBuf, always_read_only: bool| Mount {
                path: m.mount_path.clone(),
                src,
                read_only: asked || always_read_only,
            };
            if let Some(claim) = &v.persistent_volume_claim {
                let Some(dir) = self.bound_dir(&ns, &claim.claim_name).await? else {
                    return Ok(None);
                };
                if let Some(g) = fs_group {
                    give_to_group(&dir, g, on_root_mismatch)?;
                }
                out.push(mount(dir, false));
            } else if let Some(source) = &v.secret {
                let dir = pod_dir("secrets", &v.name);
                let Some(vol) = self.secret_volume(&ns, source, dir.clone(), fs_group).await? else {
                    return Ok(None);
                };
                secrets.push(vol);
                out.push(mount(dir, true));
            } else if v
                .projected
                .as_ref()
                .is_some_and(|p| p.sources.iter().flatten().any(|s| s.service_account_token.is_some()))
            {
                let dir = self.token_dir(pod).await?;
                out.push(mount(dir, true));
            } else {
                // An emptyDir, as the kubelet makes it: writable by everyone in the pod.
                let dir = pod_dir("emptydir", &v.name);
                std::fs::create_dir_all(&dir)?;
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
                if let Some(g) = fs_group {
                    give_to_group(&dir, g, false)?;
                }
                out.push(mount(dir, false));
            }
        }
        Ok(Some((out, secrets)))
    }

    /// The host directory of the volume bound to the claim `ns/claim`; `None` while the claim
    /// does not exist or is not bound yet.
    async fn bound_dir(&self, ns: &str, claim: &str) -> anyhow::Result<Option<PathBuf>> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let Some(pvc) = claims.get_opt(claim).await? else {
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
        Ok(Some(PathBuf::from(path)))
    }

    /// The host directory of the volume bound to the claim `ns/claim`, which must be bound.
    pub(super) async fn claim_dir(&self, ns: &str, claim: &str) -> anyhow::Result<PathBuf> {
        self.bound_dir(ns, claim)
            .await?
            .ok_or_else(|| anyhow!("claim {ns}/{claim} does not exist or is not bound"))
    }

    /// Empties the pod's persistent volumes (those under the volumes directory), keeping the
    /// directories, as a replaced disk would be.
    pub(super) fn wipe_persistent_volumes(&self, rt: &PodRuntime) -> anyhow::Result<()> {
        let volumes = self.cfg.volumes_dir();
        for m in &rt.mounts {
            if m.src.starts_with(&volumes) {
                std::fs::remove_dir_all(&m.src)?;
                std::fs::create_dir_all(&m.src)?;
            }
        }
        Ok(())
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
}
