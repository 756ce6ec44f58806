//! A running node: storage, Raft, the Raft/admin gRPC server and the HTTP API, wired together,
//! plus the start-up decisions (bootstrap, join, resume) and the shutdown sequence.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiState, Limits};
use crate::cluster::service::AdminService;
use crate::cluster::Admin;
use crate::config::ServeArgs;
use crate::identity::{self, ClusterIdFile};
use crate::pb::admin::admin_server::AdminServer;
use crate::pb::admin::Member;
use crate::pb::raft::raft_server::RaftServer;
use crate::storage;
use crate::transport::client::Network;
use crate::transport::server::RaftService;
use crate::transport::ClusterFence;
use crate::types::{NodeId, Raft};

/// Largest gRPC message between nodes: a batch of AppendEntries may carry many large values.
const MAX_RAFT_MESSAGE: usize = 512 << 20;

/// The address peers use for a listener: the advertised one if given, else the listen address
/// (with the hostname in place of an all-interfaces IP, which no peer can dial).
fn advertised(listen: SocketAddr, advertise: &Option<String>) -> anyhow::Result<String> {
    if let Some(a) = advertise {
        if !a.contains(':') {
            bail!("advertised address {a:?} must be host:port");
        }
        return Ok(a.clone());
    }
    if listen.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .context("listening on all interfaces and cannot read the hostname; set --advertise-*-addr")?;
        return Ok(format!("{host}:{}", listen.port()));
    }
    Ok(listen.to_string())
}

fn raft_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let config = Config {
        cluster_name: "raftkv".into(),
        heartbeat_interval: args.heartbeat_ms,
        election_timeout_min: args.election_timeout_ms,
        election_timeout_max: args.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(args.snapshot_threshold),
        // Keep some log behind a snapshot so that a follower that is slightly behind is
        // caught up with entries, not a whole snapshot.
        max_in_snapshot_log_to_keep: args.snapshot_threshold.min(1000),
        replication_lag_threshold: args.snapshot_threshold.max(1000) * 2,
        install_snapshot_timeout: 120_000,
        max_payload_entries: 512,
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    config.validate().context("invalid Raft timing configuration")
}

/// A node that is up: its handles, and what stops it.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub admin: Admin,
    stopping: Arc<AtomicBool>,
    shutdown_tx: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    handoff: Duration,
}

impl Node {
    /// Opens the data directory, starts Raft and both servers, and carries out `--bootstrap`
    /// or `--join` if asked to.
    pub async fn start(args: &ServeArgs) -> anyhow::Result<Node> {
        let id = identity::resolve_node_id(&args.data_dir, args.id)?;
        let raft_adv = advertised(args.raft_addr, &args.advertise_raft_addr)?;
        let http_adv = advertised(args.http_addr, &args.advertise_http_addr)?;
        let span = tracing::info_span!("node", id);
        let _enter = span.enter();
        tracing::info!(data_dir = %args.data_dir.display(), raft = %raft_adv, http = %http_adv, "starting");

        let (log_store, sm) = storage::open(&args.data_dir)
            .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?;
        let fence = ClusterFence::new(ClusterIdFile::new(&args.data_dir)).context("reading the cluster id")?;
        let network = Network::new(fence.clone());
        let config = Arc::new(raft_config(args)?);
        let raft = Raft::new(id, config, network.clone(), log_store, sm.clone())
            .await
            .context("starting Raft")?;
        let admin = Admin::new(raft.clone(), id, fence.clone(), network);

        let raft_listener = TcpListener::bind(args.raft_addr)
            .await
            .with_context(|| format!("cannot listen on --raft-addr {}", args.raft_addr))?;
        let http_listener = TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("cannot listen on --http-addr {}", args.http_addr))?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut servers = Vec::new();

        let raft_svc = RaftServer::new(RaftService::new(raft.clone(), fence.clone(), sm.clone()))
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE);
        let admin_svc = AdminServer::new(AdminService::new(admin.clone(), args.cluster_id.clone()));
        let mut rx = shutdown_rx.clone();
        servers.push(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .initial_connection_window_size(4 << 20)
                .initial_stream_window_size(2 << 20)
                .add_service(raft_svc)
                .add_service(admin_svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(raft_listener),
                    async move {
                        let _ = rx.wait_for(|s| *s).await;
                    },
                )
                .await
                .context("raft gRPC server failed")
        }));

        let state = ApiState {
            id,
            raft: raft.clone(),
            sm,
            admin: admin.clone(),
            forwarder: api::forward::Forwarder::new(),
            limits: Limits {
                max_value_bytes: args.max_value_bytes,
                request_timeout: Duration::from_millis(args.request_timeout_ms),
            },
            stopping: stopping.clone(),
        };
        let mut rx = shutdown_rx.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(http_listener, api::router(state))
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .context("HTTP server failed")
        }));

        let node = Node {
            id,
            raft,
            admin,
            stopping,
            shutdown_tx,
            servers,
            handoff: Duration::from_millis(args.shutdown_handoff_ms),
        };
        if args.bootstrap {
            node.bootstrap(&raft_adv, &http_adv).await?;
        } else if !args.join.is_empty() {
            let me = Member {
                id,
                raft_addr: raft_adv.clone(),
                http_addr: http_adv.clone(),
                voter: !args.join_as_learner,
            };
            tokio::spawn(join(node.raft.clone(), me, args.join.clone()));
        } else if !node.raft.is_initialized().await? {
            tracing::info!("no cluster state yet: waiting to be added to a cluster (admin AddLearner/AddVoter)");
        }
        Ok(node)
    }

    async fn bootstrap(&self, raft_adv: &str, http_adv: &str) -> anyhow::Result<()> {
        if self.raft.is_initialized().await? {
            tracing::info!("--bootstrap ignored: this node already has cluster state");
            return Ok(());
        }
        let me = Member {
            id: self.id,
            raft_addr: raft_adv.to_string(),
            http_addr: http_adv.to_string(),
            voter: true,
        };
        let resp = self
            .admin
            .initialize(vec![me], None)
            .await
            .context("bootstrapping a one-node cluster")?;
        tracing::info!("{}", resp.message);
        Ok(())
    }

    /// Runs until SIGTERM or SIGINT, then shuts down cleanly.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let servers = futures::future::select_all(self.servers.iter_mut());
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            (res, _, _) = servers => {
                return match res {
                    Ok(Ok(())) => Err(anyhow::anyhow!("a server stopped unexpectedly")),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(anyhow::anyhow!("a server task panicked: {e}")),
                };
            }
        }
        self.shutdown().await
    }

    /// Stops taking requests, hands leadership to another voter if this node leads, stops
    /// Raft (the log writer drains what is queued) and the servers.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stopping.store(true, Ordering::Relaxed);
        if self.raft.is_leader() {
            let voters: std::collections::BTreeSet<NodeId> = self.raft.voter_ids().collect();
            match self.admin.most_caught_up_voter(&voters) {
                Some(to) => match self.admin.transfer_leadership(to, self.handoff).await {
                    Ok(()) => tracing::info!(to, "handed leadership over"),
                    Err(e) => tracing::warn!(error = %e, "leadership hand-off failed; the others will elect a leader"),
                },
                None => tracing::info!("no other voter to hand leadership to"),
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown reported an error");
        }
        let _ = self.shutdown_tx.send(true);
        for s in self.servers.drain(..) {
            match tokio::time::timeout(Duration::from_secs(5), s).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
                Err(_) => tracing::warn!("a server did not stop within 5s"),
                _ => {}
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// `--join`: ask the cluster (through any of `seeds`) to add this node, retrying until it
/// succeeds, since the cluster may not be up yet. A node that already is a member (a restart)
/// still asks: the call is idempotent and finishes a promotion an earlier run began.
async fn join(raft: Raft, me: Member, seeds: Vec<String>) {
    let client = reqwest::Client::new();
    let mut delay = Duration::from_millis(200);
    let body = serde_json::json!({
        "id": me.id, "raft_addr": me.raft_addr, "http_addr": me.http_addr, "learner_only": !me.voter,
    });
    loop {
        let already_voter = raft.voter_ids().any(|v| v == me.id);
        if already_voter
            || (!me.voter
                && crate::types::metrics(&raft)
                    .membership_config
                    .membership()
                    .get_node(&me.id)
                    .is_some())
        {
            tracing::info!("already a member: nothing to join");
            return;
        }
        for seed in &seeds {
            let url = format!("http://{seed}/v1/cluster/join");
            match client
                .post(&url)
                .json(&body)
                .timeout(Duration::from_secs(120))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(seed = %seed, "joined the cluster");
                    return;
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    tracing::warn!(seed = %seed, %status, body = %text, "join refused; retrying");
                }
                Err(e) => tracing::warn!(seed = %seed, error = %e, "cannot reach seed; retrying"),
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
