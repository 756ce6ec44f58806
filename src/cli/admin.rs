//! `raftkv admin`: the raftadmin / `etcdctl member` of raftkv, over the admin gRPC service.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use raftkv_client::{pb, Admin};
use serde_json::json;

use super::connect::ConnectArgs;
use super::{endpoints, table, Output};

#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin endpoints (Raft ports), comma-separated: HOST:PORT[,HOST:PORT...]. The first that
    /// answers is used.
    #[arg(long, env = "RAFTKV_ENDPOINT", value_delimiter = ',', required = true)]
    pub endpoint: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Per-call timeout in seconds (add-voter waits for catch-up on top of it).
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// List members with role, addresses and replication progress (the leader's view).
    Members,
    /// This node's status: term, role, leader, log positions, snapshot, membership, uptime.
    Status,
    /// Add a node as a learner (non-voting).
    AddLearner {
        id: u64,
        raft_addr: String,
        http_addr: String,
    },
    /// Add a node as a learner, wait until it has caught up, then promote it to voter.
    AddVoter {
        id: u64,
        raft_addr: String,
        http_addr: String,
        /// How long to wait for the learner to catch up, in seconds.
        #[arg(long, default_value_t = 60)]
        catch_up_timeout: u64,
    },
    /// Remove a member. Refuses to remove the last voter or to leave voters that tolerate no
    /// failure, unless --force.
    Remove {
        id: u64,
        #[arg(long)]
        force: bool,
    },
    /// Hand leadership to a node (default: the most caught-up voter).
    TransferLeader { id: Option<u64> },
    /// Take a snapshot on the node now.
    Snapshot,
    /// Save a consistent point-in-time backup of the key space to a file.
    Backup {
        /// Where to write the backup.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
}

fn pos(p: &Option<pb::LogPosition>) -> String {
    p.as_ref()
        .map_or("-".into(), |p| format!("{} (term {})", p.index, p.term))
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn members_json(members: &[pb::Member]) -> serde_json::Value {
    json!(members
        .iter()
        .map(|m| json!({"id": m.id, "raft_addr": m.raft_addr, "http_addr": m.http_addr, "voter": m.voter}))
        .collect::<Vec<_>>())
}

fn print_membership(out: Output, r: &pb::MembershipResponse) {
    match out {
        Output::Json => println!(
            "{}",
            json!({"log_index": r.log_index, "message": r.message, "members": members_json(&r.members)})
        ),
        Output::Table => {
            println!("{}", r.message);
            let rows: Vec<Vec<String>> = r
                .members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        if m.voter { "voter" } else { "learner" }.into(),
                        m.raft_addr.clone(),
                        m.http_addr.clone(),
                    ]
                })
                .collect();
            println!("{}", table::render(&["ID", "ROLE", "RAFT ADDR", "HTTP ADDR"], &rows));
        }
    }
}

/// How long a backup may take to start streaming (the leader confirms its leadership first).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let timeout = match args.command {
        AdminCommand::Backup { .. } => BACKUP_TIMEOUT,
        _ => Duration::from_secs(args.timeout),
    };
    let mut admin = Admin::any(&endpoints(&args.endpoint))?.timeout(timeout);
    if let Some(tls) = args.connect.tls()? {
        admin = admin.with_tls(tls);
    }
    if let Some(credentials) = args.connect.credentials()? {
        admin = admin.with_credentials(credentials)?;
    }
    let out = args.output;
    match args.command {
        AdminCommand::Members => {
            let r = admin.members().await?;
            match out {
                Output::Json => {
                    let members: Vec<_> = r
                        .members
                        .iter()
                        .map(|m| {
                            json!({
                                "id": m.id, "raft_addr": m.raft_addr, "http_addr": m.http_addr, "voter": m.voter,
                                "leader": m.leader, "matched_index": m.matched_index, "lag": m.lag,
                                "last_contact_ms": m.last_contact_ms,
                            })
                        })
                        .collect();
                    println!(
                        "{}",
                        json!({"leader": r.leader_id, "membership_log_index": r.membership_log_index,
                               "joint": r.joint, "members": members})
                    );
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = r
                        .members
                        .iter()
                        .map(|m| {
                            let role = match (m.leader, m.voter) {
                                (true, _) => "leader",
                                (false, true) => "voter",
                                (false, false) => "learner",
                            };
                            vec![
                                m.id.to_string(),
                                role.into(),
                                m.raft_addr.clone(),
                                m.http_addr.clone(),
                                opt(m.matched_index),
                                opt(m.lag),
                                m.last_contact_ms.map_or("-".into(), |ms| format!("{ms}ms")),
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        table::render(
                            &["ID", "ROLE", "RAFT ADDR", "HTTP ADDR", "MATCHED", "LAG", "LAST CONTACT"],
                            &rows
                        )
                    );
                }
            }
        }
        AdminCommand::Status => {
            let s = admin.status().await?;
            let ep = admin.endpoint().to_string();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({
                        "endpoint": ep, "id": s.id, "cluster_id": s.cluster_id, "role": s.role, "term": s.term,
                        "leader": s.leader_id, "last_log_index": s.last_log.as_ref().map(|p| p.index),
                        "committed": s.committed.as_ref().map(|p| p.index),
                        "applied": s.applied.as_ref().map(|p| p.index),
                        "snapshot": s.snapshot.as_ref().map(|p| p.index),
                        "purged": s.purged.as_ref().map(|p| p.index),
                        "membership_log_index": s.membership_log_index, "joint": s.joint,
                        "keys": s.keys, "uptime_seconds": s.uptime_seconds, "members": members_json(&s.members),
                    })
                ),
                Output::Table => {
                    let voters = s.members.iter().filter(|m| m.voter).count();
                    let rows = vec![
                        vec!["endpoint".into(), ep],
                        vec!["id".into(), s.id.to_string()],
                        vec!["cluster".into(), s.cluster_id.clone()],
                        vec!["role".into(), s.role.clone()],
                        vec!["term".into(), s.term.to_string()],
                        vec![
                            "leader".into(),
                            if s.leader_id == 0 {
                                "-".into()
                            } else {
                                s.leader_id.to_string()
                            },
                        ],
                        vec!["last log".into(), opt(s.last_log.as_ref().map(|p| p.index))],
                        vec!["committed".into(), pos(&s.committed)],
                        vec!["applied".into(), pos(&s.applied)],
                        vec!["snapshot".into(), pos(&s.snapshot)],
                        vec!["purged".into(), pos(&s.purged)],
                        vec![
                            "membership".into(),
                            format!(
                                "{voters} voter(s), {} learner(s) at index {}{}",
                                s.members.len() - voters,
                                s.membership_log_index,
                                if s.joint { " (changing)" } else { "" }
                            ),
                        ],
                        vec!["keys".into(), s.keys.to_string()],
                        vec!["uptime".into(), format!("{}s", s.uptime_seconds)],
                    ];
                    println!("{}", table::render(&["FIELD", "VALUE"], &rows));
                }
            }
        }
        AdminCommand::AddLearner {
            id,
            raft_addr,
            http_addr,
        } => {
            let r = admin
                .add_learner(pb::AddMemberRequest {
                    id,
                    raft_addr,
                    http_addr,
                    catch_up_timeout_ms: 0,
                })
                .await?;
            print_membership(out, &r);
        }
        AdminCommand::AddVoter {
            id,
            raft_addr,
            http_addr,
            catch_up_timeout,
        } => {
            let req = pb::AddMemberRequest {
                id,
                raft_addr,
                http_addr,
                catch_up_timeout_ms: catch_up_timeout * 1000,
            };
            let r = admin
                .add_voter_until_done(req, |p| {
                    if out == Output::Table {
                        eprintln!("{}: {}", p.stage, p.message);
                    }
                })
                .await?;
            print_membership(out, &r);
        }
        AdminCommand::Remove { id, force } => {
            let r = admin.remove_member(id, force).await?;
            print_membership(out, &r);
        }
        AdminCommand::TransferLeader { id } => {
            let r = admin.transfer_leadership(id).await?;
            match out {
                Output::Json => println!("{}", json!({"old_leader": r.old_leader, "new_leader": r.new_leader})),
                Output::Table => println!("leadership moved from {} to {}", r.old_leader, r.new_leader),
            }
        }
        AdminCommand::Snapshot => {
            let r = admin.snapshot().await?;
            let ep = admin.endpoint();
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"endpoint": ep, "snapshot_index": r.snapshot.as_ref().map(|p| p.index)})
                ),
                Output::Table => println!("{ep}: snapshot at {}", pos(&r.snapshot)),
            }
        }
        AdminCommand::Backup { out: path } => {
            let (ep, size, (meta, keys)) = backup(&admin, &path).await.context("backup failed")?;
            let index = meta.last_log_id.map_or(0, |l| l.index);
            match out {
                Output::Json => println!(
                    "{}",
                    json!({"endpoint": ep, "file": path, "bytes": size, "keys": keys, "log_index": index})
                ),
                Output::Table => println!(
                    "backup of {keys} keys at log index {index} written to {} ({size} bytes)",
                    path.display()
                ),
            }
        }
    }
    Ok(())
}

/// Streams a backup into `<path>.partial`, checks it, and only then names it `path`.
/// Returns the endpoint that served it, its size, and what it holds.
async fn backup(
    admin: &Admin,
    path: &std::path::Path,
) -> anyhow::Result<(String, u64, (crate::types::SnapshotMeta, u64))> {
    let mut stream = admin.backup().await?;
    let ep = stream.endpoint().to_string();
    let tmp = path.with_extension("partial");
    let io = |e: std::io::Error| anyhow!("{ep}: writing {}: {e}", tmp.display());
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    let mut size = 0u64;
    while let Some(chunk) = stream.next_chunk().await? {
        size += chunk.len() as u64;
        f.write_all(&chunk).map_err(io)?;
    }
    let file = f.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    // Check what arrived before calling it a backup.
    let meta = crate::storage::restore::verify_backup(&tmp).map_err(|e| anyhow!("{ep}: {e}"))?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok((ep, size, meta))
}
