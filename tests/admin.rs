//! Cluster administration through the `raftkv admin` / `kv` / `restore` commands, against real
//! processes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{cli, cluster, empty_cluster, CliRun, Kv};
use raftkv_client::{Consistency, ListOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_grow_3_to_5_and_shrink_back_under_writes_without_losing_acknowledged_writes() {
    let mut c = cluster(3, &[]).await;
    let writer = c.writer("w");
    let eps = c.admin_endpoints(&[1, 2, 0]);

    let mut new_ids = Vec::new();
    for _ in 0..2 {
        let i = c.add_loopback().expect("a new node");
        let id = c.start_unjoined(i).await.expect("the new node writes its id");
        let (raft, http) = (c.node(i).raft_addr().to_string(), c.node(i).http_addr().to_string());
        let r = cli(
            &["admin", "--endpoint", &eps, "add-voter", &id.to_string(), &raft, &http],
            None,
        )
        .await;
        assert_eq!(r.code, 0, "add-voter: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("promoted"), "{}", r.stdout);
        new_ids.push((i, id));
    }
    c.wait_voters(5).await.expect("5 voters");
    let members = cli(&["admin", "--endpoint", &eps, "-o", "json", "members"], None).await;
    let m: serde_json::Value = serde_json::from_str(&members.stdout).expect("members JSON");
    assert_eq!(m["members"].as_array().map(Vec::len), Some(5), "{m}");

    for (i, id) in new_ids.iter().rev() {
        let r = cli(&["admin", "--endpoint", &eps, "remove", &id.to_string()], None).await;
        assert_eq!(r.code, 0, "remove {id}: {}{}", r.stdout, r.stderr);
        // The removed node notices, stops serving and exits 0.
        let status = c
            .node_mut(*i)
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("removed node exits");
        assert!(status.success(), "removed node exit status {status}");
        assert!(c.node(*i).log_text().contains("not in the cluster's membership"));
    }
    c.wait_voters(3).await.expect("3 voters");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acked, failed) = writer.stop().await;
    eprintln!("writer: {} acknowledged, {failed} failed", acked.len());
    assert!(acked.len() > 50, "the writer made progress: {}", acked.len());
    for (k, v) in &acked {
        assert_eq!(
            c.get(0, k, Consistency::Linearizable).await.as_deref(),
            Some(v.as_str()),
            "acknowledged {k} lost"
        );
    }
    // A removed node restarted over its data exits at once instead of rejoining.
    let (i, _) = new_ids[0];
    c.node_mut(i).start(&[]).expect("start");
    let status = c
        .node_mut(i)
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("restarted removed node exits");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership_to_the_chosen_node() {
    let c = cluster(3, &[]).await;
    let leader = c.leader().await.expect("leader");
    let target = (leader + 2) % 3;
    let target_id = c.node(target).node_id().expect("node-id file");
    let eps = c.admin_endpoints(&[(leader + 1) % 3]);
    let r = cli(
        &["admin", "--endpoint", &eps, "transfer-leader", &target_id.to_string()],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        c.wait_leader(None, Duration::from_secs(10)).await.expect("a leader"),
        target
    );
    // Without an id, leadership goes to the most caught-up other voter.
    let r = cli(&["admin", "--endpoint", &eps, "-o", "json", "transfer-leader"], None).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["old_leader"], target_id);
    assert_ne!(v["new_leader"], target_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_membership_changes_are_refused_with_a_reason() {
    let c = cluster(3, &[]).await;
    let eps = c.admin_endpoints(&[0, 1, 2]);
    let follower = (c.leader().await.expect("leader") + 1) % 3;
    let id = c.node(follower).node_id().expect("node-id file").to_string();

    let r = fails(&["admin", "--endpoint", &eps, "remove", &id], "tolerate no failure").await;
    assert!(
        r.stderr.contains("127.0.0.1:"),
        "the error names the endpoint: {}",
        r.stderr
    );

    fails(&["admin", "--endpoint", &eps, "remove", "12345"], "not a member").await;

    // A clear timeout.
    fails(
        &[
            "admin",
            "--endpoint",
            &eps,
            "add-voter",
            "99",
            "127.0.0.1:1",
            "127.0.0.1:2",
            "--catch-up-timeout",
            "2",
        ],
        "stays a learner",
    )
    .await;

    let r = cli(&["admin", "--endpoint", &eps, "remove", "99"], None).await;
    assert_eq!(r.code, 0, "a learner can be removed: {}", r.stderr);

    let r = cli(&["admin", "--endpoint", &eps, "remove"], None).await;
    assert_eq!(r.code, 2, "usage error: {}", r.stderr);
    fails(
        &["admin", "--endpoint", "127.0.0.1:1", "status"],
        "no endpoint answered",
    )
    .await;

    let single = cluster(1, &[]).await;
    let eps = single.admin_endpoints(&[0]);
    let id = single.node(0).node_id().expect("node-id file").to_string();
    fails(&["admin", "--endpoint", &eps, "remove", &id], "last voter").await;
}

/// Runs the CLI, which must fail (exit 1) saying `reason` on stderr.
async fn fails(args: &[&str], reason: &str) -> CliRun {
    let r = cli(args, None).await;
    assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
    assert!(r.stderr.contains(reason), "{args:?}: {}", r.stderr);
    r
}

/// `raftkv restore` of the backup `from` into the data directory `dir` of a new node.
async fn restore(from: &Path, dir: &Path, id: u64, raft: &str, http: &str) -> CliRun {
    let (from, dir, id) = (from.to_str().unwrap(), dir.to_str().unwrap(), id.to_string());
    cli(
        &[
            "restore",
            "--from",
            from,
            "--data-dir",
            dir,
            "--id",
            &id,
            "--raft-addr",
            raft,
            "--http-addr",
            http,
        ],
        None,
    )
    .await
}

fn read_backup(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut r = raftkv::storage::snapshot::SnapshotReader::open(path).expect("open backup");
    let mut out = BTreeMap::new();
    while let Some(rec) = r.next_record().expect("read backup") {
        out.insert(rec.key, rec.value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_exactly_into_a_new_cluster() {
    let c = cluster(3, &[]).await;
    let writer = c.writer("b");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_backup = writer.stop().await.0;
    let writer = c.writer("c");
    let file = c.dir().join("cluster.backup");
    let eps = c.admin_endpoints(&[1, 2]);
    let r = cli(
        &["admin", "--endpoint", &eps, "backup", "-o", file.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    writer.stop().await;

    let backup = read_backup(&file);
    for (k, v) in &before_backup {
        assert_eq!(
            backup.get(k.as_bytes()).map(Vec::as_slice),
            Some(v.as_bytes()),
            "{k} missing from backup"
        );
    }

    let mut fresh = empty_cluster();
    let i = fresh.add_loopback().expect("a node");
    let (raft, http) = (
        fresh.node(i).raft_addr().to_string(),
        fresh.node(i).http_addr().to_string(),
    );
    let dir = fresh.node(i).data_dir().to_path_buf();
    let r = restore(&file, &dir, 77, &raft, &http).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    fresh.node_mut(i).start(&["--bootstrap"]).expect("start");
    fresh.wait_ready(i).await.expect("ready");
    let restored = fresh
        .node(i)
        .client()
        .list(&ListOptions {
            limit: Some(1000),
            ..ListOptions::default()
        })
        .await
        .expect("list the restored keys");
    let got: BTreeMap<Vec<u8>, Vec<u8>> = restored
        .items
        .iter()
        .map(|i| (i.key.to_vec(), i.value.to_vec()))
        .collect();
    assert!(restored.next_start.is_none(), "fewer than 1000 keys in this test");
    assert_eq!(got, backup, "the restored cluster serves exactly the backed-up data");
    // The restored cluster takes writes, and revisions keep increasing past the backup's.
    let max_backup_rev = restored.items.iter().map(|i| i.revision).max().unwrap_or(0);
    assert!(fresh.put_ok(i, "after-restore", "x").await > max_backup_rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_truncated_backup_is_refused() {
    let c = cluster(1, &[]).await;
    for k in 0..20 {
        c.put_ok(0, &format!("k{k}"), "some value to back up").await;
    }
    let file = c.dir().join("good.backup");
    let r = cli(
        &[
            "admin",
            "--endpoint",
            &c.admin_endpoints(&[0]),
            "backup",
            "-o",
            file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let good = std::fs::read(&file).unwrap();

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let truncated = &good[..good.len() - 10];
    for (name, bytes, expect) in [
        ("flipped", &flipped[..], "corrupt"),
        ("truncated", truncated, "truncated"),
    ] {
        let path = c.dir().join(name);
        std::fs::write(&path, bytes).unwrap();
        let dir = c.dir().join(format!("restore-{name}"));
        let r = restore(&path, &dir, 5, "127.0.0.1:1", "127.0.0.1:2").await;
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{name}: {}", r.stderr);
        assert!(!dir.join("state.redb").exists(), "nothing restored from a bad backup");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_command_reads_and_writes_from_args_files_and_stdin() {
    let c = cluster(3, &[]).await;
    let eps = format!("http://127.0.0.1:1,{}", c.node(1).http_addr());
    let r = cli(&["kv", "--endpoint", &eps, "put", "dir/a", "from-arg"], None).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cli(&["kv", "--endpoint", &eps, "put", "dir/b"], Some(b"from-stdin")).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let f = c.dir().join("value");
    std::fs::write(&f, b"from-file").unwrap();
    let r = cli(
        &["kv", "--endpoint", &eps, "put", "dir/c", "--file", f.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);

    let r = cli(&["kv", "--endpoint", &eps, "get", "dir/b"], None).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, "from-stdin"));
    let r = cli(
        &[
            "kv",
            "--endpoint",
            &eps,
            "-o",
            "json",
            "get",
            "dir/c",
            "--consistency",
            "stale",
        ],
        None,
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["value"], "from-file");
    let rev = v["revision"].as_u64().expect("revision");

    fails(
        &["kv", "--endpoint", &eps, "put", "dir/c", "x", "--if-match", "1"],
        "412",
    )
    .await;
    let r = cli(
        &[
            "kv",
            "--endpoint",
            &eps,
            "put",
            "dir/c",
            "y",
            "--if-match",
            &rev.to_string(),
        ],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);

    let r = cli(
        &["kv", "--endpoint", &eps, "-o", "json", "list", "--prefix", "dir/"],
        None,
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let keys: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["dir/a", "dir/b", "dir/c"]);

    let r = cli(&["kv", "--endpoint", &eps, "delete", "dir/a"], None).await;
    assert_eq!((r.code, r.stdout.trim()), (0, "deleted"));
    fails(&["kv", "--endpoint", &eps, "get", "dir/a"], "404").await;
    let r = cli(&["kv", "--endpoint", &eps, "put", "k", "v", "--file", "x"], None).await;
    assert_eq!(r.code, 2, "usage error: {}", r.stderr);
}
