//! The test bed's PKI, made with the openssl command: a CA, the API server's serving
//! certificate, client certificates, and the service-account signing key.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Pki {
    /// Creates everything under `dir`; `server_ips` are the API server's IP SANs.
    pub(crate) fn create(dir: &Path, server_ips: &[&str]) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "3",
                "-subj",
                "/CN=raftkv-testbed-ca",
            ],
        )?;
        let mut sans = vec![
            "DNS:localhost".to_string(),
            "DNS:kubernetes".into(),
            "DNS:kubernetes.default".into(),
            "DNS:kubernetes.default.svc".into(),
            "DNS:kubernetes.default.svc.cluster.local".into(),
            "IP:127.0.0.1".into(),
            "IP:10.96.0.1".into(),
        ];
        sans.extend(server_ips.iter().map(|ip| format!("IP:{ip}")));
        Self::issue(dir, "apiserver", "/CN=kube-apiserver", Some(&sans.join(",")))?;
        Self::issue(dir, "admin", "/O=system:masters/CN=testbed-admin", None)?;
        Self::issue(dir, "controller-manager", "/CN=system:kube-controller-manager", None)?;
        openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
        openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(Pki { dir: dir.to_path_buf() })
    }

    fn issue(dir: &Path, name: &str, subject: &str, sans: Option<&str>) -> anyhow::Result<()> {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
            ],
        )?;
        let ext = format!("{name}.ext");
        let mut text = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n".to_string();
        text.push_str(if sans.is_some() {
            "extendedKeyUsage=serverAuth\n"
        } else {
            "extendedKeyUsage=clientAuth\n"
        });
        if let Some(s) = sans {
            text.push_str(&format!("subjectAltName={s}\n"));
        }
        std::fs::write(dir.join(&ext), text)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "3",
                "-extfile",
                &ext,
            ],
        )
    }

    pub(crate) fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A kubeconfig for the client certificate `name` against `server`.
    pub(crate) fn kubeconfig(&self, name: &str, server: &str) -> anyhow::Result<PathBuf> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: {name}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n\
             contexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: {name}\ncurrent-context: testbed\n",
            ca = self.path("ca.crt"),
            crt = self.path(&format!("{name}.crt")),
            key = self.path(&format!("{name}.key")),
        );
        let path = self.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text)?;
        Ok(path)
    }
}
