//! Writes, batched. Every write goes through the proposer of the node that received it, which
//! gathers the writes that arrive together. A follower sends them to the leader as one call on
//! its `Calls` stream (through [`LeaderLink`]: one message on a stream that is always open,
//! instead of one relay per write); the leader's proposer merges its own clients' writes with the
//! followers' batches into one [`Proposal`]: one Raft entry, one fsync per node, one
//! replication message and one state-machine transaction for all of them.
//!
//! One proposal is in flight at a time on the leader (two batches per follower); writes that
//! arrive meanwhile wait for the next one, which first lets the tasks already carrying writes
//! run (`GATHER_YIELDS`). At low load a write is proposed alone and at once; under load
//! proposals grow by themselves, as the group commit of the log does, and the per-entry costs
//! of Raft and storage are shared.
//!
//! A write is retried (on the leader that replaces the one asked) only when it certainly was not
//! proposed: no leader known, the node asked does not lead, or no connection was made. Anything
//! else that goes wrong after a proposal left this node makes its outcome unknown, and the
//! client is told so; a write is never proposed twice.
//!
//! While the NOSPACE alarm is up ([`Space`]) puts are refused before they are proposed: here by
//! the replica for its own clients, and by the leader for a follower's batch (which the
//! follower then answers as refused, see [`Route::forward`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::link::{LeaderLink, ProposeFailure};
use super::{Leader, Raft};
use crate::metrics::Metrics;
use crate::storage::Space;
use crate::types::{Command, CommandResult, NodeId, Proposal};

/// Proposals in flight at once on the leader: one, so that everything that arrives while it
/// is replicated joins the next; the disk and the network are kept busy by the followers'
/// batches, which wait at the leader meanwhile. A second proposal in flight would split the
/// batches without adding work for the disk to overlap.
const LEADING_IN_FLIGHT: usize = 1;
/// Batches a follower has in flight to the leader at once: enough that one always waits there
/// for the leader's next proposal; more would only split them.
const FORWARDING_IN_FLIGHT: usize = 2;
/// Times the leader's proposer lets every other ready task run before it takes its next
/// batch. Writes reach it through chains of tasks (an HTTP connection, or a follower's call
/// stream and the task it spawns per call), and one yield only runs what is ready now; four let
/// the writes already on their way join this proposal instead of waiting a whole round for the
/// next. An idle runtime yields at once, so a lone write is not delayed.
const GATHER_YIELDS: usize = 4;
/// Upper bounds on one proposal: commands, and bytes of keys and values.
const MAX_COMMANDS: usize = 4096;
const MAX_BYTES: usize = 4 << 20;

/// How long to wait before routing a proposal again when no leader is known.
const REROUTE_DELAY: Duration = Duration::from_millis(25);

/// Why writes have no result.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ProposeError {
    /// Certainly not applied: no leader took the writes before their deadline.
    #[error("{0}")]
    NoLeader(String),
    /// Certainly not applied: this node does not lead (for writes sent by a follower, which
    /// are never forwarded again).
    #[error("{0}")]
    NotLeader(String),
    /// Not known whether they were applied: proposed, and not answered in time.
    #[error("{0}")]
    Timeout(String),
    /// Not known whether they were applied: the answer of the leader was lost.
    #[error("{0}")]
    Unknown(String),
    /// This node's Raft has stopped.
    #[error("{0}")]
    Stopped(String),
}

/// Why a client's write has no result: refused under the NOSPACE alarm, or one of the reasons
/// of [`ProposeError`].
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum WriteError {
    /// Certainly not applied: refused before it was proposed, because the NOSPACE alarm is up
    /// on this node or on the leader (the message says which, in etcd's words).
    #[error("{0}")]
    NoSpace(String),
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

/// Results of writes, and the leader that proposed them.
type Outcome = Result<(Vec<CommandResult>, NodeId), WriteError>;

/// Writes waiting to be proposed: one client's write, or a follower's batch.
struct Pending {
    commands: Vec<Command>,
    deadline: Instant,
    /// Sent by a follower: proposed here or refused, never forwarded again.
    from_follower: bool,
    reply: oneshot::Sender<Outcome>,
}

impl Pending {
    fn size(&self) -> usize {
        self.commands.iter().map(Command::size).sum()
    }
}

/// The handle that request handlers use; the batching runs in a task of its own.
#[derive(Clone)]
pub(crate) struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    pub(crate) fn start(
        me: NodeId,
        raft: Raft,
        peers: Arc<dyn LeaderLink>,
        metrics: Arc<Metrics>,
        space: Space,
    ) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        let route = Route {
            me,
            raft,
            peers,
            metrics,
            space,
            queue: tx.downgrade(),
        };
        tokio::spawn(Arc::new(route).run(rx));
        Proposer { tx }
    }

    /// Proposes a client's write (on the leader, or through it) and waits for its result, and
    /// the id of the leader that proposed it, until `deadline`.
    pub(crate) async fn propose(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<(CommandResult, NodeId), WriteError> {
        let (mut results, leader) = self.submit(vec![command], deadline, false).await?;
        match results.pop() {
            Some(r) if results.is_empty() => Ok((r, leader)),
            _ => Err(ProposeError::Unknown("the leader answered a write with no result".into()).into()),
        }
    }

    /// Proposes a follower's writes on this node, which must lead: `NotLeader` otherwise.
    pub(crate) async fn propose_here(
        &self,
        commands: Vec<Command>,
        deadline: Instant,
    ) -> Result<Vec<CommandResult>, WriteError> {
        Ok(self.submit(commands, deadline, true).await?.0)
    }

    async fn submit(&self, commands: Vec<Command>, deadline: Instant, from_follower: bool) -> Outcome {
        let (reply, rx) = oneshot::channel();
        let stopped = || WriteError::from(ProposeError::Stopped("the node is stopping".into()));
        self.tx
            .send(Pending {
                commands,
                deadline,
                from_follower,
                reply,
            })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Where proposals go: this node's Raft when it leads, else the leader's `Propose` RPC.
struct Route {
    me: NodeId,
    raft: Raft,
    peers: Arc<dyn LeaderLink>,
    metrics: Arc<Metrics>,
    /// Tells a Raft that stopped because the disk refused a write from one that stopped for
    /// another reason.
    space: Space,
    /// The proposer's own queue, for batches to try again (weak: the queue ends with the
    /// handles).
    queue: mpsc::WeakUnboundedSender<Pending>,
}

/// How one attempt to propose a batch ended.
enum Attempt {
    Done(Vec<CommandResult>, NodeId),
    /// Certainly not proposed; try again once a leader is known.
    Retry(String),
    Failed(WriteError),
}

impl Route {
    async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Pending>) {
        let leading = Arc::new(Semaphore::new(LEADING_IN_FLIGHT));
        let forwarding = Arc::new(Semaphore::new(FORWARDING_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            // The role may change before the batch is sent; the limit is only a batching policy.
            let is_leader = matches!(Leader::of(&self.raft, self.me), Leader::Me);
            let Some(first) = admit(first, is_leader) else {
                continue;
            };
            let slots = if is_leader { &leading } else { &forwarding };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            if is_leader {
                for _ in 0..GATHER_YIELDS {
                    tokio::task::yield_now().await;
                }
            }
            // Everything queued by now (within bounds) goes into this proposal.
            let mut commands = first.commands.len();
            let mut bytes = first.size();
            let mut batch = vec![first];
            while commands < MAX_COMMANDS && bytes < MAX_BYTES {
                match rx.try_recv() {
                    Ok(p) => {
                        if let Some(p) = admit(p, is_leader) {
                            commands += p.commands.len();
                            bytes += p.size();
                            batch.push(p);
                        }
                    }
                    Err(_) => break,
                }
            }
            let route = self.clone();
            tokio::spawn(async move {
                route.propose(batch).await;
                drop(slot);
            });
        }
    }

    /// Proposes `batch` as one entry, or forwards it to the leader as one RPC, and answers
    /// every write in it. A batch that was certainly not proposed goes back to the queue after
    /// a pause (not holding its slot meanwhile: writes that can go elsewhere must not wait
    /// behind writes that cannot go anywhere yet).
    async fn propose(&self, batch: Vec<Pending>) {
        let leader = Leader::of(&self.raft, self.me);
        let is_leader = matches!(leader, Leader::Me);
        let batch: Vec<Pending> = batch.into_iter().filter_map(|p| admit(p, is_leader)).collect();
        // The earliest deadline bounds the batch.
        let Some(deadline) = batch.iter().map(|p| p.deadline).min() else {
            return;
        };
        let proposal = Proposal(batch.iter().flat_map(|p| p.commands.iter().cloned()).collect());
        let attempt = match leader {
            Leader::Me => self.locally(proposal, deadline).await,
            Leader::Other { id, raft_addr, .. } => self.forward(&proposal, id, &raft_addr, deadline).await,
            Leader::Unknown => Attempt::Retry("no leader known".into()),
        };
        let why = match attempt {
            Attempt::Done(results, leader) => return answer(batch, results, leader),
            Attempt::Failed(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
                return;
            }
            Attempt::Retry(why) => why,
        };
        let retry_at = Instant::now() + REROUTE_DELAY;
        let (late, again): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| p.deadline <= retry_at);
        for p in late {
            let _ = p.reply.send(Err(ProposeError::NoLeader(why.clone()).into()));
        }
        let stopping = || WriteError::from(ProposeError::Stopped("the node is stopping".into()));
        let Some(queue) = self.queue.upgrade() else {
            for p in again {
                let _ = p.reply.send(Err(stopping()));
            }
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep_until(retry_at.into()).await;
            for p in again {
                if let Err(mpsc::error::SendError(p)) = queue.send(p) {
                    let _ = p.reply.send(Err(stopping()));
                }
            }
        });
    }

    async fn locally(&self, proposal: Proposal, deadline: Instant) -> Attempt {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.metrics.replica.proposal_commands.observe(proposal.0.len() as f64);
        match tokio::time::timeout(timeout, self.raft.client_write(proposal)).await {
            Err(_) => {
                Attempt::Failed(ProposeError::Timeout(format!("the write was not committed within {timeout:?}")).into())
            }
            Ok(Ok(resp)) => Attempt::Done(resp.data, self.me),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Attempt::Retry("leadership moved before the write was proposed".into())
            }
            // The write may have reached the log before Raft stopped, but no longer has a way to
            // be committed by this node; the client is told what happened, not openraft's text.
            Ok(Err(RaftError::Fatal(e))) => Attempt::Failed(match self.space.refusal(self.me) {
                Some(refusal) => WriteError::NoSpace(refusal),
                None => ProposeError::Stopped(stopped(self.me, &e)).into(),
            }),
            Ok(Err(e)) => {
                Attempt::Failed(ProposeError::Unknown(format!("leadership changed during the write: {e}")).into())
            }
        }
    }

    async fn forward(&self, proposal: &Proposal, leader: NodeId, addr: &str, deadline: Instant) -> Attempt {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let n = proposal.0.len() as u64;
        let count = |result: &str| self.metrics.replica.forwarded.with_label_values(&[result]).inc_by(n);
        match self.peers.propose(addr, leader, proposal, timeout).await {
            Ok(results) => {
                count("ok");
                Attempt::Done(results, leader)
            }
            // The leader refused the batch under its NOSPACE alarm: nothing was proposed.
            Err(ProposeFailure::NoSpace(why)) => {
                count("no_space");
                Attempt::Failed(WriteError::NoSpace(why))
            }
            Err(ProposeFailure::NotLeader(why)) => {
                count("not_leader");
                Attempt::Retry(format!("node {leader} at {addr}: {why}"))
            }
            Err(ProposeFailure::NotSent(why)) => {
                count("unreachable");
                Attempt::Retry(format!("leader {leader} at {addr} unreachable: {why}"))
            }
            Err(ProposeFailure::Timeout) => {
                count("error");
                Attempt::Failed(
                    ProposeError::Timeout(format!("leader {leader} did not answer within {timeout:?}")).into(),
                )
            }
            Err(ProposeFailure::Unknown(why)) => {
                count("error");
                Attempt::Failed(ProposeError::Unknown(format!("leader {leader} at {addr}: {why}")).into())
            }
        }
    }
}

/// A follower's writes are proposed by the leader it chose, or not at all: refused at once
/// when this node does not lead.
fn admit(p: Pending, is_leader: bool) -> Option<Pending> {
    if p.from_follower && !is_leader {
        let _ = p
            .reply
            .send(Err(ProposeError::NotLeader("this node is not the leader".into()).into()));
        return None;
    }
    Some(p)
}

/// Hands each pending write its share of `results`, in order.
fn answer(batch: Vec<Pending>, results: Vec<CommandResult>, leader: NodeId) {
    let expected: usize = batch.iter().map(|p| p.commands.len()).sum();
    if results.len() != expected {
        let e = WriteError::from(ProposeError::Unknown(format!(
            "the leader answered {} results for {expected} writes",
            results.len()
        )));
        for p in batch {
            let _ = p.reply.send(Err(e.clone()));
        }
        return;
    }
    let mut results = results.into_iter();
    for p in batch {
        let mine: Vec<CommandResult> = results.by_ref().take(p.commands.len()).collect();
        let _ = p.reply.send(Ok((mine, leader)));
    }
}

/// What a write is told when this node's Raft has stopped for good (`fatal`): a clear
/// sentence, not openraft's text.
pub(super) fn stopped(me: NodeId, fatal: &impl std::fmt::Display) -> String {
    format!(
        "node {me} can no longer take writes: its Raft stopped ({fatal}); it exits to be restarted \
         by its supervisor, use another member meanwhile"
    )
}

/// Whether `commands` hold a write that the NOSPACE alarm refuses: a put (a compare-and-set
/// included). Deletes go on, as under etcd's alarm, so that room can be made; so do auth
/// changes, as in etcd.
pub(super) fn adds_data(commands: &[Command]) -> bool {
    commands.iter().any(|c| matches!(c, Command::Put { .. }))
}
