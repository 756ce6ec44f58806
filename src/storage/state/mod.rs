//! The replicated state: the key space, the last applied log id, the last membership, the
//! store revision and the auth state (users, roles, permissions: [`crate::auth`]), in one redb
//! database ([`database`]) so that they always change together.
//!
//! Applying committed entries ([`apply`]) changes an in-memory layer ([`overlay`]) and answers
//! at once; a flusher thread ([`flusher`]) writes the layer to redb in one transaction every few
//! seconds (or sooner when it grows), with the metadata of the state it holds, so the database
//! always holds some exact earlier state. Those commits are not fsynced: after a crash the state
//! is rebuilt from the last durable one plus the (durable) Raft log, which openraft re-applies
//! up to the saved committed id. Before a snapshot is taken ([`snapshots`]; and the log behind
//! it purged) everything is flushed and made durable, so the log needed to catch up is never
//! gone. Reads ([`reads`]) look top-down: the active layer, the one being flushed, redb.
//!
//! Keeping redb commits off the path of every write matters twice over: a commit costs far more
//! than the changes in it, and the client's answer waits for the apply.

mod apply;
mod auth;
mod database;
mod flusher;
mod key_value;
mod overlay;
mod reads;
mod snapshots;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::OptionalSend;
use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata};

use self::database::{KvTable, KV};
use self::overlay::Layer;
use self::snapshots::{Snapshot, SnapshotBuilder};
use super::snapshot::{SnapshotData, SnapshotReader};
use crate::auth::AuthState;
use crate::codec::io_err;
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

pub(crate) use self::key_value::KeyValue;

/// Observes applies and snapshots; the metrics layer plugs in here.
pub(crate) trait StateObserver: Send + Sync + 'static {
    fn applied(&self, _entries: usize, _elapsed: Duration) {}
    fn flushed(&self, _keys: usize, _elapsed: Duration) {}
    fn snapshot_built(&self, _bytes: u64, _elapsed: Duration) {}
    fn snapshot_installed(&self, _bytes: u64, _elapsed: Duration) {}
    /// Writing the state database failed: redb refuses every write after an I/O error.
    fn write_failed(&self, _what: &str, _e: &std::io::Error) {}
}

struct NoObserver;
impl StateObserver for NoObserver {}

/// What describes a state besides its keys.
#[derive(Debug, Clone, Default)]
struct Meta {
    applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    /// Shared, so that taking the metadata for a flush copies a pointer, not the users.
    auth: Arc<AuthState>,
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
    /// The applied auth state, published after each apply that changed it, for the checks
    /// that every request makes without taking the layers' lock.
    auth: RwLock<Arc<AuthState>>,
    /// Whether it has authentication on, published with it.
    auth_enabled: AtomicBool,
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

impl StateMachine {
    /// Opens (or creates) the state database at `db_path`, keeping snapshot files in
    /// `snapshot_dir`.
    pub(crate) fn open(db_path: &Path, snapshot_dir: &Path) -> io::Result<Self> {
        Self::open_with_observer(db_path, snapshot_dir, Arc::new(NoObserver))
    }

    pub(crate) fn open_with_observer(
        db_path: &Path,
        snapshot_dir: &Path,
        observer: Arc<dyn StateObserver>,
    ) -> io::Result<Self> {
        snapshots::prepare_dir(snapshot_dir)?;
        let db = database::open(db_path)?;
        let meta = database::read_meta(&db.begin_read().map_err(io_err)?)?;
        let auth = meta.auth.clone();
        let table = database::open_kv(&db)?;
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
            auth_enabled: AtomicBool::new(auth.enabled()),
            auth: RwLock::new(auth),
        });
        inner.publish(inner.layers().meta.applied);
        flusher::start(Arc::downgrade(&inner))?;
        Ok(StateMachine { inner })
    }

    /// The last log index applied to this state machine, without a lock: every read that
    /// begins after this returns sees at least that state.
    pub(crate) fn applied_index(&self) -> Option<u64> {
        self.inner.applied.load(Ordering::Acquire).checked_sub(1)
    }

    /// The number of keys, for status and tests.
    pub(crate) fn len(&self) -> io::Result<u64> {
        self.flush(Durability::None)?;
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        let kv = txn.open_table(KV).map_err(io_err)?;
        kv.len().map_err(io_err)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
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
            Ok(txn) => SnapshotBuilder::new(self.clone(), Some(txn)),
            Err(e) => {
                tracing::error!(error = %e, "cannot open a read transaction for a snapshot");
                SnapshotBuilder::new(self.clone(), None)
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
