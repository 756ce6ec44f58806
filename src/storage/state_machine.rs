//! The replicated state: the key space, the last applied log id, the last membership and the
//! store revision, in one redb database so that they always change together.
//!
//! Applying committed entries changes an in-memory layer ([`super::overlay`]) and answers at
//! once; a flusher thread writes the layer to redb in one transaction every few seconds
//! (or sooner when it grows), with the metadata of the state it holds, so the database always
//! holds some exact earlier state. Those commits are not fsynced: after a crash the state is
//! rebuilt from the last durable one plus the (durable) Raft log, which openraft re-applies up
//! to the saved committed id. Before a snapshot is taken (and the log behind it purged)
//! everything is flushed and made durable, so the log needed to catch up is never gone.
//!
//! Keeping redb commits off the path of every write matters twice over: a commit costs far more
//! than the changes in it, and the client's answer waits for the apply.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use super::codec::{decode, encode, io_err};
use super::overlay::{self, Change, Layer, Merge};
use super::snapshot::{SnapshotData, SnapshotReader, SnapshotWriter};

use crate::types::{Command, CommandResult, LogId, Proposal, SnapshotMeta, StoredMembership, TypeConfig};

/// key -> revision (u64 little-endian) followed by the value.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "last_membership";
/// The store's revision (u64 little-endian): the last revision a change to a key took.
const KEY_REVISION: &str = "revision";

/// The flusher writes the active layer at least this often...
const FLUSH_INTERVAL: Duration = Duration::from_millis(2500);
/// ...and as soon as it holds this many keys. Big transactions are cheap per key: changes to
/// the same B-tree pages share their copy-on-write (redb: ~6 µs a key in transactions of 64
/// random keys, ~2 µs in transactions of 32k), and random writes over a small key space
/// rewrite most of its leaves in any flush, so flushing less writes far less: measured at 64
/// connections, a flush every 2.5 s (durable every 5 s) instead of every 100 ms (durable every
/// second) took writes from 9.2k to 11.9k a second and p99 from 55 to 18 ms, since the
/// state's fsyncs no longer queue the log's behind megabytes of pages.
const FLUSH_KEYS: usize = 131072;
/// Applying waits for the flusher while the active layer holds this many bytes.
const MAX_ACTIVE_BYTES: usize = 64 << 20;
/// A flush is made durable at least this often while changes arrive. redb frees the pages that
/// a commit replaces only at a durable commit, and keeps non-durable commits' pages in memory
/// until then: without these the file and the memory grow until the next snapshot.
const DURABLE_EVERY: Duration = Duration::from_secs(5);
/// redb's page cache for the state (its default is 1 GiB a database). Reads that miss it still
/// hit the kernel's page cache.
const CACHE_BYTES: usize = 128 << 20;

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Observes applies and snapshots; the metrics layer plugs in here.
pub trait StateObserver: Send + Sync + 'static {
    fn applied(&self, _entries: usize, _elapsed: Duration) {}
    fn flushed(&self, _keys: usize, _elapsed: Duration) {}
    fn snapshot_built(&self, _bytes: u64, _elapsed: Duration) {}
    fn snapshot_installed(&self, _bytes: u64, _elapsed: Duration) {}
}

struct NoObserver;
impl StateObserver for NoObserver {}

/// One key's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub revision: u64,
    pub value: Bytes,
}

/// What describes a state besides its keys.
#[derive(Debug, Clone, Default)]
struct Meta {
    applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
}

/// The applied state above redb.
#[derive(Default)]
struct Layers {
    active: Layer,
    /// The layer the flusher is writing; still read until redb has it.
    flushing: Option<Arc<Layer>>,
    /// The metadata of the applied state (active included).
    meta: Meta,
    /// The last applied id that redb holds.
    flushed: Option<LogId>,
    /// The key table as of the last flush, kept open for reads: opening a transaction and a
    /// table for every read costs more than the read. Replaced, under the same lock, when a
    /// flush drops its layer, so that it always holds what that layer held.
    table: Option<Arc<KvTable>>,
}

type KvTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

fn open_kv(db: &Database) -> io::Result<Arc<KvTable>> {
    let txn = db.begin_read().map_err(io_err)?;
    Ok(Arc::new(txn.open_table(KV).map_err(io_err)?))
}

struct Inner {
    db: Database,
    snapshot_dir: PathBuf,
    observer: Arc<dyn StateObserver>,
    layers: RwLock<Layers>,
    /// The last applied log index plus one (0: nothing applied), published after each apply
    /// so that a read can check it without a lock.
    applied: AtomicU64,
    /// One flush at a time (the flusher's, a snapshot's, a backup's, an install's).
    flush_lock: Mutex<()>,
    /// Wakes the flusher early.
    wake: (Mutex<bool>, Condvar),
    /// Tells appliers waiting on a full active layer that a flush finished.
    flushed: tokio::sync::Notify,
}

impl Inner {
    fn layers(&self) -> RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn layers_mut(&self) -> RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, applied: Option<LogId>) {
        self.applied
            .store(applied.map_or(0, |id| id.index + 1), Ordering::Release);
    }

    fn wake_flusher(&self) {
        let (flag, cv) = &self.wake;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_one();
    }
}

/// The state machine handed to openraft; clones share one state, so the API layer keeps a
/// clone for reads that need no Raft round trip.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

fn encode_value(revision: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&revision.to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn decode_value(stored: &[u8]) -> io::Result<(u64, &[u8])> {
    if stored.len() < 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "corrupt value: shorter than its revision",
        ));
    }
    let (rev, value) = stored.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(rev);
    Ok((u64::from_le_bytes(b), value))
}

fn snapshot_file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(id) => format!("snapshot-{:020}-{}.rkvs", id.index, id.leader_id.term),
        None => "snapshot-00000000000000000000-0.rkvs".to_string(),
    }
}

/// A key's current state, looked up top-down: the active layer, the one being flushed, redb.
fn lookup(layers: &Layers, db: &Database, key: &[u8]) -> io::Result<Option<(u64, Bytes)>> {
    let change = layers
        .active
        .get(key)
        .or_else(|| layers.flushing.as_ref().and_then(|f| f.get(key)));
    match change {
        Some(Change::Put { revision, value }) => return Ok(Some((*revision, value.clone()))),
        Some(Change::Delete) => return Ok(None),
        None => {}
    }
    let table = match &layers.table {
        Some(t) => t.clone(),
        None => open_kv(db)?,
    };
    match table.get(key).map_err(io_err)? {
        Some(v) => {
            let (rev, value) = decode_value(v.value())?;
            Ok(Some((rev, Bytes::copy_from_slice(value))))
        }
        None => Ok(None),
    }
}

impl StateMachine {
    /// Opens (or creates) the state database at `db_path`, keeping snapshot files in
    /// `snapshot_dir`.
    pub fn open(db_path: &Path, snapshot_dir: &Path) -> io::Result<Self> {
        Self::open_with_observer(db_path, snapshot_dir, Arc::new(NoObserver))
    }

    pub fn open_with_observer(
        db_path: &Path,
        snapshot_dir: &Path,
        observer: Arc<dyn StateObserver>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(snapshot_dir)?;
        // Leftovers of a snapshot build or transfer that a crash interrupted.
        for entry in std::fs::read_dir(snapshot_dir)? {
            let path = entry?.path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("part" | "tmp")) {
                std::fs::remove_file(&path)?;
            }
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(db_path)
            .map_err(io_err)?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(KV).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        let meta = read_meta(&db.begin_read().map_err(io_err)?)?;
        let table = open_kv(&db)?;
        let inner = Arc::new(Inner {
            db,
            snapshot_dir: snapshot_dir.to_path_buf(),
            observer,
            applied: AtomicU64::new(0),
            layers: RwLock::new(Layers {
                flushed: meta.applied,
                table: Some(table),
                meta,
                ..Layers::default()
            }),
            flush_lock: Mutex::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            flushed: tokio::sync::Notify::new(),
        });
        inner.publish(inner.layers().meta.applied);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("sm-flusher".into())
            .spawn(move || flusher(weak))?;
        Ok(StateMachine { inner })
    }

    /// A fresh path in the snapshot directory for a snapshot being received from the leader.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        self.inner
            .snapshot_dir
            .join(format!("incoming-{:016x}.part", rand::random::<u64>()))
    }

    /// Reads one key from the local state (no Raft round trip).
    pub fn get(&self, key: &[u8]) -> io::Result<Option<(u64, Bytes)>> {
        // The read lock keeps the flusher from dropping its layer between our looking there
        // and our reading redb.
        let layers = self.inner.layers();
        lookup(&layers, &self.inner.db, key)
    }

    /// Keys in order from `start` (inclusive) that begin with `prefix`, at most `limit` of them,
    /// and the first key after them (where the next page starts), if any.
    pub fn list(&self, prefix: &[u8], start: &[u8], limit: usize) -> io::Result<(Vec<KeyValue>, Option<Bytes>)> {
        let from: &[u8] = if start > prefix { start } else { prefix };
        let layers = self.inner.layers();
        let kv = match &layers.table {
            Some(t) => t.clone(),
            None => open_kv(&self.inner.db)?,
        };
        let disk = kv.range(from..).map_err(io_err)?.map(|item| {
            let (k, v) = item.map_err(io_err)?;
            let (revision, value) = decode_value(v.value())?;
            Ok((
                Bytes::copy_from_slice(k.value()),
                Some((revision, Bytes::copy_from_slice(value))),
            ))
        });
        let mut sources: Vec<Box<dyn Iterator<Item = io::Result<overlay::Item>> + '_>> =
            vec![Box::new(layers.active.range_from(from, prefix, limit, None))];
        if let Some(f) = &layers.flushing {
            sources.push(Box::new(f.range_from(from, prefix, limit, Some(&layers.active))));
        }
        sources.push(Box::new(disk));
        overlay::page(Merge::new(sources), prefix, limit)
    }

    /// The last log id applied to this state machine.
    pub fn applied(&self) -> Option<LogId> {
        self.inner.layers().meta.applied
    }

    /// The last log index applied to this state machine, without a lock: every read that
    /// begins after this returns sees at least that state.
    pub fn applied_index(&self) -> Option<u64> {
        self.inner.applied.load(Ordering::Acquire).checked_sub(1)
    }

    /// The store's revision: the last revision a change to a key took.
    pub fn revision(&self) -> u64 {
        self.inner.layers().meta.revision
    }

    /// The number of keys, for status and tests.
    pub fn len(&self) -> io::Result<u64> {
        use redb::ReadableTableMetadata;
        self.flush(Durability::None)?;
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        let kv = txn.open_table(KV).map_err(io_err)?;
        kv.len().map_err(io_err)
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Writes a consistent point-in-time copy of the state (the snapshot format) to `out`.
    pub fn backup<W: std::io::Write>(&self, out: W) -> io::Result<(SnapshotMeta, u64)> {
        self.flush(Durability::None)?;
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        let (meta, _, size) = dump(&txn, out)?;
        Ok((meta, size))
    }

    /// Replaces the state with the snapshot file at `path` (used by `raftkv restore`).
    pub fn install_file(&self, meta: &SnapshotMeta, path: PathBuf) -> io::Result<u64> {
        let data = SnapshotData::open(path)?;
        self.install(meta, &data)
    }

    /// Writes everything applied so far to redb (made durable with `Durability::Immediate`);
    /// false if there was nothing to write.
    fn flush(&self, durability: Durability) -> io::Result<bool> {
        let _one = self.inner.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let (layer, meta) = {
            let mut layers = self.inner.layers_mut();
            if layers.active.is_empty()
                && layers.meta.applied == layers.flushed
                && matches!(durability, Durability::None)
            {
                return Ok(false);
            }
            let layer = Arc::new(std::mem::take(&mut layers.active));
            layers.flushing = Some(layer.clone());
            (layer, layers.meta.clone())
        };
        let written = write_layer(&self.inner.db, &layer, &meta, durability);
        // Opened before the layer is dropped; without it, reads open their own.
        let table = written.as_ref().ok().and_then(|_| open_kv(&self.inner.db).ok());
        {
            let mut layers = self.inner.layers_mut();
            if written.is_ok() {
                layers.flushed = meta.applied;
                layers.flushing = None;
                layers.table = table;
            } else {
                // Keep every change: put the layer back under what was applied since.
                layers.active.restore_under(&layer);
                layers.flushing = None;
            }
        }
        self.inner.flushed.notify_waiters();
        written?;
        self.inner.observer.flushed(layer.len(), started.elapsed());
        Ok(true)
    }

    fn current_snapshot_path(&self) -> io::Result<Option<PathBuf>> {
        let mut best: Option<PathBuf> = None;
        for entry in std::fs::read_dir(&self.inner.snapshot_dir)? {
            let path = entry?.path();
            let is_snapshot = path.extension().and_then(|e| e.to_str()) == Some("rkvs");
            // Names sort by zero-padded index: the greatest name is the newest snapshot.
            if is_snapshot && best.as_ref().is_none_or(|b| path.file_name() > b.file_name()) {
                best = Some(path);
            }
        }
        Ok(best)
    }

    /// Keeps `keep` as the only snapshot file.
    fn remove_other_snapshots(&self, keep: &Path) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.inner.snapshot_dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("rkvs") && path != keep {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Waits while the active layer is full, so that memory stays bounded when the disk is
    /// slower than the writes.
    async fn room(&self) {
        loop {
            let notified = self.inner.flushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.layers().active.bytes() < MAX_ACTIVE_BYTES {
                return;
            }
            self.inner.wake_flusher();
            notified.await;
        }
    }

    /// Applies committed entries to the active layer; one result list per entry.
    fn apply_batch(&self, entries: Vec<crate::types::Entry>) -> io::Result<Vec<Vec<CommandResult>>> {
        let mut results = Vec::with_capacity(entries.len());
        let mut layers = self.inner.layers_mut();
        for entry in entries {
            let log_id = entry.log_id();
            let result = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    layers.meta.membership = StoredMembership::new(Some(log_id), m);
                    Vec::new()
                }
                EntryPayload::Normal(Proposal(commands)) => {
                    let mut out = Vec::with_capacity(commands.len());
                    for cmd in commands {
                        out.push(apply_command(&mut layers, &self.inner.db, cmd)?);
                    }
                    out
                }
            };
            results.push(result);
            layers.meta.applied = Some(log_id);
        }
        let full = layers.active.len() >= FLUSH_KEYS;
        self.inner.publish(layers.meta.applied);
        drop(layers);
        if full {
            self.inner.wake_flusher();
        }
        Ok(results)
    }

    fn install(&self, meta: &SnapshotMeta, data: &SnapshotData) -> io::Result<u64> {
        let _one = self.inner.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Reads wait for the new state rather than see a mix of the old and the new.
        let mut layers = self.inner.layers_mut();
        let mut reader = SnapshotReader::open(&data.path)?;
        let revision = reader.revision();
        let mut txn = self.inner.db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::Immediate).map_err(io_err)?;
        {
            txn.delete_table(KV).map_err(io_err)?;
            let mut kv = txn.open_table(KV).map_err(io_err)?;
            // A checksum failure at the end drops the transaction: nothing is replaced.
            while let Some(rec) = reader.next_record()? {
                kv.insert(rec.key.as_slice(), encode_value(rec.revision, &rec.value).as_slice())
                    .map_err(io_err)?;
            }
            let mut m = txn.open_table(META).map_err(io_err)?;
            write_meta(
                &mut m,
                &Meta {
                    applied: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                    revision,
                },
            )?;
        }
        txn.commit().map_err(io_err)?;
        let table = open_kv(&self.inner.db).ok();
        *layers = Layers {
            meta: Meta {
                applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                revision,
            },
            flushed: meta.last_log_id,
            table,
            ..Layers::default()
        };
        self.inner.publish(meta.last_log_id);
        drop(layers);
        let size = std::fs::metadata(&data.path)?.len();
        let target = self.inner.snapshot_dir.join(snapshot_file_name(meta));
        if data.path != target {
            std::fs::rename(&data.path, &target)?;
        }
        self.remove_other_snapshots(&target)?;
        Ok(size)
    }
}

/// The flusher thread: writes the active layer every `FLUSH_INTERVAL`, or when woken; ends
/// with the state machine.
fn flusher(inner: Weak<Inner>) {
    let mut last_durable = Instant::now();
    let mut undurable = false;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        {
            let (flag, cv) = &strong.wake;
            let woken = flag.lock().unwrap_or_else(|p| p.into_inner());
            let (mut woken, _) = cv
                .wait_timeout_while(woken, FLUSH_INTERVAL, |w| !*w)
                .unwrap_or_else(|p| p.into_inner());
            *woken = false;
        }
        let sm = StateMachine { inner: strong };
        let durable = undurable && last_durable.elapsed() >= DURABLE_EVERY;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        match sm.flush(durability) {
            Ok(_) if durable => {
                last_durable = Instant::now();
                undurable = false;
            }
            Ok(wrote) => undurable |= wrote,
            Err(e) => {
                tracing::error!(error = %e, "cannot write applied changes to the state database; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Writes `layer` and the metadata of the state it completes in one transaction.
fn write_layer(db: &Database, layer: &Layer, meta: &Meta, durability: Durability) -> io::Result<()> {
    let mut txn = db.begin_write().map_err(io_err)?;
    txn.set_durability(durability).map_err(io_err)?;
    {
        let mut kv = txn.open_table(KV).map_err(io_err)?;
        for (key, change) in layer.sorted() {
            match change {
                Change::Put { revision, value } => {
                    kv.insert(key.as_ref(), encode_value(*revision, value).as_slice())
                        .map_err(io_err)?;
                }
                Change::Delete => {
                    kv.remove(key.as_ref()).map_err(io_err)?;
                }
            }
        }
        let mut m = txn.open_table(META).map_err(io_err)?;
        write_meta(&mut m, meta)?;
    }
    txn.commit().map_err(io_err)
}

fn write_meta(table: &mut redb::Table<&str, &[u8]>, meta: &Meta) -> io::Result<()> {
    table
        .insert(KEY_APPLIED, encode(&meta.applied)?.as_slice())
        .map_err(io_err)?;
    table
        .insert(KEY_MEMBERSHIP, encode(&meta.membership)?.as_slice())
        .map_err(io_err)?;
    table
        .insert(KEY_REVISION, meta.revision.to_le_bytes().as_slice())
        .map_err(io_err)?;
    Ok(())
}

/// Applies one command; a change to a key takes the next revision. Only a precondition or a
/// delete needs the key's current state: a plain put is applied blind.
fn apply_command(layers: &mut Layers, db: &Database, cmd: Command) -> io::Result<CommandResult> {
    match cmd {
        Command::Put {
            key,
            value,
            precondition,
        } => {
            if let Some(p) = precondition {
                let current = lookup(layers, db, &key)?.map(|(r, _)| r);
                if !p.holds(current) {
                    return Ok(CommandResult::PreconditionFailed { current });
                }
            }
            layers.meta.revision += 1;
            let revision = layers.meta.revision;
            layers.active.put(key, revision, value);
            Ok(CommandResult::Written { revision })
        }
        Command::Delete { key, precondition } => {
            let current = lookup(layers, db, &key)?.map(|(r, _)| r);
            if let Some(p) = precondition {
                if !p.holds(current) {
                    return Ok(CommandResult::PreconditionFailed { current });
                }
            }
            let existed = current.is_some();
            if existed {
                layers.meta.revision += 1;
                layers.active.delete(key);
            }
            Ok(CommandResult::Deleted { existed })
        }
    }
}

/// The store's revision in `meta` (0 for a new store).
fn read_revision(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> io::Result<u64> {
    match meta.get(KEY_REVISION).map_err(io_err)? {
        Some(v) => {
            let b: [u8; 8] = v
                .value()
                .try_into()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "corrupt store revision"))?;
            Ok(u64::from_le_bytes(b))
        }
        None => Ok(0),
    }
}

fn read_meta(txn: &ReadTransaction) -> io::Result<Meta> {
    let meta = txn.open_table(META).map_err(io_err)?;
    let applied = match meta.get(KEY_APPLIED).map_err(io_err)? {
        Some(v) => decode(v.value())?,
        None => None,
    };
    let membership = match meta.get(KEY_MEMBERSHIP).map_err(io_err)? {
        Some(v) => decode(v.value())?,
        None => StoredMembership::default(),
    };
    Ok(Meta {
        applied,
        membership,
        revision: read_revision(&meta)?,
    })
}

/// Writes the state visible in `txn` in the snapshot format; returns its metadata, the
/// writer, and the number of bytes written.
fn dump<W: std::io::Write>(txn: &ReadTransaction, out: W) -> io::Result<(SnapshotMeta, W, u64)> {
    let state = read_meta(txn)?;
    let meta = SnapshotMeta {
        last_log_id: state.applied,
        last_membership: state.membership,
    };
    let mut w = SnapshotWriter::new(out, &meta, state.revision)?;
    let kv = txn.open_table(KV).map_err(io_err)?;
    for item in kv.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        let (rev, value) = decode_value(v.value())?;
        w.record(k.value(), rev, value)?;
    }
    let (out, size) = w.seal()?;
    Ok((meta, out, size))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Builds a snapshot from a read transaction: a consistent view while writes go on.
pub struct SnapshotBuilder {
    sm: StateMachine,
    txn: Option<ReadTransaction>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let txn = self
            .txn
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))?;
        let sm = self.sm.clone();
        blocking(move || {
            let started = Instant::now();
            let dir = &sm.inner.snapshot_dir;
            let tmp = dir.join(format!("build-{:016x}.tmp", rand::random::<u64>()));
            let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            let (meta, file, size) = dump(&txn, file)?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            let path = dir.join(snapshot_file_name(&meta));
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            sm.remove_other_snapshots(&path)?;
            sm.inner.observer.snapshot_built(size, started.elapsed());
            tracing::info!(
                last_log_id = %meta.last_log_id.as_ref().map(|l| l.to_string()).unwrap_or_default(),
                size_bytes = size,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            Ok(Snapshot {
                meta,
                snapshot: SnapshotData::open(path)?,
            })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let layers = self.inner.layers();
        Ok((layers.meta.applied, layers.meta.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.room().await;
        let started = Instant::now();
        let n = batch.len();
        // In memory, except for the rare read of a key that only redb holds: no need to leave
        // this task.
        let results = self.apply_batch(batch)?;
        self.inner.observer.applied(n, started.elapsed());
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs on the state machine task, between applies: the view is exactly what is applied.
        // Write it all and make it durable first, so the log that the snapshot lets openraft
        // purge is never needed to rebuild this state after a crash.
        let sm = self.clone();
        let txn = blocking(move || {
            sm.flush(Durability::Immediate)?;
            sm.inner.db.begin_read().map_err(io_err)
        })
        .await;
        match txn {
            Ok(txn) => SnapshotBuilder {
                sm: self.clone(),
                txn: Some(txn),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot open a read transaction for a snapshot");
                SnapshotBuilder {
                    sm: self.clone(),
                    txn: None,
                }
            }
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let sm = self.clone();
        let meta = meta.clone();
        let started = Instant::now();
        let size = blocking(move || sm.install(&meta, &snapshot)).await?;
        self.inner.observer.snapshot_installed(size, started.elapsed());
        tracing::info!(
            size_bytes = size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let sm = self.clone();
        blocking(move || {
            let Some(path) = sm.current_snapshot_path()? else {
                return Ok(None);
            };
            let meta = SnapshotReader::open(&path)?.meta().clone();
            Ok(Some(Snapshot {
                meta,
                snapshot: SnapshotData::open(path)?,
            }))
        })
        .await
    }
}
