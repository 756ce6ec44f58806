//! The Raft log and vote, in redb, with group commit.
//!
//! One writer thread owns every write to the log database. `append` only puts the entries in an
//! in-memory tail cache (so they are readable at once, as openraft requires) and queues them;
//! the writer drains everything queued, writes it in one transaction, fsyncs once, and only
//! then tells openraft the entries are persisted. Under load openraft keeps appending while an
//! fsync is in flight, so batches grow by themselves and fsyncs stop capping throughput.
//!
//! Vote, truncate and purge are rare: they go through the same queue (the writer keeps every
//! write in order, as openraft requires) and their callers wait until they are durable. The
//! committed id, saved on every commit, rides along with the next durable batch.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use super::codec::{decode, encode, io_err};
use crate::types::{Entry, LogId, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// How many durable entries the tail cache keeps, so that replication to followers that are
/// slightly behind is served from memory instead of redb; and at most how many bytes of them
/// (an entry is a batch of up to thousands of writes).
const CACHE_KEEP: u64 = 4096;
const CACHE_KEEP_BYTES: usize = 32 << 20;
/// redb's page cache for the log (its default is 1 GiB a database): the log is appended in
/// order and read back mostly from the tail cache.
const CACHE_BYTES: usize = 32 << 20;

/// Observes each group commit; the metrics layer plugs in here.
pub trait CommitObserver: Send + Sync + 'static {
    fn committed(&self, entries: usize, elapsed: std::time::Duration);
}

struct NoObserver;
impl CommitObserver for NoObserver {
    fn committed(&self, _: usize, _: std::time::Duration) {}
}

/// Entries appended but possibly not yet durable, plus a recent durable tail. Every entry is
/// always in the cache, in redb, or both: the writer evicts only what it has made durable.
#[derive(Default)]
struct TailCache {
    /// index -> (append sequence number, payload bytes, entry)
    entries: BTreeMap<u64, (u64, usize, Entry)>,
    /// Payload bytes of the entries held.
    bytes: usize,
    next_seq: u64,
}

impl TailCache {
    fn insert(&mut self, seq: u64, entry: Entry) {
        let size = match &entry.payload {
            EntryPayload::Normal(p) => p.size(),
            _ => 0,
        };
        self.bytes += size;
        if let Some((_, old, _)) = self.entries.insert(entry.log_id.index, (seq, size, entry)) {
            self.bytes -= old;
        }
    }

    /// Drops the entries from `index` on.
    fn drop_from(&mut self, index: u64) {
        let gone = self.entries.split_off(&index);
        self.forget(&gone);
    }

    /// Drops the entries up to `index`, inclusive.
    fn drop_through(&mut self, index: u64) {
        let rest = self.entries.split_off(&(index + 1));
        let gone = std::mem::replace(&mut self.entries, rest);
        self.forget(&gone);
    }

    /// Drops durable entries from the front, keeping the last `CACHE_KEEP` while they hold at
    /// most `CACHE_KEEP_BYTES`.
    fn evict_durable(&mut self, durable_seq: u64) {
        let Some((&last, _)) = self.entries.last_key_value() else {
            return;
        };
        let keep_from = last.saturating_sub(CACHE_KEEP);
        while let Some(first) = self.entries.first_entry() {
            let (seq, size, _) = *first.get();
            let wanted = *first.key() >= keep_from && self.bytes <= CACHE_KEEP_BYTES;
            if wanted || seq > durable_seq {
                break;
            }
            first.remove();
            self.bytes -= size;
        }
    }

    fn forget(&mut self, gone: &BTreeMap<u64, (u64, usize, Entry)>) {
        self.bytes -= gone.values().map(|(_, size, _)| size).sum::<usize>();
    }
}

struct Shared {
    db: Database,
    cache: Mutex<TailCache>,
    vote: Mutex<Option<Vote>>,
    last_purged: Mutex<Option<LogId>>,
    /// The committed id last saved in this process (`None`: none yet, read it from disk).
    committed: Mutex<Option<Option<LogId>>>,
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, TailCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum WriteOp {
    Append {
        seq: u64,
        entries: Vec<Entry>,
        done: IOFlushed<TypeConfig>,
    },
    Vote(Vote, oneshot::Sender<io::Result<()>>),
    Committed(Option<LogId>),
    TruncateAfter(Option<u64>, oneshot::Sender<io::Result<()>>),
    Purge(LogId, oneshot::Sender<io::Result<()>>),
}

/// The log store handed to openraft.
pub struct LogStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<WriteOp>,
}

/// A cheap reader of the log, used by openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Opens (or creates) the log database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with_observer(path, Arc::new(NoObserver))
    }

    pub fn open_with_observer(path: &Path, observer: Arc<dyn CommitObserver>) -> io::Result<Self> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(io_err)?;
        {
            let txn = db.begin_write().map_err(io_err)?;
            txn.open_table(LOG).map_err(io_err)?;
            txn.open_table(META).map_err(io_err)?;
            txn.commit().map_err(io_err)?;
        }
        let (vote, last_purged) = {
            let txn = db.begin_read().map_err(io_err)?;
            let meta = txn.open_table(META).map_err(io_err)?;
            let vote = match meta.get(KEY_VOTE).map_err(io_err)? {
                Some(v) => Some(decode::<Vote>(v.value())?),
                None => None,
            };
            let purged = match meta.get(KEY_PURGED).map_err(io_err)? {
                Some(v) => decode::<Option<LogId>>(v.value())?,
                None => None,
            };
            (vote, purged)
        };
        let shared = Arc::new(Shared {
            db,
            cache: Mutex::new(TailCache::default()),
            vote: Mutex::new(vote),
            last_purged: Mutex::new(last_purged),
            committed: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(writer_shared, rx, observer))?;
        Ok(LogStore { shared, tx })
    }

    fn send(&self, op: WriteOp) -> io::Result<()> {
        self.tx
            .send(op)
            .map_err(|_| io::Error::other("raft log writer has stopped"))
    }

    async fn send_and_wait(&self, op: impl FnOnce(oneshot::Sender<io::Result<()>>) -> WriteOp) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(op(tx))?;
        rx.await
            .map_err(|_| io::Error::other("raft log writer stopped before finishing a write"))?
    }
}

/// The vote this node has durably saved. Every vote it grants is saved (and this updated) before
/// the grant is sent, so a node whose saved vote is V has granted no vote above V.
#[derive(Clone)]
pub struct SavedVote {
    shared: Arc<Shared>,
}

impl SavedVote {
    pub fn get(&self) -> Option<Vote> {
        *self.shared.vote.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogStore {
    /// A handle on the saved vote that outlives handing this store to openraft.
    pub fn saved_vote(&self) -> SavedVote {
        SavedVote {
            shared: self.shared.clone(),
        }
    }

    /// Seeds an empty log for a node restored from a backup: the log starts after `last`
    /// (as if everything up to it had been purged into the snapshot) with `vote` saved.
    pub async fn seed_restored(&self, last: LogId, vote: Vote) -> io::Result<()> {
        self.send_and_wait(|done| WriteOp::Purge(last, done)).await?;
        *self.shared.last_purged.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
        self.send(WriteOp::Committed(Some(last)))?;
        self.send_and_wait(|done| WriteOp::Vote(vote, done)).await
    }
}

/// The writer thread: drain, write one transaction, fsync once, acknowledge everything.
fn writer_loop(shared: Arc<Shared>, rx: mpsc::Receiver<WriteOp>, observer: Arc<dyn CommitObserver>) {
    // The newest committed id not yet written. It rides along with a durable batch, at most
    // once per COMMITTED_EVERY, instead of costing a transaction (or pages in every one) of
    // its own: openraft saves it on every commit, and a committed id that is a little stale
    // after a crash only means re-applying fewer entries at start-up (openraft learns the rest
    // from the leader).
    let mut committed = Pending::default();
    // The next transaction, opened while the writer waits: off the path of the next append.
    let mut next: Option<WriteTransaction> = None;
    loop {
        if next.is_none() {
            next = shared.db.begin_write().ok();
        }
        let Ok(first) = rx.recv() else {
            return;
        };
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
            if batch.len() >= 4096 {
                break;
            }
        }
        for op in &batch {
            if let WriteOp::Committed(c) = op {
                committed.value = Some(*c);
            }
        }
        let started = std::time::Instant::now();
        let result = write_batch(&shared.db, &mut next, &batch, &mut committed);
        let appended: usize = batch
            .iter()
            .map(|op| match op {
                WriteOp::Append { entries, .. } => entries.len(),
                _ => 0,
            })
            .sum();
        if result.is_ok() && appended > 0 {
            observer.committed(appended, started.elapsed());
        }
        let mut max_seq = None;
        for op in batch {
            let res = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            match op {
                WriteOp::Append { seq, done, .. } => {
                    max_seq = Some(seq);
                    done.io_completed(res);
                }
                WriteOp::Vote(vote, done) => {
                    if res.is_ok() {
                        *shared.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(vote);
                    }
                    let _ = done.send(res);
                }
                WriteOp::TruncateAfter(_, done) | WriteOp::Purge(_, done) => {
                    let _ = done.send(res);
                }
                WriteOp::Committed(_) => {}
            }
        }
        if let (Ok(()), Some(max_seq)) = (&result, max_seq) {
            shared.cache().evict_durable(max_seq);
        }
    }
}

/// How often, at most, the committed id is written (unless a vote, truncation or purge is).
const COMMITTED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The committed id waiting to be written, and when it last was.
#[derive(Default)]
struct Pending {
    value: Option<Option<LogId>>,
    written: Option<std::time::Instant>,
}

impl Pending {
    /// The committed id to write along with a batch, if it is time to.
    fn due(&self, rare_write: bool) -> Option<Option<LogId>> {
        let stale = self.written.is_none_or(|t| t.elapsed() >= COMMITTED_EVERY);
        self.value.filter(|_| rare_write || stale)
    }
}

/// Writes `batch` in one transaction (the pre-opened `next`, if any) and fsyncs it, with the
/// pending committed id when it is due.
fn write_batch(
    db: &Database,
    next: &mut Option<WriteTransaction>,
    batch: &[WriteOp],
    committed: &mut Pending,
) -> io::Result<()> {
    // Only entries, votes, truncations and purges must be on disk before they are
    // acknowledged. A batch of nothing else (openraft flushes empty appends, e.g. for
    // heartbeats) costs nothing: every earlier batch is already durable, since the writer
    // commits batches one after another.
    let must_sync = batch.iter().any(|op| match op {
        WriteOp::Append { entries, .. } => !entries.is_empty(),
        WriteOp::Committed(_) => false,
        WriteOp::Vote(..) | WriteOp::TruncateAfter(..) | WriteOp::Purge(..) => true,
    });
    if !must_sync {
        return Ok(());
    }
    let rare_write = batch
        .iter()
        .any(|op| matches!(op, WriteOp::Vote(..) | WriteOp::TruncateAfter(..) | WriteOp::Purge(..)));
    let write_committed = committed.due(rare_write);
    let mut txn = match next.take() {
        Some(txn) => txn,
        None => db.begin_write().map_err(io_err)?,
    };
    txn.set_durability(Durability::Immediate).map_err(io_err)?;
    {
        let mut log = txn.open_table(LOG).map_err(io_err)?;
        let mut meta = txn.open_table(META).map_err(io_err)?;
        for op in batch {
            match op {
                WriteOp::Append { entries, .. } => {
                    for entry in entries {
                        log.insert(entry.log_id.index, encode(entry)?.as_slice())
                            .map_err(io_err)?;
                    }
                }
                WriteOp::Vote(vote, _) => {
                    meta.insert(KEY_VOTE, encode(vote)?.as_slice()).map_err(io_err)?;
                }
                WriteOp::Committed(_) => {}
                WriteOp::TruncateAfter(after, _) => {
                    let from = after.map_or(0, |i| i + 1);
                    log.retain_in(from.., |_, _| false).map_err(io_err)?;
                }
                WriteOp::Purge(upto, _) => {
                    log.retain_in(..=upto.index, |_, _| false).map_err(io_err)?;
                    meta.insert(KEY_PURGED, encode(&Some(*upto))?.as_slice())
                        .map_err(io_err)?;
                }
            }
        }
        if let Some(c) = write_committed {
            meta.insert(KEY_COMMITTED, encode(&c)?.as_slice()).map_err(io_err)?;
        }
    }
    txn.commit().map_err(io_err)?;
    if write_committed.is_some() {
        committed.value = None;
        committed.written = Some(std::time::Instant::now());
    }
    Ok(())
}

fn range_start(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    }
}

fn range_end(range: &impl RangeBounds<u64>) -> u64 {
    match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    }
}

impl LogReader {
    fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        // Cache first: whatever the writer evicts after this point is already in redb.
        let (first_cached, cached): (u64, Vec<Entry>) = {
            let cache = self.shared.cache();
            let first = cache.entries.first_key_value().map_or(u64::MAX, |(k, _)| *k);
            let from = start.max(first);
            let cached = if from < end {
                cache.entries.range(from..end).map(|(_, (_, _, e))| e.clone()).collect()
            } else {
                Vec::new()
            };
            (first, cached)
        };
        let mut out = Vec::new();
        let disk_end = end.min(first_cached);
        if start < disk_end {
            let txn = self.shared.db.begin_read().map_err(io_err)?;
            let log = txn.open_table(LOG).map_err(io_err)?;
            for item in log.range(start..disk_end).map_err(io_err)? {
                let (_, v) = item.map_err(io_err)?;
                out.push(decode::<Entry>(v.value())?);
            }
        }
        out.extend(cached);
        Ok(out)
    }

    fn last_on_disk(&self) -> io::Result<Option<LogId>> {
        let txn = self.shared.db.begin_read().map_err(io_err)?;
        let log = txn.open_table(LOG).map_err(io_err)?;
        let last = match log.last().map_err(io_err)? {
            Some((_, v)) => Some(decode::<Entry>(v.value())?.log_id),
            None => None,
        };
        Ok(last)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read_range(range_start(&range), range_end(&range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(*self.shared.vote.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.reader().read_range(range_start(&range), range_end(&range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.reader().read_vote().await
    }
}

impl LogStore {
    fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged = *self.shared.last_purged.lock().unwrap_or_else(|p| p.into_inner());
        let cached_last = self
            .shared
            .cache()
            .entries
            .last_key_value()
            .map(|(_, (_, _, e))| e.log_id);
        let last = match cached_last {
            Some(id) => Some(id),
            None => self.reader().last_on_disk()?,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.send_and_wait(|done| WriteOp::Vote(vote, done)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not waited for, and written with the next durable batch (see `writer_loop`).
        *self.shared.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(committed);
        self.send(WriteOp::Committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(c) = *self.shared.committed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(c);
        }
        let txn = self.shared.db.begin_read().map_err(io_err)?;
        let meta = txn.open_table(META).map_err(io_err)?;
        match meta.get(KEY_COMMITTED).map_err(io_err)? {
            Some(v) => decode::<Option<LogId>>(v.value()),
            None => Ok(None),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let seq = {
            let mut cache = self.shared.cache();
            let seq = cache.next_seq;
            cache.next_seq += 1;
            for e in &entries {
                cache.insert(seq, e.clone());
            }
            seq
        };
        self.send(WriteOp::Append {
            seq,
            entries,
            done: callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let after = last_log_id.map(|id| id.index);
        {
            let mut cache = self.shared.cache();
            cache.drop_from(after.map_or(0, |i| i + 1));
        }
        self.send_and_wait(|done| WriteOp::TruncateAfter(after, done)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            self.shared.cache().drop_through(log_id.index);
        }
        let upto = log_id;
        self.send_and_wait(|done| WriteOp::Purge(upto, done)).await?;
        *self.shared.last_purged.lock().unwrap_or_else(|p| p.into_inner()) = Some(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, Proposal};
    use bytes::Bytes;
    use openraft::vote::leader_id_adv::LeaderId;
    use openraft::vote::RaftLeaderId;

    fn entry(index: u64, value_bytes: usize) -> Entry {
        let put = Command::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0u8; value_bytes]),
            precondition: None,
        };
        Entry {
            log_id: LogId::new(LeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal(vec![put])),
        }
    }

    #[test]
    fn the_tail_cache_keeps_its_bytes_bounded_but_never_evicts_what_is_not_durable() {
        let mut cache = TailCache::default();
        let big = 1 << 20; // 1 MiB entries: 64 of them are twice the byte bound
        for i in 0..64 {
            cache.insert(i, entry(i, big));
        }
        cache.evict_durable(9);
        assert_eq!(
            cache.entries.first_key_value().map(|(k, _)| *k),
            Some(10),
            "only durable entries go"
        );
        cache.evict_durable(63);
        assert!(cache.bytes <= CACHE_KEEP_BYTES, "{} bytes kept", cache.bytes);
        assert!(cache.bytes > CACHE_KEEP_BYTES - 2 * big, "evicts no more than it must");
        assert_eq!(cache.bytes, cache.entries.len() * (big + 1));

        cache.drop_from(60);
        cache.drop_through(40);
        assert_eq!(
            cache.entries.keys().copied().collect::<Vec<_>>(),
            (41..60).collect::<Vec<_>>()
        );
        assert_eq!(cache.bytes, 19 * (big + 1));
        cache.insert(64, entry(59, 10)); // a replaced entry gives its bytes back
        assert_eq!(cache.bytes, 18 * (big + 1) + 11);
    }
}
