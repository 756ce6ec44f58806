//! Reads of the local state (no Raft round trip): one key, or a page of a listing, looked up
//! top-down through the layers and redb (see [`super::overlay`] for why that never misses a
//! change applied before the read began).

use std::io;

use bytes::Bytes;
use redb::Database;

use super::database::{decode_value, open_kv};
use super::overlay::{self, Change, Merge};
use super::{KeyValue, Layers, StateMachine};
use crate::codec::io_err;

/// A key's current state, looked up top-down: the active layer, the one being flushed, redb.
pub(super) fn lookup(layers: &Layers, db: &Database, key: &[u8]) -> io::Result<Option<(u64, Bytes)>> {
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
    /// Reads one key from the local state (no Raft round trip).
    pub(crate) fn get(&self, key: &[u8]) -> io::Result<Option<(u64, Bytes)>> {
        // The read lock keeps the flusher from dropping its layer between our looking there
        // and our reading redb.
        let layers = self.inner.layers();
        lookup(&layers, &self.inner.db, key)
    }

    /// Keys in order from `start` (inclusive) that begin with `prefix`, at most `limit` of them,
    /// and the first key after them (where the next page starts), if any.
    pub(crate) fn list(&self, prefix: &[u8], start: &[u8], limit: usize) -> io::Result<(Vec<KeyValue>, Option<Bytes>)> {
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
}
