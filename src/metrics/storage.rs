//! The storage series: group commits and checkpoints of the log, applies and flushes of the
//! state machine, snapshots, the size of each database file, and the NOSPACE alarm with what
//! it measures (the quota, as etcd's `etcd_server_quota_backend_bytes`; the free space and the
//! reserve). The storage layer reports through its observer traits, which [`Metrics`]
//! implements here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus::{exponential_buckets, Histogram, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use super::{counter, gauge, histogram, latency_buckets, register, Metrics};
use crate::storage::{AlarmCause, CommitObserver, SpaceObserver, SpaceReport, StateObserver};

pub(super) struct StorageSeries {
    /// The database files whose sizes `db_size` reports, by its `db` label.
    db_files: Vec<(&'static str, PathBuf)>,
    log_append_duration: Histogram,
    log_append_batch: Histogram,
    log_checkpoint_duration: Histogram,
    apply_duration: Histogram,
    state_flush_duration: Histogram,
    entries_applied: IntCounter,
    db_size: IntGaugeVec,
    snapshot_build_duration: Histogram,
    snapshot_install_duration: Histogram,
    snapshot_size: IntGauge,
    snapshots_built: IntCounter,
    snapshots_installed: IntCounter,
    quota_backend_bytes: IntGauge,
    disk_free_bytes: IntGauge,
    disk_reserve_bytes: IntGauge,
    alarm: IntGaugeVec,
}

impl StorageSeries {
    /// The series of the stores in `data_dir`.
    pub(super) fn new(r: &Registry, data_dir: &Path) -> Result<Self, prometheus::Error> {
        Ok(StorageSeries {
            db_files: vec![
                ("log", data_dir.join("raft-log.redb")),
                ("state", data_dir.join("state.redb")),
            ],
            log_append_duration: histogram(
                r,
                "raftkv_storage_log_append_duration_seconds",
                "Time to write and fsync one group commit of log entries to the journal (etcd: wal_fsync_duration).",
                latency_buckets(),
            )?,
            log_append_batch: histogram(
                r,
                "raftkv_storage_log_append_batch_entries",
                "Log entries written per group commit.",
                exponential_buckets(1.0, 2.0, 14).unwrap_or_default(),
            )?,
            log_checkpoint_duration: histogram(
                r,
                "raftkv_storage_log_checkpoint_duration_seconds",
                "Time to write one checkpoint of journaled log entries into redb (one durable commit).",
                latency_buckets(),
            )?,
            apply_duration: histogram(
                r,
                "raftkv_storage_apply_duration_seconds",
                "Time to apply one batch of committed entries to the state machine's in-memory layer.",
                latency_buckets(),
            )?,
            state_flush_duration: histogram(
                r,
                "raftkv_storage_state_flush_duration_seconds",
                "Time to write applied changes to the state database in one transaction (etcd: backend_commit_duration).",
                latency_buckets(),
            )?,
            entries_applied: counter(
                r,
                "raftkv_storage_entries_applied_total",
                "Log entries applied to the state machine.",
            )?,
            db_size: register(
                r,
                IntGaugeVec::new(
                    Opts::new("raftkv_storage_db_size_bytes", "Size of each database file."),
                    &["db"],
                )?,
            )?,
            snapshot_build_duration: histogram(
                r,
                "raftkv_snapshot_build_duration_seconds",
                "Time to build a snapshot.",
                latency_buckets(),
            )?,
            snapshot_install_duration: histogram(
                r,
                "raftkv_snapshot_install_duration_seconds",
                "Time to install a snapshot received from the leader.",
                latency_buckets(),
            )?,
            snapshot_size: gauge(
                r,
                "raftkv_snapshot_size_bytes",
                "Size of the last snapshot built or installed.",
            )?,
            snapshots_built: counter(r, "raftkv_snapshots_built_total", "Snapshots built by this node.")?,
            snapshots_installed: counter(
                r,
                "raftkv_snapshots_installed_total",
                "Snapshots installed from the leader.",
            )?,
            quota_backend_bytes: gauge(
                r,
                "raftkv_server_quota_backend_bytes",
                "The quota of the backend (the state database, raftkv_storage_db_size_bytes{db=\"state\"}): over it, the NOSPACE alarm (etcd: etcd_server_quota_backend_bytes).",
            )?,
            disk_free_bytes: gauge(
                r,
                "raftkv_storage_disk_free_bytes",
                "Free bytes on the data directory's filesystem, as an unprivileged process may use them.",
            )?,
            disk_reserve_bytes: gauge(
                r,
                "raftkv_storage_disk_reserve_bytes",
                "The free space kept on the data directory's filesystem: below it, the NOSPACE alarm.",
            )?,
            alarm: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "raftkv_server_alarm",
                        "1 while this node has the alarm raised for the cause (NOSPACE: quota, disk_full, write_failed; puts are refused), else 0.",
                    ),
                    &["alarm", "cause"],
                )?,
            )?,
        })
    }

    /// Sets `db_size` from the files as they are now: read at each scrape, not tracked.
    pub(super) fn measure_files(&self) {
        for (db, path) in &self.db_files {
            if let Ok(meta) = std::fs::metadata(path) {
                self.db_size.with_label_values(&[db]).set(meta.len() as i64);
            }
        }
    }
}

impl SpaceObserver for Metrics {
    fn measured(&self, report: &SpaceReport) {
        let s = &self.storage;
        s.quota_backend_bytes.set(gauge_value(report.quota_bytes));
        s.disk_reserve_bytes.set(gauge_value(report.reserve_bytes));
        if let Some(free) = report.free_bytes {
            s.disk_free_bytes.set(gauge_value(free));
        }
        for (cause, raised) in [
            (AlarmCause::Quota, report.quota_exceeded),
            (AlarmCause::DiskFull, report.disk_full),
            (AlarmCause::WriteFailed, report.write_failed),
        ] {
            s.alarm
                .with_label_values(&["NOSPACE", cause.as_str()])
                .set(i64::from(raised));
        }
    }
}

/// A byte count as a gauge holds it.
fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl CommitObserver for Metrics {
    fn committed(&self, entries: usize, elapsed: Duration) {
        self.storage.log_append_duration.observe(elapsed.as_secs_f64());
        self.storage.log_append_batch.observe(entries as f64);
    }

    fn checkpointed(&self, elapsed: Duration) {
        self.storage.log_checkpoint_duration.observe(elapsed.as_secs_f64());
    }
}

impl StateObserver for Metrics {
    fn applied(&self, entries: usize, elapsed: Duration) {
        self.storage.apply_duration.observe(elapsed.as_secs_f64());
        self.storage.entries_applied.inc_by(entries as u64);
    }
    fn flushed(&self, _keys: usize, elapsed: Duration) {
        self.storage.state_flush_duration.observe(elapsed.as_secs_f64());
    }
    fn snapshot_built(&self, bytes: u64, elapsed: Duration) {
        let s = &self.storage;
        s.snapshot_build_duration.observe(elapsed.as_secs_f64());
        s.snapshot_size.set(bytes as i64);
        s.snapshots_built.inc();
    }
    fn snapshot_installed(&self, bytes: u64, elapsed: Duration) {
        let s = &self.storage;
        s.snapshot_install_duration.observe(elapsed.as_secs_f64());
        s.snapshot_size.set(bytes as i64);
        s.snapshots_installed.inc();
    }
}
