//! A full disk and a storage quota are clean states (etcd's NOSPACE alarm): puts are refused
//! with `507 no_space` before they are proposed while reads and deletes go on, the alarm shows
//! in the status and the metrics, it clears by itself once the room is back, and a node whose
//! disk refused a Raft log write fails `/healthz` and exits, to come back with everything.
//! Nothing acknowledged is lost, nothing refused is applied.
//!
//! A real full disk is usually one node's: the node under test keeps its data directory on a
//! small tmpfs of its own (the suite runs as root, which mounting needs), the others on the
//! ordinary disk.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Options, BIN};
use raftkv_client::model::{AlarmCause, AlarmType};
use raftkv_client::{Condition, Consistency, Error};

/// The node whose disk fills up.
const FULL: usize = 1;
const TMPFS_MIB: u64 = 64;
/// The reserve every node keeps (`--disk-reserve-bytes`).
const RESERVE: u64 = 8 << 20;
const WAIT: Duration = Duration::from_secs(20);

/// A tmpfs mounted at a directory, unmounted on drop (lazily if a process still holds it).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(path).expect("the mount point is created");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount(8) runs");
        assert!(
            out.status.success(),
            "cannot mount a {mib} MiB tmpfs at {}: {}; this test needs root (CAP_SYS_ADMIN), as the suite runs",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.path).expect("statvfs of the tmpfs");
        s.blocks_available() * s.fragment_size()
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Fills the tmpfs with a file until `leave` bytes are free (or none at all, with 0).
    fn fill(&self, leave: u64) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("the filler opens");
        let chunk = vec![0x5au8; 1 << 20];
        loop {
            let free = self.free();
            if free <= leave {
                return;
            }
            let n = if leave == 0 {
                chunk.len()
            } else {
                (free - leave).min(chunk.len() as u64) as usize
            };
            match f.write(&chunk[..n]) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => return,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }

    fn free_the_space(&self) {
        std::fs::remove_file(self.filler()).expect("the filler goes");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let clean = Command::new("umount").arg(&self.path).status();
        if !clean.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A three-node cluster whose node `FULL` keeps its data on a tmpfs, every node keeping
/// `RESERVE` free; the directories live under `dir`.
async fn cluster_with_a_small_disk(dir: &Path) -> (Tmpfs, Cluster) {
    let reserve = RESERVE.to_string();
    let mut c = Cluster::new(
        Options::new(BIN)
            .dir(dir)
            .node_args(&["--disk-reserve-bytes", &reserve]),
    )
    .expect("a cluster");
    for _ in 0..3 {
        c.add_loopback().expect("a node");
    }
    let tmpfs = Tmpfs::mount(c.node(FULL).data_dir(), TMPFS_MIB);
    c.form().await.expect("the cluster forms");
    (tmpfs, c)
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The NOSPACE causes node `i` lists in its status.
async fn alarm_causes(c: &Cluster, i: usize) -> Vec<AlarmCause> {
    let status = c.status(i).await.expect("the node answers its status");
    for a in &status.alarms {
        assert_eq!(a.alarm, AlarmType::NoSpace);
        assert_eq!(a.member_id, status.id);
        assert!(!a.reason.is_empty());
    }
    status.alarms.iter().map(|a| a.cause).collect()
}

/// Whether node `i`'s metrics show the NOSPACE alarm raised for `cause`.
async fn alarm_metric(c: &Cluster, i: usize, cause: &str) -> bool {
    let text = c.node(i).client().metrics().await.expect("metrics");
    text.lines()
        .any(|l| l == format!("raftkv_server_alarm{{alarm=\"NOSPACE\",cause=\"{cause}\"}} 1"))
}

/// What the test wrote: the value every key must have at the end (`None`: absent, for keys
/// deleted or refused).
#[derive(Default)]
struct Expected(BTreeMap<String, Option<String>>);

impl Expected {
    /// A put through node `i` that must succeed.
    async fn put(&mut self, c: &Cluster, i: usize, key: &str, value: String) {
        let client = c.node(i).client();
        if let Err(e) = client.put(key.as_bytes(), value.clone(), Condition::None).await {
            panic!("PUT {key} on node {i}: {e}");
        }
        self.0.insert(key.to_string(), Some(value));
    }

    /// A put through node `i` that may be refused under the alarm: recorded as what it got.
    async fn put_maybe_refused(&mut self, c: &Cluster, i: usize, key: &str, value: String) -> bool {
        match c
            .node(i)
            .client()
            .put(key.as_bytes(), value.clone(), Condition::None)
            .await
        {
            Ok(_) => {
                self.0.insert(key.to_string(), Some(value));
                true
            }
            Err(e) => {
                assert_no_space(&e, key);
                self.0.insert(key.to_string(), None);
                false
            }
        }
    }

    /// Every key has its value (or is absent) on node `i`, read linearizably there.
    async fn check(&self, c: &Cluster, i: usize) {
        let client = c.node(i).client();
        for (key, want) in &self.0 {
            let got = match client.get(key.as_bytes(), Consistency::Linearizable).await {
                Ok(v) => v.map(|v| String::from_utf8_lossy(&v.value).into_owned()),
                Err(e) => panic!("GET {key} on node {i}: {e}"),
            };
            assert_eq!(
                got.as_deref().map(str::len),
                want.as_deref().map(str::len),
                "{key} on node {i}"
            );
            assert!(got == *want, "{key} on node {i} holds another value");
        }
    }
}

/// `e` is the clean refusal: 507, `no_space`, etcd's words.
fn assert_no_space(e: &Error, what: &str) {
    match e {
        Error::Api {
            status: 507,
            code,
            message,
            ..
        } if code == "no_space" => {
            assert!(
                message.starts_with("etcdserver: mvcc: database space exceeded"),
                "{what}: {message}"
            );
        }
        other => panic!("{what}: expected 507 no_space, got {other}"),
    }
}

fn value(n: usize, bytes: usize) -> String {
    format!("{n:08}").repeat(bytes / 8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_puts_cleanly_while_reads_go_on_and_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("a directory");
    let (tmpfs, c) = cluster_with_a_small_disk(dir.path()).await;
    let mut expected = Expected::default();
    for n in 0..12 {
        expected.put(&c, n % 3, &format!("before/{n}"), value(n, 64)).await;
    }

    tmpfs.fill(RESERVE / 2);
    let cr = &c;
    eventually("the full node raises NOSPACE", move || async move {
        alarm_causes(cr, FULL).await == [AlarmCause::DiskFull]
    })
    .await;
    assert!(alarm_metric(&c, FULL, "disk_full").await, "the alarm is in the metrics");

    // Puts are refused before they are proposed, conditional ones too.
    let client = c.node(FULL).client();
    let refused = client
        .put(b"refused/1", "x", Condition::None)
        .await
        .expect_err("refused");
    assert_no_space(&refused, "PUT on the full node");
    if let Error::Api { message, .. } = &refused {
        assert!(message.contains("--disk-reserve-bytes"), "{message}");
    }
    expected.0.insert("refused/1".into(), None);
    let cas = client
        .put(b"before/0", "y", Condition::IfExists)
        .await
        .expect_err("refused");
    assert_no_space(&cas, "conditional PUT on the full node");

    // Reads and deletes go on; the node stays alive and ready.
    for consistency in [Consistency::Linearizable, Consistency::Stale] {
        let v = client.get(b"before/1", consistency).await.expect("a read");
        assert_eq!(v.map(|v| v.value.len()), Some(64), "{consistency:?} read");
    }
    assert!(
        client
            .delete(b"before/2", Condition::None)
            .await
            .expect("a delete")
            .deleted
    );
    expected.0.insert("before/2".into(), None);
    assert!(client.healthy().await.expect("healthz").is_ok());
    assert!(client.ready().await.expect("readyz").is_ok());

    // The other nodes' disks have room: through them, puts are taken (the full node stores
    // their entries in its reserve) unless the full node leads, which refuses them too.
    for n in 0..6 {
        let through = if n % 2 == 0 { 0 } else { 2 };
        expected
            .put_maybe_refused(&c, through, &format!("during/{n}"), value(n, 64))
            .await;
    }

    tmpfs.free_the_space();
    eventually("the alarm clears by itself", move || async move {
        alarm_causes(cr, FULL).await.is_empty()
    })
    .await;
    assert!(!alarm_metric(&c, FULL, "disk_full").await);
    for n in 0..6 {
        expected.put(&c, FULL, &format!("after/{n}"), value(n, 64)).await;
    }
    for i in 0..3 {
        expected.check(&c, i).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_leader_refuses_the_puts_its_followers_forward_and_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("a directory");
    let (tmpfs, c) = cluster_with_a_small_disk(dir.path()).await;
    let full_id = c.node(FULL).node_id().expect("node-id file");
    let eps = c.admin_endpoints(&[0]);
    let moved = common::cli(
        &["admin", "--endpoint", &eps, "transfer-leader", &full_id.to_string()],
        None,
    )
    .await;
    assert_eq!(moved.code, 0, "{}{}", moved.stdout, moved.stderr);
    assert_eq!(c.wait_leader(None, WAIT).await.expect("a leader"), FULL);
    let mut expected = Expected::default();
    for n in 0..6 {
        expected.put(&c, n % 3, &format!("before/{n}"), value(n, 64)).await;
    }

    tmpfs.fill(RESERVE / 2);
    let cr = &c;
    eventually("the full leader raises NOSPACE", move || async move {
        alarm_causes(cr, FULL).await == [AlarmCause::DiskFull]
    })
    .await;
    // Refused by the leader, and answered as refused by the follower that forwarded them.
    for through in [0, 2] {
        let e = c
            .node(through)
            .client()
            .put(b"refused", "x", Condition::None)
            .await
            .expect_err("refused");
        assert_no_space(&e, &format!("PUT through node {through}"));
        if let Error::Api { message, .. } = &e {
            assert!(
                message.contains(&format!("node {full_id}")),
                "names the full node: {message}"
            );
        }
    }
    expected.0.insert("refused".into(), None);
    assert!(
        c.node(0)
            .client()
            .delete(b"before/1", Condition::None)
            .await
            .expect("a delete")
            .deleted
    );
    expected.0.insert("before/1".into(), None);

    tmpfs.free_the_space();
    eventually("the alarm clears by itself", move || async move {
        alarm_causes(cr, FULL).await.is_empty()
    })
    .await;
    for n in 0..6 {
        expected.put(&c, n % 3, &format!("after/{n}"), value(n, 64)).await;
    }
    for i in 0..3 {
        expected.check(&c, i).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_refuses_a_log_write_fails_healthz_exits_and_comes_back_whole() {
    let dir = tempfile::tempdir().expect("a directory");
    let (tmpfs, mut c) = cluster_with_a_small_disk(dir.path()).await;
    let leader = c.leader().await.expect("a leader");
    assert_ne!(leader, FULL, "the node that bootstrapped leads; the full one follows");
    let mut expected = Expected::default();
    for n in 0..6 {
        expected.put(&c, n % 3, &format!("before/{n}"), value(n, 64)).await;
    }

    // No room at all: the entries the leader replicates to the full node cannot be written.
    tmpfs.fill(0);
    let full = c.node(FULL).client().clone();
    let deadline = Instant::now() + WAIT;
    for n in 0.. {
        expected
            .put(&c, leader, &format!("during/{n}"), value(n, 256 << 10))
            .await;
        if !full.healthy().await.expect("healthz answers").is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the full node failed its liveness probe within {WAIT:?}"
        );
    }
    let probe = full.healthy().await.expect("healthz");
    let reason = probe.reason.expect("a reason");
    assert!(reason.contains("No space left on device"), "{reason}");
    let refused = full.put(b"refused/1", "x", Condition::None).await.expect_err("refused");
    assert_no_space(&refused, "PUT on the failed node");
    expected.0.insert("refused/1".into(), None);
    // The rest of the cluster goes on; the failed node stays up, failing its probe, while its
    // disk is still full (restarted now, it would only fail again).
    expected.put(&c, leader, "while-down", value(1, 64)).await;
    for _ in 0..5 {
        assert!(!full.healthy().await.expect("healthz answers").is_ok());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    tmpfs.free_the_space();
    let status = c
        .node_mut(FULL)
        .wait_exit(WAIT)
        .await
        .expect("the node exits once the space is back");
    assert!(!status.success(), "a failure exits non-zero: {status}");
    assert!(
        c.node(FULL)
            .log_text()
            .contains("exiting so that the supervisor restarts the node"),
        "the node says why it exits"
    );

    c.restart(FULL).expect("the node starts again");
    c.wait_ready(FULL).await.expect("the node is ready again");
    expected.put(&c, FULL, "after", value(2, 64)).await;
    for i in 0..3 {
        expected.check(&c, i).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_over_its_quota_refuses_puts_until_it_is_raised() {
    let mut c = Cluster::new(Options::new(BIN)).expect("a cluster");
    c.add_loopback().expect("a node");
    let quota = (4u64 << 20).to_string();
    c.node_mut(0)
        .start(&["--bootstrap", "--quota-backend-bytes", &quota])
        .expect("the node starts");
    c.wait_ready(0).await.expect("the node is ready");
    let client = c.node(0).client();

    // Puts until the state database outgrows the quota (it is measured every second, and
    // grows as the applied changes are flushed into it every few seconds).
    let mut expected = Expected::default();
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 2000, "the quota never refused a put");
        if !expected
            .put_maybe_refused(&c, 0, &format!("k/{n}"), value(n, 64 << 10))
            .await
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(alarm_causes(&c, 0).await, [AlarmCause::Quota]);
    assert!(alarm_metric(&c, 0, "quota").await);
    let metrics = client.metrics().await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("raftkv_server_quota_backend_bytes {quota}")),
        "the quota is in the metrics"
    );
    let refused = client
        .put(b"one-more", "x", Condition::None)
        .await
        .expect_err("refused");
    if let Error::Api { message, .. } = &refused {
        assert!(message.contains("--quota-backend-bytes"), "{message}");
    }
    expected.0.insert("one-more".into(), None);
    assert!(client.delete(b"k/1", Condition::None).await.expect("a delete").deleted);
    expected.0.insert("k/1".into(), None);
    expected.check(&c, 0).await;

    // A larger quota lifts the alarm; everything acknowledged is there.
    c.node_mut(0).kill();
    c.node_mut(0)
        .start(&["--quota-backend-bytes", &(1u64 << 30).to_string()])
        .expect("the node starts again");
    c.wait_ready(0).await.expect("the node is ready again");
    assert!(alarm_causes(&c, 0).await.is_empty());
    expected.put(&c, 0, "after", value(1, 64)).await;
    expected.check(&c, 0).await;
}
