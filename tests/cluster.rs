//! A real cluster of `raftkv` processes: formation, replication, forwarding, failures.

mod common;

use std::time::{Duration, Instant};

use common::{cluster, http, Kv};
use nix::sys::signal::Signal;
use raftkv_client::Consistency::{Lease, Linearizable, Stale};

/// The cluster id node `i` reports through the admin service.
async fn admin_cluster_id(c: &raftkv_harness::Cluster, i: usize) -> String {
    let admin = raftkv_client::Admin::new(&c.node(i).raft_addr().to_string()).expect("admin endpoint");
    admin.status().await.expect("admin status").cluster_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_and_join_form_a_three_voter_cluster_with_one_leader() {
    let c = cluster(3, &[]).await;
    let mut leaders = 0;
    let mut cluster_ids = std::collections::BTreeSet::new();
    for i in 0..3 {
        let s = c.status(i).await.expect("status");
        assert_eq!(s.members.len(), 3, "{s:?}");
        if s.is_leader() {
            leaders += 1;
        }
        // The HTTP status never tells the cluster id (it fences Raft traffic); the admin
        // service on the peer port does.
        assert_eq!(s.cluster_id, None, "{s:?}");
        cluster_ids.insert(admin_cluster_id(&c, i).await);
    }
    assert_eq!(leaders, 1);
    assert_eq!(cluster_ids.len(), 1, "all nodes share one cluster id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_follower_is_read_linearizably_from_every_node() {
    let c = cluster(3, &[]).await;
    let leader = c.leader().await.expect("leader");
    let follower = (leader + 1) % 3;
    let r = http()
        .put(c.node(follower).url("/v1/kv/greeting"))
        .body("hello")
        .send()
        .await
        .expect("PUT request");
    assert_eq!(r.status(), 200);
    let served_by: u64 = r.headers()["x-raftkv-node"].to_str().unwrap().parse().unwrap();
    assert_eq!(
        Some(served_by),
        c.node(leader).node_id(),
        "the follower forwarded the write to the leader"
    );
    for i in 0..3 {
        assert_eq!(
            c.get(i, "greeting", Linearizable).await.as_deref(),
            Some("hello"),
            "node {i}"
        );
        assert_eq!(c.get(i, "greeting", Lease).await.as_deref(), Some("hello"), "node {i}");
    }
    // A stale read is served by the node itself and, once applied, agrees.
    let deadline = Instant::now() + Duration::from_secs(5);
    for i in 0..3 {
        while c.get(i, "greeting", Stale).await.as_deref() != Some("hello") {
            assert!(Instant::now() < deadline, "node {i} never applied the write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_loses_no_acknowledged_write() {
    let mut c = cluster(3, &[]).await;
    let mut acked = Vec::new();
    for k in 0..50 {
        let node = k % 3;
        c.put_ok(node, &format!("k{k}"), &format!("v{k}")).await;
        acked.push(k);
    }
    let old = c.leader().await.expect("leader");
    c.node_mut(old).kill();
    let new = c
        .wait_leader(Some(old), Duration::from_secs(15))
        .await
        .expect("a new leader");
    assert_ne!(new, old);
    // The survivors keep accepting writes.
    for k in 50..60 {
        c.put_ok(new, &format!("k{k}"), &format!("v{k}")).await;
        acked.push(k);
    }
    for k in &acked {
        assert_eq!(
            c.get(new, &format!("k{k}"), Linearizable).await,
            Some(format!("v{k}")),
            "k{k} lost"
        );
    }
    // The old leader comes back as a follower with everything.
    c.restart(old).expect("restart");
    c.wait_ready(old).await.expect("ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.get(old, "k59", Stale).await.as_deref() != Some("v59") {
        assert!(Instant::now() < deadline, "restarted node did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for k in &acked {
        assert_eq!(c.get(old, &format!("k{k}"), Stale).await, Some(format!("v{k}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_purged_log_catches_up_by_snapshot() {
    let mut c = cluster(3, &["--snapshot-threshold", "50"]).await;
    let leader = c.leader().await.expect("leader");
    let lagging = (leader + 1) % 3;
    c.node_mut(lagging).kill();
    // Write until the leader has snapshotted and purged past everything the lagging node has.
    // (openraft does not purge logs that a replication in flight may read, and it keeps
    // retrying the dead node, so when the purge lands varies: keep writing until it has.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut written = 0;
    let purged = loop {
        for k in written..written + 100 {
            c.put_ok(leader, &format!("key{k:05}"), &format!("value{k}")).await;
        }
        written += 100;
        let s = c.status(leader).await.expect("leader status");
        let purged = s.purged.map_or(0, |p| p.index);
        if written >= 400 && purged > 100 {
            break purged;
        }
        assert!(Instant::now() < deadline, "the leader never purged its log: {s:?}");
    };
    c.restart(lagging).expect("restart");
    c.wait_ready(lagging).await.expect("ready");
    let last = written - 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get(lagging, &format!("key{last:05}"), Stale).await != Some(format!("value{last}")) {
        assert!(Instant::now() < deadline, "lagging node did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = c.status(lagging).await.expect("status");
    assert!(
        s.snapshot.map_or(0, |p| p.index) >= purged,
        "caught up through a snapshot: {s:?}"
    );
    for k in (0..written).step_by(7) {
        assert_eq!(
            c.get(lagging, &format!("key{k:05}"), Stale).await,
            Some(format!("value{k}"))
        );
    }
    assert!(c.node(lagging).log_text().contains("snapshot installed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_recovers_its_state_after_all_are_killed() {
    let mut c = cluster(3, &["--snapshot-threshold", "40"]).await;
    for k in 0..100 {
        c.put_ok(k % 3, &format!("k{k}"), &format!("v{k}")).await;
    }
    for i in 0..3 {
        c.node_mut(i).kill();
    }
    for i in 0..3 {
        c.restart(i).expect("restart");
    }
    let leader = c.wait_leader(None, Duration::from_secs(20)).await.expect("a leader");
    for k in 0..100 {
        assert_eq!(
            c.get(leader, &format!("k{k}"), Linearizable).await,
            Some(format!("v{k}"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_over_and_exits_zero() {
    let mut c = cluster(3, &[]).await;
    c.put_ok(0, "before", "1").await;
    let old = c.leader().await.expect("leader");
    let started = Instant::now();
    c.node(old).signal(Signal::SIGTERM);
    let status = c
        .node_mut(old)
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("node exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    let new = c
        .wait_leader(Some(old), Duration::from_secs(10))
        .await
        .expect("a new leader");
    // A hand-off is much faster than waiting out an election timeout on a dead leader.
    assert!(
        c.node(old).log_text().contains("handed leadership over"),
        "{}",
        c.node(old).log_text()
    );
    eprintln!("leader moved in {:?}", started.elapsed());
    assert_eq!(c.get(new, "before", Linearizable).await.as_deref(), Some("1"));
    c.put_ok(new, "after", "2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_on_a_node_with_state_is_a_no_op() {
    let mut c = cluster(1, &[]).await;
    c.put_ok(0, "k", "v").await;
    let before = admin_cluster_id(&c, 0).await;
    c.node_mut(0).kill();
    c.node_mut(0).start(&["--bootstrap"]).expect("start");
    c.wait_ready(0).await.expect("ready");
    let after = admin_cluster_id(&c, 0).await;
    assert!(!before.is_empty());
    assert_eq!(before, after);
    assert_eq!(c.get(0, "k", Linearizable).await.as_deref(), Some("v"));
    assert!(c.node(0).log_text().contains("--bootstrap ignored"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_and_linearizable_reads_fail_fast_with_503() {
    let mut c = cluster(3, &["--request-timeout-ms", "2000"]).await;
    c.put_ok(0, "k", "v").await;
    let leader = c.leader().await.expect("leader");
    for i in 0..3 {
        if i != leader {
            c.node_mut(i).kill();
        }
    }
    let started = Instant::now();
    let h = http();
    let r = h
        .put(c.node(leader).url("/v1/kv/k"))
        .body("w")
        .send()
        .await
        .expect("PUT request");
    assert!(r.status() == 503 || r.status() == 504, "status {}", r.status());
    let body: serde_json::Value = r.json().await.expect("JSON error");
    assert!(body["error"]["code"].is_string(), "{body}");
    let r = h
        .get(c.node(leader).url("/v1/kv/k?consistency=linearizable"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed in bounded time: {:?}",
        started.elapsed()
    );
    // A stale read still answers from the node's own state.
    assert_eq!(c.get(leader, "k", Stale).await.as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_with_if_match_and_if_none_match() {
    let c = cluster(1, &[]).await;
    let h = http();
    let url = c.node(0).url("/v1/kv/cas");
    let create = |v: &'static str| h.put(&url).header("if-none-match", "*").body(v).send();
    let r = create("a").await.expect("create");
    assert_eq!(r.status(), 200);
    let rev = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(create("b").await.expect("create again").status(), 412);

    let r = h
        .put(&url)
        .header("if-match", "\"999999\"")
        .body("c")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 412);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "precondition_failed");
    assert_eq!(
        Some(format!("\"{}\"", body["error"]["current_revision"])),
        Some(rev.clone())
    );

    let r = h
        .put(&url)
        .header("if-match", &rev)
        .body("d")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    assert_eq!(c.get(0, "cas", Linearizable).await.as_deref(), Some("d"));
    // The old revision no longer matches, for writes and deletes alike.
    let r = h.delete(&url).header("if-match", &rev).send().await.expect("delete");
    assert_eq!(r.status(), 412);
    let r = h.delete(&url).header("if-match", "*").send().await.expect("delete");
    assert_eq!(r.status(), 200);
    assert_eq!(c.get(0, "cas", Linearizable).await, None);
    let r = h.delete(&url).header("if-match", "*").send().await.expect("delete");
    assert_eq!(r.status(), 412, "If-Match: * on an absent key");
}

/// Found by the nemesis test: a leader killed and restarted before anyone else campaigned took
/// its leadership back without an election (openraft's "leader restore") with a stale commit
/// index (ours is not fsynced on every commit, nor is the state machine on apply), and answered
/// reads from a state older than writes it had acknowledged, in the moments before replication
/// caught its commit index up. A restarted leader must first learn the commit index through an
/// election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_at_once_serves_no_stale_reads() {
    let mut c = cluster(3, &[]).await;
    let h = http();
    let mut answered = 0;
    for round in 0..6 {
        let l = c.wait_leader(None, Duration::from_secs(20)).await.expect("a leader");
        let value = format!("v{round}");
        c.put_ok(l, "k", &value).await;
        c.restart(l).expect("restart");
        // Read through the restarted node as fast as possible from the moment it listens:
        // refusals and 503s while leadership settles are fine, an old value is not.
        let until = Instant::now() + Duration::from_secs(3);
        let mut n = 0u64;
        while Instant::now() < until {
            n += 1;
            let consistency = if n.is_multiple_of(2) { "lease" } else { "linearizable" };
            let Ok(r) = h
                .get(c.node(l).url(&format!("/v1/kv/k?consistency={consistency}")))
                .send()
                .await
            else {
                continue;
            };
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if status == 503 {
                continue;
            }
            assert_eq!(
                (status, body.as_str()),
                (200, value.as_str()),
                "round {round}: a {consistency} read through the restarted leader"
            );
            answered += 1;
        }
    }
    assert!(answered > 0, "no read was answered");
}

/// After every node restarts, the followers take the old leader for the leader (their stored
/// vote says so) while it knows it must win an election first. Writes sent meanwhile must wait
/// for the election, not stall behind each other until they time out: a proposer that held its
/// in-flight slots while no leader was known left the followers' forwarded writes unanswered
/// for the whole request timeout (every write of the first 5 s failed with 504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_across_a_full_restart_wait_for_the_election_and_never_time_out() {
    let mut c = cluster(3, &[]).await;
    for k in 0..30 {
        c.put_ok(k % 3, &format!("warm{k}"), "v").await;
    }
    for i in 0..3 {
        c.node_mut(i).kill();
    }
    for i in 0..3 {
        c.restart(i).expect("restart");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let stop_at = Instant::now() + Duration::from_secs(8);
    let mut writers = Vec::new();
    for w in 0..24 {
        let http = http.clone();
        let base = c.node(w % 3).url("/v1/kv/");
        writers.push(tokio::spawn(async move {
            let (mut ok, mut timeouts) = (0u32, 0u32);
            for n in 0.. {
                if Instant::now() >= stop_at {
                    break;
                }
                match http.put(format!("{base}w{w}-{n}")).body("x").send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) if r.status() == 504 => timeouts += 1,
                    // Not listening yet, or no leader yet: try again.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            (ok, timeouts)
        }));
    }
    let (mut ok, mut timeouts) = (0, 0);
    for w in writers {
        let (o, t) = w.await.expect("writer");
        ok += o;
        timeouts += t;
    }
    assert_eq!(timeouts, 0, "writes timed out across the restart ({ok} succeeded)");
    assert!(ok > 100, "writes resumed after the election: {ok}");
}
