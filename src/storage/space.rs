//! The NOSPACE alarm: what keeps a full or failing disk a clean state instead of a node that is
//! up but useless (etcd's alarm of the same name, and its error text).
//!
//! Two conditions raise it before any write fails, measured by a watcher thread every second:
//! - the backend growing past the quota (`--quota-backend-bytes`). The backend is what etcd
//!   counts: the size of the backend database file, here the state database `state.redb` (the
//!   key space; the Raft log and snapshots are not counted, as etcd counts neither its WAL nor
//!   its snapshot files). Like etcd's, the file does not shrink at once when keys are deleted:
//!   redb reuses the freed pages and trims the file's free tail on later commits.
//! - the free space on the data directory's filesystem falling below the reserve
//!   (`--disk-reserve-bytes`; cleared once it is back above one and a half times the reserve,
//!   so that the alarm does not flap at the line).
//!
//! While the alarm is up the replica refuses new puts before they are proposed (deletes and
//! reads go on, as under etcd's alarm), so what still reaches the disk is only what was under
//! way: the writes of the last second, the entries the leader replicates here, a log
//! checkpoint, a state flush. That is what the reserve is for, and why a write that the disk
//! refuses is rare. Both conditions clear by themselves once they no longer hold.
//!
//! A write that the disk refuses all the same (ENOSPC, EDQUOT, EROFS, EIO) is the third cause,
//! and one that does not clear: redb refuses every later write to a database that met an I/O
//! error ("Previous I/O error occurred. Please close and re-open the database") and openraft
//! stops for good after a storage error, so the stores cannot go on in this process. The
//! failure is recorded here ([`Space::failure`]) for the node to fail `/healthz` on and exit
//! (see `crate::replica::Replica::unrecoverable`); a restart recovers the stores from disk.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::types::NodeId;

/// etcd's default quota (its `DefaultQuotaBytes`).
pub(crate) const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// The free space kept by default: room for what is under way when the alarm rises (see the
/// module doc). A snapshot needs room for a whole copy of the state on top of it.
pub(crate) const DEFAULT_RESERVE_BYTES: u64 = 64 << 20;
/// How often the watcher measures.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// etcd's words for a write refused under the alarm (its `ErrGRPCNoSpace`): what clients and
/// operators search for.
pub(crate) const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// The quota and the reserve, in bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpaceSettings {
    pub(crate) quota_bytes: u64,
    pub(crate) reserve_bytes: u64,
}

impl Default for SpaceSettings {
    fn default() -> Self {
        SpaceSettings {
            quota_bytes: DEFAULT_QUOTA_BYTES,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
        }
    }
}

/// Why the NOSPACE alarm is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlarmCause {
    /// The backend is larger than the quota.
    Quota,
    /// The data directory's filesystem has less free space than the reserve.
    DiskFull,
    /// The disk refused a write to a store; this one does not clear.
    WriteFailed,
}

impl AlarmCause {
    /// The cause as the status and the metrics name it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AlarmCause::Quota => "quota",
            AlarmCause::DiskFull => "disk_full",
            AlarmCause::WriteFailed => "write_failed",
        }
    }

    /// What the operator can do about it, for the refusal's message.
    fn advice(self) -> &'static str {
        match self {
            AlarmCause::Quota => {
                "puts are refused until the state database is below the quota again: delete keys \
                 (deletes and reads go on) or restart the node with a larger --quota-backend-bytes"
            }
            AlarmCause::DiskFull => {
                "puts are refused until space is freed on that filesystem (deletes and reads go \
                 on); the alarm clears by itself"
            }
            AlarmCause::WriteFailed => {
                "this node cannot write its stores any more and exits to be restarted once space \
                 is freed; use another member"
            }
        }
    }
}

/// One raised cause of the alarm, and what was measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alarm {
    pub(crate) cause: AlarmCause,
    pub(crate) reason: String,
}

/// What the watcher found, for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpaceReport {
    /// Free bytes on the data directory's filesystem (for unprivileged users), if measured.
    pub(crate) free_bytes: Option<u64>,
    pub(crate) quota_bytes: u64,
    pub(crate) reserve_bytes: u64,
    pub(crate) quota_exceeded: bool,
    pub(crate) disk_full: bool,
    pub(crate) write_failed: bool,
}

/// Observes each measurement; the metrics layer plugs in here.
pub(crate) trait SpaceObserver: Send + Sync + 'static {
    fn measured(&self, _report: &SpaceReport) {}
}

struct NoObserver;
impl SpaceObserver for NoObserver {}

/// A store write that failed.
struct Failure {
    reason: String,
    /// The disk refused it (see [`is_disk_fault`]): a NOSPACE cause.
    disk: bool,
}

#[derive(Default)]
struct State {
    free: Option<u64>,
    backend: u64,
    quota_exceeded: bool,
    disk_full: bool,
    failure: Option<Failure>,
}

struct Inner {
    /// The data directory, or `None` for a store that nobody watches (tools and unit tests).
    dir: Option<PathBuf>,
    backend: PathBuf,
    settings: SpaceSettings,
    /// Whether any cause is raised: read on every write, without the lock.
    raised: AtomicBool,
    /// Whether a store write failed: likewise.
    failed: AtomicBool,
    state: Mutex<State>,
    observer: Arc<dyn SpaceObserver>,
}

/// The alarm of one data directory, shared by the stores (which report failed writes), the
/// watcher thread, and the replica (which refuses writes while it is up). Cheap to clone.
#[derive(Clone)]
pub struct Space {
    inner: Arc<Inner>,
}

impl Space {
    /// Measures `data_dir` (created if missing) once, then every second on a thread that ends
    /// with the last handle.
    pub(crate) fn watch(
        data_dir: &Path,
        settings: SpaceSettings,
        observer: Arc<dyn SpaceObserver>,
    ) -> io::Result<Space> {
        std::fs::create_dir_all(data_dir)?;
        let space = Space::new(Some(data_dir), settings, observer);
        space.inner.measure();
        let weak = Arc::downgrade(&space.inner);
        std::thread::Builder::new()
            .name("space-watcher".into())
            .spawn(move || watch(weak))?;
        Ok(space)
    }

    /// An alarm that only store failures raise: for stores that no node serves from.
    pub(crate) fn unwatched() -> Space {
        Space::new(None, SpaceSettings::default(), Arc::new(NoObserver))
    }

    fn new(dir: Option<&Path>, settings: SpaceSettings, observer: Arc<dyn SpaceObserver>) -> Space {
        Space {
            inner: Arc::new(Inner {
                backend: dir.map_or_else(PathBuf::new, |d| d.join(super::STATE_FILE)),
                dir: dir.map(Path::to_path_buf),
                settings,
                raised: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                state: Mutex::new(State::default()),
                observer,
            }),
        }
    }

    /// The refusal of a put while the alarm is up, in etcd's words with what was measured and
    /// what to do; `None` while it is down.
    pub(crate) fn refusal(&self, node: NodeId) -> Option<String> {
        if !self.inner.raised.load(Ordering::Acquire) {
            return None;
        }
        let alarms = self.alarms();
        if alarms.is_empty() {
            return None;
        }
        let what: Vec<String> = alarms.iter().map(|a| a.reason.clone()).collect();
        let advice = alarms
            .iter()
            .map(|a| a.cause)
            .max_by_key(|c| *c as u8)
            .map_or("", |c| c.advice());
        Some(format!("{NO_SPACE} (node {node}: {}); {advice}", what.join("; ")))
    }

    /// The causes raised now.
    pub(crate) fn alarms(&self) -> Vec<Alarm> {
        let s = self.inner.state();
        let mut alarms = Vec::new();
        if s.quota_exceeded {
            alarms.push(Alarm {
                cause: AlarmCause::Quota,
                reason: format!(
                    "the state database is {}, over the quota of {} (--quota-backend-bytes)",
                    size(s.backend),
                    size(self.inner.settings.quota_bytes)
                ),
            });
        }
        if s.disk_full {
            alarms.push(Alarm {
                cause: AlarmCause::DiskFull,
                reason: format!(
                    "{} free on the filesystem of {}, below the reserve of {} (--disk-reserve-bytes)",
                    size(s.free.unwrap_or(0)),
                    self.inner.dir.as_deref().unwrap_or(Path::new("")).display(),
                    size(self.inner.settings.reserve_bytes)
                ),
            });
        }
        if let Some(f) = s.failure.as_ref().filter(|f| f.disk) {
            alarms.push(Alarm {
                cause: AlarmCause::WriteFailed,
                reason: f.reason.clone(),
            });
        }
        alarms
    }

    /// The store write that failed, if one did: the stores cannot go on in this process.
    pub(crate) fn failure(&self) -> Option<String> {
        if !self.inner.failed.load(Ordering::Acquire) {
            return None;
        }
        self.inner.state().failure.as_ref().map(|f| f.reason.clone())
    }

    /// Records that `what` failed with `e`. The first failure is the one kept: later ones are
    /// usually its echo (redb's "Previous I/O error").
    pub(crate) fn write_failed(&self, what: &str, e: &io::Error) {
        let disk = is_disk_fault(e);
        {
            let mut s = self.inner.state();
            if s.failure.is_some() {
                return;
            }
            let reason = format!("{what} failed: {e}");
            tracing::error!(
                "{reason}; this store cannot be written again in this process, so the node stops \
                 serving writes and exits to be restarted (nothing acknowledged is lost: the \
                 stores recover from disk at start)"
            );
            s.failure = Some(Failure { reason, disk });
        }
        self.inner.failed.store(true, Ordering::Release);
        if disk {
            self.inner.raised.store(true, Ordering::Release);
        }
        self.inner.report();
    }

    /// Whether the data directory's filesystem has at least the reserve free now (measured
    /// afresh); true when nobody watches.
    pub(crate) fn has_room(&self) -> bool {
        match &self.inner.dir {
            Some(dir) => free_bytes(dir).is_none_or(|free| free >= self.inner.settings.reserve_bytes),
            None => true,
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Measures the backend and the free space, raises or clears the causes that changed.
    fn measure(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let free = free_bytes(dir);
        let backend = std::fs::metadata(&self.backend).map_or(0, |m| m.len());
        let SpaceSettings {
            quota_bytes,
            reserve_bytes,
        } = self.settings;
        let mut s = self.state();
        let (was_quota, was_full) = (s.quota_exceeded, s.disk_full);
        s.free = free;
        s.backend = backend;
        s.quota_exceeded = backend > quota_bytes;
        if let Some(free) = free {
            let clear_at = reserve_bytes.saturating_add(reserve_bytes / 2);
            s.disk_full = if was_full {
                free < clear_at
            } else {
                free < reserve_bytes
            };
        }
        let (quota_exceeded, disk_full) = (s.quota_exceeded, s.disk_full);
        let raised = quota_exceeded || disk_full || s.failure.as_ref().is_some_and(|f| f.disk);
        self.raised.store(raised, Ordering::Release);
        drop(s);
        match (was_quota, quota_exceeded) {
            (false, true) => tracing::warn!(
                "NOSPACE alarm raised: the state database is {}, over the quota of {} \
                 (--quota-backend-bytes); puts are refused",
                size(backend),
                size(quota_bytes)
            ),
            (true, false) => tracing::info!("NOSPACE alarm (quota) cleared: the state database is {}", size(backend)),
            _ => {}
        }
        let free_text = size(free.unwrap_or(0));
        match (was_full, disk_full) {
            (false, true) => tracing::warn!(
                "NOSPACE alarm raised: {free_text} free on the filesystem of {}, below the reserve \
                 of {} (--disk-reserve-bytes); puts are refused",
                dir.display(),
                size(reserve_bytes)
            ),
            (true, false) => tracing::info!("NOSPACE alarm (disk full) cleared: {free_text} free"),
            _ => {}
        }
        self.report();
    }

    fn report(&self) {
        let report = {
            let s = self.state();
            SpaceReport {
                free_bytes: s.free,
                quota_bytes: self.settings.quota_bytes,
                reserve_bytes: self.settings.reserve_bytes,
                quota_exceeded: s.quota_exceeded,
                disk_full: s.disk_full,
                write_failed: s.failure.as_ref().is_some_and(|f| f.disk),
            }
        };
        self.observer.measured(&report);
    }
}

/// The watcher thread: measures every second until the alarm's last handle is gone.
fn watch(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        match inner.upgrade() {
            Some(inner) => inner.measure(),
            None => return,
        }
    }
}

/// Free bytes on the filesystem of `dir`, as an unprivileged process may use them (root's own
/// reserve of the filesystem is not counted: a node that relies on it leaves root nothing).
fn free_bytes(dir: &Path) -> Option<u64> {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => Some(s.blocks_available().saturating_mul(s.fragment_size())),
        Err(e) => {
            tracing::debug!(error = %e, dir = %dir.display(), "cannot measure the free space");
            None
        }
    }
}

/// Whether the disk itself refused a write: full (ENOSPC), over a filesystem quota (EDQUOT),
/// read-only (EROFS) or failing (EIO), as `e` says directly or inside a redb error; or redb
/// refusing because such an error came before (`PreviousIo`).
pub(crate) fn is_disk_fault(e: &io::Error) -> bool {
    if let Some(code) = e.raw_os_error() {
        return is_disk_errno(code);
    }
    match e.get_ref() {
        Some(inner) => redb_storage(inner).is_some_and(|s| match s {
            redb::StorageError::Io(io) => is_disk_fault(io),
            redb::StorageError::PreviousIo => true,
            _ => false,
        }),
        None => false,
    }
}

fn is_disk_errno(code: i32) -> bool {
    use nix::errno::Errno;
    [Errno::ENOSPC, Errno::EDQUOT, Errno::EROFS, Errno::EIO]
        .iter()
        .any(|e| *e as i32 == code)
}

/// The storage error inside one of redb's error types, if `e` is one.
fn redb_storage<'a>(e: &'a (dyn std::error::Error + Send + Sync + 'static)) -> Option<&'a redb::StorageError> {
    if let Some(s) = e.downcast_ref::<redb::StorageError>() {
        return Some(s);
    }
    if let Some(redb::CommitError::Storage(s)) = e.downcast_ref::<redb::CommitError>() {
        return Some(s);
    }
    if let Some(redb::TransactionError::Storage(s)) = e.downcast_ref::<redb::TransactionError>() {
        return Some(s);
    }
    if let Some(redb::TableError::Storage(s)) = e.downcast_ref::<redb::TableError>() {
        return Some(s);
    }
    if let Some(redb::DatabaseError::Storage(s)) = e.downcast_ref::<redb::DatabaseError>() {
        return Some(s);
    }
    None
}

/// A byte count as people read it.
fn size(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (MIB * 1024.0))
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(dir: &Path, quota_bytes: u64, reserve_bytes: u64) -> Space {
        let settings = SpaceSettings {
            quota_bytes,
            reserve_bytes,
        };
        Space::new(Some(dir), settings, Arc::new(NoObserver))
    }

    #[test]
    fn the_quota_raises_the_alarm_and_clears_it_once_the_backend_is_below_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = space(dir.path(), 1000, 0);
        s.inner.measure();
        assert_eq!(s.refusal(1), None, "no backend yet");

        std::fs::write(dir.path().join(super::super::STATE_FILE), vec![0u8; 1001]).unwrap();
        s.inner.measure();
        let refusal = s.refusal(1).expect("over the quota");
        assert!(refusal.starts_with(NO_SPACE), "{refusal}");
        assert!(refusal.contains("--quota-backend-bytes"), "{refusal}");
        assert_eq!(
            s.alarms().iter().map(|a| a.cause).collect::<Vec<_>>(),
            vec![AlarmCause::Quota]
        );

        std::fs::write(dir.path().join(super::super::STATE_FILE), vec![0u8; 10]).unwrap();
        s.inner.measure();
        assert_eq!(s.refusal(1), None);
        assert!(s.alarms().is_empty());
    }

    #[test]
    fn a_reserve_larger_than_the_free_space_raises_the_alarm() {
        let dir = tempfile::tempdir().unwrap();
        let s = space(dir.path(), u64::MAX, u64::MAX / 2);
        s.inner.measure();
        let alarms = s.alarms();
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        assert_eq!(alarms[0].cause, AlarmCause::DiskFull);
        assert!(!s.has_room());
        assert!(s.failure().is_none(), "a low disk is no failure");

        let roomy = space(dir.path(), u64::MAX, 0);
        roomy.inner.measure();
        assert!(roomy.alarms().is_empty());
        assert!(roomy.has_room());
    }

    #[test]
    fn a_refused_write_is_a_failure_and_a_nospace_cause_that_stays() {
        let s = Space::unwatched();
        let full = io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32);
        s.write_failed("writing the raft log", &full);
        s.write_failed("checkpointing the raft log", &io::Error::other("later"));
        let failure = s.failure().expect("recorded");
        assert!(
            failure.starts_with("writing the raft log failed"),
            "the first is kept: {failure}"
        );
        let refusal = s.refusal(3).expect("raised");
        assert!(refusal.contains("node 3"), "{refusal}");
        assert!(refusal.contains("exits to be restarted"), "{refusal}");
        s.inner.measure();
        assert!(s.refusal(3).is_some(), "a measurement does not clear it");
    }

    #[test]
    fn disk_faults_are_told_apart_from_other_errors_also_inside_redb_errors() {
        let enospc = || io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32);
        assert!(is_disk_fault(&enospc()));
        assert!(is_disk_fault(&io::Error::other(redb::StorageError::Io(enospc()))));
        assert!(is_disk_fault(&io::Error::other(redb::CommitError::Storage(
            redb::StorageError::PreviousIo
        ))));
        assert!(!is_disk_fault(&io::Error::other(redb::StorageError::Corrupted(
            "x".into()
        ))));
        assert!(!is_disk_fault(&io::Error::new(io::ErrorKind::InvalidData, "bad entry")));
        assert!(!is_disk_fault(&io::Error::from_raw_os_error(
            nix::errno::Errno::EACCES as i32
        )));
    }
}
