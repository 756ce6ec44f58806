//! Read indexes without heartbeat rounds, in a three-voter cluster. A follower that asks the
//! leader for a read index is, by asking, acknowledging it: the call carries the follower's
//! durably saved vote (a [`Vouch`]), and a node whose saved vote is for term T has granted no
//! vote above T. Leader and follower together are a quorum, so the leader needs nobody else's
//! word, and answers from its own state (see [`vouched`]).
//!
//! Each answer carries a [`Stamp`] of the leader's clock, and the follower's next call echoes the
//! latest it received: that call was sent after the stamped instant, so it acknowledges the
//! leader after every read the leader itself had queued by then. The leader's own reads wait for
//! such a call ([`Board`]) instead of a heartbeat round while its followers are asking anyway.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::{RaftState, ServerState};
use tokio::sync::watch;

use crate::types::{NodeId, TypeConfig};

/// A follower's saved vote when it asked for a read index: for `leader` in `term`; and the
/// latest answer it had received from that leader before asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vouch {
    pub(crate) from: NodeId,
    pub(crate) term: u64,
    pub(crate) leader: NodeId,
    pub(crate) after: Option<Stamp>,
}

/// An instant on one process's clock: nanoseconds since it started, in the process `epoch` (a
/// number fresh in each process, so a restarted leader never reads another's stamps as its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) epoch: u64,
    pub(crate) nanos: u64,
}

/// The clock that this node stamps its read-index answers with.
pub(crate) struct Clock {
    epoch: u64,
    start: Instant,
}

impl Default for Clock {
    fn default() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Clock {
            // Never 0, which on the wire means "no stamp".
            epoch: (wall ^ u64::from(std::process::id()).rotate_left(48)) | 1,
            start: Instant::now(),
        }
    }
}

impl Clock {
    pub(crate) fn now(&self) -> Stamp {
        Stamp {
            epoch: self.epoch,
            nanos: self.start.elapsed().as_nanos() as u64,
        }
    }

    /// `stamp`'s instant if it is of this clock.
    fn own(&self, stamp: Option<Stamp>) -> Option<u64> {
        stamp.filter(|s| s.epoch == self.epoch).map(|s| s.nanos)
    }
}

/// How recent the last follower acknowledgement must be for the leader's own reads to wait for
/// the next one rather than start a heartbeat round, and how long they wait for it.
const ACTIVE: Duration = Duration::from_millis(2);

/// On the leader: the latest follower acknowledgement known to follow an instant of its clock,
/// with the read index it was answered with.
pub(crate) struct Board {
    clock: Clock,
    latest: watch::Sender<Acked>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Acked {
    /// The call was sent after this instant of the leader's clock.
    after: u64,
    /// The read index answered, taken after the call arrived.
    index: u64,
}

impl Default for Board {
    fn default() -> Board {
        Board {
            clock: Clock::default(),
            latest: watch::Sender::new(Acked::default()),
        }
    }
}

impl Board {
    pub(crate) fn now(&self) -> Stamp {
        self.clock.now()
    }

    /// Records that a follower's call sent after `vouch.after` was answered with `index`.
    pub(crate) fn acked(&self, vouch: &Vouch, index: u64) {
        if let Some(after) = self.clock.own(vouch.after) {
            self.latest.send_if_modified(|a| {
                let newer = after > a.after;
                if newer {
                    *a = Acked { after, index };
                }
                newer
            });
        }
    }

    /// A read index for reads all queued by `queued` (an instant of this board's clock): that
    /// of a follower's call sent after it. `None` at once if no follower has asked lately, or if
    /// none asks within [`ACTIVE`]: then a heartbeat round is needed.
    pub(crate) async fn index_after(&self, queued: Stamp) -> Option<u64> {
        let queued = self.clock.own(Some(queued))?;
        let mut rx = self.latest.subscribe();
        let last = rx.borrow_and_update().after;
        if queued.saturating_sub(last) > ACTIVE.as_nanos() as u64 {
            return None;
        }
        let acked = tokio::time::timeout(ACTIVE, rx.wait_for(|a| a.after >= queued)).await;
        let index = acked.ok()?.ok()?.index;
        Some(index)
    }
}

/// On a follower: the latest answer from each leader (one at a time: a new leader replaces it).
#[derive(Default)]
pub(crate) struct LastAnswer(Mutex<Option<(NodeId, Stamp)>>);

impl LastAnswer {
    pub(crate) fn record(&self, leader: NodeId, stamp: Stamp) {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let newer = match *last {
            Some((l, s)) => l != leader || s.epoch != stamp.epoch || s.nanos < stamp.nanos,
            None => true,
        };
        if newer {
            *last = Some((leader, stamp));
        }
    }

    pub(crate) fn from(&self, leader: NodeId) -> Option<Stamp> {
        match *self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((l, s)) if l == leader => Some(s),
            _ => None,
        }
    }
}

/// The read index the leader `me` may answer at once for a follower's call carrying `vouch`, or
/// `None` if it needs a heartbeat round. Runs inside Raft (`with_raft_state`), on the state at
/// one instant after the call arrived, so after the follower's reads did.
///
/// Why this is safe: a write acknowledged before the reads arrived was committed by some leader
/// with a quorum. If `me` still leads in term T now and the follower had granted no vote above
/// T when it asked, then any leader above T needed a vote from one of the two before that
/// write, which neither gave; since `me` and the follower are a quorum of the only
/// configuration, the write is from a leader up to T, so (leader completeness) it is in `me`'s
/// log, and at or below its commit index once `me` has committed an entry of its own term.
pub(crate) fn vouched(st: &RaftState<TypeConfig>, me: NodeId, vouch: &Vouch) -> Option<u64> {
    let vote = st.vote_ref();
    let leads = st.server_state == ServerState::Leader && vote.committed && vote.leader_id.node_id == me;
    if !leads || vouch.leader != me || vouch.term != vote.leader_id.term || vouch.from == me {
        return None;
    }
    let committed = st.local_committed()?;
    if committed.leader_id != vote.leader_id {
        // Nothing of this term committed yet: the commit index may lag what earlier leaders
        // committed.
        return None;
    }
    let [voters] = st
        .membership_state
        .effective()
        .membership()
        .get_joint_config()
        .as_slice()
    else {
        return None; // a joint configuration: a quorum of each is needed
    };
    let quorum = voters.len() / 2 + 1;
    (quorum <= 2 && voters.contains(&me) && voters.contains(&vouch.from)).then_some(committed.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vouch(after: Option<Stamp>) -> Vouch {
        Vouch {
            from: 2,
            term: 1,
            leader: 1,
            after,
        }
    }

    #[tokio::test]
    async fn own_reads_share_a_later_acknowledgement_only() {
        let board = Board::default();
        let early = board.now();
        // Nobody has asked yet: a heartbeat round is needed.
        assert_eq!(board.index_after(early).await, None);
        board.acked(&vouch(Some(early)), 7);
        // Sent after `early`: covers reads queued by then.
        assert_eq!(board.index_after(early).await, Some(7));
        // Reads queued later wait for a later call, and give up after ACTIVE without one.
        let late = board.now();
        assert_eq!(board.index_after(late).await, None);
        board.acked(&vouch(Some(late)), 9);
        assert_eq!(board.index_after(late).await, Some(9));
        // An older acknowledgement never replaces a newer one.
        board.acked(&vouch(Some(early)), 3);
        assert_eq!(board.index_after(late).await, Some(9));
    }

    #[tokio::test]
    async fn stamps_of_another_process_count_for_nothing() {
        let board = Board::default();
        let other = Clock::default();
        let queued = board.now();
        let foreign = Stamp {
            epoch: other.epoch ^ 2,
            nanos: u64::MAX,
        };
        board.acked(&vouch(Some(foreign)), 5);
        board.acked(&vouch(None), 5);
        assert_eq!(board.index_after(queued).await, None);
    }

    #[tokio::test]
    async fn a_waiting_read_is_answered_by_the_next_call() {
        let board = std::sync::Arc::new(Board::default());
        board.acked(&vouch(Some(board.now())), 1);
        let queued = board.now();
        let waiting = tokio::spawn({
            let board = board.clone();
            async move { board.index_after(queued).await }
        });
        tokio::task::yield_now().await;
        board.acked(&vouch(Some(board.now())), 4);
        assert_eq!(waiting.await.ok().flatten(), Some(4));
    }

    #[test]
    fn a_follower_echoes_only_its_current_leaders_latest_answer() {
        let last = LastAnswer::default();
        let s = |nanos| Stamp { epoch: 9, nanos };
        last.record(1, s(10));
        last.record(1, s(5)); // a late answer to an earlier call
        assert_eq!(last.from(1), Some(s(10)));
        assert_eq!(last.from(2), None);
        last.record(2, s(3));
        assert_eq!(last.from(1), None);
        assert_eq!(last.from(2), Some(s(3)));
    }
}
