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

    /// Keys in order from `start` (inclusive) that begin with `prefix`: at most `limit` of them
    /// and, past the first, at most `max_bytes` of keys and values; and the first key after
    /// them (where the next page starts), if any. With `keys_only`, values are left empty and
    /// never copied out of redb.
    ///
    /// Items are pulled one at a time from the merge of the layers and redb, so a page holds
    /// no more than its bound: the key that would cross it is read (as the merge reads one
    /// item ahead of the page) and ends the page as its `next_start`.
    pub(crate) fn list(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
        max_bytes: usize,
        keys_only: bool,
    ) -> io::Result<(Vec<KeyValue>, Option<Bytes>)> {
        let from: &[u8] = if start > prefix { start } else { prefix };
        let layers = self.inner.layers();
        let kv = match &layers.table {
            Some(t) => t.clone(),
            None => open_kv(&self.inner.db)?,
        };
        let disk = kv.range(from..).map_err(io_err)?.map(|item| {
            let (k, v) = item.map_err(io_err)?;
            let (revision, value) = decode_value(v.value())?;
            let value = if keys_only {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(value)
            };
            Ok((Bytes::copy_from_slice(k.value()), Some((revision, value))))
        });
        let mut sources: Vec<Box<dyn Iterator<Item = io::Result<overlay::Item>> + '_>> =
            vec![Box::new(layers.active.range_from(from, prefix, limit, None))];
        if let Some(f) = &layers.flushing {
            sources.push(Box::new(f.range_from(from, prefix, limit, Some(&layers.active))));
        }
        sources.push(Box::new(disk));
        let mut budget = ByteBudget {
            merged: Merge::new(sources),
            prefix,
            left: max_bytes,
            keys_only,
            first: true,
            stopped_at: None,
        };
        let (mut items, next) = overlay::page(&mut budget, prefix, limit)?;
        if keys_only {
            // A layer's values are shared, not copied, but a keys-only page carries none.
            for kv in &mut items {
                kv.value = Bytes::new();
            }
        }
        Ok((items, next.or(budget.stopped_at)))
    }
}

/// The merge of a listing, ended early at the first key of the prefix whose key and value
/// would take the page past its byte bound (never at the page's first key). That key is kept
/// as where the next page starts.
struct ByteBudget<'a, I> {
    merged: I,
    prefix: &'a [u8],
    left: usize,
    keys_only: bool,
    first: bool,
    stopped_at: Option<Bytes>,
}

impl<I: Iterator<Item = io::Result<KeyValue>>> Iterator for ByteBudget<'_, I> {
    type Item = io::Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.stopped_at.is_some() {
            return None;
        }
        let kv = match self.merged.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e)),
        };
        // Past the prefix the page ends anyway; `page` sees that key and stops.
        if !kv.key.starts_with(self.prefix) {
            return Some(Ok(kv));
        }
        let size = kv.key.len() + if self.keys_only { 0 } else { kv.value.len() };
        if !self.first && size > self.left {
            self.stopped_at = Some(kv.key);
            return None;
        }
        self.first = false;
        self.left = self.left.saturating_sub(size);
        Some(Ok(kv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: &[(&str, usize)], prefix: &str, limit: usize, max_bytes: usize) -> (Vec<String>, Option<String>) {
        let merged = items.iter().map(|(k, size)| {
            Ok(KeyValue {
                key: Bytes::copy_from_slice(k.as_bytes()),
                revision: 1,
                value: Bytes::from(vec![b'v'; *size]),
            })
        });
        let mut budget = ByteBudget {
            merged,
            prefix: prefix.as_bytes(),
            left: max_bytes,
            keys_only: false,
            first: true,
            stopped_at: None,
        };
        let (items, next) = overlay::page(&mut budget, prefix.as_bytes(), limit).unwrap();
        let keys = items
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        let next = next
            .or(budget.stopped_at)
            .map(|k| String::from_utf8_lossy(&k).into_owned());
        (keys, next)
    }

    #[test]
    fn a_page_ends_before_the_key_that_would_cross_its_byte_bound() {
        let items = [("a1", 48), ("a2", 48), ("a3", 48), ("b1", 1)];
        // 50 bytes a key: two fit 120, the third would not.
        assert_eq!(
            page(&items, "a", 100, 120),
            (vec!["a1".into(), "a2".into()], Some("a3".into()))
        );
        assert_eq!(
            page(&items, "a", 100, 150),
            (vec!["a1".into(), "a2".into(), "a3".into()], None)
        );
        // The count limit still applies, and names the same next key.
        assert_eq!(page(&items, "a", 1, 1000), (vec!["a1".into()], Some("a2".into())));
        assert_eq!(
            page(&items, "a", 2, 120),
            (vec!["a1".into(), "a2".into()], Some("a3".into()))
        );
    }

    #[test]
    fn a_page_holds_its_first_key_whatever_its_size() {
        let items = [("a1", 500), ("a2", 1)];
        assert_eq!(page(&items, "a", 100, 10), (vec!["a1".into()], Some("a2".into())));
        assert_eq!(page(&items[1..], "a", 100, 10), (vec!["a2".into()], None));
    }
}
