//! A cluster of real `raftkv serve` processes: formed the way an operator forms one (the first
//! node bootstraps, the others join it), then driven through the nodes' own API.
//!
//! Every process is killed when the [`Cluster`] is dropped, even when a test panics; a test
//! that panics also gets the end of every node's log on stderr.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use raftkv_client::model::Status;

use crate::error::{Error, Result};
use crate::logs;
use crate::node::{Node, NodeSpec, Program};
use crate::writer::Writer;

/// How much of each node's log a panicking test prints.
const PANIC_LOG_LINES: usize = 60;

/// How long a [`Writer`]'s write may take before it counts as failed.
const WRITER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the waits look again.
const POLL: Duration = Duration::from_millis(100);

/// How a cluster's nodes are started.
#[derive(Debug, Clone)]
pub struct Options {
    program: Program,
    dir: Option<PathBuf>,
    timeout: Duration,
}

impl Options {
    /// Nodes of the `raftkv` binary `bin`, logging at `info` (openraft at `warn`), in a new
    /// temporary directory; waits give up after 60 s.
    pub fn new(bin: impl Into<PathBuf>) -> Options {
        Options {
            program: Program {
                bin: bin.into(),
                global_args: Vec::new(),
                node_args: Vec::new(),
                env: vec![("RUST_LOG".into(), "info,openraft=warn".into())],
                tls: None,
                credentials: None,
            },
            dir: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Keeps the nodes' data and logs under `dir` (created if missing, kept afterwards).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Options {
        self.dir = Some(dir.into());
        self
    }

    /// Flags before `serve` (`--log-level debug`).
    pub fn global_args(mut self, args: &[&str]) -> Options {
        self.program.global_args.extend(args.iter().map(OsString::from));
        self
    }

    /// Flags after `serve`, for every node (`--snapshot-threshold 50`).
    pub fn node_args(mut self, args: &[&str]) -> Options {
        self.program.node_args.extend(args.iter().map(OsString::from));
        self
    }

    /// Sets an environment variable of every node, replacing an earlier one of that name.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Options {
        let name = name.into();
        self.program.env.retain(|(k, _)| *k != name);
        self.program.env.push((name, value.into()));
        self
    }

    /// Leaves the nodes the harness's own environment (no `RUST_LOG` of the harness's choosing).
    pub fn inherit_env(mut self) -> Options {
        self.program.env.clear();
        self
    }

    /// The harness's own clients (probes, [`Node::client`], writers) talk HTTPS with `tls`.
    /// The nodes' TLS flags are given with [`Options::node_args`] (see [`crate::pki`]).
    pub fn client_tls(mut self, tls: raftkv_client::Tls) -> Options {
        self.program.tls = Some(tls);
        self
    }

    /// The harness's own clients present `credentials` (a cluster with authentication on).
    pub fn credentials(mut self, credentials: raftkv_client::Credentials) -> Options {
        self.program.credentials = Some(credentials);
        self
    }

    /// How long each wait (ready, voters) may take.
    pub fn timeout(mut self, timeout: Duration) -> Options {
        self.timeout = timeout;
        self
    }
}

/// Where the nodes' data directories and logs live.
#[derive(Debug)]
enum Place {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Place {
    fn path(&self) -> &Path {
        match self {
            Place::Temp(t) => t.path(),
            Place::Kept(p) => p,
        }
    }
}

/// A cluster of node processes (see the module doc).
#[derive(Debug)]
pub struct Cluster {
    place: Place,
    program: Arc<Program>,
    timeout: Duration,
    nodes: Vec<Node>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            eprint!("{}", self.log_tails(PANIC_LOG_LINES));
        }
    }
}

impl Cluster {
    /// A cluster of `n` nodes on harness-bound loopback listeners, formed (see
    /// [`form`](Cluster::form)).
    pub async fn start(options: Options, n: usize) -> Result<Cluster> {
        let mut c = Cluster::new(options)?;
        for _ in 0..n {
            c.add_loopback()?;
        }
        c.form().await?;
        Ok(c)
    }

    /// A cluster with no nodes yet.
    pub fn new(options: Options) -> Result<Cluster> {
        let place = match options.dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                Place::Kept(dir)
            }
            None => Place::Temp(
                tempfile::Builder::new()
                    .prefix("raftkv-cluster-")
                    .tempdir()
                    .map_err(|e| Error::io("creating a temporary directory", e))?,
            ),
        };
        Ok(Cluster {
            place,
            program: Arc::new(options.program),
            timeout: options.timeout,
            nodes: Vec::new(),
        })
    }

    /// Prepares (does not start) a node; returns its index.
    pub fn add(&mut self, spec: NodeSpec) -> Result<usize> {
        if self.nodes.iter().any(|n| n.name() == spec.name) {
            return Err(Error::Usage(format!("a node named {} exists already", spec.name)));
        }
        let node = Node::new(spec, self.place.path(), self.program.clone())?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// Prepares a node named `node<index>` on harness-bound loopback listeners.
    pub fn add_loopback(&mut self) -> Result<usize> {
        let name = format!("node{}", self.nodes.len());
        self.add(NodeSpec::loopback(name))
    }

    /// Starts the prepared nodes: the first with `--bootstrap`, then each of the others with
    /// `--join` once the one before is ready; returns when every node is ready and a voter.
    pub async fn form(&mut self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(Error::Usage("a cluster needs at least one node".into()));
        }
        self.nodes[0].start(&["--bootstrap"])?;
        self.wait_ready(0).await?;
        for i in 1..self.nodes.len() {
            self.join(i)?;
            self.wait_ready(i).await?;
        }
        self.wait_voters(self.nodes.len()).await
    }

    /// Starts every prepared node at once, the first with `--bootstrap` and the others with
    /// `--join` (each through the nodes started before it), then waits until every node is
    /// ready and a voter. Unlike [`form`](Cluster::form), this suits nodes that already have
    /// data: a cluster restarted over its data has no leader until a quorum of it runs, so no
    /// node can be ready before the others start. (Flags are ignored over existing state.)
    pub async fn start_all(&mut self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(Error::Usage("a cluster needs at least one node".into()));
        }
        self.nodes[0].start(&["--bootstrap"])?;
        for i in 1..self.nodes.len() {
            self.join(i)?;
        }
        for i in 0..self.nodes.len() {
            self.wait_ready(i).await?;
        }
        self.wait_voters(self.nodes.len()).await
    }

    /// Starts node `i` with `--join` through every other node that runs.
    pub fn join(&mut self, i: usize) -> Result<()> {
        let seeds = self.join_seeds(i);
        if seeds.is_empty() {
            return Err(Error::Usage(format!(
                "{} has no running node to join through",
                self.nodes[i].name()
            )));
        }
        self.nodes[i].start(&["--join", &seeds])
    }

    /// The peer (Raft/admin) addresses of the running nodes other than `i`, as `--join` takes
    /// them. A node
    /// that was never started is left out: the harness may hold its listener, which accepts
    /// and never answers.
    fn join_seeds(&mut self, i: usize) -> String {
        let mut seeds = Vec::new();
        for (j, n) in self.nodes.iter_mut().enumerate() {
            if j != i && n.is_running() {
                seeds.push(n.raft_addr().to_string());
            }
        }
        seeds.join(",")
    }

    /// Adds a loopback node that joins, and waits until it is ready.
    pub async fn join_new_node(&mut self) -> Result<usize> {
        let i = self.add_loopback()?;
        self.join(i)?;
        self.wait_ready(i).await?;
        Ok(i)
    }

    /// Kills node `i` (if it runs) and starts it over its data directory, with no flags.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.nodes[i].kill();
        self.nodes[i].start(&[])
    }

    /// Starts node `i` with no flags, so that it waits to be added (by an admin call); returns
    /// its id once it has written it.
    pub async fn start_unjoined(&mut self, i: usize) -> Result<u64> {
        self.nodes[i].start(&[])?;
        self.nodes[i].wait_node_id(self.timeout).await
    }

    /// A [`Writer`] through every node, each write given 10 s.
    pub fn writer(&self, prefix: &str) -> Writer {
        let clients = self
            .nodes
            .iter()
            .map(|n| n.client().with_timeout(WRITER_TIMEOUT))
            .collect();
        Writer::start(clients, prefix)
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The directory holding the nodes' data directories and logs.
    pub fn dir(&self) -> &Path {
        self.place.path()
    }

    /// Node `i`'s `/v1/status`, if it answers.
    pub async fn status(&self, i: usize) -> Option<Status> {
        self.nodes[i].status().await
    }

    /// Waits until node `i` answers `/readyz` with success; fails at once if its process ends.
    pub async fn wait_ready(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if self.nodes[i].is_ready().await {
                return Ok(());
            }
            let node = &mut self.nodes[i];
            if let Some(status) = node.exit_status() {
                return Err(Error::Exited {
                    node: node.name().to_string(),
                    status,
                    log: node.log_path().to_path_buf(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} did not become ready", node.name()),
                    timeout: self.timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The node that says it leads in the highest term, among those with a process that is not
    /// paused (a paused old leader cannot say otherwise).
    pub async fn leader(&self) -> Option<usize> {
        self.leader_except(None).await
    }

    async fn leader_except(&self, except: Option<usize>) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if Some(i) == except || !n.has_process() || n.is_paused() {
                continue;
            }
            if let Some(s) = self.status(i).await {
                if s.is_leader() && best.is_none_or(|(term, _)| s.term > term) {
                    best = Some((s.term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits for a leader among the nodes other than `except`.
    pub async fn wait_leader(&self, except: Option<usize>, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader_except(except).await {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "no leader was elected".into(),
                    timeout,
                });
            }
            tokio::time::sleep(POLL / 2).await;
        }
    }

    /// The leader's membership: the voters' ids, and whether a change is in progress (joint).
    pub async fn voters(&self) -> Option<(Vec<u64>, bool)> {
        let l = self.leader().await?;
        let s = self.status(l).await?;
        Some((s.voter_ids(), s.joint))
    }

    /// Waits until the leader reports exactly `n` voters in a settled (not joint) membership.
    pub async fn wait_voters(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some((voters, false)) = self.voters().await {
                if voters.len() == n {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("the cluster did not reach {n} voters"),
                    timeout: self.timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The HTTP addresses of every node.
    pub fn http_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.http_addr().to_string()).collect()
    }

    /// The Raft (admin) addresses of nodes `idx`, comma-separated as `--endpoint` takes them.
    pub fn admin_endpoints(&self, idx: &[usize]) -> String {
        idx.iter()
            .map(|&i| self.nodes[i].raft_addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The last `lines` lines of every node's log, titled with the node and the file.
    pub fn log_tails(&self, lines: usize) -> String {
        let texts: Vec<(String, String)> = self
            .nodes
            .iter()
            .map(|n| (format!("{} ({})", n.name(), n.log_path().display()), n.log_text()))
            .collect();
        logs::sections(texts.iter().map(|(t, l)| (t.clone(), l.as_str())), lines)
    }

    /// Stops every node cleanly: SIGTERM to all at once, then SIGKILL to any still running
    /// after `grace`.
    pub async fn terminate_all(&mut self, grace: Duration) {
        for n in &mut self.nodes {
            n.resume();
            n.signal(Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        for n in &mut self.nodes {
            let left = deadline.saturating_duration_since(Instant::now());
            if n.wait_exit(left).await.is_none() {
                n.kill();
            }
        }
    }
}
