//! etcd, kube-apiserver and kube-controller-manager as local processes. The API server listens
//! on the pod bridge's host address, so that pods (the operator) reach it as in a cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::network::GATEWAY;
use crate::pki::Pki;
use crate::process::Proc;

/// A running control plane; dropping it stops its processes.
pub struct ControlPlane {
    /// Its data, PKI and logs (`logs/<component>.log`).
    pub dir: PathBuf,
    /// The API server's port on the pod bridge's host address.
    pub api_port: u16,
    /// A kubeconfig with cluster-admin rights, for kubectl and helm.
    pub admin_kubeconfig: PathBuf,
    pki: Pki,
    procs: Vec<Proc>,
}

fn free_port(host: &str) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

impl ControlPlane {
    /// Starts etcd, the API server and the controller-manager from binaries in `bin`.
    pub async fn start(dir: &Path, bin: &Path) -> anyhow::Result<ControlPlane> {
        std::fs::create_dir_all(dir)?;
        let pki = Pki::create(&dir.join("pki"), &[GATEWAY])?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let etcd_port = free_port("127.0.0.1")?;
        let etcd_peer = free_port("127.0.0.1")?;
        let api_port = free_port(GATEWAY)?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = Proc::spawn(
            "etcd",
            Command::new(bin.join("etcd"))
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
                .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"))
                .arg(format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"))
                .arg("--log-level=warn")
                .arg("--unsafe-no-fsync"),
            &logs.join("etcd.log"),
        )?;
        let mut procs = vec![etcd];
        let p = |f: &str| pki.path(f);
        let api = Proc::spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver"))
                .arg(format!("--etcd-servers={etcd_url}"))
                .arg(format!("--bind-address={GATEWAY}"))
                .arg(format!("--advertise-address={GATEWAY}"))
                .arg(format!("--secure-port={api_port}"))
                .arg("--authorization-mode=Node,RBAC")
                .arg("--enable-admission-plugins=NodeRestriction")
                .arg(format!("--client-ca-file={}", p("ca.crt")))
                .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
                .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
                .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                .arg(format!("--service-account-key-file={}", p("sa.pub")))
                .arg(format!("--service-account-signing-key-file={}", p("sa.key")))
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--endpoint-reconciler-type=none")
                .arg("--v=1"),
            &logs.join("kube-apiserver.log"),
        )?;
        procs.push(api);
        let server = format!("https://{GATEWAY}:{api_port}");
        let admin_kubeconfig = pki.kubeconfig("admin", &server)?;
        let cm_kubeconfig = pki.kubeconfig("controller-manager", &server)?;
        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            pki,
            api_port,
            admin_kubeconfig,
            procs,
        };
        cp.wait_ready(Duration::from_secs(60)).await?;
        let cm = Proc::spawn(
            "kube-controller-manager",
            Command::new(bin.join("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", cm_kubeconfig.display()))
                .arg("--use-service-account-credentials=true")
                .arg(format!("--service-account-private-key-file={}", cp.pki.path("sa.key")))
                .arg(format!("--root-ca-file={}", cp.pki.path("ca.crt")))
                .arg("--leader-elect=false")
                .arg("--authentication-skip-lookup=true")
                .arg("--bind-address=127.0.0.1")
                .arg("--secure-port=0")
                .arg("--pvclaimbinder-sync-period=1s")
                .arg("--node-monitor-grace-period=60s")
                .arg("--v=1"),
            &cp.dir.join("logs/kube-controller-manager.log"),
        )?;
        cp.procs.push(cm);
        Ok(cp)
    }

    /// Waits until the API server answers and its system namespaces exist. It creates them
    /// in a controller of its own after it starts serving, so answering is not enough: the
    /// kubelet's node lease lives in `kube-node-lease`, and is refused until that exists.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = self.client().await?;
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        let deadline = Instant::now() + timeout;
        loop {
            for p in &mut self.procs {
                if let Some(code) = p.exited() {
                    bail!("{} exited with {code}; see {}", p.name, self.dir.join("logs").display());
                }
            }
            if client.apiserver_version().await.is_ok() {
                let mut missing = false;
                for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                    missing |= !matches!(namespaces.get_opt(ns).await, Ok(Some(_)));
                }
                if !missing {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("the API server was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client with cluster-admin rights.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.admin_kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .context("loading the admin kubeconfig")?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The cluster CA's certificate, which pods get beside their service-account token.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.pki.dir.join("ca.crt"))?)
    }
}
