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

/// What a `raftkv` CLI invocation printed and how it exited.
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `raftkv` binary with `args` (and `stdin`, if given).
pub async fn cli(args: &[&str], stdin: Option<&[u8]>) -> CliRun {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn raftkv cli");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("cli finished within 180s")
        .expect("cli output");
    CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Cluster {
    /// Starts node `i` with no flags: it waits to be added by an admin call.
    pub async fn start_unjoined(&mut self, i: usize) -> u64 {
        self.start_with(i, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::fs::read_to_string(self.nodes[i].data_dir.join("node-id")) {
                if let Ok(id) = s.trim().parse() {
                    return id;
                }
            }
            assert!(Instant::now() < deadline, "node {i} wrote no node-id");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The raft (admin) addresses of nodes `idx`, comma-separated.
    pub fn admin_endpoints(&self, idx: &[usize]) -> String {
        idx.iter()
            .map(|i| self.nodes[*i].raft_addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A writer that puts unique keys through the given HTTP addresses until stopped, and
/// remembers which writes were acknowledged.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: tokio::task::JoinHandle<(Vec<(String, String)>, usize)>,
}

impl Writer {
    pub fn start(http_addrs: Vec<String>, prefix: &str) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let prefix = prefix.to_string();
        let handle = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut acked = Vec::new();
            let mut failed = 0;
            let mut n = 0usize;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("{prefix}{n:06}");
                let value = format!("value-{n}");
                let addr = &http_addrs[n % http_addrs.len()];
                let ok = client
                    .put(format!("http://{addr}/v1/kv/{key}"))
                    .body(value.clone())
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    acked.push((key, value));
                } else {
                    failed += 1;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, failed)
        });
        Writer { stop, handle }
    }

    /// Stops the writer; returns the acknowledged writes and the number of failed ones.
    pub async fn stop(self) -> (Vec<(String, String)>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.await.expect("writer task")
    }
}
