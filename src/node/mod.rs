//! A running node: storage, Raft, the Raft/admin gRPC server and the HTTP API, wired together,
//! plus the start-up decisions (bootstrap, join, resume) and the shutdown sequence.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;
use tracing::Instrument;

mod limits;
mod listeners;
mod membership;
mod servers;
mod settings;

pub use listeners::Listeners;
pub use membership::RemovedAtStart;

use crate::api::{self, ApiState, Limits, Stopping};
use crate::cluster::{Admin, AdminService};
use crate::config::ServeArgs;
use crate::identity::{self, ClusterIdFile};
use crate::metrics::Metrics;
use crate::pb::admin::Member;
use crate::replica::{Raft, Replica};
use crate::storage;
use crate::transport::{ClusterFence, Network, RaftService};
use crate::types::NodeId;

/// A node that is up: its handles, and what stops it.
pub struct Node {
    id: NodeId,
    raft: Raft,
    admin: Admin,
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
        let listeners = Listeners::open(args.raft_addr, args.http_addr)?;
        Self::start_on(args, listeners).await
    }

    /// Like [`Node::start`], serving on listeners that are already bound (the addresses in
    /// `args` are then not bound, only the advertised defaults are taken from the listeners).
    pub async fn start_on(args: &ServeArgs, listeners: Listeners) -> anyhow::Result<Node> {
        if let Some(note) = membership::removed_marker(&args.data_dir) {
            bail!(RemovedAtStart(note));
        }
        let id = identity::resolve_node_id(&args.data_dir, args.id)?;
        let span = tracing::info_span!("node", id);
        Self::start_as(args, listeners, id, span.clone()).instrument(span).await
    }

    async fn start_as(args: &ServeArgs, listeners: Listeners, id: NodeId, span: tracing::Span) -> anyhow::Result<Node> {
        let raft_adv = settings::advertised(listeners.raft_addr()?, &args.advertise_raft_addr)?;
        let http_adv = settings::advertised(listeners.http_addr()?, &args.advertise_http_addr)?;
        tracing::info!(data_dir = %args.data_dir.display(), raft = %raft_adv, http = %http_adv, "starting");

        let metrics = Metrics::new(id, &args.data_dir).context("registering metrics")?;
        let space = storage::Space::watch(&args.data_dir, args.quota.settings(), metrics.clone())
            .with_context(|| format!("measuring the free space of {}", args.data_dir.display()))?;
        let (log_store, sm) = storage::open_observed(&args.data_dir, metrics.clone(), &space)
            .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?;
        let fence = ClusterFence::new(ClusterIdFile::new(&args.data_dir)).context("reading the cluster id")?;
        let client_tls = settings::client_tls(&args.tls)?;
        let peer_tls = settings::peer_tls(&args.tls)?;
        let mut network = Network::new(fence.clone()).with_metrics(metrics.clone());
        if let Some(peer) = &peer_tls {
            network = network.with_tls(peer.client.clone());
        }
        let config = Arc::new(settings::raft_config(args)?);
        let saved_vote = log_store.saved_vote();
        let raft = Raft::new(id, config, network.clone(), log_store, sm.clone())
            .await
            .context("starting Raft")?;
        let admin = Admin::new(raft.clone(), id, fence.clone(), network.clone(), sm.clone());
        tokio::spawn(crate::metrics::follow_raft(metrics.clone(), raft.metrics()).instrument(span.clone()));

        let (raft_listener, http_listener) = listeners.into_tokio().context("serving on the listeners")?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let stopping = Arc::new(Stopping::default());
        let mut servers = Vec::new();

        let replica = Replica::start(
            id,
            raft.clone(),
            sm,
            Arc::new(network.clone()),
            saved_vote,
            metrics.clone(),
            Duration::from_millis(args.request_timeout_ms),
            space,
        );
        let unrecoverable = exit_when_unrecoverable(replica.clone(), shutdown_rx.clone());
        servers.push(tokio::spawn(unrecoverable.instrument(span.clone())));
        let raft_svc = RaftService::new(replica.clone(), fence.clone(), network.follower_reads());
        let admin_svc = AdminService::new(admin.clone(), args.cluster_id.clone());
        let grpc = servers::serve_grpc(
            raft_listener,
            raft_svc,
            admin_svc,
            peer_tls.map(|p| p.server),
            shutdown_rx.clone(),
        );
        servers.push(tokio::spawn(grpc.instrument(span.clone())));

        let state = ApiState {
            id,
            replica,
            admin: admin.clone(),
            limits: Limits {
                max_value_bytes: args.max_value_bytes,
                request_timeout: Duration::from_millis(args.request_timeout_ms),
                max_list_bytes: usize::try_from(args.limits.max_list_bytes).unwrap_or(usize::MAX),
            },
            stopping: stopping.clone(),
            metrics,
            auth: crate::auth::Authenticator::new(Duration::from_secs(args.auth.auth_token_ttl), args.auth.bcrypt_cost),
        };
        let http = api::serve(
            http_listener,
            api::router(state),
            limits::http_limits(&args.limits),
            client_tls,
            shutdown_rx,
        );
        servers.push(tokio::spawn(http.instrument(span.clone())));

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
            let tls = node.network.tls().cloned();
            let credentials = args
                .join_user
                .as_deref()
                .map(|u| raftkv_client::Credentials::from_user_flag(u, None));
            let join = membership::join(node.raft.clone(), me, args.join.clone(), tls, credentials);
            tokio::spawn(join.instrument(span.clone()));
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
        let removed = membership::watch_removal(self.raft.clone(), self.id, self.admin.clone()).instrument(span);
        let servers = futures::future::select_all(self.servers.iter_mut());
        tokio::select! {
            why = removed => {
                tracing::warn!("{why}; this node stops serving and exits");
                self.stopping.removed();
                membership::mark_removed(&self.data_dir, &why);
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

/// Ends with an error, which the node exits on, once it cannot go on (see
/// [`Replica::unrecoverable`]); ends quietly when it shuts down.
async fn exit_when_unrecoverable(replica: Replica, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    tokio::select! {
        why = replica.unrecoverable() => Err(anyhow::anyhow!(why)),
        _ = shutdown.changed() => Ok(()),
    }
}
