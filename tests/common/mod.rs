//! A cluster of real `raftkv` processes on loopback, for integration tests.
//!
//! Every node gets free ports and a data directory in a temp dir; every process is killed when
//! the [`Cluster`] is dropped, even if the test panics.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_raftkv");

/// A port that is free right now (the OS picks it; we release it for the node to bind).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

pub struct NodeProc {
    pub name: String,
    pub raft_addr: String,
    pub http_addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<String>,
    pub child: Option<Child>,
}

impl NodeProc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, path)
    }

    fn spawn(&mut self, mode: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--raft-addr")
            .arg(&self.raft_addr)
            .arg("--http-addr")
            .arg(&self.http_addr)
            .args(&self.extra)
            .args(mode)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn raftkv");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    pub http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("===== log of {} =====\n{}", n.name, tail(&n.log_text(), 60));
            }
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// A cluster of `n` nodes: node 0 bootstraps, the others join it; returns once all are
    /// voters and ready. `extra` flags are given to every node.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::empty();
        c.add_node(extra);
        c.nodes[0].spawn(&["--bootstrap".to_string()]);
        c.wait_ready(0).await;
        for _ in 1..n {
            c.join_new_node(extra).await;
        }
        c.wait_voters(n).await;
        c
    }

    pub fn empty() -> Cluster {
        Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    /// Prepares (does not start) a node with fresh ports and data directory.
    pub fn add_node(&mut self, extra: &[&str]) -> usize {
        let i = self.nodes.len();
        let name = format!("node{i}");
        self.nodes.push(NodeProc {
            raft_addr: format!("127.0.0.1:{}", free_port()),
            http_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: self.dir.path().join(&name),
            log: self.dir.path().join(format!("{name}.log")),
            name,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        });
        i
    }

    /// Starts a new node that joins through node 0's HTTP address, and waits until it is a
    /// voter and ready.
    pub async fn join_new_node(&mut self, extra: &[&str]) -> usize {
        let i = self.add_node(extra);
        let seeds: Vec<String> = self.nodes[..i].iter().map(|n| n.http_addr.clone()).collect();
        self.nodes[i].spawn(&["--join".to_string(), seeds.join(",")]);
        self.wait_ready(i).await;
        i
    }

    /// Restarts node `i` over its data directory with no bootstrap/join flags.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].spawn(&[]);
    }

    pub fn start_with(&mut self, i: usize, mode: &[&str]) {
        let mode: Vec<String> = mode.iter().map(|s| s.to_string()).collect();
        self.nodes[i].spawn(&mode);
    }

    pub async fn status(&self, i: usize) -> Option<Value> {
        let r = self
            .http
            .get(self.nodes[i].url("/v1/status"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    pub async fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self
                .http
                .get(self.nodes[i].url("/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready within 60s",
                self.nodes[i].name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a running node reports exactly `n` voters in a committed configuration.
    pub async fn wait_voters(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(i) = self.leader_index().await {
                if let Some(s) = self.status(i).await {
                    let voters = s["members"]
                        .as_array()
                        .map_or(0, |m| m.iter().filter(|m| m["voter"] == true).count());
                    if voters == n && s["joint"] == false {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "cluster did not reach {n} voters within 60s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the node that reports itself leader, if any.
    pub async fn leader_index(&self) -> Option<usize> {
        for (i, _) in self.nodes.iter().enumerate() {
            if let Some(s) = self.status(i).await {
                if s["role"] == "leader" {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits for a leader among the running nodes other than `except`.
    pub async fn wait_leader(&self, except: Option<usize>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for i in 0..self.nodes.len() {
                if Some(i) == except {
                    continue;
                }
                if let Some(s) = self.status(i).await {
                    if s["role"] == "leader" {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader elected within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn node_id(&self, i: usize) -> u64 {
        std::fs::read_to_string(self.nodes[i].data_dir.join("node-id"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("node-id file")
    }

    pub async fn put(&self, i: usize, key: &str, value: &str) -> reqwest::Response {
        self.http
            .put(self.nodes[i].url(&format!("/v1/kv/{key}")))
            .body(value.to_string())
            .send()
            .await
            .expect("PUT request")
    }

    /// PUT that must succeed; returns the revision.
    pub async fn put_ok(&self, i: usize, key: &str, value: &str) -> u64 {
        let r = self.put(i, key, value).await;
        let status = r.status();
        let body: Value = r.json().await.expect("PUT answer is JSON");
        assert!(status.is_success(), "PUT {key} on node {i}: {status} {body}");
        body["revision"].as_u64().expect("revision in PUT answer")
    }

    /// GET at a consistency level: `Some(value)`, or `None` on 404.
    pub async fn get(&self, i: usize, key: &str, consistency: &str) -> Option<String> {
        let r = self
            .http
            .get(self.nodes[i].url(&format!("/v1/kv/{key}?consistency={consistency}")))
            .send()
            .await
            .expect("GET request");
        match r.status().as_u16() {
            200 => Some(r.text().await.expect("GET body")),
            404 => None,
            s => panic!("GET {key} on node {i}: {s} {}", r.text().await.unwrap_or_default()),
        }
    }
}
