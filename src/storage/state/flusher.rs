//! The flusher: a thread that writes the active layer to redb in one transaction every few
//! seconds (or sooner when it grows), with the metadata of the state it completes, and makes
//! such a write durable every few seconds while changes arrive. Snapshots, backups and `len`
//! flush through the same [`StateMachine::flush`], one at a time.

use std::io;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redb::{Database, Durability};

use super::database::{encode_value, open_kv, write_meta, KV, META};
use super::overlay::{Change, Layer};
use super::{Inner, Meta, StateMachine};
use crate::codec::io_err;

/// The flusher writes the active layer at least this often...
const FLUSH_INTERVAL: Duration = Duration::from_millis(2500);
/// ...and as soon as it holds this many keys. Big transactions are cheap per key: changes to
/// the same B-tree pages share their copy-on-write, and random writes over a small key space
/// rewrite most of its leaves in any flush, so flushing less writes far less, and the state's
/// fsyncs stop queueing the log's behind megabytes of pages (the first benchmark with these
/// intervals: `bench/results/2026-12-02T110412Z.md`).
pub(super) const FLUSH_KEYS: usize = 131072;
/// A flush is made durable at least this often while changes arrive. redb frees the pages that
/// a commit replaces only at a durable commit, and keeps non-durable commits' pages in memory
/// until then: without these the file and the memory grow until the next snapshot.
const DURABLE_EVERY: Duration = Duration::from_secs(5);

/// How often a flush that the disk refused is retried, and reported again in the log. After
/// an I/O error redb refuses every write until the database is reopened, and reopening it here
/// would lose the flushes since the last durable one (they were never synced, and the layers
/// that held them are gone), so only a restart mends it: it rebuilds the state from the last
/// durable one and the Raft log. Retrying every 100 ms would only fill the log meanwhile.
const DISK_FAULT_RETRY: Duration = Duration::from_secs(1);
const DISK_FAULT_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Starts the flusher thread of the state machine `inner`.
pub(super) fn start(inner: Weak<Inner>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("sm-flusher".into())
        .spawn(move || flusher(inner))?;
    Ok(())
}

/// The flusher thread: writes the active layer every `FLUSH_INTERVAL`, or when woken; ends
/// with the state machine.
fn flusher(inner: Weak<Inner>) {
    let mut last_durable = Instant::now();
    let mut undurable = false;
    let mut disk_fault_reported: Option<Instant> = None;
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
            Err(e) if crate::storage::space::is_disk_fault(&e) => {
                if disk_fault_reported.is_none_or(|t| t.elapsed() >= DISK_FAULT_REPORT_EVERY) {
                    tracing::error!(
                        error = %e,
                        "the disk refused a write to the state database: it cannot be written again in \
                         this process (the applied changes stay in memory); restart the node once space \
                         is freed, and it rebuilds its state from disk and the Raft log"
                    );
                    disk_fault_reported = Some(Instant::now());
                }
                std::thread::sleep(DISK_FAULT_RETRY);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write applied changes to the state database; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl StateMachine {
    /// Writes everything applied so far to redb (made durable with `Durability::Immediate`);
    /// false if there was nothing to write.
    pub(super) fn flush(&self, durability: Durability) -> io::Result<bool> {
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
        if let Err(e) = &written {
            self.inner.observer.write_failed("writing the state database", e);
        }
        written?;
        self.inner.observer.flushed(layer.len(), started.elapsed());
        Ok(true)
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
