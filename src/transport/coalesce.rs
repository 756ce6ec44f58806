//! Commit-only AppendEntries requests, folded into the append that follows them.
//!
//! When an entry commits, openraft's replication stream sends each follower an AppendEntries
//! with no entries that only carries the new commit index. Under a steady write load the next
//! append follows within a millisecond and carries a newer one, so the update costs a message
//! and an answer each way (with two followers, as many replication messages as the appends
//! themselves) and tells the follower nothing it would not learn a moment later.
//!
//! Such an update is held here for up to [`HOLD`]. If another request comes meanwhile, the
//! update is not sent: the follower's answer to it would be the log id it already matched,
//! and that answer is given here, in its place among the real ones (the [`Ledger`]). A lone
//! update (the writes stopped) goes out after [`HOLD`], so a follower's applied index trails
//! the commit by at most that when the load is sparse.
//!
//! A follower that serves linearizable reads cannot wait: each read waits until the follower
//! has applied the leader's commit index, and so until the update arrives: holding it would
//! add up to [`HOLD`] to every such read. While followers ask this leader for read
//! indexes ([`FollowerReads`]), an update is folded only into a request that is already there.
//!
//! An answer given here never claims more than a real one: it is handed back only after the
//! answer to the request before it, which matched that same log id; had that one failed,
//! openraft ends the stream there and never reads the answers after it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use openraft::raft::AppendEntriesRequest;

use crate::types::{LogId, TypeConfig};

/// How long a commit-only update waits for a request to fold into.
pub(super) const HOLD: Duration = Duration::from_millis(2);
/// How long after a follower's read-index call updates are no longer held.
const READS_RECENT: Duration = Duration::from_secs(1);

/// When a follower last asked this node for a read index, shared by the service that answers
/// (which records it) and the replication streams (which hold updates only when it is long ago).
#[derive(Clone)]
pub(crate) struct FollowerReads {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last call, plus one (0: none yet).
    last: Arc<AtomicU64>,
}

impl Default for FollowerReads {
    fn default() -> Self {
        FollowerReads {
            epoch: Instant::now(),
            last: Arc::default(),
        }
    }
}

impl FollowerReads {
    pub(crate) fn asked(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last.store(now, Ordering::Relaxed);
    }

    /// How long a commit-only update may wait now.
    pub(crate) fn hold(&self) -> Duration {
        let last = self.last.load(Ordering::Relaxed);
        let recent = last > 0 && self.epoch.elapsed() < Duration::from_millis(last - 1) + READS_RECENT;
        if recent {
            Duration::ZERO
        } else {
            HOLD
        }
    }
}

type Request = AppendEntriesRequest<TypeConfig>;

/// What became of each request openraft gave, in order: its answers must come back in it.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    /// Sent to the follower at this instant; its answer comes from the follower.
    Sent(Instant),
    /// Folded into the next request; answered here with this matched log id.
    Answered(Option<LogId>),
}

/// The slots of one replication stream, shared by its request and response sides.
#[derive(Default)]
pub(super) struct Ledger {
    slots: Mutex<VecDeque<Slot>>,
}

impl Ledger {
    /// Records a request that is about to be sent.
    pub(super) fn sent(&self) {
        self.slots().push_back(Slot::Sent(Instant::now()));
    }

    fn answered(&self, matched: Option<LogId>) {
        self.slots().push_back(Slot::Answered(matched));
    }

    /// Whether the follower owes answers (a response is overdue only then).
    pub(super) fn awaiting(&self) -> bool {
        self.slots().iter().any(|s| matches!(s, Slot::Sent(_)))
    }

    /// The answer given here for the next request, if that request was folded.
    pub(super) fn next_answered(&self) -> Option<Option<LogId>> {
        let mut slots = self.slots();
        let Some(&Slot::Answered(matched)) = slots.front() else {
            return None;
        };
        slots.pop_front();
        Some(matched)
    }

    /// Takes the slots up to and including the oldest sent request, whose answer the follower
    /// just gave: the answers given here before it (to hand back first, in order), and when it
    /// was sent.
    pub(super) fn follower_answered(&self) -> (Vec<Option<LogId>>, Option<Instant>) {
        let mut slots = self.slots();
        let mut before = Vec::new();
        while let Some(slot) = slots.pop_front() {
            match slot {
                Slot::Answered(m) => before.push(m),
                Slot::Sent(at) => return (before, Some(at)),
            }
        }
        (before, None)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, VecDeque<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The requests of `input` that must be sent: each commit-only update that another request
/// follows within `hold()` (asked when the update comes) is left out and answered in `ledger`
/// instead.
pub(super) fn fold_commit_updates<S, H>(input: S, ledger: Arc<Ledger>, hold: H) -> impl Stream<Item = Request>
where
    S: Stream<Item = Request> + Unpin,
    H: Fn() -> Duration,
{
    struct State<S, H> {
        input: S,
        ledger: Arc<Ledger>,
        hold: H,
        /// The last log id of the last request let through: what the follower will have matched.
        last: Option<Option<LogId>>,
        /// An update held, and until when.
        held: Option<(Request, tokio::time::Instant)>,
        /// One timer for every hold, moved later each time. Moving a timer that has not fired
        /// later costs nothing; a new one, due before anything else the runtime waits for,
        /// wakes its driver (an eventfd write, and a thread woken, per held update).
        timer: std::pin::Pin<Box<tokio::time::Sleep>>,
        done: bool,
    }
    let state = State {
        input,
        ledger,
        hold,
        last: None,
        held: None,
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                // The stream ended with an update held: it still has to reach the follower.
                return st.held.take().map(|(req, _)| (req, st));
            }
            let next = match st.held.as_ref().map(|(_, until)| *until) {
                // A zero hold still folds an update into a request that is already there.
                Some(until) if until <= tokio::time::Instant::now() => match st.input.next().now_or_never() {
                    Some(next) => next,
                    None => return st.held.take().map(|(req, _)| (req, st)),
                },
                Some(until) => {
                    if st.timer.deadline() != until {
                        st.timer.as_mut().reset(until);
                    }
                    tokio::select! {
                        biased;
                        next = st.input.next() => next,
                        () = st.timer.as_mut() => return st.held.take().map(|(req, _)| (req, st)),
                    }
                }
                None => st.input.next().await,
            };
            let Some(req) = next else {
                st.done = true;
                continue;
            };
            if let Some((held, _)) = st.held.take() {
                st.ledger.answered(held.prev_log_id);
            }
            if req.entries.is_empty() && st.last == Some(req.prev_log_id) {
                st.held = Some((req, tokio::time::Instant::now() + (st.hold)()));
                continue;
            }
            st.last = Some(req.entries.last().map(|e| e.log_id).or(req.prev_log_id));
            return Some((req, st));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, Vote};
    use openraft::vote::leader_id_adv::LeaderId;
    use openraft::vote::RaftLeaderId;
    use openraft::EntryPayload;

    fn log_id(index: u64) -> LogId {
        LogId::new(LeaderId::new(1, 1), index)
    }

    fn append(prev: u64, last: u64, commit: u64) -> Request {
        AppendEntriesRequest {
            vote: Vote::new(1, 1),
            prev_log_id: Some(log_id(prev)),
            leader_commit: Some(log_id(commit)),
            entries: (prev + 1..=last)
                .map(|i| Entry {
                    log_id: log_id(i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
        }
    }

    /// The requests let through when `reqs` are all given at once and the stream then ends.
    async fn run(reqs: Vec<Request>, hold: Duration) -> (Vec<Request>, Arc<Ledger>) {
        let ledger = Arc::new(Ledger::default());
        let out = fold_commit_updates(futures::stream::iter(reqs), ledger.clone(), move || hold);
        let sent = out.inspect(|_| ledger.sent()).collect().await;
        (sent, ledger)
    }

    fn ranges(reqs: &[Request]) -> Vec<(u64, usize, u64)> {
        reqs.iter()
            .map(|r| {
                let index = |id: &Option<LogId>| id.map_or(0, |l| l.index);
                (index(&r.prev_log_id), r.entries.len(), index(&r.leader_commit))
            })
            .collect()
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn an_update_followed_at_once_is_answered_here_in_its_place() {
        let (sent, ledger) = run(vec![append(0, 1, 0), append(1, 1, 1), append(1, 2, 1)], LONG).await;
        assert_eq!(ranges(&sent), vec![(0, 1, 0), (1, 1, 1)]);
        // The follower answers the first append; the folded update's answer comes right after.
        let (before, at) = ledger.follower_answered();
        assert!(before.is_empty() && at.is_some());
        assert_eq!(ledger.next_answered(), Some(Some(log_id(1))));
        assert_eq!(ledger.next_answered(), None);
        let (before, at) = ledger.follower_answered();
        assert!(before.is_empty() && at.is_some());
        assert!(!ledger.awaiting());
    }

    #[tokio::test]
    async fn a_lone_update_goes_out_after_the_hold() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let ledger = Arc::new(Ledger::default());
        let input = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut out = Box::pin(fold_commit_updates(input, ledger.clone(), || Duration::from_millis(1)));
        let _ = tx.send(append(0, 1, 0));
        let _ = tx.send(append(1, 1, 1));
        assert_eq!(out.next().await.map(|r| r.entries.len()), Some(1));
        // Nothing follows the update: it goes out once the hold is over.
        let update = out.next().await.map(|r| (r.entries.len(), r.leader_commit));
        assert_eq!(update, Some((0, Some(log_id(1)))));
        let _ = tx.send(append(1, 2, 1));
        assert_eq!(out.next().await.map(|r| r.entries.len()), Some(1));
        drop(tx);
        assert!(out.next().await.is_none());
        assert_eq!(ledger.next_answered(), None);
    }

    #[tokio::test]
    async fn an_update_held_when_the_stream_ends_is_still_sent() {
        let (sent, _) = run(vec![append(0, 1, 0), append(1, 1, 1)], LONG).await;
        assert_eq!(ranges(&sent), vec![(0, 1, 0), (1, 0, 1)]);
    }

    #[tokio::test]
    async fn only_updates_at_the_matched_id_are_folded() {
        // The first request of a stream, and an empty request at another id (a probe for where
        // the logs agree), are always sent.
        let (sent, ledger) = run(vec![append(3, 3, 3), append(2, 2, 3), append(2, 4, 3)], LONG).await;
        assert_eq!(ranges(&sent), vec![(3, 0, 3), (2, 0, 3), (2, 2, 3)]);
        assert_eq!(ledger.next_answered(), None);
    }

    #[tokio::test]
    async fn a_zero_hold_folds_only_into_a_request_already_there() {
        let (sent, ledger) = run(vec![append(0, 1, 0), append(1, 1, 1), append(1, 2, 1)], Duration::ZERO).await;
        assert_eq!(ranges(&sent), vec![(0, 1, 0), (1, 1, 1)]);
        let _ = ledger.follower_answered();
        assert_eq!(ledger.next_answered(), Some(Some(log_id(1))));

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let input = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut out = Box::pin(fold_commit_updates(input, Arc::new(Ledger::default()), || {
            Duration::ZERO
        }));
        let _ = tx.send(append(0, 1, 0));
        let _ = tx.send(append(1, 1, 1));
        assert_eq!(out.next().await.map(|r| r.entries.len()), Some(1));
        // Nothing is there yet: the update goes out at once, with the connection held open.
        assert_eq!(out.next().await.map(|r| r.entries.len()), Some(0));
    }

    #[test]
    fn updates_are_not_held_while_followers_read() {
        let reads = FollowerReads::default();
        assert_eq!(reads.hold(), HOLD);
        reads.asked();
        assert_eq!(reads.hold(), Duration::ZERO);
    }

    #[test]
    fn answers_given_here_come_before_the_followers_next() {
        // Two updates folded in a row, behind one append: the follower's answer to the request
        // after them releases both, first.
        let ledger = Ledger::default();
        ledger.sent();
        ledger.answered(Some(log_id(1)));
        ledger.answered(Some(log_id(1)));
        ledger.sent();
        let (before, _) = ledger.follower_answered();
        assert!(before.is_empty());
        let (before, at) = ledger.follower_answered();
        assert_eq!(before, vec![Some(log_id(1)), Some(log_id(1))]);
        assert!(at.is_some());
    }
}
