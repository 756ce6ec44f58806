//! Reading the log: the tail cache first, then redb for what the cache no longer holds.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::{OptionalSend, RaftLogReader};
use redb::{ReadableDatabase, ReadableTable};

use super::database::LOG;
use super::{LogStore, Shared};
use crate::codec::{decode, io_err};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// A cheap reader of the log, used by openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogStore {
    pub(super) fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }
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

    /// The id of the last entry in redb.
    pub(super) fn last_on_disk(&self) -> io::Result<Option<LogId>> {
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
