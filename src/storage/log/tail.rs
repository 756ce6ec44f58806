//! The tail cache: what lets openraft read an entry the moment `append` returns, long before the
//! writer has made it durable, and what serves replication to followers that are slightly
//! behind from memory instead of redb.

use std::collections::BTreeMap;

use openraft::EntryPayload;

use crate::types::Entry;

/// How many entries already in redb the tail cache keeps, so that replication to followers
/// that are slightly behind is served from memory instead of redb; and at most how many bytes
/// of them (an entry is a batch of up to thousands of writes).
const CACHE_KEEP: u64 = 4096;
const CACHE_KEEP_BYTES: usize = 32 << 20;

/// Entries appended but not yet in redb, plus a recent tail of those that are. Every entry is
/// always in the cache, in redb, or both: the writer evicts only what it has written to redb.
#[derive(Default)]
pub(super) struct TailCache {
    /// index -> (append sequence number, payload bytes, entry)
    pub(super) entries: BTreeMap<u64, (u64, usize, Entry)>,
    /// Payload bytes of the entries held.
    bytes: usize,
    pub(super) next_seq: u64,
}

impl TailCache {
    pub(super) fn insert(&mut self, seq: u64, entry: Entry) {
        let size = entry_size(&entry);
        self.bytes += size;
        if let Some((_, old, _)) = self.entries.insert(entry.log_id.index, (seq, size, entry)) {
            self.bytes -= old;
        }
    }

    /// Drops the entries from `index` on.
    pub(super) fn drop_from(&mut self, index: u64) {
        let gone = self.entries.split_off(&index);
        self.forget(&gone);
    }

    /// Drops the entries up to `index`, inclusive.
    pub(super) fn drop_through(&mut self, index: u64) {
        let rest = self.entries.split_off(&(index + 1));
        let gone = std::mem::replace(&mut self.entries, rest);
        self.forget(&gone);
    }

    /// Drops entries that are in redb from the front, keeping the last `CACHE_KEEP` while they
    /// hold at most `CACHE_KEEP_BYTES`.
    pub(super) fn evict_saved(&mut self, saved_seq: u64) {
        let Some((&last, _)) = self.entries.last_key_value() else {
            return;
        };
        let keep_from = last.saturating_sub(CACHE_KEEP);
        while let Some(first) = self.entries.first_entry() {
            let (seq, size, _) = *first.get();
            let wanted = *first.key() >= keep_from && self.bytes <= CACHE_KEEP_BYTES;
            if wanted || seq > saved_seq {
                break;
            }
            first.remove();
            self.bytes -= size;
        }
    }

    fn forget(&mut self, gone: &BTreeMap<u64, (u64, usize, Entry)>) {
        self.bytes -= gone.values().map(|(_, size, _)| size).sum::<usize>();
    }
}

/// Bytes of user data an entry carries: what the cache's bound and the writer's checkpoint
/// threshold count.
pub(super) fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(p) => p.size(),
        _ => 0,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::types::{Command, LogId, Proposal};
    use bytes::Bytes;
    use openraft::vote::leader_id_adv::LeaderId;
    use openraft::vote::RaftLeaderId;

    /// An entry at `index` (term 1) holding one put of a `value_bytes`-byte value.
    pub(in crate::storage::log) fn entry(index: u64, value_bytes: usize) -> Entry {
        let put = Command::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0u8; value_bytes]),
            precondition: None,
        };
        Entry {
            log_id: LogId::new(LeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal(vec![put])),
        }
    }

    #[test]
    fn the_tail_cache_keeps_its_bytes_bounded_but_never_evicts_what_is_not_in_redb() {
        let mut cache = TailCache::default();
        let big = 1 << 20; // 1 MiB entries: 64 of them are twice the byte bound
        for i in 0..64 {
            cache.insert(i, entry(i, big));
        }
        cache.evict_saved(9);
        assert_eq!(
            cache.entries.first_key_value().map(|(k, _)| *k),
            Some(10),
            "only entries in redb go"
        );
        cache.evict_saved(63);
        assert!(cache.bytes <= CACHE_KEEP_BYTES, "{} bytes kept", cache.bytes);
        assert!(cache.bytes > CACHE_KEEP_BYTES - 2 * big, "evicts no more than it must");
        assert_eq!(cache.bytes, cache.entries.len() * (big + 1));

        cache.drop_from(60);
        cache.drop_through(40);
        assert_eq!(
            cache.entries.keys().copied().collect::<Vec<_>>(),
            (41..60).collect::<Vec<_>>()
        );
        assert_eq!(cache.bytes, 19 * (big + 1));
        cache.insert(64, entry(59, 10)); // a replaced entry gives its bytes back
        assert_eq!(cache.bytes, 18 * (big + 1) + 11);
    }
}
