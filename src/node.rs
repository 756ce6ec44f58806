//! A running node: storage, Raft, the Raft/admin gRPC server and the HTTP API, wired together,
//! plus the start-up decisions (bootstrap, join, resume) and the shutdown sequence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use axum::serve::ListenerExt;

use crate::api::{self, ApiState, Limits, Stopping};
use crate::cluster::service::AdminService;
use crate::cluster::Admin;
use crate::config::ServeArgs;
use crate::identity::{self, ClusterIdFile};
use crate::metrics::Metrics;
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
        // A leader that restarts must win an election before it leads again: neither the
        // committed id nor the state machine is fsynced on every change, so a leader restored
        // at once (openraft's default) reads at a stale commit index until replication catches
        // it up, and serves stale reads (found by the nemesis test).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    config.validate().context("invalid Raft timing configuration")
}

/// A node that is up: its handles, and what stops it.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub admin: Admin,
    stopping: Arc<Stopping>,
    data_dir: std::path::PathBuf,
    network: Network,
    shutdown_tx: watch::Sender<bool>,
    span: tracing::Span,
    servers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    handoff: Duration,
}

impl Node {
    /// Opens the data directory, starts Raft and both servers, and carries out `--bootstrap`
    /// or `--join` if asked to.
    pub async fn start(args: &ServeArgs) -> anyhow::Result<Node> {
        if let Some(note) = removed_marker(&args.data_dir) {
            bail!(RemovedAtStart(note));
        }
        let id = identity::resolve_node_id(&args.data_dir, args.id)?;
        let span = tracing::info_span!("node", id);
        Self::start_as(args, id, span.clone()).instrument(span).await
    }

    async fn start_as(args: &ServeArgs, id: NodeId, span: tracing::Span) -> anyhow::Result<Node> {
        let raft_adv = advertised(args.raft_addr, &args.advertise_raft_addr)?;
        let http_adv = advertised(args.http_addr, &args.advertise_http_addr)?;
        tracing::info!(data_dir = %args.data_dir.display(), raft = %raft_adv, http = %http_adv, "starting");

        let metrics = Metrics::new(id, &args.data_dir).context("registering metrics")?;
        let (log_store, sm) = storage::open_observed(&args.data_dir, metrics.clone())
            .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?;
        let fence = ClusterFence::new(ClusterIdFile::new(&args.data_dir)).context("reading the cluster id")?;
        let network = Network::new(fence.clone()).with_metrics(metrics.clone());
        let config = Arc::new(raft_config(args)?);
        let saved_vote = log_store.saved_vote();
        let raft = Raft::new(id, config, network.clone(), log_store, sm.clone())
            .await
            .context("starting Raft")?;
        let admin = Admin::new(raft.clone(), id, fence.clone(), network.clone(), sm.clone());
        tokio::spawn(crate::metrics::follow_raft(metrics.clone(), raft.clone()).instrument(span.clone()));

        let raft_listener = TcpListener::bind(args.raft_addr)
            .await
            .with_context(|| format!("cannot listen on --raft-addr {}", args.raft_addr))?;
        let http_listener = TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("cannot listen on --http-addr {}", args.http_addr))?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let stopping = Arc::new(Stopping::default());
        let mut servers = Vec::new();

        let proposer = api::propose::Proposer::start(id, raft.clone(), network.clone(), metrics.clone());
        let reads = api::read_index::ReadIndexer::start(
            id,
            raft.clone(),
            network.clone(),
            saved_vote,
            &metrics,
            Duration::from_millis(args.request_timeout_ms),
        );
        let raft_svc = RaftServer::new(RaftService::new(
            id,
            raft.clone(),
            fence.clone(),
            sm.clone(),
            proposer.clone(),
            reads.clone(),
            network.follower_reads(),
        ))
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
        let admin_svc = AdminServer::new(AdminService::new(admin.clone(), args.cluster_id.clone()));
        // tonic's own tcp_nodelay applies only to listeners it binds itself: set it on each
        // accepted connection, or small Raft messages wait for delayed ACKs (~40 ms).
        let raft_incoming =
            tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(raft_listener), |conn| {
                conn.inspect(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                })
            });
        let mut rx = shutdown_rx.clone();
        servers.push(tokio::spawn(
            async move {
                tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .initial_connection_window_size(4 << 20)
                    .initial_stream_window_size(2 << 20)
                    .add_service(raft_svc)
                    .add_service(admin_svc)
                    .serve_with_incoming_shutdown(raft_incoming, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await
                    .context("raft gRPC server failed")
            }
            .instrument(span.clone()),
        ));

        let state = ApiState {
            id,
            raft: raft.clone(),
            sm,
            admin: admin.clone(),
            proposer,
            reads,
            limits: Limits {
                max_value_bytes: args.max_value_bytes,
                request_timeout: Duration::from_millis(args.request_timeout_ms),
            },
            stopping: stopping.clone(),
            metrics,
        };
        let mut rx = shutdown_rx.clone();
        servers.push(tokio::spawn(
            async move {
                // Without TCP_NODELAY, a response written in two segments waits for the client's
                // delayed ACK: 40 ms stalls at the tail of every latency distribution.
                let listener = http_listener.tap_io(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                });
                axum::serve(listener, api::router(state))
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await
                    .context("HTTP server failed")
            }
            .instrument(span.clone()),
        ));

        let node = Node {
            id,
            raft,
            admin,
            stopping,
            data_dir: args.data_dir.clone(),
            network,
            shutdown_tx,
            span: span.clone(),
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
            tokio::spawn(join(node.raft.clone(), me, args.join.clone()).instrument(span.clone()));
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
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let span = self.span.clone();
        self.run(span.clone()).instrument(span).await
    }

    async fn run(mut self, span: tracing::Span) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let removed = watch_removal(self.raft.clone(), self.id, self.network.clone()).instrument(span);
        let servers = futures::future::select_all(self.servers.iter_mut());
        tokio::select! {
            why = removed => {
                tracing::warn!("{why}; this node stops serving and exits");
                self.stopping.removed();
                let _ = std::fs::write(self.data_dir.join(REMOVED_MARKER), format!("{why}\n"));
                return self.shutdown().await;
            }
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
        self.stopping.shutting_down();
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

/// Written to the data directory when the node learns it was removed, so that a restart
/// (e.g. by a StatefulSet) exits at once instead of waiting forever to be a member again.
const REMOVED_MARKER: &str = "removed";

/// The node was removed from its cluster before this start.
#[derive(Debug, thiserror::Error)]
#[error("this node was removed from its cluster ({0}); wipe its data directory to join again as a new node")]
pub struct RemovedAtStart(pub String);

fn removed_marker(data_dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(REMOVED_MARKER))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Resolves once this node is sure it has been removed from the cluster.
///
/// A removed node may never receive the log entry that removes it (the leader stops
/// replicating to it), so its own membership cannot be trusted to tell. Every few seconds it
/// asks the members it knows for the leader's membership; once that is at least as new as its
/// own and does not list it, it has been removed.
async fn watch_removal(raft: Raft, id: NodeId, network: Network) -> String {
    use crate::pb::admin::admin_client::AdminClient;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let m = crate::types::metrics(&raft);
        let membership = m.membership_config.membership();
        let known_index = m.membership_config.log_id().map(|l| l.index).unwrap_or(0);
        if membership.nodes().next().is_none() {
            continue; // not in any cluster yet
        }
        let mut peers: Vec<(NodeId, String)> = membership
            .nodes()
            .filter(|(n, _)| **n != id)
            .map(|(n, a)| (*n, a.raft_addr.clone()))
            .collect();
        // Ask the leader first: its answer is authoritative.
        peers.sort_by_key(|(n, _)| Some(*n) != m.current_leader);
        for (_, addr) in peers {
            let Ok(ch) = network.channel(&addr) else { continue };
            let mut client = AdminClient::new(ch);
            let call = client.members(crate::pb::admin::MembersRequest {});
            let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), call).await else {
                continue;
            };
            let resp = resp.into_inner();
            if resp.joint || resp.membership_log_index < known_index {
                break; // a change is in flight or the answer is older than what we know
            }
            if !resp.members.iter().any(|mem| mem.id == id) {
                return format!(
                    "node {id} is not in the cluster's membership (as of log index {}, leader {})",
                    resp.membership_log_index, resp.leader_id
                );
            }
            break;
        }
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
