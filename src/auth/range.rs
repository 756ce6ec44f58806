//! The keys a request touches, and whether a set of permissions covers them (etcd's rule: a
//! range is allowed only if the union of the user's permitted ranges contains all of it).
//!
//! Keys are non-empty byte strings in byte order, so the smallest key is `[0]` and the key
//! right after `k` is `k` followed by a zero byte: a single key `k` is the half-open interval
//! `[k, k\0)`, and every check is one sweep over sorted intervals.

use bytes::Bytes;

use crate::types::Permission;

/// A set of keys: one key, `[start, end)`, or every key from `start` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    start: Bytes,
    /// `None`: no upper bound.
    end: Option<Bytes>,
}

impl KeyRange {
    /// The single key `key`.
    pub(crate) fn key(key: &[u8]) -> KeyRange {
        KeyRange {
            start: Bytes::copy_from_slice(key),
            end: Some(successor(key)),
        }
    }

    /// The keys a listing reads: those under `prefix` from `start` on (both may be empty).
    pub(crate) fn listing(prefix: &[u8], start: &[u8]) -> KeyRange {
        let from = if start > prefix { start } else { prefix };
        KeyRange {
            start: Bytes::copy_from_slice(from),
            end: prefix_end(prefix),
        }
    }

    /// The keys a permission grants, with etcd's encoding of `range_end` (empty: the one key;
    /// a zero byte: no upper bound).
    pub(crate) fn of_permission(p: &Permission) -> KeyRange {
        KeyRange::etcd(&p.key, &p.range_end)
    }

    /// `[key, range_end)` as etcd encodes it.
    pub(crate) fn etcd(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::key(key),
            [0] => KeyRange {
                start: Bytes::copy_from_slice(key),
                end: None,
            },
            end => KeyRange {
                start: Bytes::copy_from_slice(key),
                end: Some(Bytes::copy_from_slice(end)),
            },
        }
    }

    /// Whether no key is in it.
    fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|e| *e <= self.start)
    }

    /// The first key in it: the empty start is the same set as the smallest key, `[0]`.
    fn first(&self) -> &[u8] {
        if self.start.is_empty() {
            &[0]
        } else {
            &self.start
        }
    }

    /// Whether the union of `granted` contains every key of this range.
    pub(crate) fn covered_by<'a>(&self, granted: impl IntoIterator<Item = &'a KeyRange>) -> bool {
        if self.is_empty() {
            return true;
        }
        let mut granted: Vec<&KeyRange> = granted.into_iter().filter(|g| !g.is_empty()).collect();
        granted.sort_by(|a, b| a.first().cmp(b.first()));
        // Everything below `reached` is covered; sweep the grants in order of their start.
        let mut reached: Vec<u8> = self.first().to_vec();
        for g in granted {
            if g.first() > reached.as_slice() {
                return false; // a gap before this grant begins
            }
            match &g.end {
                None => return true,
                Some(end) if end.as_ref() > reached.as_slice() => reached = end.to_vec(),
                Some(_) => {}
            }
            if self.end.as_ref().is_some_and(|e| e.as_ref() <= reached.as_slice()) {
                return true;
            }
        }
        false
    }
}

/// The key right after `key` in byte order.
fn successor(key: &[u8]) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    Bytes::from(next)
}

/// The end of the range of keys that start with `prefix` (etcd's `GetPrefixRangeEnd`): the
/// prefix with its last byte below 0xff incremented and what follows dropped; `None` (no
/// upper bound) for an empty prefix or one of nothing but 0xff bytes.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let i = prefix.iter().rposition(|b| *b < 0xff)?;
    let mut end = prefix[..=i].to_vec();
    end[i] += 1;
    Some(Bytes::from(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(key: &str, end: &str) -> KeyRange {
        KeyRange::etcd(key.as_bytes(), end.as_bytes())
    }

    #[test]
    fn a_prefix_ends_after_its_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"app/"), Some(Bytes::from_static(b"app0")));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(Bytes::from_static(b"b")));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn a_single_key_is_covered_by_a_grant_of_it_or_of_a_range_holding_it() {
        let key = KeyRange::key(b"app/x");
        assert!(key.covered_by(&[r("app/x", "")]));
        assert!(key.covered_by(&[r("app/", "app0")]));
        assert!(key.covered_by(&[r("a", "\0")]));
        assert!(
            !key.covered_by(&[r("app/x/", "app/x0")]),
            "a grant of app/x/ is not app/x"
        );
        assert!(!key.covered_by(&[r("app/y", "")]));
        assert!(!key.covered_by(&[]));
    }

    #[test]
    fn a_listing_needs_the_whole_range_covered() {
        let app = KeyRange::listing(b"app/", b"");
        assert!(app.covered_by(&[r("app/", "app0")]));
        assert!(
            !app.covered_by(&[r("app/a", "app0")]),
            "the keys below app/a are not granted"
        );
        assert!(
            app.covered_by(&[r("app/m", "app0"), r("app/", "app/m")]),
            "two adjacent grants cover it together"
        );
        assert!(
            !app.covered_by(&[r("app/", "app/m"), r("app/n", "app0")]),
            "a gap between app/m and app/n"
        );
        assert!(
            !app.covered_by(&[r("app/", "app/m"), r("app/m", "")]),
            "a single key does not bridge to the rest"
        );
        let everything = KeyRange::listing(b"", b"");
        assert!(!everything.covered_by(&[r("app/", "app0")]));
        assert!(everything.covered_by(&[r("\0", "\0")]), "etcdctl's --prefix ''");
        assert!(!everything.covered_by(&[r("\x01", "\0")]), "the key \\0 is not granted");
        // A listing that starts past its prefix's keys reads nothing.
        assert!(KeyRange::listing(b"app/", b"zzz").covered_by(&[]));
        // A start inside the prefix narrows the range.
        assert!(KeyRange::listing(b"app/", b"app/m").covered_by(&[r("app/m", "app0")]));
    }
}
