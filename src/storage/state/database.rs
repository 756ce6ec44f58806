//! The state's redb database: its two tables, and how a key's value and the state's metadata
//! are encoded in them.
//!
//! ```text
//! kv    key -> u64 revision (little-endian) | value
//! meta  "last_applied" -> postcard Option<LogId>, "last_membership" -> postcard
//!       StoredMembership, "revision" -> u64 store revision (little-endian),
//!       "auth" -> the auth state (users, roles, permissions; `AuthState::to_bytes`)
//! ```
//! The auth state is a row of `meta`, not a table of its own, because it must commit in the
//! same transaction as `last_applied` (the flusher's, which writes `kv` and `meta`), and it
//! is small: written whole with every flush, read whole at start.

use std::io;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use super::Meta;
use crate::auth::AuthState;
use crate::codec::{decode, encode, io_err};
use crate::types::StoredMembership;

/// key -> revision (u64 little-endian) followed by the value.
pub(super) const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "last_membership";
/// The store's revision (u64 little-endian): the last revision a change to a key took.
const KEY_REVISION: &str = "revision";
/// The auth state; absent in a store written before authentication existed (empty state).
const KEY_AUTH: &str = "auth";

/// redb's page cache for the state (its default is 1 GiB a database). Reads that miss it still
/// hit the kernel's page cache.
const CACHE_BYTES: usize = 128 << 20;

/// Opens (or creates) the state database at `path`, with both its tables.
pub(super) fn open(path: &Path) -> io::Result<Database> {
    crate::storage::open_database(path, CACHE_BYTES, |txn| {
        txn.open_table(KV)?;
        txn.open_table(META)?;
        Ok(())
    })
}

pub(super) type KvTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

pub(super) fn open_kv(db: &Database) -> io::Result<Arc<KvTable>> {
    let txn = db.begin_read().map_err(io_err)?;
    Ok(Arc::new(txn.open_table(KV).map_err(io_err)?))
}

pub(super) fn encode_value(revision: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&revision.to_le_bytes());
    v.extend_from_slice(value);
    v
}

pub(super) fn decode_value(stored: &[u8]) -> io::Result<(u64, &[u8])> {
    if stored.len() < 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "corrupt value: shorter than its revision",
        ));
    }
    let (rev, value) = stored.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(rev);
    Ok((u64::from_le_bytes(b), value))
}

pub(super) fn write_meta(table: &mut redb::Table<&str, &[u8]>, meta: &Meta) -> io::Result<()> {
    table
        .insert(KEY_APPLIED, encode(&meta.applied)?.as_slice())
        .map_err(io_err)?;
    table
        .insert(KEY_MEMBERSHIP, encode(&meta.membership)?.as_slice())
        .map_err(io_err)?;
    table
        .insert(KEY_REVISION, meta.revision.to_le_bytes().as_slice())
        .map_err(io_err)?;
    table
        .insert(KEY_AUTH, meta.auth.to_bytes()?.as_slice())
        .map_err(io_err)?;
    Ok(())
}

/// The store's revision in `meta` (0 for a new store).
fn read_revision(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> io::Result<u64> {
    match meta.get(KEY_REVISION).map_err(io_err)? {
        Some(v) => {
            let b: [u8; 8] = v
                .value()
                .try_into()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "corrupt store revision"))?;
            Ok(u64::from_le_bytes(b))
        }
        None => Ok(0),
    }
}

pub(super) fn read_meta(txn: &ReadTransaction) -> io::Result<Meta> {
    let meta = txn.open_table(META).map_err(io_err)?;
    let applied = match meta.get(KEY_APPLIED).map_err(io_err)? {
        Some(v) => decode(v.value())?,
        None => None,
    };
    let membership = match meta.get(KEY_MEMBERSHIP).map_err(io_err)? {
        Some(v) => decode(v.value())?,
        None => StoredMembership::default(),
    };
    let auth = match meta.get(KEY_AUTH).map_err(io_err)? {
        Some(v) => AuthState::from_bytes(v.value())?,
        None => AuthState::default(),
    };
    Ok(Meta {
        applied,
        membership,
        revision: read_revision(&meta)?,
        auth: Arc::new(auth),
    })
}
