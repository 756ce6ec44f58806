//! `raftkv dev`: a local cluster in one command. Starts N `raftkv serve` child processes on
//! loopback (node 1 bootstraps, the others join it), waits until all are voters, prints how to
//! reach them, and stops them cleanly on Ctrl-C.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::DevArgs;

struct DevNode {
    n: u16,
    http: String,
    child: Child,
    log: PathBuf,
}

fn terminate(nodes: &mut [DevNode]) {
    for node in nodes.iter() {
        if let Ok(pid) = i32::try_from(node.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in nodes.iter_mut() {
        loop {
            match node.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

pub async fn run(args: DevArgs, log_level: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the raftkv executable")?;
    let data = match args.data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("raftkv-dev-{}", std::process::id())),
    };
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    println!("raftkv dev: {} node(s), data under {}", args.nodes, data.display());

    let mut nodes: Vec<DevNode> = Vec::new();
    let first_http = format!("127.0.0.1:{}", args.http_port);
    for n in 1..=args.nodes {
        let raft = format!("127.0.0.1:{}", args.raft_port + n - 1);
        let http = format!("127.0.0.1:{}", args.http_port + n - 1);
        let dir = data.join(format!("node{n}"));
        let log = data.join(format!("node{n}.log"));
        let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("--log-level")
            .arg(log_level)
            .arg("serve")
            .arg("--data-dir")
            .arg(&dir)
            .arg("--raft-addr")
            .arg(&raft)
            .arg("--http-addr")
            .arg(&http);
        // A restart over existing data rejoins from its state; flags only matter the first time.
        if n == 1 {
            cmd.arg("--bootstrap");
        } else {
            cmd.arg("--join").arg(&first_http);
        }
        cmd.stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
        let child = cmd.spawn().with_context(|| format!("starting node {n}"))?;
        nodes.push(DevNode { n, http, child, log });
    }

    let client = reqwest::Client::new();
    let ready = wait_ready(&client, &mut nodes, args.nodes as usize);
    let outcome = tokio::select! {
        r = ready => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = outcome {
        terminate(&mut nodes);
        bail!("{e} (node logs are in {})", data.display());
    }

    println!();
    for node in &nodes {
        println!("  node {}  http://{}   log: {}", node.n, node.http, node.log.display());
    }
    println!();
    println!("Try:");
    println!("  curl -X PUT --data-binary 'hello' http://{first_http}/v1/kv/greeting");
    println!(
        "  curl http://{}/v1/kv/greeting",
        nodes.last().map_or(&first_http, |n| &n.http)
    );
    println!("  curl http://{first_http}/v1/status");
    println!();
    println!("Ctrl-C stops the cluster (data stays in {}).", data.display());

    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    println!("\nstopping...");
    terminate(&mut nodes);
    println!("stopped");
    Ok(())
}

/// Waits until every node is ready and node 1 reports `voters` voters.
async fn wait_ready(client: &reqwest::Client, nodes: &mut [DevNode], voters: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for node in nodes.iter_mut() {
            if let Some(status) = node.child.try_wait()? {
                bail!("node {} exited with {status}; see {}", node.n, node.log.display());
            }
        }
        let mut all_ready = true;
        for node in nodes.iter() {
            let ok = client
                .get(format!("http://{}/readyz", node.http))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            all_ready &= ok;
        }
        if all_ready {
            let status: serde_json::Value = client
                .get(format!("http://{}/v1/status", nodes[0].http))
                .send()
                .await?
                .json()
                .await?;
            let n = status["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["voter"] == true).count());
            if n == voters {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("the cluster did not become ready within 60s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
