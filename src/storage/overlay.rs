//! Changes applied to the state machine but not yet written to redb: its write-behind layers.
//!
//! Applying an entry changes the *active* layer, in memory. A flusher freezes that layer (it
//! becomes the one *being flushed*), writes it to redb in one transaction and drops it. A key
//! therefore only ever moves down, from the active layer to the flushed one to redb, and a
//! read that looks top-down (active, flushing, redb) never misses a change that was applied
//! before it began.

use std::collections::BTreeMap;
use std::io;
use std::iter::Peekable;
use std::ops::Bound;

use bytes::Bytes;

use super::state_machine::KeyValue;

/// A key's newest state in a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put { revision: u64, value: Bytes },
    Delete,
}

/// One layer of changes, in key order.
#[derive(Debug, Default)]
pub struct Layer {
    changes: BTreeMap<Bytes, Change>,
    /// Keys and values held, roughly: what bounds the layer's memory.
    bytes: usize,
}

impl Layer {
    pub fn put(&mut self, key: Bytes, revision: u64, value: Bytes) {
        self.bytes += key.len() + value.len();
        self.changes.insert(key, Change::Put { revision, value });
    }

    pub fn delete(&mut self, key: Bytes) {
        self.bytes += key.len();
        self.changes.insert(key, Change::Delete);
    }

    pub fn get(&self, key: &[u8]) -> Option<&Change> {
        self.changes.get(key)
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Change)> {
        self.changes.iter()
    }

    /// Puts back the changes of `older` that this layer does not override (after a flush of
    /// `older` failed).
    pub fn restore_under(&mut self, older: &Layer) {
        for (key, change) in older.iter() {
            if !self.changes.contains_key(key) {
                self.bytes += key.len();
                if let Change::Put { value, .. } = change {
                    self.bytes += value.len();
                }
                self.changes.insert(key.clone(), change.clone());
            }
        }
    }

    /// This layer's keys from `from` on, as merge items.
    pub fn range_from<'a>(&'a self, from: &[u8]) -> impl Iterator<Item = io::Result<Item>> + 'a {
        self.changes
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .map(|(k, c)| {
                Ok(match c {
                    Change::Put { revision, value } => (k.clone(), Some((*revision, value.clone()))),
                    Change::Delete => (k.clone(), None),
                })
            })
    }
}

/// A key and its state in one source of a merge: `None` means deleted.
pub type Item = (Bytes, Option<(u64, Bytes)>);

type Source<'a> = Peekable<Box<dyn Iterator<Item = io::Result<Item>> + 'a>>;

/// Merges sources that are each in key order into one, in key order. Where several hold a key,
/// the first source (the newest layer) wins; deleted keys are left out.
pub struct Merge<'a> {
    sources: Vec<Source<'a>>,
}

impl<'a> Merge<'a> {
    /// `sources` from newest to oldest.
    pub fn new(sources: Vec<Box<dyn Iterator<Item = io::Result<Item>> + 'a>>) -> Self {
        Merge {
            sources: sources.into_iter().map(Iterator::peekable).collect(),
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = io::Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let mut best: Option<(usize, Bytes)> = None;
            for (i, source) in self.sources.iter_mut().enumerate() {
                match source.peek() {
                    // An error surfaces at once; the caller stops there.
                    Some(Err(_)) => {
                        if let Some(Err(e)) = source.next() {
                            return Some(Err(e));
                        }
                    }
                    Some(Ok((key, _))) if best.as_ref().is_none_or(|(_, b)| key < b) => {
                        best = Some((i, key.clone()));
                    }
                    _ => {}
                }
            }
            let (winner, key) = best?;
            let item = self.sources[winner].next();
            for (i, source) in self.sources.iter_mut().enumerate() {
                if i != winner && matches!(source.peek(), Some(Ok((k, _))) if *k == key) {
                    source.next();
                }
            }
            match item {
                Some(Ok((key, Some((revision, value))))) => return Some(Ok(KeyValue { key, revision, value })),
                Some(Ok((_, None))) => continue,
                Some(Err(e)) => return Some(Err(e)),
                None => return None,
            }
        }
    }
}

/// One page of a listing: up to `limit` live keys from `merged` that start with `prefix`, and
/// the key the next page starts at.
pub fn page(
    merged: impl Iterator<Item = io::Result<KeyValue>>,
    prefix: &[u8],
    limit: usize,
) -> io::Result<(Vec<KeyValue>, Option<Bytes>)> {
    let mut out = Vec::new();
    for kv in merged {
        let kv = kv?;
        if !kv.key.starts_with(prefix) {
            break;
        }
        if out.len() == limit {
            return Ok((out, Some(kv.key)));
        }
        out.push(kv);
    }
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn below(items: &[(&str, u64, &str)]) -> Box<dyn Iterator<Item = io::Result<Item>>> {
        let v: Vec<io::Result<Item>> = items.iter().map(|(k, r, v)| Ok((b(k), Some((*r, b(v)))))).collect();
        Box::new(v.into_iter())
    }

    fn keys(kvs: &[KeyValue]) -> Vec<String> {
        kvs.iter()
            .map(|kv| {
                format!(
                    "{}={}@{}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value),
                    kv.revision
                )
            })
            .collect()
    }

    #[test]
    fn newer_layers_win_and_deletions_hide_older_values() {
        let mut active = Layer::default();
        active.put(b("b"), 9, b("new"));
        active.delete(b("c"));
        let mut flushing = Layer::default();
        flushing.put(b("c"), 5, b("mid"));
        flushing.put(b("d"), 6, b("mid"));
        flushing.delete(b("e"));
        let disk = below(&[
            ("a", 1, "old"),
            ("b", 2, "old"),
            ("c", 3, "old"),
            ("e", 4, "old"),
            ("f", 7, "old"),
        ]);
        let merged = Merge::new(vec![
            Box::new(active.range_from(b"")),
            Box::new(flushing.range_from(b"")),
            disk,
        ]);
        let (items, next) = page(merged, b"", 100).unwrap();
        assert_eq!(keys(&items), ["a=old@1", "b=new@9", "d=mid@6", "f=old@7"]);
        assert_eq!(next, None);
    }

    #[test]
    fn a_page_stops_at_the_limit_and_names_the_next_live_key() {
        let mut active = Layer::default();
        active.delete(b("k2"));
        let disk = below(&[("k1", 1, "x"), ("k2", 2, "x"), ("k3", 3, "x"), ("k4", 4, "x")]);
        let merged = Merge::new(vec![Box::new(active.range_from(b"")), disk]);
        let (items, next) = page(merged, b"k", 1).unwrap();
        assert_eq!(keys(&items), ["k1=x@1"]);
        assert_eq!(next, Some(b("k3")), "the deleted k2 is skipped");
    }

    #[test]
    fn a_listing_ends_where_the_prefix_does() {
        let mut active = Layer::default();
        active.put(b("app/z"), 5, b("v"));
        active.put(b("apq"), 6, b("v"));
        let disk = below(&[("app/a", 1, "v"), ("apz", 2, "v")]);
        let merged = Merge::new(vec![Box::new(active.range_from(b"app/")), disk]);
        let (items, next) = page(merged, b"app/", 10).unwrap();
        assert_eq!(keys(&items), ["app/a=v@1", "app/z=v@5"]);
        assert_eq!(next, None);
    }

    #[test]
    fn errors_from_below_surface() {
        let disk: Box<dyn Iterator<Item = io::Result<Item>>> =
            Box::new(vec![Ok((b("a"), Some((1, b("v"))))), Err(io::Error::other("disk"))].into_iter());
        let merged = Merge::new(vec![disk]);
        assert!(page(merged, b"", 10).is_err());
    }
}
