//! Pod networking: a bridge with 10.244.0.1/16 on the host, and for each pod a network
//! namespace with one veth into that bridge and an address of its own. Pods get no default
//! route, and the service range is unreachable, so nothing ever leaves the machine. Each
//! namespace has its own /etc/hosts (`/etc/netns/<name>/hosts`, which `ip netns exec` mounts
//! over /etc/hosts): that is how pods resolve each other's DNS names.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context};

pub const BRIDGE: &str = "rkvtb0";
pub const GATEWAY: &str = "10.244.0.1";
const NETNS_PREFIX: &str = "rkvtb-";
const SERVICE_RANGE: &str = "10.96.0.0/12";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// A pod's place on the network.
#[derive(Debug, Clone)]
pub struct PodNet {
    pub netns: String,
    pub ip: String,
    host_veth: String,
}

pub struct Network {
    next: AtomicU32,
    pods: Mutex<BTreeMap<String, PodNet>>,
}

/// Removes what an earlier, interrupted run may have left behind.
fn clean_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(NETNS_PREFIX) {
                ip_quiet(&["netns", "del", name]);
                let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
            }
        }
    }
    ip_quiet(&["link", "del", BRIDGE]);
    ip_quiet(&["route", "del", "unreachable", SERVICE_RANGE]);
}

impl Network {
    pub fn setup() -> anyhow::Result<Network> {
        clean_leftovers();
        ip(&["link", "add", BRIDGE, "type", "bridge"]).context("creating the pod bridge (the test bed needs root)")?;
        ip(&["addr", "add", &format!("{GATEWAY}/16"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        ip(&["route", "add", "unreachable", SERVICE_RANGE])?;
        Ok(Network {
            next: AtomicU32::new(2),
            pods: Mutex::default(),
        })
    }

    /// Creates a network namespace with its own address for the pod `key` (its uid).
    pub fn add_pod(&self, key: &str) -> anyhow::Result<PodNet> {
        if let Some(p) = self.pods.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(p.clone());
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let addr = format!("10.244.{}.{}", n / 250, n % 250 + 2);
        let netns = format!("{NETNS_PREFIX}{n}");
        let host_veth = format!("rkvh{n}");
        let pod_veth = format!("rkvp{n}");
        ip(&["netns", "add", &netns])?;
        ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", &pod_veth])?;
        ip(&["link", "set", &pod_veth, "netns", &netns])?;
        ip(&["link", "set", &host_veth, "master", BRIDGE])?;
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
            host_veth,
        };
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), p.clone());
        Ok(p)
    }

    pub fn remove_pod(&self, key: &str) {
        let removed = self.pods.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        if let Some(p) = removed {
            ip_quiet(&["link", "del", &p.host_veth]);
            ip_quiet(&["netns", "del", &p.netns]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", p.netns));
        }
    }

    /// Writes the same name table into every pod's /etc/hosts. Written in place (not renamed):
    /// running pods see the file through a bind mount of its inode.
    pub fn write_hosts(&self, entries: &[(String, Vec<String>)]) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (ip, names) in entries {
            text.push_str(&format!("{ip} {}\n", names.join(" ")));
        }
        for p in self.pods.lock().unwrap_or_else(|p| p.into_inner()).values() {
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
        let keys: Vec<String> = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for k in keys {
            self.remove_pod(&k);
        }
        clean_leftovers();
    }
}
