//! Secret volumes, kept as the kubelet keeps them: a pod does not start until its Secret
//! exists (unless the volume is optional), and while it runs, a change to the Secret reaches
//! its files within seconds, without a restart. Files are written the way the kubelet's
//! atomic writer writes them, so that a reader never sees half an update: the data lives in a
//! timestamped directory `..<time>`, `..data` is a symlink to it, and each key is a symlink
//! `<key> -> ..data/<key>`. An update writes a new timestamped directory and renames a new
//! `..data` link over the old one: the files a program opens by name change all at once, and
//! a file it holds open keeps its old contents (programs that reload certificates must look at
//! the path, not at an inode they watch).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use k8s_openapi::api::core::v1::{Secret, SecretVolumeSource};
use kube::api::Api;

use super::State;

/// How often a running pod's Secrets are looked at again (the kubelet takes up to a minute).
pub(super) const REFRESH: Duration = Duration::from_secs(2);

/// One Secret volume of a running pod.
pub(super) struct SecretVolume {
    pub(super) ns: String,
    pub(super) source: SecretVolumeSource,
    pub(super) dir: PathBuf,
    pub(super) fs_group: Option<u32>,
    /// The files last written (path -> contents), so that an unchanged Secret writes nothing.
    written: BTreeMap<String, Vec<u8>>,
}

/// The files a Secret volume holds: every key, or the `items` asked for, at their paths.
fn files_of(secret: Option<&Secret>, source: &SecretVolumeSource) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
    let name = source.secret_name.clone().unwrap_or_default();
    let Some(secret) = secret else {
        return if source.optional == Some(true) {
            Ok(Some(BTreeMap::new()))
        } else {
            Ok(None)
        };
    };
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .chain(
            secret
                .string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
        )
        .collect();
    let mut files = BTreeMap::new();
    match &source.items {
        None => files = data,
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        files.insert(item.path.clone(), v.clone());
                    }
                    None if source.optional == Some(true) => {}
                    None => return Err(anyhow!("Secret {name} has no key {:?}", item.key)),
                }
            }
        }
    }
    for path in files.keys() {
        if path.starts_with('/') || path.split('/').any(|p| p == ".." || p.starts_with("..")) {
            return Err(anyhow!("Secret {name}: {path:?} is not a file name a volume may hold"));
        }
    }
    Ok(Some(files))
}

/// Writes `files` into `dir` the atomic writer's way (see the module's documentation).
fn write_atomically(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32, gid: Option<u32>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = format!("..{}_{:09}", now.as_secs(), now.subsec_nanos());
    let data_dir = dir.join(&stamp);
    std::fs::create_dir(&data_dir)?;
    let owned = |path: &Path, mode: u32| -> anyhow::Result<()> {
        if let Some(g) = gid {
            std::os::unix::fs::lchown(path, Some(0), Some(g))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    owned(&data_dir, 0o755)?;
    for (path, contents) in files {
        let file = data_dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, contents)?;
        owned(&file, mode)?;
    }
    // Swap the data at once: a new link renamed over the old one.
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    let top: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "..data" || name == stamp {
            continue;
        }
        if name.starts_with("..") {
            std::fs::remove_dir_all(entry.path())?;
        } else if !top.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

impl State {
    /// The Secret volume `source` of a pod, written into `dir`; `None` while its Secret does
    /// not exist (the pod waits, as it would in ContainerCreating).
    pub(super) async fn secret_volume(
        &self,
        ns: &str,
        source: &SecretVolumeSource,
        dir: PathBuf,
        fs_group: Option<u32>,
    ) -> anyhow::Result<Option<SecretVolume>> {
        let mut v = SecretVolume {
            ns: ns.to_string(),
            source: source.clone(),
            dir,
            fs_group,
            written: BTreeMap::new(),
        };
        if self.write_secret(&mut v).await? {
            Ok(Some(v))
        } else {
            Ok(None)
        }
    }

    /// Brings the volume's files up to date with its Secret; whether the Secret (or, for an
    /// optional volume, its absence) could be written.
    async fn write_secret(&self, v: &mut SecretVolume) -> anyhow::Result<bool> {
        let name = v.source.secret_name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &v.ns);
        let secret = api.get_opt(&name).await?;
        let Some(files) = files_of(secret.as_ref(), &v.source)? else {
            return Ok(false);
        };
        if files != v.written || std::fs::symlink_metadata(v.dir.join("..data")).is_err() {
            let mode = v.source.default_mode.unwrap_or(0o644) as u32 & 0o777;
            write_atomically(&v.dir, &files, mode, v.fs_group)
                .with_context(|| format!("writing Secret {}/{name} into {}", v.ns, v.dir.display()))?;
            if !v.written.is_empty() {
                tracing::info!(secret = %name, dir = %v.dir.display(), "secret volume updated");
            }
            v.written = files;
        }
        Ok(true)
    }

    /// Looks at a running pod's Secrets again, if it is time to.
    pub(super) async fn refresh_secrets(&self, uid: &str) {
        let mut volumes = {
            let mut rts = self.pods();
            let Some(rt) = rts.get_mut(uid) else { return };
            if rt.secrets_checked.elapsed() < REFRESH || rt.secrets.is_empty() {
                return;
            }
            rt.secrets_checked = Instant::now();
            std::mem::take(&mut rt.secrets)
        };
        for v in &mut volumes {
            if let Err(e) = self.write_secret(v).await {
                tracing::warn!(error = %format!("{e:#}"), "secret volume");
            }
        }
        if let Some(rt) = self.pods().get_mut(uid) {
            rt.secrets = volumes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).expect("a file")
    }

    #[test]
    fn an_update_swaps_every_file_at_once_and_drops_removed_keys() {
        let tmp = tempfile::tempdir().expect("a dir");
        let dir = tmp.path().join("vol");
        let v1 = BTreeMap::from([
            ("a.crt".to_string(), b"one".to_vec()),
            ("b.crt".to_string(), b"two".to_vec()),
        ]);
        write_atomically(&dir, &v1, 0o440, None).expect("first write");
        assert_eq!(read(&dir, "a.crt"), "one");
        let held = std::fs::File::open(dir.join("a.crt")).expect("open");
        let first_target = std::fs::read_link(dir.join("..data")).expect("a link");
        let v2 = BTreeMap::from([("a.crt".to_string(), b"three".to_vec())]);
        write_atomically(&dir, &v2, 0o440, None).expect("second write");
        assert_eq!(read(&dir, "a.crt"), "three");
        assert!(
            std::fs::symlink_metadata(dir.join("b.crt")).is_err(),
            "a removed key goes"
        );
        assert_ne!(std::fs::read_link(dir.join("..data")).expect("a link"), first_target);
        assert!(!dir.join(first_target).exists(), "the old data is gone");
        let mut old = String::new();
        std::io::Read::read_to_string(&mut &held, &mut old).expect("still readable");
        assert_eq!(old, "one", "an open file keeps what it had");
        let mode = std::fs::metadata(dir.join("a.crt")).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o440);
    }

    #[test]
    fn items_pick_keys_and_a_missing_secret_waits_unless_optional() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}
        }))
        .expect("a secret");
        let source: SecretVolumeSource = serde_json::from_value(serde_json::json!({
            "secretName": "s", "items": [{"key": "tls.crt", "path": "server.crt"}]
        }))
        .expect("a source");
        let files = files_of(Some(&secret), &source).expect("ok").expect("files");
        assert_eq!(files, BTreeMap::from([("server.crt".to_string(), b"cert".to_vec())]));
        assert!(files_of(None, &source).expect("ok").is_none());
        let optional = SecretVolumeSource {
            optional: Some(true),
            ..source
        };
        assert_eq!(files_of(None, &optional).expect("ok"), Some(BTreeMap::new()));
    }
}
