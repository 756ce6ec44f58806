//! The replicated state: the key space, the last applied log id and the last membership, all
//! in one redb database so that they always change together.
//!
//! Applying a batch of committed entries is one write transaction that is committed without
//! fsync: after a crash the state machine is rebuilt from its last durable commit plus the
//! (durable) Raft log, which openraft re-applies up to the saved committed id. Before a
//! snapshot is taken (and the log behind it purged) the state machine is made durable, so the
//! log it would need to catch up is never gone.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use super::codec::{decode, encode, io_err};
use super::snapshot::{SnapshotData, SnapshotReader, SnapshotWriter};

use crate::types::{Command, CommandResult, LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// key -> revision (u64 little-endian) followed by the value.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "last_membership";

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Observes applies and snapshots; the metrics layer plugs in here.
pub trait StateObserver: Send + Sync + 'static {
    fn applied(&self, _entries: usize, _elapsed: Duration) {}
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

struct Inner {
    db: Database,
    snapshot_dir: PathBuf,
    observer: Arc<dyn StateObserver>,
}

/// The state machine handed to openraft; clones share one database, so the API layer keeps a
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
        let db = Database::create(db_path).map_err(io_err)?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(KV).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(StateMachine {
            inner: Arc::new(Inner {
                db,
                snapshot_dir: snapshot_dir.to_path_buf(),
                observer,
            }),
        })
    }

    /// A fresh path in the snapshot directory for a snapshot being received from the leader.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        self.inner
            .snapshot_dir
            .join(format!("incoming-{:016x}.part", rand::random::<u64>()))
    }

    /// Reads one key from the local state (no Raft round trip).
    pub fn get(&self, key: &[u8]) -> io::Result<Option<(u64, Bytes)>> {
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        let kv = txn.open_table(KV).map_err(io_err)?;
        match kv.get(key).map_err(io_err)? {
            Some(v) => {
                let (rev, value) = decode_value(v.value())?;
                Ok(Some((rev, Bytes::copy_from_slice(value))))
            }
            None => Ok(None),
        }
    }

    /// Keys in order from `start` (inclusive) that begin with `prefix`, at most `limit` of them,
    /// and the first key after them (where the next page starts), if any.
    pub fn list(&self, prefix: &[u8], start: &[u8], limit: usize) -> io::Result<(Vec<KeyValue>, Option<Bytes>)> {
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        let kv = txn.open_table(KV).map_err(io_err)?;
        let from: &[u8] = if start > prefix { start } else { prefix };
        let mut out = Vec::new();
        for item in kv.range(from..).map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if out.len() == limit {
                return Ok((out, Some(Bytes::copy_from_slice(key))));
            }
            let (revision, value) = decode_value(v.value())?;
            out.push(KeyValue {
                key: Bytes::copy_from_slice(key),
                revision,
                value: Bytes::copy_from_slice(value),
            });
        }
        Ok((out, None))
    }

    /// The last log id applied to this state machine.
    pub fn applied(&self) -> io::Result<Option<LogId>> {
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        Ok(read_applied(&txn)?.0)
    }

    /// The number of keys, for status and tests.
    pub fn len(&self) -> io::Result<u64> {
        use redb::ReadableTableMetadata;
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        let kv = txn.open_table(KV).map_err(io_err)?;
        kv.len().map_err(io_err)
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Writes a consistent point-in-time copy of the state (the snapshot format) to `out`.
    pub fn backup<W: std::io::Write>(&self, out: W) -> io::Result<(SnapshotMeta, u64)> {
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        let (meta, _, size) = dump(&txn, out)?;
        Ok((meta, size))
    }

    /// Replaces the state with the snapshot file at `path` (used by `raftkv restore`).
    pub fn install_file(&self, meta: &SnapshotMeta, path: PathBuf) -> io::Result<u64> {
        let data = SnapshotData::open(path)?;
        self.install(meta, &data)
    }

    /// Makes every commit so far durable.
    fn sync(&self) -> io::Result<()> {
        let mut txn = self.inner.db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::Immediate).map_err(io_err)?;
        txn.commit().map_err(io_err)
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

    fn apply_batch(&self, entries: Vec<crate::types::Entry>) -> io::Result<Vec<CommandResult>> {
        let mut results = Vec::with_capacity(entries.len());
        let mut txn = self.inner.db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::None).map_err(io_err)?;
        {
            let mut kv = txn.open_table(KV).map_err(io_err)?;
            let mut meta = txn.open_table(META).map_err(io_err)?;
            let mut last_applied = None;
            for entry in entries {
                let log_id = entry.log_id();
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Membership(m) => {
                        let stored = StoredMembership::new(Some(log_id), m);
                        meta.insert(KEY_MEMBERSHIP, encode(&stored)?.as_slice())
                            .map_err(io_err)?;
                        CommandResult::None
                    }
                    EntryPayload::Normal(cmd) => apply_command(&mut kv, log_id.index, cmd)?,
                };
                results.push(result);
                last_applied = Some(log_id);
            }
            meta.insert(KEY_APPLIED, encode(&last_applied)?.as_slice())
                .map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        Ok(results)
    }

    fn install(&self, meta: &SnapshotMeta, data: &SnapshotData) -> io::Result<u64> {
        let mut reader = SnapshotReader::open(&data.path)?;
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
            m.insert(KEY_APPLIED, encode(&meta.last_log_id)?.as_slice())
                .map_err(io_err)?;
            m.insert(KEY_MEMBERSHIP, encode(&meta.last_membership)?.as_slice())
                .map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        let size = std::fs::metadata(&data.path)?.len();
        let target = self.inner.snapshot_dir.join(snapshot_file_name(meta));
        if data.path != target {
            std::fs::rename(&data.path, &target)?;
        }
        self.remove_other_snapshots(&target)?;
        Ok(size)
    }
}

fn apply_command(kv: &mut redb::Table<&[u8], &[u8]>, index: u64, cmd: Command) -> io::Result<CommandResult> {
    let (key, precondition) = match &cmd {
        Command::Put { key, precondition, .. } | Command::Delete { key, precondition } => (key, *precondition),
    };
    let current = match kv.get(key.as_ref()).map_err(io_err)? {
        Some(v) => Some(decode_value(v.value())?.0),
        None => None,
    };
    if let Some(p) = precondition {
        if !p.holds(current) {
            return Ok(CommandResult::PreconditionFailed { current });
        }
    }
    Ok(match cmd {
        Command::Put { key, value, .. } => {
            kv.insert(key.as_ref(), encode_value(index, &value).as_slice())
                .map_err(io_err)?;
            CommandResult::Written { revision: index }
        }
        Command::Delete { key, .. } => {
            let existed = kv.remove(key.as_ref()).map_err(io_err)?.is_some();
            CommandResult::Deleted { existed }
        }
    })
}

/// Writes the state visible in `txn` in the snapshot format; returns its metadata, the
/// writer, and the number of bytes written.
fn dump<W: std::io::Write>(txn: &ReadTransaction, out: W) -> io::Result<(SnapshotMeta, W, u64)> {
    let (applied, membership) = read_applied(txn)?;
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
    };
    let mut w = SnapshotWriter::new(out, &meta)?;
    let kv = txn.open_table(KV).map_err(io_err)?;
    for item in kv.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        let (rev, value) = decode_value(v.value())?;
        w.record(k.value(), rev, value)?;
    }
    let (out, size) = w.seal()?;
    Ok((meta, out, size))
}

fn read_applied(txn: &ReadTransaction) -> io::Result<(Option<LogId>, StoredMembership)> {
    let meta = txn.open_table(META).map_err(io_err)?;
    let applied = match meta.get(KEY_APPLIED).map_err(io_err)? {
        Some(v) => decode(v.value())?,
        None => None,
    };
    let membership = match meta.get(KEY_MEMBERSHIP).map_err(io_err)? {
        Some(v) => decode(v.value())?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
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
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        read_applied(&txn)
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
        let sm = self.clone();
        let started = Instant::now();
        let n = batch.len();
        let results = blocking(move || sm.apply_batch(batch)).await?;
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
        // Make it durable first, so the log that the snapshot lets openraft purge is never
        // needed to rebuild this state after a crash.
        let sm = self.clone();
        let txn = blocking(move || {
            sm.sync()?;
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
