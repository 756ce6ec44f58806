//! The replica: what a node does with Raft on behalf of every front end. Writes are batched
//! into proposals ([`propose`]), linearizable and lease reads share leadership confirmations
//! ([`read_index`], [`vouch`]), and who leads is looked up in one place ([`Leader`]).
//!
//! The replica reaches the leader through [`LeaderLink`], which the transport implements: the
//! replica decides *what* to ask the leader, the transport only carries it. So nothing here
//! names the transport or a front end, and a front end (HTTP today, a second client API
//! tomorrow) needs just two calls: [`Replica::propose`] for a write and [`Replica::barrier`]
//! before a read.
//!
//! The replica also says whether the node can go on ([`Replica::health`]): a Raft that stopped
//! after a storage error, or a store that the disk refused a write, cannot be mended in this
//! process. redb refuses every write to a database after an I/O error until it is reopened;
//! reopening the state database in place would lose its unsynced flushes, and openraft cannot
//! be restarted under the handles every layer holds. A restart does all of it safely (it is
//! the crash recovery the stores are built for), so such a node fails `/healthz` and exits
//! ([`Replica::unrecoverable`]) for its supervisor to restart it. The NOSPACE alarm, which
//! refuses puts while the disk still has its reserve, keeps that path rare.

mod leader;
mod link;
mod propose;
mod read_index;
mod vouch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::Fatal;

pub(crate) use leader::Leader;
pub(crate) use link::{LeaderLink, ProposeFailure, ReadIndexAnswer};
pub(crate) use propose::{ProposeError, WriteError};
pub(crate) use read_index::NoReadIndex;
pub(crate) use vouch::{Stamp, Vouch};

use crate::metrics::Metrics;
use crate::storage::{SavedVote, Space, StateMachine};
use crate::types::{Command, CommandResult, NodeId, TypeConfig};

/// openraft's handle on this node's Raft, over raftkv's state machine.
pub(crate) type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// The current value of openraft's metrics (a clone, so no lock is held).
pub(crate) fn raft_metrics(raft: &Raft) -> openraft::RaftMetrics<TypeConfig> {
    raft.metrics().borrow_watched().clone()
}

/// What a read must wait for before this node's state may answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirmation {
    /// A leader confirmed by a quorum after the read arrived (ReadIndex).
    ReadIndex,
    /// A leader confirmed by its lease.
    Lease,
}

/// Why a read may not be served yet.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum BarrierError {
    /// No leader confirmed its leadership, or this node did not catch up, before the deadline.
    #[error("{0}")]
    NoLeader(String),
    /// This node is stopping.
    #[error("{0}")]
    Stopped(String),
}

/// A node's replica: its Raft, its state machine, the write batcher and the read batcher.
/// Cheap to clone; every front end and the transport's server share one.
#[derive(Clone)]
pub(crate) struct Replica {
    id: NodeId,
    raft: Raft,
    sm: StateMachine,
    proposer: propose::Proposer,
    reads: read_index::ReadIndexer,
    /// The NOSPACE alarm of this node's data directory, and its stores' failures.
    space: Space,
}

/// How often a read waiting for a confirmation asks again after one failed (no leader yet, a
/// leadership change under way).
const BARRIER_RETRY: Duration = Duration::from_millis(25);
/// How often [`Replica::unrecoverable`] looks at the node's health.
const HEALTH_POLL: Duration = Duration::from_millis(250);
/// How long a node that cannot go on waits for the disk to have its reserve free again before
/// it exits: started on a disk that is still full, it would fail at once and be restarted
/// again and again; one that never gets the room back must not stay up useless either.
const EXIT_WAIT: Duration = Duration::from_secs(60);

impl Replica {
    /// Starts the write and read batchers. `link` reaches the leader when this node follows;
    /// `timeout` bounds each leadership confirmation; puts are refused while `space` has the
    /// NOSPACE alarm up.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        id: NodeId,
        raft: Raft,
        sm: StateMachine,
        link: Arc<dyn LeaderLink>,
        saved_vote: SavedVote,
        metrics: Arc<Metrics>,
        timeout: Duration,
        space: Space,
    ) -> Replica {
        let reads = read_index::ReadIndexer::start(id, raft.clone(), link.clone(), saved_vote, &metrics, timeout);
        let proposer = propose::Proposer::start(id, raft.clone(), link, metrics, space.clone());
        Replica {
            id,
            raft,
            sm,
            proposer,
            reads,
            space,
        }
    }

    pub(crate) fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    pub(crate) fn state(&self) -> &StateMachine {
        &self.sm
    }

    /// The NOSPACE alarm of this node's data directory.
    pub(crate) fn space(&self) -> &Space {
        &self.space
    }

    /// Proposes a client's write (on the leader, or through it) and waits for its result, and
    /// the id of the leader that proposed it, until `deadline`. Refused before it is proposed
    /// while this node cannot take it: a put under the NOSPACE alarm (here, or at the leader),
    /// any write once the node cannot go on.
    pub(crate) async fn propose(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<(CommandResult, NodeId), WriteError> {
        if let Some(refusal) = self.refusal(std::slice::from_ref(&command)) {
            return Err(refusal);
        }
        self.proposer.propose(command, deadline).await
    }

    /// Proposes a follower's writes on this node, which must lead (`NotLeader` otherwise).
    /// Under the NOSPACE alarm a batch with a put is refused whole (`NoSpace`): certainly not
    /// proposed, like a not-leader answer.
    pub(crate) async fn propose_here(
        &self,
        commands: Vec<Command>,
        deadline: Instant,
    ) -> Result<Vec<CommandResult>, WriteError> {
        match self.refusal(&commands) {
            Some(refusal) => Err(refusal),
            None => self.proposer.propose_here(commands, deadline).await,
        }
    }

    /// Why `commands` may not be proposed now, if they may not.
    fn refusal(&self, commands: &[Command]) -> Option<WriteError> {
        if let Err(why) = self.health() {
            return Some(match self.space.refusal(self.id) {
                Some(refusal) => WriteError::NoSpace(refusal),
                None => ProposeError::Stopped(why).into(),
            });
        }
        if !propose::adds_data(commands) {
            return None;
        }
        self.space.refusal(self.id).map(WriteError::NoSpace)
    }

    /// Whether this node can go on: not when a store failed a write (see [`Space::failure`])
    /// or its Raft stopped after a storage error or a panic. A Raft stopped by a shutdown is
    /// healthy: the node is ending as asked.
    pub(crate) fn health(&self) -> Result<(), String> {
        if let Some(failure) = self.space.failure() {
            return Err(format!(
                "node {}: {failure}; the store cannot be written again in this process",
                self.id
            ));
        }
        let metrics = self.raft.metrics();
        let fatal = match &metrics.borrow_watched().running_state {
            Ok(()) | Err(Fatal::Stopped) => None,
            Err(e) => Some(e.to_string()),
        };
        match fatal {
            Some(e) => Err(propose::stopped(self.id, &e)),
            None => Ok(()),
        }
    }

    /// Resolves once this node cannot go on (see [`Replica::health`]) and, if the disk is
    /// short of its reserve, the room is back or [`EXIT_WAIT`] has passed: with the sentence
    /// the node exits on.
    pub(crate) async fn unrecoverable(&self) -> String {
        let why = loop {
            match self.health() {
                Err(why) => break why,
                Ok(()) => tokio::time::sleep(HEALTH_POLL).await,
            }
        };
        tracing::error!("{why}; /healthz fails from now on");
        if !self.space.has_room() {
            tracing::warn!(
                "waiting up to {}s for free space on the data directory before exiting",
                EXIT_WAIT.as_secs()
            );
            let deadline = Instant::now() + EXIT_WAIT;
            while !self.space.has_room() && Instant::now() < deadline {
                tokio::time::sleep(HEALTH_POLL).await;
            }
        }
        format!(
            "{why}; exiting so that the supervisor restarts the node (nothing acknowledged is lost: \
             the stores recover from disk at start)"
        )
    }

    /// A read index confirmed by this node as the leader, for a follower's call (see
    /// [`read_index::ReadIndexer::read_index_here`]).
    pub(crate) async fn read_index_here(&self, lease: bool, vouch: Option<Vouch>) -> Result<u64, NoReadIndex> {
        self.reads.read_index_here(lease, vouch).await
    }

    /// The stamp for an answer to a follower's read-index call, taken as it is sent.
    pub(crate) fn stamp(&self) -> Stamp {
        self.reads.stamp()
    }

    /// The consistency barrier: returns once this node's state machine may serve a read that
    /// arrived before the call, at `confirmation`: a leader confirmed its leadership after this
    /// call began (on a follower: the leader answered a read-index call) and this node has
    /// applied up to that leader's commit index. Failed confirmations (no leader yet, a
    /// leadership change) are asked again until `deadline`.
    pub(crate) async fn barrier(&self, confirmation: Confirmation, deadline: Instant) -> Result<(), BarrierError> {
        let lease = confirmation == Confirmation::Lease;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(remaining, self.reads.read_index(lease)).await {
                Ok(Ok(index)) => return self.applied_up_to(index, deadline).await,
                Ok(Err(NoReadIndex::Retry(why))) => why,
                Ok(Err(NoReadIndex::NotLeader)) => "this node does not lead".to_string(),
                Ok(Err(NoReadIndex::Stopped(why))) => return Err(BarrierError::Stopped(why)),
                Err(_) => "no leader confirmed its leadership in time".to_string(),
            };
            if Instant::now() >= deadline {
                return Err(BarrierError::NoLeader(error));
            }
            tokio::time::sleep(BARRIER_RETRY).await;
        }
    }

    /// Waits until the state machine has applied `index`.
    async fn applied_up_to(&self, index: u64, deadline: Instant) -> Result<(), BarrierError> {
        // The state machine itself is the freshest word on what has been applied (the metrics
        // that `wait` watches are published a little later).
        if self.sm.applied_index().is_some_and(|a| a >= index) {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match self
            .raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(index), "read index")
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(BarrierError::NoLeader(format!(
                "this node did not apply up to the read index {index} in time: {e}"
            ))),
        }
    }
}
