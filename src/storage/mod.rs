//! Durable state of a node: the Raft log and vote ([`LogStore`], in `log/`), the replicated key
//! space ([`StateMachine`], in `state/`) and its snapshots ([`snapshot`], the file format), each
//! in the node's data directory, and the NOSPACE alarm that watches the room they have
//! ([`Space`], in `space`). Storage knows only the crate's vocabulary (`crate::types`) and
//! codec (`crate::codec`); the layers above plug in through its observer traits.
//!
//! ```text
//! <data-dir>/node-id          this node's id (see crate::identity)
//! <data-dir>/raft-log.redb    log entries, vote, committed id, last purged id
//! <data-dir>/raft-log.journal log entries appended since the last checkpoint into redb
//! <data-dir>/state.redb       key space, last applied id, last membership, users and roles
//! <data-dir>/snapshots/       the current snapshot file
//! ```

mod log;
pub(crate) mod restore;
pub mod snapshot;
mod space;
mod state;

use std::io;
use std::path::Path;
use std::sync::Arc;

pub use self::log::LogStore;
pub(crate) use self::log::{CommitObserver, SavedVote};
pub use self::snapshot::SnapshotData;
pub use self::space::Space;
pub(crate) use self::space::{
    AlarmCause, SpaceObserver, SpaceReport, SpaceSettings, DEFAULT_QUOTA_BYTES, DEFAULT_RESERVE_BYTES,
};
pub use self::state::StateMachine;
pub(crate) use self::state::{KeyValue, StateObserver};

/// The state database's file name: the backend that the quota counts.
const STATE_FILE: &str = "state.redb";

/// Opens both stores of a data directory, creating them if needed.
pub fn open(data_dir: &Path) -> io::Result<(LogStore, StateMachine)> {
    std::fs::create_dir_all(data_dir)?;
    let log = LogStore::open(&data_dir.join("raft-log.redb"))?;
    let sm = StateMachine::open(&data_dir.join(STATE_FILE), &data_dir.join("snapshots"))?;
    Ok((log, sm))
}

/// Like [`open`], reporting group commits, applies and snapshots to `observer`, and writes
/// that the disk refuses to `space`.
pub(crate) fn open_observed<O: CommitObserver + StateObserver>(
    data_dir: &Path,
    observer: Arc<O>,
    space: &Space,
) -> io::Result<(LogStore, StateMachine)> {
    std::fs::create_dir_all(data_dir)?;
    let log = LogStore::open_with_observer(&data_dir.join("raft-log.redb"), observer.clone(), space.clone())?;
    let observer = Arc::new(ReportsFailures {
        inner: observer,
        space: space.clone(),
    });
    let sm = StateMachine::open_with_observer(&data_dir.join(STATE_FILE), &data_dir.join("snapshots"), observer)?;
    Ok((log, sm))
}

/// A state observer that also tells the space watcher when the state database cannot be
/// written, so that the node stops taking writes and restarts (as for the log).
struct ReportsFailures<O> {
    inner: Arc<O>,
    space: Space,
}

impl<O: StateObserver> StateObserver for ReportsFailures<O> {
    fn applied(&self, entries: usize, elapsed: std::time::Duration) {
        self.inner.applied(entries, elapsed);
    }
    fn flushed(&self, keys: usize, elapsed: std::time::Duration) {
        self.inner.flushed(keys, elapsed);
    }
    fn snapshot_built(&self, bytes: u64, elapsed: std::time::Duration) {
        self.inner.snapshot_built(bytes, elapsed);
    }
    fn snapshot_installed(&self, bytes: u64, elapsed: std::time::Duration) {
        self.inner.snapshot_installed(bytes, elapsed);
    }
    fn write_failed(&self, what: &str, e: &io::Error) {
        self.space.write_failed(what, e);
    }
}

/// Opens (or creates) a redb database at `path` with a page cache of `cache_bytes` (redb's
/// default is 1 GiB a database), and creates the tables that `tables` opens, so that readers
/// never meet a missing table.
fn open_database(
    path: &Path,
    cache_bytes: usize,
    tables: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::TableError>,
) -> io::Result<redb::Database> {
    use crate::codec::io_err;
    let db = redb::Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(io_err)?;
    let txn = db.begin_write().map_err(io_err)?;
    tables(&txn).map_err(io_err)?;
    txn.commit().map_err(io_err)?;
    Ok(db)
}
