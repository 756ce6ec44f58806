//! The monitoring step: a real Prometheus finds the pods by their `prometheus.io/*`
//! annotations, scrapes them, and every panel the user watches on the dashboard has data.
//!
//! Debian's Prometheus is built without Kubernetes discovery, so the test discovers the pods
//! itself, exactly as the usual annotation-driven `kubernetes_sd` relabelling would (the
//! chart's prometheus.io/* annotations; `cluster` from the instance label), and hands the
//! targets to Prometheus through file-based discovery. The pods serve HTTPS: Prometheus
//! scrapes them by IP, trusting the cluster's CA (each pod's certificate names its IP).

use std::path::Path;
use std::time::{Duration, Instant};

use raftkv_client::Condition;
use raftkv_harness::prometheus::{dashboard_queries, Config, Prometheus};
use serde_json::json;

use crate::bed::{root, Bed, NS};

/// The dashboard's panels that must show data for a cluster under writes.
const PANELS_WITH_DATA: [&str; 8] = [
    "Leader",
    "Members",
    "Requests per second",
    "Commit vs applied index",
    "Log fsync latency (journal group commit; checkpoint into redb)",
    "Replication lag per follower (entries)",
    "Write latency (PUT)",
    "Resident memory",
];

/// Scrape targets from the pods' prometheus.io annotations, labelled as the chart's
/// ServiceMonitor labels them; written whole and renamed, so Prometheus never reads half.
fn write_targets(bed: &Bed, path: &Path) {
    let pods = bed.kubectl_json(&["get", "pods", "-A"]);
    let mut groups = Vec::new();
    for p in pods["items"].as_array().into_iter().flatten() {
        let a = &p["metadata"]["annotations"];
        let ip = p["status"]["podIP"].as_str();
        if a["prometheus.io/scrape"] != "true" || ip.is_none() {
            continue;
        }
        let port = a["prometheus.io/port"].as_str().unwrap_or("8080");
        let path = a["prometheus.io/path"].as_str().unwrap_or("/metrics");
        let mut labels = json!({
            "namespace": p["metadata"]["namespace"], "pod": p["metadata"]["name"], "__metrics_path__": path,
        });
        if let Some(c) = p["metadata"]["labels"]["app.kubernetes.io/instance"].as_str() {
            labels["cluster"] = c.into();
        }
        groups.push(json!({"targets": [format!("{}:{port}", ip.unwrap_or_default())], "labels": labels}));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&groups).expect("target groups as JSON")).expect("write the targets");
    std::fs::rename(&tmp, path).expect("move the targets into place");
}

/// Gives the scrape job HTTPS with the cluster's CA, and has Prometheus read its
/// configuration again (SIGHUP).
///
/// A stopgap: the harness's `Config` has no TLS settings for a job yet, so the file it wrote
/// is amended here; once it has (`scheme`, `tls_config.ca_file`), this goes.
async fn scrape_over_https(prom: &Prometheus, dir: &Path, ca: &Path) {
    let file = dir.join("prometheus.yml");
    let text = std::fs::read_to_string(&file).expect("the configuration the harness wrote");
    let tls = format!(
        "    scheme: \"https\"\n    tls_config:\n      ca_file: {}\n",
        serde_json::Value::from(ca.display().to_string())
    );
    let mut amended = String::new();
    for line in text.lines() {
        amended.push_str(line);
        amended.push('\n');
        if line.trim_start().starts_with("- job_name:") {
            amended.push_str(&tls);
        }
    }
    std::fs::write(&file, amended).expect("amend the configuration");
    let flag = format!("--config.file={}", file.display());
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == flag.as_bytes()))
        })
        .expect("the Prometheus process");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    let http = reqwest::Client::new();
    loop {
        let loaded = http
            .get(format!("{}/api/v1/status/config", prom.url()))
            .send()
            .await
            .ok()
            .map(|r| r.text());
        let loaded = match loaded {
            Some(t) => t.await.unwrap_or_default(),
            None => String::new(),
        };
        if loaded.contains("ca_file") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not load its HTTPS settings: {loaded}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn prometheus_step(bed: &Bed) {
    let dir = bed.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("the prometheus directory");
    let targets = dir.join("targets.json");
    write_targets(bed, &targets);
    let prom = Prometheus::start(&dir, &Config::file_job("kubernetes-pods", &targets))
        .await
        .expect("start prometheus");
    scrape_over_https(&prom, &dir, &bed.secure().ca_file).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        write_targets(bed, &targets);
        let up = prom
            .values(&format!("sum(up{{namespace=\"{NS}\", cluster=\"demo\"}})"))
            .await;
        if up.as_ref().is_ok_and(|v| v[..] == [3.0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not find 3 raftkv pods up: {up:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Traffic while the dashboard is evaluated, so that rates have samples.
    let leader = bed.pod(&bed.leader());
    let traffic = tokio::spawn(async move {
        for i in 0..600 {
            leader
                .put(format!("prom{i}").as_bytes(), "x", Condition::None)
                .await
                .expect("PUT during the Prometheus step");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let rate = "sum(rate(raftkv_http_requests_total{cluster=\"demo\", method=\"PUT\"}[15s]))";
    prom.wait_for(rate, Duration::from_secs(30), |v| v.first().is_some_and(|x| *x > 0.0))
        .await
        .expect("a write rate in Prometheus");
    let queries = dashboard_queries(
        &root().join("dashboards/raftkv.json"),
        &[("$namespace", NS), ("$cluster", "demo"), ("$__rate_interval", "15s")],
    )
    .expect("the dashboard's queries");
    let with_data = prom
        .panels_with_data(&queries)
        .await
        .expect("Prometheus evaluates every dashboard query");
    traffic.abort();
    let empty: Vec<&String> = with_data.iter().filter(|(_, d)| !**d).map(|(t, _)| t).collect();
    eprintln!(
        "dashboard: {} queries, {} panels; panels without data: {empty:?}",
        queries.len(),
        with_data.len()
    );
    for must in PANELS_WITH_DATA {
        assert_eq!(
            with_data.get(must),
            Some(&true),
            "panel {must:?} shows no data in the cluster"
        );
    }
}
