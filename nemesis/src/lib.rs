//! Nemesis testing for raftkv, in the manner of etcd's robustness tests and Jepsen: a cluster of
//! real `raftkv` processes in network namespaces, concurrent clients recording every operation,
//! a seeded nemesis killing, pausing, partitioning, re-membering and wiping nodes, and then
//! the checks — porcupine for linearizability, plus lost writes, stale-read sanity,
//! convergence and recovery time.
//!
//! Data flow: [`cluster`] runs the nodes, [`workload`] drives them and fills a
//! [`history::Recorder`], [`nemesis`] breaks things, [`run`] gathers the final state and hands
//! the history to [`checks`] and [`lincheck`]; [`Report`] says what happened.

pub mod checks;
pub mod cluster;
pub mod history;
pub mod lincheck;
pub mod nemesis;
pub mod partition;
pub mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftkv_client::model::ListItem;
use raftkv_client::{Client, ListOptions};

use cluster::Cluster;
use history::{Consistency, Outcome, Recorder, Request};
use lincheck::Verdict;
pub use report::Report;
use workload::Shared;

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// How long the nemesis injects faults (clients run a little longer on each side).
    pub duration: Duration,
    pub nodes: usize,
    pub clients: u32,
    pub keys: usize,
    /// The `raftkv` binary.
    pub raftkv: PathBuf,
    /// Where the history, node logs and checker output go.
    pub out: PathBuf,
}

/// Runs the whole thing and returns what was found; `Err` only when the harness itself could
/// not run (no root, no Go, no binary).
pub async fn run(cfg: &Config) -> anyhow::Result<Report> {
    if !cfg.raftkv.exists() {
        bail!(
            "{} does not exist: build it first (cargo build -p raftkv)",
            cfg.raftkv.display()
        );
    }
    std::fs::create_dir_all(&cfg.out)?;
    let checker = lincheck::build(&cfg.out)?;
    let mut cluster = Cluster::start(&cfg.raftkv, &cfg.out, cfg.nodes)
        .await
        .context("starting the cluster")?;

    let recorder = Arc::new(Recorder::new(Instant::now()));
    let shared = Arc::new(Shared {
        clients: workload::clients(&cluster.nodes.http_addrs())?,
        incarnations: cluster.incarnations(),
        recorder: recorder.clone(),
        keys: cfg.keys,
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> = (1..=cfg.clients)
        .map(|id| tokio::spawn(workload::client(id, cfg.seed, shared.clone())))
        .collect();
    let prober = tokio::spawn(workload::probe(shared.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut nemesis = nemesis::Nemesis::new(&mut cluster, cfg.seed, recorder.clone());
    let faults = nemesis.run(recorder.now() + cfg.duration).await;
    let whole = nemesis.wait_whole(nemesis::RECOVERY_BOUND).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let probed = prober.await.unwrap_or_default();
    let end = recorder.now();

    let mut problems = Vec::new();
    if !whole {
        problems.push("the cluster was not whole again after the last fault".to_string());
    }
    for f in &faults {
        if f.recovered.is_none() {
            problems.push(format!(
                "no recovery within {:?} after {} ({})",
                nemesis::RECOVERY_BOUND,
                f.kind.name(),
                f.detail
            ));
        }
    }
    let finals = final_reads(&cluster, &shared, cfg.clients + 1).await;
    if finals.len() < cfg.keys {
        problems.push(format!("only {} of {} final reads succeeded", finals.len(), cfg.keys));
    }
    match converge(&mut cluster, &shared).await {
        Ok(()) => {}
        Err(e) => problems.push(format!("nodes did not converge: {e:#}")),
    }

    let ops = recorder.ops();
    let history_path = cfg.out.join("history.jsonl");
    history::write_jsonl(&history_path, &ops)?;
    let mut verdicts = BTreeMap::new();
    for reads in ["linearizable", "lease"] {
        let viz = cfg.out.join(format!("violation-{reads}.html"));
        let v = lincheck::check(&checker, &history_path, reads, Some(&viz))?;
        match &v {
            Verdict::Linearizable(_) => {}
            Verdict::Violation(text) => problems.push(format!("{reads} reads: NOT linearizable\n{text}")),
            Verdict::Unknown(text) => problems.push(format!("{reads} reads: the checker gave up\n{text}")),
        }
        verdicts.insert(reads, v);
    }
    problems.extend(checks::stale_reads(&ops));
    problems.extend(checks::lost_writes(&ops, &finals));
    let unavailable = checks::unavailability(&probed, &faults, end);
    if !problems.is_empty() {
        std::fs::write(cfg.out.join("node-logs-tail.txt"), cluster.nodes.log_tails(200))?;
    }
    Ok(Report {
        seed: cfg.seed,
        nodes: cfg.nodes,
        out: cfg.out.clone(),
        ops,
        faults,
        unavailable,
        verdicts,
        problems,
    })
}

/// One successful linearizable read of every key, recorded like any other operation.
async fn final_reads(cluster: &Cluster, shared: &Shared, client: u32) -> BTreeMap<String, Option<String>> {
    let mut finals = BTreeMap::new();
    for k in 0..shared.keys {
        let deadline = Instant::now() + Duration::from_secs(30);
        for attempt in 0.. {
            let node = attempt % cluster.len();
            let req = Request::Get(Consistency::Linearizable);
            let op = workload::execute(shared, client, node, k, req, None).await;
            let result = match &op.outcome {
                Outcome::Read(found) => Some(found.as_ref().map(|(v, _)| v.clone())),
                _ => None,
            };
            shared.recorder.record(op);
            if let Some(r) = result {
                finals.insert(workload::key_name(k), r);
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    finals
}

/// Waits until every node has applied the leader's last entry, then compares their states key
/// by key (read locally on each node).
async fn converge(cluster: &mut Cluster, shared: &Shared) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut applied = Vec::new();
        for i in 0..cluster.len() {
            let s = cluster.nodes.status(i).await;
            applied.push(s.and_then(|s| s.applied.map(|p| p.index)));
        }
        let first = applied[0];
        if first.is_some() && applied.iter().all(|a| *a == first) {
            break;
        }
        if Instant::now() >= deadline {
            bail!("applied indexes still differ after 30s: {applied:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut states = Vec::new();
    for (node, client) in cluster.nodes.nodes().iter().zip(&shared.clients) {
        let items = local_state(client)
            .await
            .with_context(|| format!("reading the state of {}", node.name()))?;
        states.push((node.name().to_string(), items));
    }
    for (name, items) in &states[1..] {
        if items != &states[0].1 {
            bail!("{name} holds {items:?}, but {} holds {:?}", states[0].0, states[0].1);
        }
    }
    Ok(())
}

/// Every key a node holds, read from its own state (stale reads), page by page.
async fn local_state(client: &Client) -> anyhow::Result<Vec<ListItem>> {
    let mut items = Vec::new();
    let mut options = ListOptions {
        limit: Some(1000),
        consistency: raftkv_client::Consistency::Stale,
        ..ListOptions::default()
    };
    loop {
        let page = client.list(&options).await?;
        items.extend(page.items);
        match page.next_start {
            Some(next) => options.start = Some(next),
            None => return Ok(items),
        }
    }
}
