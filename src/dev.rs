//! `raftkv dev`: a local cluster in one command. Starts N `raftkv serve` child processes on
//! loopback (node 1 bootstraps, the others join it) through the cluster harness, waits until
//! all are voters, prints how to reach them, and stops them cleanly on Ctrl-C.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
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

    let options = Options::new(exe)
        .dir(&data)
        .inherit_env()
        .global_args(&["--log-level", log_level]);
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
    for (n, node) in (1..).zip(cluster.nodes()) {
        println!(
            "  node {n}  http://{}   log: {}",
            node.http_addr(),
            node.log_path().display()
        );
    }
    let first_http = cluster.node(0).http_addr();
    let last_http = cluster.nodes().last().map_or(first_http, |n| n.http_addr());
    println!();
    println!("Try:");
    println!("  curl -X PUT --data-binary 'hello' http://{first_http}/v1/kv/greeting");
    println!("  curl http://{last_http}/v1/kv/greeting");
    println!("  curl http://{first_http}/v1/status");
    println!();
    println!("Ctrl-C stops the cluster (data stays in {}).", data.display());

    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    println!("\nstopping...");
    cluster.terminate_all(STOP_GRACE).await;
    println!("stopped");
    Ok(())
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
