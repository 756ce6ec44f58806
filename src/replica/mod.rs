//! The replica: what a node does with Raft on behalf of every front end. Writes are batched
//! into proposals ([`propose`]), linearizable and lease reads share leadership confirmations
//! ([`read_index`], [`vouch`]), and who leads is looked up in one place ([`Leader`]).
//!
//! The replica reaches the leader through [`LeaderLink`], which the transport implements: the
//! replica decides *what* to ask the leader, the transport only carries it. So nothing here
//! names the transport or a front end, and a front end (HTTP today, a second client API
//! tomorrow) needs just two calls: [`Replica::propose`] for a write and [`Replica::barrier`]
//! before a read.

mod leader;
mod link;
mod propose;
mod read_index;
mod vouch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

pub(crate) use leader::Leader;
pub(crate) use link::{LeaderLink, ProposeFailure, ReadIndexAnswer};
pub(crate) use propose::ProposeError;
pub(crate) use read_index::NoReadIndex;
pub(crate) use vouch::{Stamp, Vouch};

use crate::metrics::Metrics;
use crate::storage::{SavedVote, StateMachine};
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
}

/// How often a read waiting for a confirmation asks again after one failed (no leader yet, a
/// leadership change under way).
const BARRIER_RETRY: Duration = Duration::from_millis(25);

impl Replica {
    /// Starts the write and read batchers. `link` reaches the leader when this node follows;
    /// `timeout` bounds each leadership confirmation.
    pub(crate) fn start(
        id: NodeId,
        raft: Raft,
        sm: StateMachine,
        link: Arc<dyn LeaderLink>,
        saved_vote: SavedVote,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Replica {
        let reads = read_index::ReadIndexer::start(id, raft.clone(), link.clone(), saved_vote, &metrics, timeout);
        let proposer = propose::Proposer::start(id, raft.clone(), link, metrics);
        Replica {
            id,
            raft,
            sm,
            proposer,
            reads,
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

    /// Proposes a client's write (on the leader, or through it) and waits for its result, and
    /// the id of the leader that proposed it, until `deadline`.
    pub(crate) async fn propose(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<(CommandResult, NodeId), ProposeError> {
        self.proposer.propose(command, deadline).await
    }

    /// Proposes a follower's writes on this node, which must lead (`NotLeader` otherwise).
    pub(crate) async fn propose_here(
        &self,
        commands: Vec<Command>,
        deadline: Instant,
    ) -> Result<Vec<CommandResult>, ProposeError> {
        self.proposer.propose_here(commands, deadline).await
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
