//! The Raft log and vote, in redb, with group commit behind a write-ahead journal.
//!
//! One writer thread ([`writer`]) owns every write to the log. `append` only puts the entries
//! in an in-memory tail cache ([`tail`]; so they are readable at once, as openraft requires)
//! and queues them; the writer drains everything queued, writes the entries to the journal
//! ([`journal`]) in one write, fsyncs once, and only then tells openraft they are persisted.
//! Under load openraft keeps appending while an fsync is in flight, so batches grow by
//! themselves and fsyncs stop capping throughput. Every quarter second (or 4 MiB) the writer
//! checkpoints the journaled entries into redb ([`database`]) in one durable commit, which
//! costs about what a single entry's commit did; the tail cache keeps every entry until it is
//! in redb. Readers ([`reader`]) look in the tail cache first, then in redb.
//!
//! Vote, truncate and purge are rare: they go through the same queue (the writer keeps every
//! write in order, as openraft requires), straight into redb together with everything not yet
//! checkpointed, and their callers wait until they are durable. The committed id, saved on
//! every commit, is only noted in memory (waking the writer for it would cost a thread switch
//! per commit on every node); the writer picks it up with its next batch and it rides along
//! with the next checkpoint.
//!
//! A write that fails is answered with its error (openraft then stops) and reported to the
//! NOSPACE alarm ([`Space`]), whose failure the node exits on: after an I/O error redb refuses
//! every later write to the database until it is reopened, and a restart reopens it from its
//! last durable commit, with the journal replayed on top.

mod database;
mod journal;
mod reader;
mod tail;
mod writer;

use std::io;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::OptionalSend;
use redb::Database;
use tokio::sync::oneshot;

use self::reader::LogReader;
use self::tail::TailCache;
use self::writer::Writer;
use super::Space;
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// Observes each group commit; the metrics layer plugs in here.
pub(crate) trait CommitObserver: Send + Sync + 'static {
    fn committed(&self, entries: usize, elapsed: Duration);
    /// A checkpoint wrote journaled entries into redb.
    fn checkpointed(&self, _elapsed: Duration) {}
}

struct NoObserver;
impl CommitObserver for NoObserver {
    fn committed(&self, _: usize, _: Duration) {}
}

/// What the store handle, its readers and its writer thread share.
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

/// A write queued for the writer thread, with whom to tell once it is durable.
enum WriteOp {
    Append {
        /// The append sequence number its entries carry in the tail cache.
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

impl LogStore {
    /// Opens (or creates) the log database at `path` and starts its writer thread.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Self::open_with_observer(path, Arc::new(NoObserver), Space::unwatched())
    }

    /// Like [`LogStore::open`], reporting group commits to `observer` and failed writes to
    /// `space`.
    pub(crate) fn open_with_observer(path: &Path, observer: Arc<dyn CommitObserver>, space: Space) -> io::Result<Self> {
        let db = database::open(path)?;
        let journal_path = path.with_extension("journal");
        let (journal, generation) = database::recover_journal(&db, &journal_path)?;
        let (vote, last_purged) = database::read_vote_and_purged(&db)?;
        let shared = Arc::new(Shared {
            db,
            cache: Mutex::new(TailCache::default()),
            vote: Mutex::new(vote),
            last_purged: Mutex::new(last_purged),
            committed: Mutex::new(None),
        });
        let tx = Writer::start(shared.clone(), journal, generation, observer, space)?;
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

    /// A handle on the saved vote that outlives handing this store to openraft.
    pub(crate) fn saved_vote(&self) -> SavedVote {
        SavedVote {
            shared: self.shared.clone(),
        }
    }

    /// Seeds an empty log for a node restored from a backup: the log starts after `last`
    /// (as if everything up to it had been purged into the snapshot) with `vote` saved.
    pub(crate) async fn seed_restored(&self, last: LogId, vote: Vote) -> io::Result<()> {
        self.send_and_wait(|done| WriteOp::Purge(last, done)).await?;
        *self.shared.last_purged.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
        *self.shared.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Some(last));
        self.send_and_wait(|done| WriteOp::Vote(vote, done)).await
    }
}

/// The vote this node has durably saved. Every vote it grants is saved (and this updated) before
/// the grant is sent, so a node whose saved vote is V has granted no vote above V.
#[derive(Clone)]
pub(crate) struct SavedVote {
    shared: Arc<Shared>,
}

impl SavedVote {
    pub(crate) fn get(&self) -> Option<Vote> {
        *self.shared.vote.lock().unwrap_or_else(|p| p.into_inner())
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
        database::read_committed(&self.shared.db)
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
    use super::tail::tests::entry;
    use super::*;
    use openraft::type_config::TypeConfigExt;
    use openraft::vote::leader_id_adv::LeaderId;
    use openraft::vote::RaftLeaderId;
    use openraft::RaftLogReader;
    use redb::{ReadableDatabase, ReadableTable};

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
        let log = txn.open_table(database::LOG).unwrap();
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
}
