//! The state machine's snapshots: building one from a read transaction, installing one (from
//! the leader, or from a backup by `raftkv restore`), backups, and the snapshot directory,
//! which holds the current snapshot file and, for a while, one being built or received. The
//! file format is [`crate::storage::snapshot`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use openraft::RaftSnapshotBuilder;
use redb::{Durability, ReadTransaction, ReadableDatabase, ReadableTable};

use super::database::{decode_value, encode_value, open_kv, read_meta, write_meta, KV, META};
use super::{blocking, Layers, Meta, StateMachine};
use crate::codec::io_err;
use crate::storage::snapshot::{SnapshotData, SnapshotReader, SnapshotWriter};
use crate::types::{SnapshotMeta, TypeConfig};

pub(super) type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Creates the snapshot directory, or clears it of the leftovers of a snapshot build or
/// transfer that a crash interrupted.
pub(super) fn prepare_dir(snapshot_dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(snapshot_dir)?;
    for entry in std::fs::read_dir(snapshot_dir)? {
        let path = entry?.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("part" | "tmp")) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The file name of the snapshot of the state at `meta`.
fn snapshot_file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(id) => format!("snapshot-{:020}-{}.rkvs", id.index, id.leader_id.term),
        None => "snapshot-00000000000000000000-0.rkvs".to_string(),
    }
}

impl StateMachine {
    /// A fresh path in the snapshot directory for a snapshot being received from the leader.
    pub(crate) fn incoming_snapshot_path(&self) -> PathBuf {
        self.inner
            .snapshot_dir
            .join(format!("incoming-{:016x}.part", rand::random::<u64>()))
    }

    /// Writes a consistent point-in-time copy of the state (the snapshot format) to `out`.
    pub(crate) fn backup<W: std::io::Write>(&self, out: W) -> io::Result<(SnapshotMeta, u64)> {
        self.flush(Durability::None)?;
        let txn = self.inner.db.begin_read().map_err(io_err)?;
        let (meta, _, size) = dump(&txn, out)?;
        Ok((meta, size))
    }

    /// Replaces the state with the snapshot file at `path` (used by `raftkv restore`).
    pub(crate) fn install_file(&self, meta: &SnapshotMeta, path: PathBuf) -> io::Result<u64> {
        let data = SnapshotData::open(path)?;
        self.install(meta, &data)
    }

    /// The newest snapshot file in the directory, if there is one.
    pub(super) fn current_snapshot_path(&self) -> io::Result<Option<PathBuf>> {
        let mut best: Option<PathBuf> = None;
        for entry in std::fs::read_dir(&self.inner.snapshot_dir)? {
            let path = entry?.path();
            let is_snapshot = path.extension().and_then(|e| e.to_str()) == Some("rkvs");
            // Names sort by zero-padded index: the greatest name is the newest snapshot.
            if is_snapshot && best.as_ref().is_none_or(|b| path.file_name() > b.file_name()) {
                best = Some(path);
            }
        }
        Ok(best)
    }

    /// Keeps `keep` as the only snapshot file.
    fn remove_other_snapshots(&self, keep: &Path) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.inner.snapshot_dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("rkvs") && path != keep {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Replaces the state with the snapshot in `data` in one durable commit, and keeps its file
    /// as the current snapshot; returns the file's size.
    pub(super) fn install(&self, meta: &SnapshotMeta, data: &SnapshotData) -> io::Result<u64> {
        let _one = self.inner.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Reads wait for the new state rather than see a mix of the old and the new.
        let mut layers = self.inner.layers_mut();
        let mut reader = SnapshotReader::open(&data.path)?;
        let revision = reader.revision();
        let auth = Arc::new(reader.auth().clone());
        let mut txn = self.inner.db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::Immediate).map_err(io_err)?;
        {
            txn.delete_table(KV).map_err(io_err)?;
            let mut kv = txn.open_table(KV).map_err(io_err)?;
            // A checksum failure at the end drops the transaction: nothing is replaced.
            while let Some(rec) = reader.next_record()? {
                kv.insert(rec.key.as_slice(), encode_value(rec.revision, &rec.value).as_slice())
                    .map_err(io_err)?;
            }
            let mut m = txn.open_table(META).map_err(io_err)?;
            write_meta(
                &mut m,
                &Meta {
                    applied: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                    revision,
                    auth: auth.clone(),
                },
            )?;
        }
        txn.commit().map_err(io_err)?;
        let table = open_kv(&self.inner.db).ok();
        *layers = Layers {
            meta: Meta {
                applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
                revision,
                auth: auth.clone(),
            },
            flushed: meta.last_log_id,
            table,
            ..Layers::default()
        };
        self.inner.publish_auth(&auth);
        self.inner.publish(meta.last_log_id);
        drop(layers);
        let size = std::fs::metadata(&data.path)?.len();
        let target = self.inner.snapshot_dir.join(snapshot_file_name(meta));
        if data.path != target {
            std::fs::rename(&data.path, &target)?;
        }
        self.remove_other_snapshots(&target)?;
        Ok(size)
    }
}

/// Writes the state visible in `txn` in the snapshot format; returns its metadata, the
/// writer, and the number of bytes written.
fn dump<W: std::io::Write>(txn: &ReadTransaction, out: W) -> io::Result<(SnapshotMeta, W, u64)> {
    let state = read_meta(txn)?;
    let meta = SnapshotMeta {
        last_log_id: state.applied,
        last_membership: state.membership,
    };
    let mut w = SnapshotWriter::new(out, &meta, state.revision, &state.auth)?;
    let kv = txn.open_table(KV).map_err(io_err)?;
    for item in kv.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        let (rev, value) = decode_value(v.value())?;
        w.record(k.value(), rev, value)?;
    }
    let (out, size) = w.seal()?;
    Ok((meta, out, size))
}

/// Builds a snapshot from a read transaction: a consistent view while writes go on.
pub struct SnapshotBuilder {
    sm: StateMachine,
    txn: Option<ReadTransaction>,
}

impl SnapshotBuilder {
    /// A builder of a snapshot of what `txn` sees; without a transaction (it could not be
    /// opened) building fails.
    pub(super) fn new(sm: StateMachine, txn: Option<ReadTransaction>) -> Self {
        SnapshotBuilder { sm, txn }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let txn = self
            .txn
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))?;
        let sm = self.sm.clone();
        blocking(move || {
            let started = Instant::now();
            let dir = &sm.inner.snapshot_dir;
            let tmp = dir.join(format!("build-{:016x}.tmp", rand::random::<u64>()));
            let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            let (meta, file, size) = dump(&txn, file)?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            let path = dir.join(snapshot_file_name(&meta));
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            sm.remove_other_snapshots(&path)?;
            sm.inner.observer.snapshot_built(size, started.elapsed());
            tracing::info!(
                last_log_id = %meta.last_log_id.as_ref().map(|l| l.to_string()).unwrap_or_default(),
                size_bytes = size,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            Ok(Snapshot {
                meta,
                snapshot: SnapshotData::open(path)?,
            })
        })
        .await
    }
}
