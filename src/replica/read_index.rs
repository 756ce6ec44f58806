//! Read indexes, batched. A linearizable (or lease) read may be served by this node once its
//! state machine has applied the *read index*: the commit index of a leader that has confirmed,
//! after the read arrived, that it still leads (by a heartbeat round, or by its lease). On the
//! leader that confirmation comes from openraft; on a follower from a read-index call to the
//! leader (openraft's follower read), so a follower serves reads itself instead of relaying them.
//!
//! One confirmation is in flight at a time; the reads that arrive meanwhile wait for the next
//! one, and all of them share it: a burst of reads costs one heartbeat round or one call, not one
//! each. Sharing is safe because every read in a batch was queued before its confirmation was
//! asked for.
//!
//! Where a follower's word suffices (see [`super::vouch`]) the leader needs no heartbeat round:
//! it answers a follower's call from its own state, and its own reads wait for the next such
//! call while followers are asking. Otherwise the leader answers through its batches, and the
//! reads of the whole cluster share its rounds.

use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::link::LeaderLink;
use super::vouch::{self, Board, LastAnswer, Stamp, Vouch};
use super::{Leader, Raft};
use crate::metrics::Metrics;
use crate::storage::SavedVote;
use crate::types::NodeId;

/// Why no read index was obtained.
#[derive(Debug, Clone)]
pub(crate) enum NoReadIndex {
    /// Another attempt (once the leader changes or is learnt) may succeed.
    Retry(String),
    /// This node does not lead (for a follower's request, which is never passed on).
    NotLeader,
    /// This node is stopping.
    Stopped(String),
}

struct Waiter {
    lease: bool,
    /// A follower's request: confirmed by this node as the leader, or refused.
    here_only: bool,
    reply: oneshot::Sender<Result<u64, NoReadIndex>>,
}

/// The handle that request handlers use; the batching runs in a task of its own.
#[derive(Clone)]
pub(crate) struct ReadIndexer {
    tx: mpsc::UnboundedSender<Waiter>,
    source: Arc<Source>,
}

impl ReadIndexer {
    /// Starts the batching task. `timeout` bounds each confirmation.
    pub(crate) fn start(
        me: NodeId,
        raft: Raft,
        peers: Arc<dyn LeaderLink>,
        saved_vote: SavedVote,
        metrics: &Metrics,
        timeout: Duration,
    ) -> ReadIndexer {
        let (tx, rx) = mpsc::unbounded_channel();
        let source = Arc::new(Source {
            me,
            raft,
            peers,
            saved_vote,
            timeout,
            board: Board::default(),
            last_answer: LastAnswer::default(),
            counts: Counts::new(metrics),
        });
        tokio::spawn(source.clone().run(rx));
        ReadIndexer { tx, source }
    }

    /// A read index obtained after this call began, from this node or the leader.
    pub(crate) async fn read_index(&self, lease: bool) -> Result<u64, NoReadIndex> {
        self.wait(lease, false).await
    }

    /// A read index confirmed by this node as the leader (`NotLeader` if it does not lead), for
    /// a follower's call: at once on the follower's `vouch` where that suffices, else by a
    /// heartbeat round (or the lease).
    pub(crate) async fn read_index_here(&self, lease: bool, vouch: Option<Vouch>) -> Result<u64, NoReadIndex> {
        if let Some(vouch) = vouch {
            let me = self.source.me;
            match self
                .source
                .raft
                .with_raft_state(move |st| vouch::vouched(st, me, &vouch))
                .await
            {
                Ok(Some(index)) => {
                    self.source.counts.vouch.inc();
                    self.source.board.acked(&vouch, index);
                    return Ok(index);
                }
                Ok(None) => {}
                Err(e) => return Err(NoReadIndex::Stopped(format!("raft stopped: {e}"))),
            }
        }
        self.wait(lease, true).await
    }

    /// The stamp for an answer to a follower's call, taken as it is sent.
    pub(crate) fn stamp(&self) -> Stamp {
        self.source.board.now()
    }

    async fn wait(&self, lease: bool, here_only: bool) -> Result<u64, NoReadIndex> {
        let (reply, rx) = oneshot::channel();
        let stopped = || NoReadIndex::Stopped("the node is stopping".into());
        self.tx
            .send(Waiter {
                lease,
                here_only,
                reply,
            })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Confirmations in flight at once: one, so that every read that arrives meanwhile shares the
/// next (each confirmation costs a heartbeat round, or a call to the leader; more in flight
/// would cost more rounds for the same reads).
const IN_FLIGHT: usize = 1;

/// Where read indexes come from: this node's Raft when it leads, else a call to the leader.
struct Source {
    me: NodeId,
    raft: Raft,
    peers: Arc<dyn LeaderLink>,
    saved_vote: SavedVote,
    timeout: Duration,
    /// As the leader: followers' acknowledgements, for its own reads.
    board: Board,
    /// As a follower: what it echoes to the leader.
    last_answer: LastAnswer,
    counts: Counts,
}

/// `raftkv_read_index_confirmations_total`, by how each was had.
struct Counts {
    round: IntCounter,
    lease: IntCounter,
    vouch: IntCounter,
    echo: IntCounter,
    leader: IntCounter,
}

impl Counts {
    fn new(metrics: &Metrics) -> Counts {
        let via = |v: &str| metrics.replica.read_index_confirmations.with_label_values(&[v]);
        Counts {
            round: via("round"),
            lease: via("lease"),
            vouch: via("vouch"),
            echo: via("echo"),
            leader: via("leader"),
        }
    }
}

impl Source {
    async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Waiter>) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            // Everything queued by now goes into this batch.
            let mut batch = vec![first];
            while let Ok(w) = rx.try_recv() {
                batch.push(w);
            }
            let queued = self.board.now();
            let source = self.clone();
            tokio::spawn(async move {
                let (lease, linearizable): (Vec<Waiter>, Vec<Waiter>) = batch.into_iter().partition(|w| w.lease);
                tokio::join!(
                    source.answer(linearizable, false, queued),
                    source.answer(lease, true, queued)
                );
                drop(slot);
            });
        }
    }

    /// One confirmation for all of `waiters`, all queued by `queued`.
    async fn answer(&self, waiters: Vec<Waiter>, lease: bool, queued: Stamp) {
        if waiters.is_empty() {
            return;
        }
        let result = match Leader::of(&self.raft, self.me) {
            // A follower's call sent after all of them arrived (see `vouch`), or a round.
            Leader::Me if !lease => match self.board.index_after(queued).await {
                Some(index) => {
                    self.counts.echo.inc();
                    Ok(index)
                }
                None => self.locally(false).await,
            },
            Leader::Me => self.locally(true).await,
            other => {
                let (here, waiters): (Vec<Waiter>, Vec<Waiter>) = waiters.into_iter().partition(|w| w.here_only);
                for w in here {
                    let _ = w.reply.send(Err(NoReadIndex::NotLeader));
                }
                if waiters.is_empty() {
                    return;
                }
                let result = self.remotely(other, lease).await;
                for w in waiters {
                    let _ = w.reply.send(result.clone());
                }
                return;
            }
        };
        for w in waiters {
            let _ = w.reply.send(result.clone());
        }
    }

    async fn locally(&self, lease: bool) -> Result<u64, NoReadIndex> {
        let policy = if lease {
            ReadPolicy::LeaseRead
        } else {
            ReadPolicy::ReadIndex
        };
        match tokio::time::timeout(self.timeout, self.raft.get_read_linearizer(policy)).await {
            Err(_) => Err(NoReadIndex::Retry(format!(
                "could not confirm leadership within {:?}",
                self.timeout
            ))),
            Ok(Ok(linearizer)) => {
                if lease { &self.counts.lease } else { &self.counts.round }.inc();
                Ok(linearizer.read_log_id().index())
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))) => {
                Err(NoReadIndex::Retry("leadership moved during the request".into()))
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e)))) => {
                Err(NoReadIndex::Retry(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(NoReadIndex::Stopped(format!("raft stopped: {e}"))),
        }
    }

    async fn remotely(&self, leader: Leader, lease: bool) -> Result<u64, NoReadIndex> {
        match leader {
            Leader::Other { id, raft_addr, .. } => {
                let answer = self
                    .peers
                    .read_index(&raft_addr, id, lease, self.vouch(id), self.timeout)
                    .await
                    .map_err(|e| NoReadIndex::Retry(format!("leader {id} at {raft_addr}: {e}")))?;
                if let Some(stamp) = answer.stamp {
                    self.last_answer.record(id, stamp);
                }
                self.counts.leader.inc();
                Ok(answer.index)
            }
            _ => Err(NoReadIndex::Retry("no leader known".into())),
        }
    }

    /// This node's word for `leader`, read now: after every read of the batch being asked for
    /// arrived.
    fn vouch(&self, leader: NodeId) -> Option<Vouch> {
        self.saved_vote.get().map(|v| Vouch {
            from: self.me,
            term: v.leader_id.term,
            leader: v.leader_id.node_id,
            after: self.last_answer.from(leader),
        })
    }
}
