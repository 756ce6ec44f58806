//! The load client runs and reports its figures (no timing assertions: the benchmark prints
//! figures; this only checks that it works).

mod common;

use common::{cli, cluster};

/// `raftkv bench <args> --json`, which must succeed; its report.
async fn bench_json(args: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = ["bench"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--json"])
        .collect();
    let r = cli(&args, None).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(r.stdout.trim()).expect("JSON report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_a_mixed_load_and_reports_json() {
    let c = cluster(1, &[]).await;
    let ep = c.node(0).http_addr().to_string();
    let v = bench_json(&[
        "--endpoint",
        &ep,
        "-c",
        "4",
        "--keys",
        "50",
        "--mix",
        "50:40:10",
        "--ops",
        "300",
        "--preload",
        "--label",
        "smoke",
    ])
    .await;
    assert_eq!(v["label"], "smoke");
    assert_eq!(v["ok"], 300, "{v}");
    assert!(v["errors"].as_object().is_some_and(|e| e.is_empty()), "{v}");
    assert!(v["throughput"].as_f64().unwrap() > 0.0);
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_ms"][q].as_f64().is_some(), "{q} missing: {v}");
    }
    // Open loop at a fixed rate, stale reads.
    let v = bench_json(&[
        "--endpoint",
        &ep,
        "-c",
        "2",
        "--keys",
        "50",
        "--mix",
        "100:0:0",
        "--consistency",
        "stale",
        "--rate",
        "200",
        "--ops",
        "100",
    ])
    .await;
    assert_eq!(v["ok"], 100, "{v}");
    // Op 99 is due 0.495 s after the start: an open loop cannot finish sooner (a lower bound
    // only, which no slow machine can break).
    assert!(v["seconds"].as_f64().unwrap() >= 0.49, "{v}");
    // Bad arguments are usage errors with a message.
    let r = cli(&["bench", "--endpoint", &ep, "--mix", "1:2"], None).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--mix"), "{}", r.stderr);
}
