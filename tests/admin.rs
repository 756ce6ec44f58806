//! Cluster administration through the `raftkv admin` / `kv` / `restore` commands, against real
//! processes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{cli, Cluster, Writer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_grow_3_to_5_and_shrink_back_under_writes_without_losing_acknowledged_writes() {
    let mut c = Cluster::start(3, &[]).await;
    let writer = Writer::start(c.nodes.iter().map(|n| n.http_addr.clone()).collect(), "w");
    let eps = c.admin_endpoints(&[1, 2, 0]);

    let mut new_ids = Vec::new();
    for _ in 0..2 {
        let i = c.add_node(&[]);
        let id = c.start_unjoined(i).await;
        let (raft, http) = (c.nodes[i].raft_addr.clone(), c.nodes[i].http_addr.clone());
        let r = cli(
            &["admin", "--endpoint", &eps, "add-voter", &id.to_string(), &raft, &http],
            None,
        )
        .await;
        assert_eq!(r.code, 0, "add-voter: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains("promoted"), "{}", r.stdout);
        new_ids.push((i, id));
    }
    c.wait_voters(5).await;
    let members = cli(&["admin", "--endpoint", &eps, "-o", "json", "members"], None).await;
    let m: serde_json::Value = serde_json::from_str(&members.stdout).expect("members JSON");
    assert_eq!(m["members"].as_array().map(Vec::len), Some(5), "{m}");

    for (i, id) in new_ids.iter().rev() {
        let r = cli(&["admin", "--endpoint", &eps, "remove", &id.to_string()], None).await;
        assert_eq!(r.code, 0, "remove {id}: {}{}", r.stdout, r.stderr);
        // The removed node notices, stops serving and exits 0.
        let status = c.nodes[*i]
            .wait_exit(Duration::from_secs(30))
            .expect("removed node exits");
        assert!(status.success(), "removed node exit status {status}");
        assert!(c.nodes[*i].log_text().contains("not in the cluster's membership"));
    }
    c.wait_voters(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acked, failed) = writer.stop().await;
    eprintln!("writer: {} acknowledged, {failed} failed", acked.len());
    assert!(acked.len() > 50, "the writer made progress: {}", acked.len());
    for (k, v) in &acked {
        assert_eq!(
            c.get(0, k, "linearizable").await.as_deref(),
            Some(v.as_str()),
            "acknowledged {k} lost"
        );
    }
    // A removed node restarted over its data exits at once instead of rejoining.
    let (i, _) = new_ids[0];
    c.start_with(i, &[]);
    let status = c.nodes[i]
        .wait_exit(Duration::from_secs(20))
        .expect("restarted removed node exits");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership_to_the_chosen_node() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader_index().await.expect("leader");
    let target = (leader + 2) % 3;
    let target_id = c.node_id(target);
    let eps = c.admin_endpoints(&[(leader + 1) % 3]);
    let r = cli(
        &["admin", "--endpoint", &eps, "transfer-leader", &target_id.to_string()],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(c.wait_leader(None, Duration::from_secs(10)).await, target);
    // Without an id, leadership goes to the most caught-up other voter.
    let r = cli(&["admin", "--endpoint", &eps, "-o", "json", "transfer-leader"], None).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["old_leader"], target_id);
    assert_ne!(v["new_leader"], target_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_membership_changes_are_refused_with_a_reason() {
    let c = Cluster::start(3, &[]).await;
    let eps = c.admin_endpoints(&[0, 1, 2]);
    let follower = (c.leader_index().await.expect("leader") + 1) % 3;
    let id = c.node_id(follower).to_string();

    let r = cli(&["admin", "--endpoint", &eps, "remove", &id], None).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("tolerate no failure"), "{}", r.stderr);
    assert!(
        r.stderr.contains("127.0.0.1:"),
        "the error names the endpoint: {}",
        r.stderr
    );

    let r = cli(&["admin", "--endpoint", &eps, "remove", "12345"], None).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a member"), "{}", r.stderr);

    let r = cli(
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
        None,
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("stays a learner"), "a clear timeout: {}", r.stderr);

    let r = cli(&["admin", "--endpoint", &eps, "remove", "99"], None).await;
    assert_eq!(r.code, 0, "a learner can be removed: {}", r.stderr);

    let r = cli(&["admin", "--endpoint", &eps, "remove"], None).await;
    assert_eq!(r.code, 2, "usage error: {}", r.stderr);
    let r = cli(&["admin", "--endpoint", "127.0.0.1:1", "status"], None).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no endpoint answered"), "{}", r.stderr);

    let single = Cluster::start(1, &[]).await;
    let eps = single.admin_endpoints(&[0]);
    let r = cli(
        &["admin", "--endpoint", &eps, "remove", &single.node_id(0).to_string()],
        None,
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("last voter"), "{}", r.stderr);
}

fn read_backup(path: &std::path::Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut r = raftkv::storage::snapshot::SnapshotReader::open(path).expect("open backup");
    let mut out = BTreeMap::new();
    while let Some(rec) = r.next_record().expect("read backup") {
        out.insert(rec.key, rec.value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_exactly_into_a_new_cluster() {
    let c = Cluster::start(3, &[]).await;
    let writer = Writer::start(c.nodes.iter().map(|n| n.http_addr.clone()).collect(), "b");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_backup = writer.stop().await.0;
    let writer = Writer::start(c.nodes.iter().map(|n| n.http_addr.clone()).collect(), "c");
    let file = c.dir.path().join("cluster.backup");
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

    let mut fresh = Cluster::empty();
    let i = fresh.add_node(&[]);
    let (raft, http) = (fresh.nodes[i].raft_addr.clone(), fresh.nodes[i].http_addr.clone());
    let dir = fresh.nodes[i].data_dir.clone();
    let r = cli(
        &[
            "restore",
            "--from",
            file.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--id",
            "77",
            "--raft-addr",
            &raft,
            "--http-addr",
            &http,
        ],
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    fresh.start_with(i, &["--bootstrap"]);
    fresh.wait_ready(i).await;
    let restored: serde_json::Value = fresh
        .http
        .get(fresh.nodes[i].url("/v1/kv?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = restored["items"].as_array().expect("items");
    let got: BTreeMap<Vec<u8>, Vec<u8>> = items
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().as_bytes().to_vec(),
                i["value"].as_str().unwrap().as_bytes().to_vec(),
            )
        })
        .collect();
    assert!(restored["next_start"].is_null(), "fewer than 1000 keys in this test");
    assert_eq!(got, backup, "the restored cluster serves exactly the backed-up data");
    // The restored cluster takes writes, and revisions keep increasing past the backup's.
    let max_backup_rev = items.iter().filter_map(|i| i["revision"].as_u64()).max().unwrap_or(0);
    assert!(fresh.put_ok(i, "after-restore", "x").await > max_backup_rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_truncated_backup_is_refused() {
    let c = Cluster::start(1, &[]).await;
    for k in 0..20 {
        c.put_ok(0, &format!("k{k}"), "some value to back up").await;
    }
    let file = c.dir.path().join("good.backup");
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
        let path = c.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let dir = c.dir.path().join(format!("restore-{name}"));
        let r = cli(
            &[
                "restore",
                "--from",
                path.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--id",
                "5",
                "--raft-addr",
                "127.0.0.1:1",
                "--http-addr",
                "127.0.0.1:2",
            ],
            None,
        )
        .await;
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{name}: {}", r.stderr);
        assert!(!dir.join("state.redb").exists(), "nothing restored from a bad backup");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_command_reads_and_writes_from_args_files_and_stdin() {
    let c = Cluster::start(3, &[]).await;
    let eps = format!("http://127.0.0.1:1,{}", c.nodes[1].http_addr);
    let r = cli(&["kv", "--endpoint", &eps, "put", "dir/a", "from-arg"], None).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = cli(&["kv", "--endpoint", &eps, "put", "dir/b"], Some(b"from-stdin")).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let f = c.dir.path().join("value");
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

    let r = cli(
        &["kv", "--endpoint", &eps, "put", "dir/c", "x", "--if-match", "1"],
        None,
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("412"), "{}", r.stderr);
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
    let r = cli(&["kv", "--endpoint", &eps, "get", "dir/a"], None).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
    let r = cli(&["kv", "--endpoint", &eps, "put", "k", "v", "--file", "x"], None).await;
    assert_eq!(r.code, 2, "usage error: {}", r.stderr);
}
