//! One key's current value as reads answer it: what a listing's merge of the layers and redb
//! ([`super::overlay`]) yields, and what the API renders.

use bytes::Bytes;

/// One key's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyValue {
    pub(crate) key: Bytes,
    pub(crate) revision: u64,
    pub(crate) value: Bytes,
}
