//! The Raft log and vote, in redb, with group commit behind a write-ahead journal.
//!
//! One writer thread owns every write to the log. `append` only puts the entries in an
//! in-memory tail cache (so they are readable at once, as openraft requires) and queues them;
//! the writer drains everything queued, writes the entries to the journal
//! ([`super::journal`]) in one write, fsyncs once, and only then tells openraft they are
//! persisted. Under load openraft keeps appending while an fsync is in flight, so batches grow
//! by themselves and fsyncs stop capping throughput. Every quarter second (or 4 MiB) the
//! writer checkpoints the journaled entries into redb in one durable commit, which costs about
//! what a single entry's commit did; the tail cache keeps every entry until it is in redb.
//!
//! Vote, truncate and purge are rare: they go through the same queue (the writer keeps every
//! write in order, as openraft requires), straight into redb together with everything not yet
//! checkpointed, and their callers wait until they are durable. The committed id, saved on
//! every commit, is only noted in memory (waking the writer for it cost a thread switch per
//! commit on every node); the writer picks it up with its next batch and it rides along with
//! the next checkpoint.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use super::codec::{decode, encode, io_err};
use super::journal::Journal;
use crate::types::{Entry, LogId, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
/// The journal generation (u64 little-endian) whose records are not yet in the log table.
const KEY_GENERATION: &str = "journal_generation";

/// How many entries already in redb the tail cache keeps, so that replication to followers
/// that are slightly behind is served from memory instead of redb; and at most how many bytes
/// of them (an entry is a batch of up to thousands of writes).
const CACHE_KEEP: u64 = 4096;
const CACHE_KEEP_BYTES: usize = 32 << 20;
/// redb's page cache for the log (its default is 1 GiB a database): the log is appended in
/// order and read back mostly from the tail cache.
const CACHE_BYTES: usize = 32 << 20;

/// Observes each group commit; the metrics layer plugs in here.
pub trait CommitObserver: Send + Sync + 'static {
    fn committed(&self, entries: usize, elapsed: std::time::Duration);
    /// A checkpoint wrote journaled entries into redb.
    fn checkpointed(&self, _elapsed: std::time::Duration) {}
}

struct NoObserver;
impl CommitObserver for NoObserver {
    fn committed(&self, _: usize, _: std::time::Duration) {}
}

/// Entries appended but not yet in redb, plus a recent tail of those that are. Every entry is
/// always in the cache, in redb, or both: the writer evicts only what it has written to redb.
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
        let size = entry_size(&entry);
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

    /// Drops entries that are in redb from the front, keeping the last `CACHE_KEEP` while they
    /// hold at most `CACHE_KEEP_BYTES`.
    fn evict_saved(&mut self, saved_seq: u64) {
        let Some((&last, _)) = self.entries.last_key_value() else {
            return;
        };
        let keep_from = last.saturating_sub(CACHE_KEEP);
        while let Some(first) = self.entries.first_entry() {
            let (seq, size, _) = *first.get();
            let wanted = *first.key() >= keep_from && self.bytes <= CACHE_KEEP_BYTES;
            if wanted || seq > saved_seq {
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
        let journal_path = path.with_extension("journal");
        let (journal, generation) = recover_journal(&db, &journal_path)?;
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
        let writer = Writer {
            shared: shared.clone(),
            journal,
            generation,
            unsaved: Vec::new(),
            unsaved_bytes: 0,
            unsaved_seq: None,
            unsaved_since: None,
            committed: None,
            committed_written: None,
            next: None,
            observer,
        };
        thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))?;
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
        *self.shared.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Some(last));
        self.send_and_wait(|done| WriteOp::Vote(vote, done)).await
    }
}

/// Replays the journal's records (of the generation the database saved) into the log, and
/// moves the database to the next generation in the same commit: the journal then starts
/// empty. A database without a generation is new, and any journal beside it is not its own.
fn recover_journal(db: &Database, path: &Path) -> io::Result<(Journal, u64)> {
    let saved = {
        let txn = db.begin_read().map_err(io_err)?;
        let meta = txn.open_table(META).map_err(io_err)?;
        let saved = meta.get(KEY_GENERATION).map_err(io_err)?;
        match saved {
            Some(v) => Some(u64::from_le_bytes(v.value().try_into().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "raft log: bad journal generation")
            })?)),
            None => None,
        }
    };
    let records = match saved {
        Some(generation) => Journal::recover(path, generation)?,
        None => Vec::new(),
    };
    let mut unsaved = Vec::with_capacity(records.len());
    for bytes in records {
        let entry: Entry = decode(&bytes)?;
        unsaved.push((entry.log_id.index, bytes));
    }
    let generation = match saved {
        Some(g) => g.wrapping_add(1),
        None => {
            // Records of a journal left by some other database must never pass as this one's:
            // the file goes, and the first generation is one no earlier database used.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            first_generation()
        }
    };
    save(db.begin_write().map_err(io_err)?, &unsaved, &[], None, generation)?;
    if !unsaved.is_empty() {
        tracing::info!(entries = unsaved.len(), "raft log: replayed the journal");
    }
    Ok((Journal::open(path, generation)?, generation))
}

/// A generation for a new database: the clock's nanoseconds, mixed with the process id.
fn first_generation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// Unsaved entries (in the journal, not yet in redb) are checkpointed into redb once they hold
/// this many bytes...
const CHECKPOINT_BYTES: usize = 4 << 20;
/// ...or once the oldest of them is this old. A checkpoint of many entries costs about what
/// one entry's redb commit did; the journal is read back only after a crash.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The writer thread: drain what is queued, make it durable with one fsync (in the journal,
/// or in redb for the rare writes), acknowledge everything; checkpoint into redb now and then.
struct Writer {
    shared: Arc<Shared>,
    journal: Journal,
    generation: u64,
    /// Entries durable in the journal but not yet in redb: (index, encoded entry), in order.
    unsaved: Vec<(u64, Vec<u8>)>,
    unsaved_bytes: usize,
    /// The append sequence number of the newest unsaved entry, and when the oldest arrived.
    unsaved_seq: Option<u64>,
    unsaved_since: Option<Instant>,
    /// The newest committed id not yet written. It rides along with the next checkpoint
    /// instead of costing a commit of its own: openraft saves it on every commit, and a
    /// committed id that is a little stale after a crash only means re-applying fewer entries
    /// at start-up (openraft learns the rest from the leader).
    committed: Option<Option<LogId>>,
    /// The committed id the last checkpoint wrote.
    committed_written: Option<Option<LogId>>,
    /// The next transaction, opened while the writer waits: off the path of the next write.
    next: Option<WriteTransaction>,
    observer: Arc<dyn CommitObserver>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<WriteOp>) {
        loop {
            if self.next.is_none() {
                self.next = self.shared.db.begin_write().ok();
            }
            let first = match self.unsaved_since {
                Some(since) => match rx.recv_timeout(CHECKPOINT_EVERY.saturating_sub(since.elapsed())) {
                    Ok(op) => Some(op),
                    // Time to checkpoint (below).
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => return,
                },
            };
            // Read before draining the queue: the entries up to the committed id were queued
            // before it was noted (openraft appends before it commits), so they are all in
            // this batch or an earlier one, and no checkpoint writes a committed id ahead of
            // the entries it covers.
            self.note_committed();
            let mut batch: Vec<WriteOp> = first.into_iter().collect();
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.write(batch);
            }
            let due = self.unsaved_bytes >= CHECKPOINT_BYTES
                || self.unsaved_since.is_some_and(|t| t.elapsed() >= CHECKPOINT_EVERY);
            if due {
                self.checkpoint_quietly();
            }
        }
    }

    /// Makes `batch` durable and acknowledges every operation in it.
    fn write(&mut self, batch: Vec<WriteOp>) {
        let started = Instant::now();
        let (mut appended, mut payload_bytes, mut max_seq, mut rare) = (0, 0, None, false);
        for op in &batch {
            match op {
                WriteOp::Append { seq, entries, .. } => {
                    appended += entries.len();
                    payload_bytes += entries.iter().map(entry_size).sum::<usize>();
                    max_seq = Some(*seq);
                }
                WriteOp::Vote(..) | WriteOp::TruncateAfter(..) | WriteOp::Purge(..) => rare = true,
            }
        }
        // Only entries, votes, truncations and purges must be on disk before they are
        // acknowledged. A batch of nothing else (openraft flushes empty appends, e.g. for
        // heartbeats) costs nothing: every earlier write is already durable.
        let result = if !rare && appended == 0 {
            Ok(())
        } else if rare || payload_bytes >= CHECKPOINT_BYTES {
            // Votes, truncations and purges change what the journal's records would be
            // replayed onto, so they go to redb with everything unsaved before them; so do
            // entries big enough that a journal write saves nothing.
            self.checkpoint(&batch, max_seq)
        } else {
            self.journal(&batch, max_seq)
        };
        if result.is_ok() && appended > 0 {
            self.observer.committed(appended, started.elapsed());
        }
        for op in batch {
            let res = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            match op {
                WriteOp::Append { done, .. } => done.io_completed(res),
                WriteOp::Vote(vote, done) => {
                    if res.is_ok() {
                        *self.shared.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(vote);
                    }
                    let _ = done.send(res);
                }
                WriteOp::TruncateAfter(_, done) | WriteOp::Purge(_, done) => {
                    let _ = done.send(res);
                }
            }
        }
    }

    /// Takes the committed id that openraft last saved, if no checkpoint has written it yet.
    fn note_committed(&mut self) {
        let saved = *self.shared.committed.lock().unwrap_or_else(|p| p.into_inner());
        if saved.is_some() && saved != self.committed_written {
            self.committed = saved;
        }
    }

    /// Writes the entries appended in `batch` to the journal, one fsync for all.
    fn journal(&mut self, batch: &[WriteOp], max_seq: Option<u64>) -> io::Result<()> {
        let mut encoded = Vec::new();
        for op in batch {
            if let WriteOp::Append { entries, .. } = op {
                for entry in entries {
                    encoded.push((entry.log_id.index, encode(entry)?));
                }
            }
        }
        let payloads: Vec<&[u8]> = encoded.iter().map(|(_, bytes)| bytes.as_slice()).collect();
        self.journal.append(&payloads)?;
        self.unsaved_bytes += payloads.iter().map(|p| p.len()).sum::<usize>();
        self.unsaved.extend(encoded);
        self.unsaved_seq = max_seq.or(self.unsaved_seq);
        self.unsaved_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Writes everything unsaved, then `batch`, in one durable redb commit under the next
    /// generation, and restarts the journal; evicts what is now in redb from the tail cache.
    fn checkpoint(&mut self, batch: &[WriteOp], max_seq: Option<u64>) -> io::Result<()> {
        let started = Instant::now();
        let generation = self.generation.wrapping_add(1);
        let txn = match self.next.take() {
            Some(txn) => txn,
            None => self.shared.db.begin_write().map_err(io_err)?,
        };
        save(txn, &self.unsaved, batch, self.committed, generation)?;
        if !self.unsaved.is_empty() {
            self.observer.checkpointed(started.elapsed());
        }
        self.generation = generation;
        self.journal.restart(generation);
        if let Some(c) = self.committed.take() {
            self.committed_written = Some(c);
        }
        self.unsaved.clear();
        self.unsaved_bytes = 0;
        self.unsaved_since = None;
        if let Some(seq) = max_seq.or(self.unsaved_seq.take()) {
            self.shared.cache().evict_saved(seq);
        }
        self.unsaved_seq = None;
        Ok(())
    }

    /// A checkpoint of what is unsaved alone: on failure the entries stay in the journal, so
    /// nothing is lost, and the next checkpoint tries again.
    fn checkpoint_quietly(&mut self) {
        if self.unsaved.is_empty() && self.committed.is_none() {
            self.unsaved_since = None;
            return;
        }
        if let Err(e) = self.checkpoint(&[], None) {
            tracing::error!(error = %e, "cannot checkpoint the raft log journal into redb; retrying");
            self.unsaved_since = Some(Instant::now());
        }
    }
}

fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(p) => p.size(),
        _ => 0,
    }
}

/// Writes `unsaved` entries, then `batch`'s operations in order, the committed id and the
/// journal generation in `txn`, and commits it durably.
fn save(
    mut txn: WriteTransaction,
    unsaved: &[(u64, Vec<u8>)],
    batch: &[WriteOp],
    committed: Option<Option<LogId>>,
    generation: u64,
) -> io::Result<()> {
    txn.set_durability(Durability::Immediate).map_err(io_err)?;
    {
        let mut log = txn.open_table(LOG).map_err(io_err)?;
        let mut meta = txn.open_table(META).map_err(io_err)?;
        for (index, bytes) in unsaved {
            log.insert(*index, bytes.as_slice()).map_err(io_err)?;
        }
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
        if let Some(c) = committed {
            meta.insert(KEY_COMMITTED, encode(&c)?.as_slice()).map_err(io_err)?;
        }
        meta.insert(KEY_GENERATION, generation.to_le_bytes().as_slice())
            .map_err(io_err)?;
    }
    txn.commit().map_err(io_err)
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
        // Not waited for, and written with the next checkpoint (see `Writer`).
        *self.shared.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(committed);
        Ok(())
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
    use openraft::storage::IOFlushed;
    use openraft::type_config::TypeConfigExt;
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

    async fn append(store: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    /// Drops `store` as a crash would leave it: its writer ends without a checkpoint. Waits
    /// until the writer has let go of the database.
    fn crash(store: LogStore, path: &Path) {
        drop(store);
        for _ in 0..500 {
            match Database::open(path) {
                Ok(_) => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        panic!("the log writer never let go of the database");
    }

    fn in_redb(path: &Path) -> Vec<u64> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let log = txn.open_table(LOG).unwrap();
        log.iter().unwrap().map(|item| item.unwrap().0.value()).collect()
    }

    fn logged(term: u64, index: u64) -> Entry {
        let mut e = entry(index, 100);
        e.log_id = LogId::new(LeaderId::new(term, 1), index);
        e
    }

    fn ids(entries: &[Entry]) -> Vec<LogId> {
        entries.iter().map(|e| e.log_id).collect()
    }

    /// A log at `path` whose entries 1..=n (term 1) were acknowledged from the journal, left
    /// as a crash before their checkpoint leaves it.
    async fn crashed_after(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log.redb");
        let mut store = LogStore::open(&path).unwrap();
        for i in 1..=n {
            append(&mut store, vec![logged(1, i)]).await;
        }
        crash(store, &path);
        (dir, path)
    }

    #[tokio::test]
    async fn acknowledged_entries_survive_a_crash_before_their_checkpoint() {
        let (_dir, path) = crashed_after(5).await;
        assert!(
            in_redb(&path).is_empty(),
            "acknowledged from the journal, not yet checkpointed"
        );

        let mut store = LogStore::open(&path).unwrap();
        let back = store.try_get_log_entries(1..=5).await.unwrap();
        assert_eq!(ids(&back), (1..=5).map(|i| logged(1, i).log_id).collect::<Vec<_>>());

        // A truncation goes to redb with everything journaled before it; what follows it is
        // journaled again, and a second crash keeps exactly the log openraft was told of.
        append(&mut store, vec![logged(1, 6), logged(1, 7)]).await;
        store.truncate_after(Some(logged(1, 5).log_id)).await.unwrap();
        append(&mut store, vec![logged(2, 6)]).await;
        crash(store, &path);
        assert_eq!(
            in_redb(&path),
            (1..=5).collect::<Vec<_>>(),
            "checkpointed with the truncation"
        );
        let mut store = LogStore::open(&path).unwrap();
        let back = store.try_get_log_entries(1..).await.unwrap();
        let mut want: Vec<LogId> = (1..=5).map(|i| logged(1, i).log_id).collect();
        want.push(logged(2, 6).log_id);
        assert_eq!(ids(&back), want);
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(logged(2, 6).log_id)
        );
    }

    #[tokio::test]
    async fn a_new_database_ignores_a_journal_it_did_not_write() {
        let (_dir, path) = crashed_after(3).await;
        std::fs::remove_file(&path).unwrap(); // the database goes, its journal stays
        let mut store = LogStore::open(&path).unwrap();
        assert!(store.try_get_log_entries(1..).await.unwrap().is_empty());
        append(&mut store, vec![logged(5, 1)]).await;
        crash(store, &path);
        let mut store = LogStore::open(&path).unwrap();
        let back = store.try_get_log_entries(1..).await.unwrap();
        assert_eq!(ids(&back), vec![logged(5, 1).log_id]);
    }

    #[test]
    fn the_tail_cache_keeps_its_bytes_bounded_but_never_evicts_what_is_not_in_redb() {
        let mut cache = TailCache::default();
        let big = 1 << 20; // 1 MiB entries: 64 of them are twice the byte bound
        for i in 0..64 {
            cache.insert(i, entry(i, big));
        }
        cache.evict_saved(9);
        assert_eq!(
            cache.entries.first_key_value().map(|(k, _)| *k),
            Some(10),
            "only entries in redb go"
        );
        cache.evict_saved(63);
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
