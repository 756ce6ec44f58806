//! The writer thread: the one owner of every write to the log. It drains what is queued, makes
//! it durable with one fsync (in the journal, or in redb for the rare writes), acknowledges
//! everything, and checkpoints the journaled entries into redb now and then. A write that
//! fails is reported to the NOSPACE alarm ([`Space`]) as well as answered.

use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redb::WriteTransaction;

use super::database::save;
use super::journal::Journal;
use super::tail::entry_size;
use super::{CommitObserver, Shared, WriteOp};
use crate::codec::{encode, io_err};
use crate::storage::Space;
use crate::types::LogId;

/// Unsaved entries (in the journal, not yet in redb) are checkpointed into redb once they hold
/// this many bytes...
const CHECKPOINT_BYTES: usize = 4 << 20;
/// ...or once the oldest of them is this old. A checkpoint of many entries costs about what
/// one entry's redb commit did; the journal is read back only after a crash.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The writer thread's state: what is durable in the journal but not yet in redb, and the
/// committed id waiting for the next checkpoint.
pub(super) struct Writer {
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
    space: Space,
}

impl Writer {
    /// Starts the writer thread of the log whose `journal` is at `generation`; returns the
    /// queue it drains.
    pub(super) fn start(
        shared: Arc<Shared>,
        journal: Journal,
        generation: u64,
        observer: Arc<dyn CommitObserver>,
        space: Space,
    ) -> io::Result<mpsc::Sender<WriteOp>> {
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared,
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
            space,
        };
        thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(tx)
    }

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
        match &result {
            Ok(()) if appended > 0 => self.observer.committed(appended, started.elapsed()),
            Ok(()) => {}
            // openraft stops on this answer; the alarm tells the node why, and to restart.
            Err(e) => self.space.write_failed("writing the raft log", e),
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
    /// nothing is lost, and the next checkpoint tries again. A failure the disk caused is one
    /// that no retry mends (redb refuses every write after an I/O error until it is reopened):
    /// it goes to the alarm, once, and the retries go on quietly until the node restarts.
    fn checkpoint_quietly(&mut self) {
        if self.unsaved.is_empty() && self.committed.is_none() {
            self.unsaved_since = None;
            return;
        }
        if let Err(e) = self.checkpoint(&[], None) {
            if crate::storage::space::is_disk_fault(&e) {
                self.space.write_failed("checkpointing the raft log into redb", &e);
            } else {
                tracing::error!(error = %e, "cannot checkpoint the raft log journal into redb; retrying");
            }
            self.unsaved_since = Some(Instant::now());
        }
    }
}
