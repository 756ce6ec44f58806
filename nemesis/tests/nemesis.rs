//! The short nemesis runs of the test suite: a fixed seed, about a minute of faults on five real
//! nodes and 45 seconds on three, every check, one run at a time. `RAFTKV_NEMESIS_SEED` /
//! `RAFTKV_NEMESIS_SECONDS` replay or stretch them; the long run is the `raftkv-nemesis` binary.
//! Needs root (network namespaces) and Go.

use std::path::{Path, PathBuf};
use std::time::Duration;

use raftkv_nemesis::lincheck::{self, Verdict};
use raftkv_nemesis::{run, Config};

const SEED: u64 = 20261123;

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_seeded_run_finds_nothing_wrong() {
    seeded_run(5, 60).await;
}

/// Three voters: where a follower's word replaces the leader's heartbeat rounds for
/// linearizable reads (see `api::vouch`), so those shortcuts face the faults too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_seeded_run_on_three_nodes_finds_nothing_wrong() {
    seeded_run(3, 45).await;
}

/// One cluster at a time: they share the machine's cores and its network namespaces.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn seeded_run(nodes: usize, default_seconds: u64) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let seed = env_u64("RAFTKV_NEMESIS_SEED").unwrap_or(SEED);
    let seconds = env_u64("RAFTKV_NEMESIS_SECONDS").unwrap_or(default_seconds);
    eprintln!("nemesis seed {seed}, {seconds}s, {nodes} nodes (RAFTKV_NEMESIS_SEED={seed} replays it)");
    let out = tempfile::Builder::new()
        .prefix("raftkv-nemesis-")
        .tempdir()
        .expect("temp dir");
    let cfg = Config {
        seed,
        duration: Duration::from_secs(seconds),
        nodes,
        clients: 8,
        keys: 6,
        raftkv: target_dir().join("raftkv"),
        out: out.path().to_path_buf(),
    };
    let report = run(&cfg).await.expect("the nemesis harness runs (as root, with Go)");
    eprintln!("{report}");
    if !report.passed() {
        let kept = out.keep();
        panic!(
            "the nemesis run found problems; history and logs kept in {}",
            kept.display()
        );
    }
    // The run must have exercised what it claims to.
    let kinds: std::collections::BTreeSet<_> = report.faults.iter().map(|f| f.kind).collect();
    let applicable = raftkv_nemesis::nemesis::FaultKind::ALL
        .into_iter()
        .filter(|k| k.applies_to(nodes))
        .count();
    assert_eq!(
        kinds.len(),
        applicable,
        "every fault kind that {nodes} nodes allow injected at least once: {kinds:?}"
    );
    let acked = report.ops.iter().filter(|o| o.acked_write()).count();
    assert!(acked > 100, "only {acked} acknowledged writes");
}

/// The checker, as the harness runs it, catches a stale read and names the minimal subhistory.
#[test]
fn the_checker_rejects_a_stale_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = lincheck::build(dir.path()).expect("go build lincheck");
    let history = dir.path().join("h.jsonl");
    std::fs::write(
        &history,
        [
            r#"{"id":1,"client":1,"node":0,"kind":"put","key":"k","value":"a","call_ns":0,"return_ns":10,"status":"ok"}"#,
            r#"{"id":2,"client":2,"node":1,"kind":"put","key":"k","value":"b","call_ns":20,"return_ns":30,"status":"ok"}"#,
            r#"{"id":3,"client":3,"node":2,"kind":"get","consistency":"linearizable","key":"k","found":true,"value":"a","call_ns":40,"return_ns":50,"status":"ok"}"#,
            r#"{"id":4,"client":3,"node":2,"kind":"get","consistency":"stale","key":"k","found":true,"value":"a","call_ns":60,"return_ns":70,"status":"ok"}"#,
        ]
        .join("\n"),
    )
    .expect("write history");
    match lincheck::check(&bin, &history, "linearizable", None).expect("checker runs") {
        Verdict::Violation(text) => {
            assert!(text.contains("#3"), "the stale read is named: {text}");
            assert!(
                !text.contains("#4"),
                "stale-consistency reads are not part of this check: {text}"
            );
        }
        other => panic!("expected a violation, got {other:?}"),
    }
    match lincheck::check(&bin, &history, "lease", None).expect("checker runs") {
        Verdict::Linearizable(_) => {}
        other => panic!("with no lease reads the writes alone are linearizable, got {other:?}"),
    }
}
