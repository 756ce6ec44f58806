//! Command-line and environment configuration. Every flag can also be set by an environment
//! variable named `RAFTKV_<FLAG>` (as the BadgerDB example is configured).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod auth;
mod limits;
mod quota;
mod tls;

pub use auth::AuthArgs;
pub use limits::LimitArgs;
pub use quota::QuotaArgs;
pub use tls::TlsArgs;

#[derive(Debug, Parser)]
#[command(
    name = "raftkv",
    version,
    about = "A replicated key-value store on Raft",
    propagate_version = true
)]
pub struct Cli {
    /// Log filter (e.g. info, debug, raftkv=debug,openraft=info); RUST_LOG takes precedence.
    #[arg(long, global = true, env = "RAFTKV_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, global = true, env = "RAFTKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Start a local cluster of N nodes (child processes) and stop it on Ctrl-C.
    Dev(DevArgs),
    /// Administer a cluster through its admin gRPC service (any member will do).
    Admin(crate::cli::admin::AdminArgs),
    /// Read and write keys through the HTTP API (any member will do).
    Kv(crate::cli::kv::KvArgs),
    /// Turn authentication on or off, or show whether it is on (as `etcdctl auth`).
    Auth(crate::cli::auth::AuthArgs),
    /// Manage users (as `etcdctl user`).
    User(crate::cli::auth::UserArgs),
    /// Manage roles and their permissions (as `etcdctl role`).
    Role(crate::cli::auth::RoleArgs),
    /// Seed the data directory of a new cluster's first node from a backup file.
    Restore(crate::cli::restore::RestoreArgs),
    /// Load generator: drive the HTTP API (or etcd's, for comparison) and report figures.
    Bench(crate::bench::BenchArgs),
    /// A do-nothing HTTP server (axum, the same stack as the node): the ceiling the
    /// benchmark compares stale reads against.
    #[command(hide = true)]
    NoopServer {
        #[arg(long, default_value = "127.0.0.1:8099")]
        http_addr: std::net::SocketAddr,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory for this node's Raft log, state and snapshots.
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Node id (a positive integer). Default: the one stored in the data directory, or a new
    /// random one for an empty data directory.
    #[arg(long, env = "RAFTKV_ID")]
    pub id: Option<u64>,
    /// Listen address for Raft traffic and the admin gRPC service. Loopback unless told
    /// otherwise (as etcd's default): opening a node to the network is a deliberate choice.
    #[arg(long, env = "RAFTKV_RAFT_ADDR", default_value = "127.0.0.1:7000")]
    pub raft_addr: SocketAddr,
    /// Listen address for the client HTTP API (loopback unless told otherwise).
    #[arg(long, env = "RAFTKV_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Raft address other nodes use to reach this one (host:port). Default: --raft-addr, with
    /// this machine's hostname if that listens on all interfaces.
    #[arg(long, env = "RAFTKV_ADVERTISE_RAFT_ADDR")]
    pub advertise_raft_addr: Option<String>,
    /// HTTP address other nodes forward client requests to (host:port). Default: --http-addr,
    /// with this machine's hostname if that listens on all interfaces.
    #[arg(long, env = "RAFTKV_ADVERTISE_HTTP_ADDR")]
    pub advertise_http_addr: Option<String>,
    /// Start a new one-node cluster if this node has no state yet (a no-op otherwise).
    #[arg(long, env = "RAFTKV_BOOTSTRAP", conflicts_with = "join")]
    pub bootstrap: bool,
    /// Ask a running cluster (peer addresses: the Raft/admin host:port of any members,
    /// comma-separated) to add this node, first as a learner, then as a voter once it has
    /// caught up. With peer TLS on, this node's peer certificate is its credential.
    #[arg(long, env = "RAFTKV_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Credentials for --join when the cluster has authentication on: a user with the root
    /// role, as NAME:PASSWORD (better given by the environment variable than on the command line).
    #[arg(long, env = "RAFTKV_JOIN_USER", requires = "join", hide_env_values = true)]
    pub join_user: Option<String>,
    /// Join as a learner only (never promoted).
    #[arg(long, env = "RAFTKV_JOIN_AS_LEARNER", requires = "join")]
    pub join_as_learner: bool,
    /// Cluster id to adopt when bootstrapping (default: a random one). Nodes refuse Raft
    /// traffic from other clusters.
    #[arg(long, env = "RAFTKV_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Leader heartbeat interval, in milliseconds.
    #[arg(long, env = "RAFTKV_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Minimum election timeout, in milliseconds (the maximum is twice this).
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,
    /// Take a snapshot (and purge the log behind it) after this many new log entries.
    #[arg(long, env = "RAFTKV_SNAPSHOT_THRESHOLD", default_value_t = 20_000)]
    pub snapshot_threshold: u64,
    /// Largest accepted value, in bytes.
    #[arg(long, env = "RAFTKV_MAX_VALUE_BYTES", default_value_t = 1 << 20)]
    pub max_value_bytes: usize,
    /// Upper bound on a write or linearizable read, including waiting for a leader (ms).
    #[arg(long, env = "RAFTKV_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// How long SIGTERM may spend handing leadership to another voter (ms).
    #[arg(long, env = "RAFTKV_SHUTDOWN_HANDOFF_MS", default_value_t = 5000)]
    pub shutdown_handoff_ms: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub quota: QuotaArgs,
    /// Threads that run the node's tasks (0: one per CPU the process may use). Nodes that
    /// share few cores (several per machine) do best with one each.
    #[arg(long, env = "RAFTKV_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, env = "RAFTKV_DEV_NODES", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
    /// Where the nodes keep their data (default: a new directory under the system temp dir).
    #[arg(long, env = "RAFTKV_DEV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Raft port of node 1; node i uses this + i - 1.
    #[arg(long, env = "RAFTKV_DEV_RAFT_PORT", default_value_t = 7001)]
    pub raft_port: u16,
    /// HTTP port of node 1; node i uses this + i - 1.
    #[arg(long, env = "RAFTKV_DEV_HTTP_PORT", default_value_t = 8001)]
    pub http_port: u16,
    /// TLS everywhere: makes a CA and certificates under the data directory (kept for the
    /// next run) and starts the nodes with HTTPS and mutual TLS between peers.
    #[arg(long, env = "RAFTKV_DEV_TLS")]
    pub tls: bool,
}
