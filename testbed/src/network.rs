//! Pod networking: a bridge with 10.244.0.1/16 on the host, and for each pod a network
//! namespace with one veth into that bridge and an address of its own. Pods get no default
//! route, and the service range is unreachable, so nothing ever leaves the machine. Each
//! namespace has its own /etc/hosts (`/etc/netns/<name>/hosts`, which `ip netns exec` mounts
//! over /etc/hosts): that is how pods resolve each other's DNS names.
//!
//! The names and the range come from a [`Layout`], so that other harnesses (the nemesis
//! tests) can have a network of their own beside the test bed's.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Context};

/// Names and addresses of one bridged network.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The bridge device on the host (at most 15 characters).
    pub bridge: &'static str,
    /// The first two octets of the /16 (e.g. "10.244"); the host is `<net>.0.1`.
    pub net: &'static str,
    /// Prefix of the namespaces' and the veth devices' names (at most 7 characters).
    pub prefix: &'static str,
    /// A range made unreachable from the host while the network exists (e.g. Services').
    pub unreachable: Option<&'static str>,
}

/// The Kubernetes test bed's pod network.
const TESTBED: Layout = Layout {
    bridge: "rkvtb0",
    net: "10.244",
    prefix: "rkvtb",
    unreachable: Some("10.96.0.0/12"),
};
/// The host's address on [`TESTBED`]'s bridge, where the API server listens.
pub(crate) const GATEWAY: &str = "10.244.0.1";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Layout {
    /// The host's address on the bridge.
    fn gateway(&self) -> String {
        format!("{}.0.1", self.net)
    }
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// A pod's place on the network.
#[derive(Debug, Clone)]
pub struct PodNet {
    pub netns: String,
    pub ip: String,
    /// The pod's end of its veth pair (inside `netns`).
    pub device: String,
    host_veth: String,
}

/// A bridge and the pods on it; dropping it removes every pod's namespace and the bridge.
pub struct Network {
    layout: Layout,
    next: AtomicU32,
    pods: Mutex<BTreeMap<String, PodNet>>,
}

/// Removes what an earlier, interrupted run may have left behind.
fn clean_leftovers(layout: &Layout) {
    let ns_prefix = format!("{}-", layout.prefix);
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&ns_prefix) {
                ip_quiet(&["netns", "del", name]);
                let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
            }
        }
    }
    ip_quiet(&["link", "del", layout.bridge]);
    if let Some(range) = layout.unreachable {
        ip_quiet(&["route", "del", "unreachable", range]);
    }
}

impl Network {
    /// The test bed's pod network: 10.244.0.0/16 on `rkvtb0`, the Service range unreachable.
    pub fn setup() -> anyhow::Result<Network> {
        Network::setup_with(TESTBED)
    }

    /// A network of `layout`, after removing what an earlier run of it left behind.
    pub fn setup_with(layout: Layout) -> anyhow::Result<Network> {
        clean_leftovers(&layout);
        ip(&["link", "add", layout.bridge, "type", "bridge"])
            .context("creating the bridge (network namespaces need root)")?;
        ip(&["addr", "add", &format!("{}/16", layout.gateway()), "dev", layout.bridge])?;
        ip(&["link", "set", layout.bridge, "up"])?;
        if let Some(range) = layout.unreachable {
            ip(&["route", "add", "unreachable", range])?;
        }
        Ok(Network {
            layout,
            next: AtomicU32::new(2),
            pods: Mutex::default(),
        })
    }

    /// The pods' places by key. Poisoning is ignored: the drop that removes the namespaces
    /// must still work after a panic.
    fn pods(&self) -> MutexGuard<'_, BTreeMap<String, PodNet>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a network namespace with its own address for the pod `key` (its uid).
    pub fn add_pod(&self, key: &str) -> anyhow::Result<PodNet> {
        if let Some(p) = self.pods().get(key) {
            return Ok(p.clone());
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let addr = format!("{}.{}.{}", self.layout.net, n / 250, n % 250 + 2);
        let netns = format!("{}-{n}", self.layout.prefix);
        let host_veth = format!("{}h{n}", self.layout.prefix);
        let pod_veth = format!("{}p{n}", self.layout.prefix);
        ip(&["netns", "add", &netns])?;
        ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", &pod_veth])?;
        ip(&["link", "set", &pod_veth, "netns", &netns])?;
        ip(&["link", "set", &host_veth, "master", self.layout.bridge])?;
        ip(&["link", "set", &host_veth, "up"])?;
        ip(&["netns", "exec", &netns, "ip", "link", "set", "lo", "up"])?;
        ip(&[
            "netns",
            "exec",
            &netns,
            "ip",
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            &pod_veth,
        ])?;
        ip(&["netns", "exec", &netns, "ip", "link", "set", &pod_veth, "up"])?;
        std::fs::create_dir_all(format!("/etc/netns/{netns}"))?;
        std::fs::write(format!("/etc/netns/{netns}/hosts"), "127.0.0.1 localhost\n")?;
        let p = PodNet {
            netns,
            ip: addr,
            device: pod_veth,
            host_veth,
        };
        self.pods().insert(key.to_string(), p.clone());
        Ok(p)
    }

    /// Removes the pod's namespace, veth pair and hosts file.
    pub(crate) fn remove_pod(&self, key: &str) {
        let removed = self.pods().remove(key);
        if let Some(p) = removed {
            ip_quiet(&["link", "del", &p.host_veth]);
            ip_quiet(&["netns", "del", &p.netns]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", p.netns));
        }
    }

    /// Writes the same name table into every pod's /etc/hosts. Written in place (not renamed):
    /// running pods see the file through a bind mount of its inode.
    pub(crate) fn write_hosts(&self, entries: &[(String, Vec<String>)]) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (ip, names) in entries {
            text.push_str(&format!("{ip} {}\n", names.join(" ")));
        }
        for p in self.pods().values() {
            let path = format!("/etc/netns/{}/hosts", p.netns);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new().write(true).truncate(true).open(&path) {
                    let _ = f.write_all(text.as_bytes());
                }
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let keys: Vec<String> = self.pods().keys().cloned().collect();
        for k in keys {
            self.remove_pod(&k);
        }
        clean_leftovers(&self.layout);
    }
}
