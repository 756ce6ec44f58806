//! Changes applied to the state machine but not yet written to redb: its write-behind layers.
//!
//! Applying an entry changes the *active* layer, in memory. A flusher freezes that layer (it
//! becomes the one *being flushed*), writes it to redb in one transaction and drops it. A key
//! therefore only ever moves down, from the active layer to the flushed one to redb, and a
//! read that looks top-down (active, flushing, redb) never misses a change that was applied
//! before it began.
//!
//! A layer is a hash map, not a tree: applying a write is one hash and (mostly) one key
//! comparison, where a B-tree of up to a flush's 131,072 keys compared it dozens of times
//! across cache-cold nodes (the first benchmark with the map:
//! `bench/results/2026-12-02T195404Z.md`). Key order is needed only by listings and by the
//! flush into redb. A layer keeps an ordered index of its keys from its first listing on, so
//! that listings cost what they did in a tree while writes without listings pay nothing for
//! order; the flush uses that index when there is one and sorts the layer once when there is
//! not.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::Mutex;

use bytes::Bytes;

use super::key_value::KeyValue;

/// A key's newest state in a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Put { revision: u64, value: Bytes },
    Delete,
}

/// One layer of changes.
#[derive(Debug, Default)]
pub(super) struct Layer {
    changes: HashMap<Bytes, Change>,
    /// Keys and values held, roughly: what bounds the layer's memory.
    bytes: usize,
    /// The keys in order, once a listing has asked for them (`None` before).
    order: Mutex<Option<Order>>,
}

/// A layer's keys in order: those sorted, and those added since the last listing.
#[derive(Debug, Default)]
struct Order {
    sorted: BTreeSet<Bytes>,
    added: Vec<Bytes>,
}

impl Order {
    /// Sorts in the keys added since the last look.
    fn catch_up(&mut self) {
        self.sorted.extend(self.added.drain(..));
    }
}

impl Layer {
    pub(super) fn put(&mut self, key: Bytes, revision: u64, value: Bytes) {
        self.bytes += key.len() + value.len();
        self.change(key, Change::Put { revision, value });
    }

    pub(super) fn delete(&mut self, key: Bytes) {
        self.bytes += key.len();
        self.change(key, Change::Delete);
    }

    fn change(&mut self, key: Bytes, change: Change) {
        match self.order.get_mut().unwrap_or_else(|p| p.into_inner()) {
            None => {
                self.changes.insert(key, change);
            }
            Some(order) => {
                if self.changes.insert(key.clone(), change).is_none() {
                    order.added.push(key);
                }
            }
        }
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<&Change> {
        self.changes.get(key)
    }

    pub(super) fn len(&self) -> usize {
        self.changes.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The changes, in key order.
    pub(super) fn sorted(&self) -> Vec<(&Bytes, &Change)> {
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let Some(order) = order.as_mut() else {
            let mut all: Vec<_> = self.changes.iter().collect();
            all.sort_unstable_by(|a, b| a.0.cmp(b.0));
            return all;
        };
        order.catch_up();
        order
            .sorted
            .iter()
            .filter_map(|key| self.changes.get_key_value(key))
            .collect()
    }

    /// Puts back the changes of `older` that this layer does not override (after a flush of
    /// `older` failed).
    pub(super) fn restore_under(&mut self, older: &Layer) {
        for (key, change) in &older.changes {
            if !self.changes.contains_key(key) {
                self.bytes += key.len();
                if let Change::Put { value, .. } = change {
                    self.bytes += value.len();
                }
                self.change(key.clone(), change.clone());
            }
        }
    }

    /// This layer's keys that start with `prefix`, from `from` on, in order, as merge items:
    /// as many as a page of `limit` keys can need. Every put here that no layer `above` deletes
    /// is a key of the listing, so none after the `limit + 1`th of them is ever wanted.
    pub(super) fn range_from(
        &self,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
        above: Option<&Layer>,
    ) -> std::vec::IntoIter<io::Result<Item>> {
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let order = order.get_or_insert_with(|| Order {
            sorted: self.changes.keys().cloned().collect(),
            added: Vec::new(),
        });
        order.catch_up();
        let mut out = Vec::new();
        let mut live = 0;
        for key in order.sorted.range::<[u8], _>((Bound::Included(from), Bound::Unbounded)) {
            if !key.starts_with(prefix) || live > limit {
                break;
            }
            let Some(change) = self.changes.get(key) else {
                continue;
            };
            out.push(Ok(match change {
                Change::Put { revision, value } => {
                    if !above.is_some_and(|a| matches!(a.get(key), Some(Change::Delete))) {
                        live += 1;
                    }
                    (key.clone(), Some((*revision, value.clone())))
                }
                Change::Delete => (key.clone(), None),
            }));
        }
        out.into_iter()
    }
}

/// A key and its state in one source of a merge: `None` means deleted.
pub(super) type Item = (Bytes, Option<(u64, Bytes)>);

type Source<'a> = Peekable<Box<dyn Iterator<Item = io::Result<Item>> + 'a>>;

/// Merges sources that are each in key order into one, in key order. Where several hold a key,
/// the first source (the newest layer) wins; deleted keys are left out.
pub(super) struct Merge<'a> {
    sources: Vec<Source<'a>>,
}

impl<'a> Merge<'a> {
    /// `sources` from newest to oldest.
    pub(super) fn new(sources: Vec<Box<dyn Iterator<Item = io::Result<Item>> + 'a>>) -> Self {
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
pub(super) fn page(
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
            Box::new(active.range_from(b"", b"", 100, None)),
            Box::new(flushing.range_from(b"", b"", 100, Some(&active))),
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
        let merged = Merge::new(vec![Box::new(active.range_from(b"", b"", 100, None)), disk]);
        let (items, next) = page(merged, b"k", 1).unwrap();
        assert_eq!(keys(&items), ["k1=x@1"]);
        assert_eq!(next, Some(b("k3")), "the deleted k2 is skipped");
    }

    #[test]
    fn a_layer_gives_its_keys_in_order_whatever_order_they_came_in() {
        let mut layer = Layer::default();
        let mut want = Vec::new();
        // A permutation of 0..97 (37 is coprime with 97), so the insertion order is scrambled.
        for i in 0..97u32 {
            let n = (i * 37) % 97;
            layer.put(b(&format!("k{n:03}")), u64::from(n), b("v"));
        }
        layer.delete(b("k050"));
        for n in 0..97u32 {
            want.push(format!("k{n:03}"));
        }
        let sorted: Vec<String> = layer
            .sorted()
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(sorted, want);
        let ranged: Vec<String> = layer
            .range_from(b"k040", b"k0", 1000, None)
            .map(|item| String::from_utf8_lossy(&item.unwrap().0).into_owned())
            .collect();
        assert_eq!(ranged, want[40..]);
        let (items, _) = page(
            Merge::new(vec![Box::new(layer.range_from(b"k048", b"k", 3, None))]),
            b"k",
            3,
        )
        .unwrap();
        assert_eq!(keys(&items), ["k048=v@48", "k049=v@49", "k051=v@51"], "k050 is deleted");
    }

    #[test]
    fn keys_added_after_a_listing_are_listed_in_order() {
        let mut layer = Layer::default();
        layer.put(b("b"), 1, b("v"));
        layer.put(b("d"), 2, b("v"));
        let listed = |layer: &Layer| -> Vec<String> {
            layer
                .range_from(b"", b"", 100, None)
                .map(|item| String::from_utf8_lossy(&item.unwrap().0).into_owned())
                .collect()
        };
        assert_eq!(listed(&layer), ["b", "d"]);
        layer.put(b("c"), 3, b("v"));
        layer.delete(b("a"));
        layer.put(b("d"), 4, b("w"));
        assert_eq!(listed(&layer), ["a", "b", "c", "d"]);
        // The flush takes the same order from the index.
        layer.put(b("0"), 5, b("v"));
        let sorted = layer.sorted();
        let flushed: Vec<&[u8]> = sorted.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(flushed, [b"0", b"a", b"b", b"c", b"d"]);
    }

    #[test]
    fn a_short_page_still_reaches_past_keys_a_newer_layer_deletes() {
        let mut active = Layer::default();
        let mut flushing = Layer::default();
        for i in 1..=6 {
            flushing.put(b(&format!("f{i}")), i, b("v"));
        }
        for i in 1..=3 {
            active.delete(b(&format!("f{i}")));
        }
        let merged = Merge::new(vec![
            Box::new(active.range_from(b"", b"", 2, None)),
            Box::new(flushing.range_from(b"", b"", 2, Some(&active))),
        ]);
        let (items, next) = page(merged, b"", 2).unwrap();
        assert_eq!(keys(&items), ["f4=v@4", "f5=v@5"]);
        assert_eq!(next, Some(b("f6")));
    }

    #[test]
    fn a_listing_ends_where_the_prefix_does() {
        let mut active = Layer::default();
        active.put(b("app/z"), 5, b("v"));
        active.put(b("apq"), 6, b("v"));
        let disk = below(&[("app/a", 1, "v"), ("apz", 2, "v")]);
        let merged = Merge::new(vec![Box::new(active.range_from(b"app/", b"app/", 10, None)), disk]);
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
