//! Metrics as users see them: promtool-clean exposition, a real Prometheus scraping a real
//! cluster, and a dashboard whose every query refers to metrics that a live node exposes.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool`); `scripts/test.sh`
//! installs it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cli, cluster, Cluster, Kv};
use raftkv_client::Consistency;
use raftkv_harness::prometheus::{self, PanelQuery, Prometheus};

/// How long a Prometheus query may take to show what the cluster did.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);

/// Metric names (with histogram series names) in an exposition.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                if kind == "histogram" || kind == "summary" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
    }
    names
}

async fn scrape(c: &Cluster, i: usize) -> String {
    c.node(i).client().metrics().await.expect("GET /metrics")
}

async fn exercise(c: &Cluster) {
    for k in 0..30 {
        c.put_ok(k % 3, &format!("m{k}"), "v").await;
        c.get(k % 3, &format!("m{k}"), Consistency::Linearizable).await;
    }
    let _ = c.node(0).client().get(b"nope", Consistency::Linearizable).await;
    let r = cli(&["admin", "--endpoint", &c.admin_endpoints(&[0]), "snapshot"], None).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_exposes_promtool_clean_metrics_with_bounded_labels() {
    let c = cluster(3, &[]).await;
    exercise(&c).await;
    let leader = c.leader().await.expect("leader");
    let promtool = prometheus::find_tool("promtool").expect("promtool");
    for i in 0..3 {
        let text = scrape(&c, i).await;
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), text.as_bytes()).expect("feed promtool");
        let out = child.wait_with_output().expect("promtool output");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool on node {i}: {report}"
        );

        let names = exposed_names(&text);
        for required in [
            "raftkv_raft_has_leader",
            "raftkv_raft_is_leader",
            "raftkv_raft_term",
            "raftkv_raft_leader_changes_seen_total",
            "raftkv_raft_commit_index",
            "raftkv_raft_applied_index",
            "raftkv_raft_last_log_index",
            "raftkv_raft_purged_index",
            "raftkv_raft_snapshot_index",
            "raftkv_raft_proposals_committed_total",
            "raftkv_raft_proposals_failed_total",
            "raftkv_raft_proposals_pending",
            "raftkv_raft_members",
            "raftkv_raft_elections_started_total",
            "raftkv_storage_log_append_duration_seconds",
            "raftkv_storage_log_append_batch_entries",
            "raftkv_storage_log_checkpoint_duration_seconds",
            "raftkv_storage_apply_duration_seconds",
            "raftkv_storage_entries_applied_total",
            "raftkv_storage_db_size_bytes",
            "raftkv_snapshot_build_duration_seconds",
            "raftkv_snapshot_install_duration_seconds",
            "raftkv_snapshot_size_bytes",
            "raftkv_http_requests_total",
            "raftkv_http_request_duration_seconds",
            "raftkv_raft_writes_forwarded_total",
            "raftkv_raft_proposal_commands",
            "raftkv_storage_state_flush_duration_seconds",
            "raftkv_read_index_confirmations_total",
            "raftkv_server_alarm",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(names.contains(required), "node {i} lacks {required}");
        }
        if i == leader {
            for required in [
                "raftkv_raft_peer_matched_index",
                "raftkv_raft_peer_lag_entries",
                "raftkv_raft_peer_last_contact_seconds",
                "raftkv_grpc_raft_rpcs_total",
                "raftkv_grpc_raft_rpc_duration_seconds",
            ] {
                assert!(names.contains(required), "leader lacks {required}");
            }
        }
        // Labels stay bounded: no key, address or free-form label anywhere.
        let allowed: BTreeSet<&str> = [
            "route", "method", "code", "peer", "role", "db", "reason", "result", "node_id", "version", "le", "via",
            "alarm", "cause",
        ]
        .into();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(labels) = line
                .split_once('{')
                .and_then(|(_, r)| r.split_once('}'))
                .map(|(l, _)| l)
            {
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let name = pair.split('=').next().unwrap_or("").trim();
                    assert!(allowed.contains(name), "unexpected label {name:?} in {line}");
                }
            }
            assert!(!line.contains("/v1/kv/m"), "a key leaked into a label: {line}");
        }
        // With three voters, a follower's linearizable reads were confirmed by the leader on the
        // follower's word, without a heartbeat round.
        let via = |how: &str| {
            sample(
                &text,
                &format!("raftkv_read_index_confirmations_total{{via=\"{how}\"}}"),
            )
        };
        if i == leader {
            assert!(
                via("vouch") >= 1.0,
                "the leader answered no follower on its word:\n{text}"
            );
        } else {
            assert!(via("leader") >= 1.0, "follower {i} asked the leader for no read index");
        }
    }
}

/// The value of the sample `series` (name and labels, as exposed) in `text`; 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every `expr` in the dashboard, with the template variables set for the test cluster.
fn dashboard_queries() -> Vec<PanelQuery> {
    prometheus::dashboard_queries(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/raftkv.json")),
        &[
            ("$namespace", "local"),
            ("$cluster", "test"),
            ("$__rate_interval", "15s"),
        ],
    )
    .expect("read the dashboard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_cluster_and_the_dashboard_queries_work() {
    let c = cluster(3, &[]).await;
    let config = prometheus::Config::static_job(
        "raftkv",
        &c.http_addrs(),
        &[("namespace", "local"), ("cluster", "test")],
    );
    let prom = Prometheus::start(c.dir(), &config).await.expect("prometheus starts");

    prom.wait_for("up{job=\"raftkv\"}", PROMETHEUS_WAIT, |v| {
        v.len() == 3 && v.iter().all(|x| *x == 1.0)
    })
    .await
    .expect("every node up");
    let leaders = prom
        .wait_for("raftkv_raft_is_leader == 1", PROMETHEUS_WAIT, |v| !v.is_empty())
        .await
        .expect("a leader");
    assert_eq!(leaders.len(), 1, "exactly one node reports is_leader");
    assert_eq!(
        prom.values("sum(raftkv_raft_has_leader)").await.expect("query"),
        vec![3.0]
    );

    // Writes show up as a rate.
    let writer = c.writer("p");
    exercise(&c).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for rate in [
        "sum(rate(raftkv_http_requests_total{route=\"/v1/kv/{*key}\",method=\"PUT\"}[15s]))",
        "max(rate(raftkv_raft_proposals_committed_total[15s]))",
    ] {
        prom.wait_for(rate, PROMETHEUS_WAIT, |v| v.first().is_some_and(|x| *x > 0.0))
            .await
            .expect("a rate above zero");
    }
    writer.stop().await;

    // Every dashboard query parses and names only metrics a live node exposes.
    let mut exposed = BTreeSet::new();
    for i in 0..3 {
        exposed.extend(exposed_names(&scrape(&c, i).await));
    }
    let name_re = |expr: &str| -> Vec<String> {
        let mut names = Vec::new();
        let bytes = expr.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &expr[start..i];
            let quoted = start > 0 && bytes[start - 1] == b'"';
            if !quoted && (word.starts_with("raftkv_") || word.starts_with("process_")) {
                names.push(word.to_string());
            }
            if i == start {
                i += 1;
            }
        }
        names
    };
    let queries = dashboard_queries();
    for PanelQuery { title, expr } in &queries {
        for name in name_re(expr) {
            assert!(
                exposed.contains(&name),
                "panel {title:?} uses {name}, which no node exposes"
            );
        }
    }
    let with_data = prom
        .panels_with_data(&queries)
        .await
        .expect("every dashboard query succeeds");
    for title in [
        "Leader",
        "Nodes with a leader",
        "Term",
        "Members",
        "Requests per second",
        "Write latency (PUT)",
        "Commit vs applied index",
        "Replication lag per follower (entries)",
        "Log fsync latency (journal group commit; checkpoint into redb)",
        "Database size",
        "Resident memory",
    ] {
        assert_eq!(with_data.get(title), Some(&true), "panel {title:?} shows no data");
    }
}
