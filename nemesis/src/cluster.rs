//! Real `raftkv` processes, one per network namespace on a bridge of our own: a
//! [`raftkv_harness::Cluster`] whose nodes start through `ip netns exec` and bind their
//! namespace's address, plus what only the nemesis needs beside it (the namespaces, for
//! partitions, and removal through the admin API).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use raftkv_harness::{Launcher, NodeSpec, Options};
use raftkv_testbed::network::{Layout, Network, PodNet};

/// Our own /16, beside the Kubernetes test bed's 10.244 (so both can run at once).
pub const LAYOUT: Layout = Layout {
    bridge: "rkvnm0",
    net: "10.245",
    prefix: "rkvnm",
    unreachable: None,
};
const RAFT_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;

/// How long an admin call may take (a removal waits for its commit).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Cluster {
    /// The nodes, one per namespace, in slot order.
    pub nodes: raftkv_harness::Cluster,
    nets: Vec<PodNet>,
    admin: raftkv_client::Admin,
    // Dropped last: the namespaces go once every process is gone.
    _net: Network,
}

impl Cluster {
    /// Starts `n` nodes: the first bootstraps, the others join it; returns when all are voters.
    pub async fn start(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<Cluster> {
        let net = Network::setup_with(LAYOUT)?;
        // Snapshots (and log purges) happen several times a run, so that restarted and new
        // members catch up from snapshots too, not only from the log.
        let options = Options::new(bin)
            .dir(dir)
            .node_args(&["--snapshot-threshold", "1000"])
            .timeout(crate::nemesis::RECOVERY_BOUND);
        let mut nodes = raftkv_harness::Cluster::new(options)?;
        let mut nets = Vec::new();
        for i in 0..n {
            let name = format!("n{i}");
            let pod = net.add_pod(&name)?;
            let ip: std::net::IpAddr = pod
                .ip
                .parse()
                .with_context(|| format!("address of {name}: {}", pod.ip))?;
            let spec = NodeSpec::at(&name, SocketAddr::new(ip, RAFT_PORT), SocketAddr::new(ip, HTTP_PORT))
                .launcher(Launcher::prefixed(&["ip", "netns", "exec", &pod.netns]).own_process_group());
            nodes.add(spec)?;
            nets.push(pod);
        }
        let raft_addrs: Vec<String> = nodes.nodes().iter().map(|n| n.raft_addr().to_string()).collect();
        let admin = raftkv_client::Admin::any(&raft_addrs)?.timeout(ADMIN_TIMEOUT);
        nodes.form().await.context("forming the cluster")?;
        Ok(Cluster {
            nodes,
            nets,
            admin,
            _net: net,
        })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Each slot's network namespace, for partitions.
    pub fn nets(&self) -> &[PodNet] {
        &self.nets
    }

    /// Each slot's process counter: clients stamp it on their operations so that checks of
    /// stale reads can tell one process lifetime from the next.
    pub fn incarnations(&self) -> Vec<Arc<AtomicU32>> {
        self.nodes.nodes().iter().map(|n| n.incarnation()).collect()
    }

    /// Removes member `id` through the admin API of whichever node answers.
    pub async fn remove(&self, id: u64, force: bool) -> anyhow::Result<()> {
        self.admin
            .remove_member(id, force)
            .await
            .with_context(|| format!("removing member {id}"))?;
        Ok(())
    }
}
