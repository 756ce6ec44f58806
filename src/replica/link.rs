//! How the replica reaches the leader: a trait that the transport implements, so that the
//! replica decides what to ask and the transport only carries it (and the replica never names
//! the transport).

use std::time::Duration;

use futures::future::BoxFuture;

use super::vouch::{Stamp, Vouch};
use crate::types::{CommandResult, NodeId, Proposal};

/// A leader's answer to a read-index call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadIndexAnswer {
    pub(crate) index: u64,
    /// When it answered, on its clock (none from a node that does not stamp answers).
    pub(crate) stamp: Option<Stamp>,
}

/// Why a proposal sent to the leader brought no results.
#[derive(Debug)]
pub(crate) enum ProposeFailure {
    /// The node asked does not lead (or is not the node meant): nothing was proposed.
    NotLeader(String),
    /// The leader refused the writes under its NOSPACE alarm: nothing was proposed.
    NoSpace(String),
    /// No connection was made: nothing was sent.
    NotSent(String),
    /// No answer in time: the writes may or may not be applied.
    Timeout,
    /// The request was sent and the answer is unusable: the writes may or may not be applied.
    Unknown(String),
}

/// Calls a follower makes to the leader `target`, whose Raft listener is at `addr`. Each is
/// bounded by `timeout`. The futures are boxed: there is one call per batch of writes or reads,
/// not one per request.
pub(crate) trait LeaderLink: Send + Sync + 'static {
    /// Asks the leader for the index a linearizable (or, with `lease`, lease) read must wait
    /// for on this node; `vouch` is this node's word for the leader (see [`super::vouch`]).
    fn read_index<'a>(
        &'a self,
        addr: &'a str,
        target: NodeId,
        lease: bool,
        vouch: Option<Vouch>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ReadIndexAnswer, String>>;

    /// Has the leader propose `proposal` and answer its results, in order.
    fn propose<'a>(
        &'a self,
        addr: &'a str,
        target: NodeId,
        proposal: &'a Proposal,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<CommandResult>, ProposeFailure>>;
}
