//! `raftkv restore`: seed the first node of a new cluster from a backup file.

use std::path::PathBuf;

use clap::Args;

use crate::storage::restore;
use crate::types::NodeAddr;

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file (from `raftkv admin backup`).
    #[arg(long)]
    pub from: PathBuf,
    /// The new node's data directory (must not hold a node yet).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new node's id.
    #[arg(long)]
    pub id: u64,
    /// The Raft address the restored node will advertise (host:port).
    #[arg(long)]
    pub raft_addr: String,
    /// The HTTP address the restored node will advertise (host:port).
    #[arg(long)]
    pub http_addr: String,
    /// Cluster id of the new cluster (default: a new random one).
    #[arg(long)]
    pub cluster_id: Option<String>,
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let addr = NodeAddr {
        raft_addr: args.raft_addr.clone(),
        http_addr: args.http_addr.clone(),
    };
    let r = restore::restore(&args.from, &args.data_dir, args.id, addr, args.cluster_id).await?;
    println!(
        "restored {} keys (up to log index {}) into {} as node {} of new cluster {}",
        r.keys,
        r.index,
        args.data_dir.display(),
        r.id,
        r.cluster_id
    );
    println!(
        "start it with: raftkv serve --data-dir {} --raft-addr {} --http-addr {} --bootstrap",
        args.data_dir.display(),
        args.raft_addr,
        args.http_addr
    );
    Ok(())
}
