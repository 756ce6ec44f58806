//! The parts of a pod's `securityContext` a process can be held to without a container
//! runtime, as the kubelet and its runtime apply them:
//! - `runAsUser`, `runAsGroup`, `supplementalGroups` and `fsGroup` (the process's uid, gid and
//!   groups, through `setpriv`); `runAsNonRoot` refuses to start a container that would run as
//!   root (here an image has no user of its own: no `runAsUser` means root);
//! - `fsGroup` on volumes: the claim's and emptyDir's directories, and the Secret files, belong
//!   to that group and are group-writable (readable for Secrets), as the kubelet makes them;
//! - `readOnlyRootFilesystem`: `/` is remounted read-only in the container's own mount
//!   namespace, after its volumes are mounted (they, `/proc`, `/sys` and `/dev` stay writable);
//! - `allowPrivilegeEscalation: false` is `no_new_privs`; `capabilities.drop: [ALL]` empties
//!   the bounding and inheritable sets.
//!
//! Not enforced: `seccompProfile` (no seccomp filter is loaded), `capabilities.add`, SELinux
//! and AppArmor options, `procMount`, `sysctls`. The API server's Pod Security admission
//! checks the fields themselves, so a pod that asks for too much is still refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{anyhow, Context};
use k8s_openapi::api::core::v1::{Container, Pod};

/// Who a container's process runs as, and what it may not do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RunAs {
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    /// Supplementary groups: `supplementalGroups` and `fsGroup`.
    pub(super) groups: Vec<u32>,
    pub(super) fs_group: Option<u32>,
    pub(super) read_only_root: bool,
    pub(super) no_new_privs: bool,
    pub(super) drop_all_capabilities: bool,
}

fn id(v: Option<i64>, what: &str) -> anyhow::Result<Option<u32>> {
    v.map(|v| u32::try_from(v).map_err(|_| anyhow!("{what} {v} is not a valid id")))
        .transpose()
}

impl RunAs {
    /// From the pod's and the container's security contexts (the container's wins).
    pub(super) fn of(pod: &Pod, c: &Container) -> anyhow::Result<RunAs> {
        let psc = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let csc = c.security_context.clone().unwrap_or_default();
        let uid = id(csc.run_as_user.or(psc.run_as_user), "runAsUser")?;
        let gid = id(csc.run_as_group.or(psc.run_as_group), "runAsGroup")?;
        let fs_group = id(psc.fs_group, "fsGroup")?;
        let mut groups = Vec::new();
        for g in psc.supplemental_groups.iter().flatten() {
            groups.extend(id(Some(*g), "supplementalGroups")?);
        }
        groups.extend(fs_group);
        groups.sort_unstable();
        groups.dedup();
        if csc.run_as_non_root.or(psc.run_as_non_root) == Some(true) && uid.unwrap_or(0) == 0 {
            // The kubelet's own words.
            return Err(anyhow!("container has runAsNonRoot and image will run as root"));
        }
        let drop_all = csc
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c.eq_ignore_ascii_case("ALL")));
        Ok(RunAs {
            uid,
            gid,
            groups,
            fs_group,
            read_only_root: csc.read_only_root_filesystem == Some(true),
            no_new_privs: csc.allow_privilege_escalation == Some(false),
            drop_all_capabilities: drop_all,
        })
    }

    /// The `setpriv` command that puts the process in its place, to run the container's
    /// argv after; empty when the container runs as root with nothing taken away.
    pub(super) fn setpriv(&self) -> Vec<String> {
        let mut a = vec!["setpriv".to_string()];
        if let Some(uid) = self.uid {
            a.push(format!("--reuid={uid}"));
            // Without a runAsGroup the runtime uses the image's group; an image here has
            // none, so the process gets the group 0, as a runtime would for a user without one.
            a.push(format!("--regid={}", self.gid.unwrap_or(0)));
        } else if let Some(gid) = self.gid {
            a.push(format!("--regid={gid}"));
        }
        if self.uid.is_some() || self.gid.is_some() {
            if self.groups.is_empty() {
                a.push("--clear-groups".into());
            } else {
                let list: Vec<String> = self.groups.iter().map(u32::to_string).collect();
                a.push(format!("--groups={}", list.join(",")));
            }
        }
        if self.no_new_privs {
            a.push("--no-new-privs".into());
        }
        if self.drop_all_capabilities {
            a.push("--bounding-set=-all".into());
            a.push("--inh-caps=-all".into());
        }
        if a.len() == 1 {
            return Vec::new();
        }
        a.push("--".into());
        a
    }
}

/// Gives `dir` and everything in it to the group `gid`, group-writable, with the set-group-id
/// bit on directories so new files inherit the group: what the kubelet does to a volume for a
/// pod's `fsGroup`. With `on_root_mismatch`, a directory whose group is already `gid` is left
/// alone (the `OnRootMismatch` change policy).
pub(super) fn give_to_group(dir: &Path, gid: u32, on_root_mismatch: bool) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if on_root_mismatch && meta.gid() == gid && meta.mode() & 0o2070 == 0o2070 {
        return Ok(());
    }
    walk(dir, &mut |path, is_dir| {
        let meta = std::fs::symlink_metadata(path)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, None, Some(gid))?;
        let mode = meta.mode() & 0o7777;
        let wanted = if is_dir { mode | 0o2070 } else { mode | 0o060 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
        Ok(())
    })
}

fn walk(path: &Path, f: &mut dyn FnMut(&Path, bool) -> std::io::Result<()>) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        f(path, true).with_context(|| format!("{}", path.display()))?;
        for entry in std::fs::read_dir(path)? {
            walk(&entry?.path(), f)?;
        }
    } else {
        f(path, false).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec
        }))
        .expect("a pod");
        let c = pod.spec.as_ref().expect("spec").containers[0].clone();
        (pod, c)
    }

    #[test]
    fn a_restricted_pod_runs_as_its_user_with_its_fs_group_and_nothing_more() {
        let (p, c) = pod(serde_json::json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 2000},
            "containers": [{"name": "c", "securityContext": {
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}}}]
        }));
        let r = RunAs::of(&p, &c).expect("allowed");
        assert!(r.read_only_root);
        assert_eq!(
            r.setpriv(),
            [
                "setpriv",
                "--reuid=65532",
                "--regid=65532",
                "--groups=2000",
                "--no-new-privs",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--"
            ]
        );
    }

    #[test]
    fn run_as_non_root_without_a_user_is_refused_as_the_kubelet_refuses_it() {
        let (p, c) = pod(serde_json::json!({
            "containers": [{"name": "c", "securityContext": {"runAsNonRoot": true}}]
        }));
        let e = RunAs::of(&p, &c).expect_err("refused");
        assert!(e.to_string().contains("runAsNonRoot"), "{e}");
        let (p, c) = pod(serde_json::json!({"containers": [{"name": "c"}]}));
        assert!(RunAs::of(&p, &c).expect("root is allowed").setpriv().is_empty());
    }

    #[test]
    fn the_container_user_overrides_the_pods() {
        let (p, c) = pod(serde_json::json!({
            "securityContext": {"runAsUser": 1000},
            "containers": [{"name": "c", "securityContext": {"runAsUser": 1001}}]
        }));
        let r = RunAs::of(&p, &c).expect("allowed");
        assert_eq!(r.uid, Some(1001));
        assert_eq!(r.setpriv()[1..3], ["--reuid=1001", "--regid=0"]);
    }
}
