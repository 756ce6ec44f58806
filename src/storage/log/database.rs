//! The log's redb database: its tables, the one durable commit that every write to them goes
//! through ([`save`]), and the replay of the journal into it when the store opens.

use std::io;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, TableDefinition, WriteTransaction};

use super::journal::Journal;
use super::WriteOp;
use crate::codec::{decode, encode, io_err};
use crate::types::{Entry, LogId, Vote};

pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
/// The journal generation (u64 little-endian) whose records are not yet in the log table.
const KEY_GENERATION: &str = "journal_generation";

/// redb's page cache for the log: the log is appended in
/// order and read back mostly from the tail cache.
const CACHE_BYTES: usize = 32 << 20;

/// Opens (or creates) the log database at `path`, with both its tables.
pub(super) fn open(path: &Path) -> io::Result<Database> {
    crate::storage::open_database(path, CACHE_BYTES, |txn| {
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        Ok(())
    })
}

/// The saved vote and the last purged id.
pub(super) fn read_vote_and_purged(db: &Database) -> io::Result<(Option<Vote>, Option<LogId>)> {
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
    Ok((vote, purged))
}

/// The committed id the last checkpoint wrote.
pub(super) fn read_committed(db: &Database) -> io::Result<Option<LogId>> {
    let txn = db.begin_read().map_err(io_err)?;
    let meta = txn.open_table(META).map_err(io_err)?;
    match meta.get(KEY_COMMITTED).map_err(io_err)? {
        Some(v) => decode::<Option<LogId>>(v.value()),
        None => Ok(None),
    }
}

/// Replays the journal's records (of the generation the database saved) into the log, and
/// moves the database to the next generation in the same commit: the journal then starts
/// empty. A database without a generation is new, and any journal beside it is not its own.
pub(super) fn recover_journal(db: &Database, path: &Path) -> io::Result<(Journal, u64)> {
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

/// Writes `unsaved` entries, then `batch`'s operations in order, the committed id and the
/// journal generation in `txn`, and commits it durably.
pub(super) fn save(
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
