//! One node's place in a cluster: its addresses, data directory and log outlive the processes
//! that run there, so a node can be killed, paused, restarted over its data or wiped.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::listeners::{Listeners, ACTIVATION_ENV};
use crate::logs;

/// How a node's processes are started, the same for every node of a cluster.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    /// The `raftkv` binary.
    pub(crate) bin: PathBuf,
    /// Global flags, before `serve` (such as `--log-level`).
    pub(crate) global_args: Vec<OsString>,
    /// Flags after `serve`, given to every node.
    pub(crate) node_args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    /// How the harness's own clients reach the nodes' HTTP API.
    pub(crate) tls: Option<raftkv_client::Tls>,
    pub(crate) credentials: Option<raftkv_client::Credentials>,
}

/// Where a node listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listen {
    /// On loopback ports the harness binds itself (port 0) and hands to the node at start, so
    /// that no other process can take them between choosing and binding.
    Loopback,
    /// On addresses the node binds itself (fixed ports, or a network namespace's address that
    /// only the node's own namespace can bind).
    At { raft: SocketAddr, http: SocketAddr },
}

/// Runs a node's command through another program: `ip netns exec NAME` for a node in a
/// network namespace. The program must exec the node (not fork it), so that signals reach it.
#[derive(Debug, Clone, Default)]
pub struct Launcher {
    prefix: Vec<OsString>,
    process_group: bool,
}

impl Launcher {
    /// The node's command as it is.
    pub fn direct() -> Launcher {
        Launcher::default()
    }

    /// The node's command after `prefix` (`["ip", "netns", "exec", "ns0"]`).
    pub fn prefixed(prefix: &[&str]) -> Launcher {
        Launcher {
            prefix: prefix.iter().map(OsString::from).collect(),
            process_group: false,
        }
    }

    /// Starts each process in a process group of its own, and signals the whole group: nothing
    /// the prefix leaves behind survives a kill, and a terminal's Ctrl-C does not reach it.
    pub fn own_process_group(mut self) -> Launcher {
        self.process_group = true;
        self
    }

    fn command(&self, bin: &Path) -> Command {
        match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(bin);
                cmd
            }
            None => Command::new(bin),
        }
    }
}

/// What a node is, before it first starts.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Names the node in messages, and its data directory and log under the cluster's directory.
    pub(crate) name: String,
    pub(crate) listen: Listen,
    pub(crate) launcher: Launcher,
    /// Flags for this node only, after the cluster's.
    pub(crate) args: Vec<OsString>,
}

impl NodeSpec {
    /// A node on harness-bound loopback listeners, started directly.
    pub fn loopback(name: impl Into<String>) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            listen: Listen::Loopback,
            launcher: Launcher::direct(),
            args: Vec::new(),
        }
    }

    /// A node that binds `raft` and `http` itself.
    pub fn at(name: impl Into<String>, raft: SocketAddr, http: SocketAddr) -> NodeSpec {
        NodeSpec {
            listen: Listen::At { raft, http },
            ..NodeSpec::loopback(name)
        }
    }

    pub fn launcher(mut self, launcher: Launcher) -> NodeSpec {
        self.launcher = launcher;
        self
    }

    /// Flags for this node only, after the cluster's.
    pub fn args(mut self, args: &[&str]) -> NodeSpec {
        self.args.extend(args.iter().map(OsString::from));
        self
    }
}

/// A node of a [`Cluster`](crate::Cluster): at most one process at a time.
#[derive(Debug)]
pub struct Node {
    name: String,
    raft_addr: SocketAddr,
    http_addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    program: Arc<Program>,
    launcher: Launcher,
    args: Vec<OsString>,
    /// Whether the harness binds the listeners (and so must bind them again at each start).
    hands_over: bool,
    /// Listeners bound and not yet handed over (until the first start).
    listeners: Option<Listeners>,
    child: Option<Child>,
    paused: bool,
    incarnation: Arc<AtomicU32>,
    client: raftkv_client::Client,
    /// The same client with a short timeout, for status and readiness probes.
    probe: raftkv_client::Client,
}

impl Node {
    pub(crate) fn new(spec: NodeSpec, dir: &Path, program: Arc<Program>) -> Result<Node> {
        let (raft_addr, http_addr, listeners) = match spec.listen {
            Listen::Loopback => {
                let l = Listeners::loopback().map_err(|e| Error::io(format!("listeners for {}", spec.name), e))?;
                let addr_err = |e| Error::io(format!("listener address of {}", spec.name), e);
                (
                    l.raft_addr().map_err(addr_err)?,
                    l.http_addr().map_err(addr_err)?,
                    Some(l),
                )
            }
            Listen::At { raft, http } => (raft, http, None),
        };
        let client = crate::client_for(http_addr, &program)?;
        Ok(Node {
            probe: client.with_timeout(crate::PROBE_TIMEOUT),
            client,
            data_dir: dir.join(&spec.name),
            log: dir.join(format!("{}.log", spec.name)),
            name: spec.name,
            raft_addr,
            http_addr,
            program,
            launcher: spec.launcher,
            args: spec.args,
            hands_over: listeners.is_some(),
            listeners,
            child: None,
            paused: false,
            incarnation: Arc::new(AtomicU32::new(0)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Raft (and admin gRPC) address.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// The client HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `http://<http addr><path>` (`https://` when the cluster has TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.program.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.http_addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file that collects the output of every process run here.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// A typed client of this node's HTTP API (requests time out after 30 s).
    pub fn client(&self) -> &raftkv_client::Client {
        &self.client
    }

    /// `/v1/status`, if the node answers within 2 s.
    pub async fn status(&self) -> Option<raftkv_client::model::Status> {
        self.probe.status().await.ok()
    }

    /// Whether the node answers `/readyz` with ready within 2 s.
    pub async fn is_ready(&self) -> bool {
        self.probe.ready().await.is_ok_and(|p| p.is_ok())
    }

    /// Counts the processes started here: clients stamp it on what they record, so that a
    /// history tells one process lifetime from the next.
    pub fn incarnation(&self) -> Arc<AtomicU32> {
        self.incarnation.clone()
    }

    /// Starts a process with `mode` flags (`--bootstrap`, `--join ...`, none for a restart over
    /// the data directory). Refused while a process runs here.
    pub fn start(&mut self, mode: &[&str]) -> Result<()> {
        if self.is_running() {
            return Err(Error::Usage(format!("{} is already running", self.name)));
        }
        let what = |w: &str| format!("{w} for {}", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::io(format!("opening {}", self.log.display()), e))?;
        let err_log = log.try_clone().map_err(|e| Error::io(what("log"), e))?;
        let program = &self.program;
        let mut cmd = self.launcher.command(&program.bin);
        cmd.args(&program.global_args)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--raft-addr")
            .arg(self.raft_addr.to_string())
            .arg("--http-addr")
            .arg(self.http_addr.to_string())
            .args(&program.node_args)
            .args(&self.args)
            .args(mode)
            .envs(program.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        if self.launcher.process_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let listeners = if self.hands_over {
            match self.listeners.take() {
                Some(l) => Some(l),
                None => Some(
                    Listeners::bind(self.raft_addr, self.http_addr)
                        .map_err(|e| Error::io(what("binding the listeners again"), e))?,
                ),
            }
        } else {
            None
        };
        match &listeners {
            Some(l) => l.hand_over(&mut cmd),
            None => {
                for name in ACTIVATION_ENV {
                    cmd.env_remove(name);
                }
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {} ({})", self.name, program.bin.display()), e))?;
        // The child has its copies; without ours, a killed node refuses connections.
        drop(listeners);
        self.child = Some(child);
        self.paused = false;
        self.incarnation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<Pid> {
        let id = i32::try_from(self.child.as_ref()?.id()).ok()?;
        Some(Pid::from_raw(id))
    }

    /// Sends `sig` to the process (and its group, if it has one of its own).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            if self.launcher.process_group {
                let _ = killpg(pid, sig);
            }
            let _ = kill(pid, sig);
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if self.child.is_some() {
            self.signal(Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP: the process keeps its sockets and answers nothing.
    pub fn pause(&mut self) {
        if self.child.is_some() {
            self.signal(Signal::SIGSTOP);
            self.paused = true;
        }
    }

    /// SIGCONT after [`pause`](Node::pause).
    pub fn resume(&mut self) {
        if self.child.is_some() {
            self.signal(Signal::SIGCONT);
        }
        self.paused = false;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether a process was started here and not yet seen to end (it may have exited since).
    pub fn has_process(&self) -> bool {
        self.child.is_some()
    }

    /// Whether a process runs here (paused or not); forgets one that has exited.
    pub fn is_running(&mut self) -> bool {
        let alive = matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)));
        if !alive {
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
            self.paused = false;
        }
        alive
    }

    /// Waits for the process to exit by itself; `None` if it still runs after `timeout` (or
    /// none ran).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.paused = false;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How the process ended, if it has; `None` while it runs or when none ran.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Kills the process and deletes the data directory: the disk is lost.
    pub fn wipe(&mut self) -> Result<()> {
        self.kill();
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("wiping {}", self.data_dir.display()), e)),
        }
    }

    /// The node id stored in the data directory, once the node has written it.
    pub fn node_id(&self) -> Option<u64> {
        std::fs::read_to_string(self.data_dir.join("node-id"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Waits until the node has written its id (a node started without flags does so before
    /// it waits to be added).
    pub async fn wait_node_id(&self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.node_id() {
                return Ok(id);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} wrote no node-id", self.name),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the node's processes have logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        logs::tail(&self.log_text(), lines).to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
