//! Durable state of a node: the Raft log and vote ([`LogStore`]), the replicated key space
//! ([`StateMachine`]) and its snapshots, each in the node's data directory.
//!
//! ```text
//! <data-dir>/node-id          this node's id (see crate::identity)
//! <data-dir>/raft-log.redb    log entries, vote, committed id, last purged id
//! <data-dir>/raft-log.journal log entries appended since the last checkpoint into redb
//! <data-dir>/state.redb       key space, last applied id, last membership
//! <data-dir>/snapshots/       the current snapshot file
//! ```

pub mod codec;
pub mod journal;
pub mod log_store;
pub mod overlay;
pub mod restore;
pub mod snapshot;
pub mod state_machine;

use std::io;
use std::path::Path;
use std::sync::Arc;

use log_store::CommitObserver;
use state_machine::StateObserver;

pub use log_store::{LogStore, SavedVote};
pub use snapshot::SnapshotData;
pub use state_machine::{KeyValue, StateMachine};

/// Opens both stores of a data directory, creating them if needed.
pub fn open(data_dir: &Path) -> io::Result<(LogStore, StateMachine)> {
    std::fs::create_dir_all(data_dir)?;
    let log = LogStore::open(&data_dir.join("raft-log.redb"))?;
    let sm = StateMachine::open(&data_dir.join("state.redb"), &data_dir.join("snapshots"))?;
    Ok((log, sm))
}

/// Like [`open`], reporting group commits, applies and snapshots to `observer`.
pub fn open_observed<O: CommitObserver + StateObserver>(
    data_dir: &Path,
    observer: Arc<O>,
) -> io::Result<(LogStore, StateMachine)> {
    std::fs::create_dir_all(data_dir)?;
    let log = LogStore::open_with_observer(&data_dir.join("raft-log.redb"), observer.clone())?;
    let sm = StateMachine::open_with_observer(&data_dir.join("state.redb"), &data_dir.join("snapshots"), observer)?;
    Ok((log, sm))
}
