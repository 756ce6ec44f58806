//! Real `raftkv` processes, one per network namespace on a bridge of our own, and the few
//! things a nemesis does to them: SIGKILL and restart, SIGSTOP/SIGCONT, wipe the data
//! directory and join again, remove through the admin API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::Signal;
use raftkv_testbed::network::{Layout, Network, PodNet};
use raftkv_testbed::process::Proc;
use serde_json::Value;

/// Our own /16, beside the Kubernetes test bed's 10.244 (so both can run at once).
pub const LAYOUT: Layout = Layout {
    bridge: "rkvnm0",
    net: "10.245",
    prefix: "rkvnm",
    unreachable: None,
};
const RAFT_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;

/// One node's place: its namespace and data directory outlive the processes run in it.
pub struct Slot {
    pub name: String,
    pub net: PodNet,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    proc: Option<Proc>,
    pub paused: bool,
}

impl Slot {
    pub fn http_addr(&self) -> String {
        format!("{}:{HTTP_PORT}", self.net.ip)
    }

    pub fn raft_addr(&self) -> String {
        format!("{}:{RAFT_PORT}", self.net.ip)
    }

    /// The node id stored in the data directory, if any.
    pub fn node_id(&self) -> Option<u64> {
        std::fs::read_to_string(self.data_dir.join("node-id"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Whether a process runs here (paused or not).
    pub fn running(&mut self) -> bool {
        let alive = self.proc.as_mut().is_some_and(|p| p.exited().is_none());
        if !alive {
            self.proc = None;
        }
        alive
    }
}

pub struct Cluster {
    bin: PathBuf,
    pub slots: Vec<Slot>,
    /// Bumped each time a slot's process starts; clients stamp it on their operations so that
    /// checks of stale reads can tell one process lifetime from the next.
    pub incarnations: Arc<Vec<AtomicU32>>,
    http: reqwest::Client,
    // Dropped last: the namespaces go once every process is gone.
    _net: Network,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.slots {
            if let Some(mut p) = s.proc.take() {
                p.signal(Signal::SIGCONT);
                p.kill();
            }
        }
    }
}

impl Cluster {
    /// Starts `n` nodes: the first bootstraps, the others join it; returns when all are voters.
    pub async fn start(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<Cluster> {
        let net = Network::setup_with(LAYOUT)?;
        let mut slots = Vec::new();
        for i in 0..n {
            let name = format!("n{i}");
            slots.push(Slot {
                net: net.add_pod(&name)?,
                data_dir: dir.join(&name),
                log: dir.join(format!("{name}.log")),
                name,
                proc: None,
                paused: false,
            });
        }
        let mut c = Cluster {
            bin: bin.to_path_buf(),
            slots,
            incarnations: Arc::new((0..n).map(|_| AtomicU32::new(0)).collect()),
            http: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
            _net: net,
        };
        c.spawn(0, &["--bootstrap".into()])?;
        c.wait_ready(0, Duration::from_secs(30)).await?;
        for i in 1..n {
            c.join(i)?;
            c.wait_ready(i, Duration::from_secs(30)).await?;
        }
        c.wait_voters(n, Duration::from_secs(30)).await?;
        Ok(c)
    }

    pub fn nets(&self) -> Vec<PodNet> {
        self.slots.iter().map(|s| s.net.clone()).collect()
    }

    pub fn http_addrs(&self) -> Vec<String> {
        self.slots.iter().map(Slot::http_addr).collect()
    }

    fn spawn(&mut self, i: usize, mode: &[String]) -> anyhow::Result<()> {
        let s = &self.slots[i];
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &s.net.netns])
            .arg(&self.bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(["--raft-addr", &s.raft_addr(), "--http-addr", &s.http_addr()])
            // Snapshots (and log purges) happen several times a run, so that restarted and
            // new members catch up from snapshots too, not only from the log.
            .args(["--snapshot-threshold", "1000"])
            .args(mode)
            .env("RUST_LOG", "info,openraft=warn");
        let proc = Proc::spawn(&s.name, &mut cmd, &s.log)?;
        self.incarnations[i].fetch_add(1, Ordering::SeqCst);
        let s = &mut self.slots[i];
        s.proc = Some(proc);
        s.paused = false;
        Ok(())
    }

    /// Starts slot `i` over its data directory, with no bootstrap or join flags.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i, &[])
    }

    /// Starts slot `i` with `--join` through every other slot.
    pub fn join(&mut self, i: usize) -> anyhow::Result<()> {
        let seeds: Vec<String> = (0..self.slots.len())
            .filter(|&j| j != i)
            .map(|j| self.slots[j].http_addr())
            .collect();
        self.spawn(i, &["--join".into(), seeds.join(",")])
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.slots[i].proc.take() {
            p.kill();
        }
        self.slots[i].paused = false;
    }

    pub fn pause(&mut self, i: usize) {
        if let Some(p) = &self.slots[i].proc {
            p.signal(Signal::SIGSTOP);
            self.slots[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(p) = &self.slots[i].proc {
            p.signal(Signal::SIGCONT);
        }
        self.slots[i].paused = false;
    }

    /// Kills slot `i` and deletes its data directory: the disk is gone.
    pub fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        let dir = &self.slots[i].data_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
        }
        Ok(())
    }

    pub async fn status(&self, i: usize) -> Option<Value> {
        let url = format!("http://{}/v1/status", self.slots[i].http_addr());
        let resp = self.http.get(url).send().await.ok()?;
        resp.json().await.ok()
    }

    /// The slot whose node says it leads in the highest term, among running, unpaused slots.
    pub async fn leader(&mut self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.slots.len() {
            if !self.slots[i].running() || self.slots[i].paused {
                continue;
            }
            if let Some(s) = self.status(i).await {
                let term = s["term"].as_u64().unwrap_or(0);
                if s["role"] == "leader" && best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    async fn wait_ready(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/readyz", self.slots[i].http_addr());
        loop {
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("{} not ready within {timeout:?}", self.slots[i].name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's committed membership: voter ids, and whether it is joint.
    pub async fn voters(&mut self) -> Option<(Vec<u64>, bool)> {
        let l = self.leader().await?;
        let s = self.status(l).await?;
        let voters = s["members"]
            .as_array()?
            .iter()
            .filter(|m| m["voter"] == true)
            .filter_map(|m| m["id"].as_u64())
            .collect();
        Some((voters, s["joint"] == true))
    }

    pub async fn wait_voters(&mut self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((v, false)) = self.voters().await {
                if v.len() == n {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("the cluster did not reach {n} voters within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `raftkv admin <args>` against every slot's admin endpoint.
    pub async fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let endpoints: Vec<String> = self.slots.iter().map(Slot::raft_addr).collect();
        let out = tokio::process::Command::new(&self.bin)
            .arg("admin")
            .arg("--endpoint")
            .arg(endpoints.join(","))
            .args(["--timeout", "20"])
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .context("running raftkv admin")?;
        if !out.status.success() {
            return Err(anyhow!(
                "raftkv admin {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The last lines of every node's log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for s in &self.slots {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("===== {} ({}) =====\n", s.name, s.log.display()));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            out.push('\n');
        }
        out
    }
}
