//! `raftkv bench`: a load generator for the HTTP API (and, for side-by-side runs, etcd's JSON
//! gateway). N connections, a key space, a value size, a read/write/delete mix, a read
//! consistency, a duration or an op count, and an optional target rate.
//!
//! With `--rate`, the load is open-loop: operation i is due at start + i/rate whatever the
//! latency of earlier ones, and its latency is measured from when it was due, so a stall shows
//! up in the percentiles instead of hiding behind fewer requests (no coordinated omission).

mod target;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

pub use target::Target;
use target::{Conn, Dialer};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// HTTP endpoints, comma-separated (connections are spread over them).
    #[arg(long, env = "RAFTKV_ENDPOINT", value_delimiter = ',', required = true)]
    pub endpoint: Vec<String>,
    /// What the endpoints are: raftkv, or etcd (its v3 JSON gateway), for comparisons.
    #[arg(long, value_enum, default_value_t = Target::Raftkv)]
    pub target: Target,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Operation mix as read:write:delete weights, e.g. 90:10:0.
    #[arg(long, default_value = "0:100:0")]
    pub mix: String,
    /// Read consistency: linearizable, lease or stale (etcd: stale = serializable).
    #[arg(long, default_value = "linearizable")]
    pub consistency: String,
    /// How long to run (e.g. 10s, 1m); ignored with --ops.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Run exactly this many operations instead of for a duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Target rate in operations per second (open-loop); default: as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Write the keys once before measuring (so reads find values).
    #[arg(long)]
    pub preload: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Label for the report (e.g. the scenario name).
    #[arg(long, default_value = "")]
    pub label: String,
    /// TLS for the endpoints (HTTPS: `https://` endpoints, or any with --cacert).
    #[command(flatten)]
    pub connect: crate::cli::connect::ConnectArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Delete,
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("bad duration unit in {s:?} (use ms, s, m or h)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_mix(s: &str) -> anyhow::Result<[u32; 3]> {
    let parts: Vec<u32> = s
        .split(':')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--mix {s:?} must be read:write:delete weights, e.g. 90:10:0"))?;
    if parts.len() != 3 || parts.iter().sum::<u32>() == 0 {
        bail!("--mix {s:?} must be three weights read:write:delete with a positive sum");
    }
    Ok([parts[0], parts[1], parts[2]])
}

/// What every worker records.
struct Stats {
    hist: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn error(&self, kind: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// A small fast PRNG per worker (xorshift), so key choice costs nothing.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mix = parse_mix(&args.mix)?;
    let duration = parse_duration(&args.duration)?;
    if args.connections == 0 || args.keys == 0 {
        bail!("--connections and --keys must be positive");
    }
    if !matches!(args.consistency.as_str(), "linearizable" | "lease" | "stale") {
        bail!("--consistency must be linearizable, lease or stale");
    }
    let timeout = Duration::from_secs(args.timeout);
    let endpoints: Vec<String> = crate::cli::endpoints(&args.endpoint);
    if endpoints.is_empty() {
        bail!("no endpoint given");
    }
    let value: bytes::Bytes = vec![b'x'; args.value_size].into();
    let target = args.target;
    let dialer = Dialer::new(args.connect.tls()?);

    if args.preload {
        preload(
            &endpoints,
            &dialer,
            target,
            args.keys,
            &value,
            args.connections,
            timeout,
        )
        .await?;
    }

    let stats = Arc::new(Stats {
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ok: AtomicU64::new(0),
        errors: Mutex::default(),
    });
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let interval = args.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
    let limit = args.ops;

    let progress = {
        let stats = stats.clone();
        let stop = stop.clone();
        let quiet = args.json;
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ok = stats.ok.load(Ordering::Relaxed);
                let errors: u64 = stats.errors.lock().unwrap_or_else(|p| p.into_inner()).values().sum();
                if !quiet {
                    let p99 = stats
                        .hist
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .value_at_quantile(0.99);
                    eprint!(
                        "\r{:>6.1}s  {:>8} ok  {:>6} err  {:>9.0} ops/s  p99 {:>8.2} ms   ",
                        start.elapsed().as_secs_f64(),
                        ok,
                        errors,
                        (ok - last) as f64,
                        p99 as f64 / 1000.0
                    );
                }
                last = ok;
            }
        })
    };

    let mut workers = Vec::new();
    for w in 0..args.connections {
        let mut conn = Conn::new(
            &endpoints[w % endpoints.len()],
            &dialer,
            target,
            &args.consistency,
            timeout,
        );
        let stats = stats.clone();
        let issued = issued.clone();
        let stop = stop.clone();
        let value = value.clone();
        let keys = args.keys;
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1000_0000_01B3));
            let total: u32 = mix.iter().sum();
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|l| i >= l) {
                    return;
                }
                // Open loop: this operation is due at its slot, not when the last one ended.
                let due = match interval {
                    Some(iv) => {
                        let at = start + iv.mul_f64(i as f64);
                        let now = Instant::now();
                        if at > now {
                            tokio::time::sleep(at - now).await;
                        }
                        at
                    }
                    None => Instant::now(),
                };
                let r = (rng.next() % total as u64) as u32;
                let op = if r < mix[0] {
                    Op::Read
                } else if r < mix[0] + mix[1] {
                    Op::Write
                } else {
                    Op::Delete
                };
                let key = format!("bench/{:012}", rng.next() % keys);
                let result = conn.send(op, &key, &value).await;
                match result {
                    Ok(()) => {
                        let us = due.elapsed().as_micros().max(1) as u64;
                        let _ = stats
                            .hist
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .record(us.min(60_000_000));
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(kind) => stats.error(kind),
                }
            }
        }));
    }
    if limit.is_none() {
        let stop2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop2.store(true, Ordering::Relaxed);
        });
    }
    for w in workers {
        let _ = w.await;
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    if !args.json {
        eprintln!();
    }
    report(&args, &stats, elapsed)
}

async fn preload(
    endpoints: &[String],
    dialer: &Dialer,
    target: Target,
    keys: u64,
    value: &bytes::Bytes,
    connections: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
    for w in 0..connections.max(1) {
        let mut conn = Conn::new(&endpoints[w % endpoints.len()], dialer, target, "linearizable", timeout);
        let (value, next) = (value.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok(());
                }
                let key = format!("bench/{i:012}");
                conn.send(Op::Write, &key, &value)
                    .await
                    .map_err(|e| anyhow::anyhow!("preloading {key}: {e}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn report(args: &BenchArgs, stats: &Stats, elapsed: Duration) -> anyhow::Result<()> {
    let hist = stats.hist.lock().unwrap_or_else(|p| p.into_inner());
    let ok = stats.ok.load(Ordering::Relaxed);
    let errors = stats.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let throughput = ok as f64 / elapsed.as_secs_f64();
    let r = json!({
        "label": args.label,
        "target": format!("{:?}", args.target).to_lowercase(),
        "connections": args.connections,
        "keys": args.keys,
        "value_size": args.value_size,
        "mix": args.mix,
        "consistency": args.consistency,
        "rate": args.rate,
        "seconds": elapsed.as_secs_f64(),
        "ok": ok,
        "errors": errors,
        "throughput": throughput,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": hist.max() as f64 / 1000.0,
                       "mean": hist.mean() / 1000.0},
    });
    if args.json {
        println!("{r}");
    } else {
        println!(
            "{} {} connections, mix {} ({}), {:.1}s",
            r["target"],
            args.connections,
            args.mix,
            args.consistency,
            elapsed.as_secs_f64()
        );
        println!("  throughput  {throughput:.0} ops/s  ({ok} ok)");
        println!(
            "  latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            hist.max() as f64 / 1000.0
        );
        if errors.is_empty() {
            println!("  errors      none");
        } else {
            for (k, n) in &errors {
                println!("  errors      {n} x {k}");
            }
        }
    }
    Ok(())
}

/// Answers every request with 200 and a short body: the most an axum server can serve here.
pub async fn noop_server(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let app = axum::Router::new().fallback(|| async { "ok" });
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(addr).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_mixes_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_mix("90:10:0").unwrap(), [90, 10, 0]);
        assert!(parse_mix("1:2").is_err());
        assert!(parse_mix("0:0:0").is_err());
    }
}
