//! `raftkv dev`: a local cluster in one command. Starts N `raftkv serve` child processes on
//! loopback (node 1 bootstraps, the others join it) through the cluster harness, waits until
//! all are voters, prints how to reach them, and stops them cleanly on Ctrl-C.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use raftkv_harness::pki::{ClusterPki, PemFiles};
use raftkv_harness::{Cluster, NodeSpec, Options};

use crate::config::DevArgs;

/// How long Ctrl-C waits for the nodes to stop by themselves (a leader hands over first)
/// before it kills them.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Node `n`'s (1-based) port: `first + n - 1`.
fn port(first: u16, n: u16, what: &str) -> anyhow::Result<SocketAddr> {
    let port = first
        .checked_add(n - 1)
        .with_context(|| format!("{what} {first} + {} is past 65535", n - 1))?;
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

pub async fn run(args: DevArgs, log_level: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the raftkv executable")?;
    let data = match args.data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("raftkv-dev-{}", std::process::id())),
    };
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    println!("raftkv dev: {} node(s), data under {}", args.nodes, data.display());

    let mut options = Options::new(exe)
        .dir(&data)
        .inherit_env()
        .global_args(&["--log-level", log_level]);
    let pki = if args.tls {
        let pki = dev_pki(&data.join("pki"))?;
        let flags = pki.node_args(false);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        options = options.node_args(&flags).client_tls(pki.client_tls()?);
        Some(pki)
    } else {
        None
    };
    let mut cluster = Cluster::new(options)?;
    for n in 1..=args.nodes {
        let raft = port(args.raft_port, n, "--raft-port")?;
        let http = port(args.http_port, n, "--http-port")?;
        cluster.add(NodeSpec::at(format!("node{n}"), raft, http))?;
    }

    // All at once: a restart over existing data rejoins from its state (the flags only matter
    // the first time), and needs a quorum running before any node is ready.
    let outcome = tokio::select! {
        r = cluster.start_all() => r.map_err(anyhow::Error::from),
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = outcome {
        cluster.terminate_all(STOP_GRACE).await;
        bail!("{e} (node logs are in {})", data.display());
    }

    println!();
    let scheme = if pki.is_some() { "https" } else { "http" };
    for (n, node) in (1..).zip(cluster.nodes()) {
        println!(
            "  node {n}  {scheme}://{}   log: {}",
            node.http_addr(),
            node.log_path().display()
        );
    }
    let first_http = cluster.node(0).http_addr();
    let last_http = cluster.nodes().last().map_or(first_http, |n| n.http_addr());
    let curl = match &pki {
        Some(pki) => format!("curl --cacert {}", pki.ca.display()),
        None => "curl".to_string(),
    };
    println!();
    println!("Try:");
    println!("  {curl} -X PUT --data-binary 'hello' {scheme}://{first_http}/v1/kv/greeting");
    println!("  {curl} {scheme}://{last_http}/v1/kv/greeting");
    println!("  {curl} {scheme}://{first_http}/v1/status");
    if let Some(pki) = &pki {
        let raft = cluster.node(0).raft_addr();
        println!(
            "  raftkv admin --endpoint {raft} --cacert {} --cert {} --key {} members",
            pki.ca.display(),
            pki.client.cert.display(),
            pki.client.key.display()
        );
    }
    println!();
    println!("Ctrl-C stops the cluster (data stays in {}).", data.display());

    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    println!("\nstopping...");
    cluster.terminate_all(STOP_GRACE).await;
    println!("stopped");
    Ok(())
}

/// The dev cluster's certificates: made once under `dir`, reused by later runs over the same
/// data (the nodes' peers must keep trusting one CA).
fn dev_pki(dir: &std::path::Path) -> anyhow::Result<ClusterPki> {
    let existing = ClusterPki {
        ca: dir.join("ca.pem"),
        node: PemFiles {
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
        },
        client: PemFiles {
            cert: dir.join("client.pem"),
            key: dir.join("client-key.pem"),
        },
    };
    let all = [
        &existing.ca,
        &existing.node.cert,
        &existing.node.key,
        &existing.client.cert,
        &existing.client.key,
    ];
    if all.iter().all(|p| p.exists()) {
        return Ok(existing);
    }
    let (_, pki) = ClusterPki::create(dir, "root").context("making the dev cluster's certificates")?;
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ports_count_up_from_the_first_and_stop_at_65535() {
        assert_eq!(
            port(7001, 1, "--raft-port").ok(),
            Some("127.0.0.1:7001".parse().unwrap())
        );
        assert_eq!(
            port(7001, 3, "--raft-port").ok(),
            Some("127.0.0.1:7003".parse().unwrap())
        );
        assert!(port(65535, 2, "--http-port").is_err());
    }
}
