//! A node's own membership, seen from inside: `--join` (asking a cluster to add this node),
//! noticing that it has been removed, and the marker that keeps a removed node from starting.

use std::time::Duration;

use raftkv_client::Admin;

use crate::pb::admin::{AddMemberRequest, Member};
use crate::replica::Raft;
use crate::types::NodeId;

/// Written to the data directory when the node learns it was removed, so that a restart
/// (e.g. by a StatefulSet) exits at once instead of waiting forever to be a member again.
const REMOVED_MARKER: &str = "removed";

/// Leaves the marker, with the reason, in `data_dir` (best effort: the node stops either way).
pub(super) fn mark_removed(data_dir: &std::path::Path, why: &str) {
    let _ = std::fs::write(data_dir.join(REMOVED_MARKER), format!("{why}\n"));
}

/// The node was removed from its cluster before this start.
#[derive(Debug, thiserror::Error)]
#[error("this node was removed from its cluster ({0}); wipe its data directory to join again as a new node")]
pub struct RemovedAtStart(pub String);

pub(super) fn removed_marker(data_dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(REMOVED_MARKER))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Resolves once this node is sure it has been removed from the cluster.
///
/// A removed node may never receive the log entry that removes it (the leader stops
/// replicating to it), so its own membership cannot be trusted to tell. Every few seconds it
/// asks the members it knows for the leader's membership; once that is at least as new as its
/// own and does not list it, it has been removed.
pub(super) async fn watch_removal(raft: Raft, id: NodeId, admin: crate::cluster::Admin) -> String {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let m = crate::replica::raft_metrics(&raft);
        let membership = m.membership_config.membership();
        let known_index = m.membership_config.log_id().map(|l| l.index).unwrap_or(0);
        if membership.nodes().next().is_none() {
            continue; // not in any cluster yet
        }
        let mut peers: Vec<(NodeId, String)> = membership
            .nodes()
            .filter(|(n, _)| **n != id)
            .map(|(n, a)| (*n, a.raft_addr.clone()))
            .collect();
        // Ask the leader first: its answer is authoritative.
        peers.sort_by_key(|(n, _)| Some(*n) != m.current_leader);
        for (_, addr) in peers {
            // As root when authentication is on: a node may always ask about its own membership.
            let Ok(mut client) = admin.peer_admin(&addr) else {
                continue;
            };
            let call = client.members(crate::pb::admin::MembersRequest {});
            let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), call).await else {
                continue;
            };
            let resp = resp.into_inner();
            if resp.joint || resp.membership_log_index < known_index {
                break; // a change is in flight or the answer is older than what we know
            }
            if !resp.members.iter().any(|mem| mem.id == id) {
                return format!(
                    "node {id} is not in the cluster's membership (as of log index {}, leader {})",
                    resp.membership_log_index, resp.leader_id
                );
            }
            break;
        }
    }
}

/// `--join`: ask the cluster (through the admin service of any of `seeds`, their peer
/// addresses) to add this node, retrying until it succeeds, since the cluster may not be up
/// yet. A node that already is a member (a restart) still asks: the call is idempotent and
/// finishes a promotion an earlier run began. Over mutual TLS when peers use it: joining is a
/// membership change, which only holders of a peer certificate (and, with authentication on,
/// root) may ask for.
pub(super) async fn join(
    raft: Raft,
    me: Member,
    seeds: Vec<String>,
    tls: Option<raftkv_client::Tls>,
    credentials: Option<raftkv_client::Credentials>,
) {
    let mut delay = Duration::from_millis(200);
    let request = AddMemberRequest {
        id: me.id,
        raft_addr: me.raft_addr.clone(),
        http_addr: me.http_addr.clone(),
        // A membership change waits for this node to catch up as a learner: give it time.
        catch_up_timeout_ms: 120_000,
    };
    let seeds: Vec<(String, Result<Admin, raftkv_client::Error>)> = seeds
        .into_iter()
        .map(|seed| {
            let admin = Admin::new(&seed).and_then(|a| {
                let a = a.timeout(Duration::from_secs(10));
                let a = match &tls {
                    Some(tls) => a.with_tls(tls.clone()),
                    None => a,
                };
                match &credentials {
                    Some(c) => a.with_credentials(c.clone()),
                    None => Ok(a),
                }
            });
            (seed, admin)
        })
        .collect();
    loop {
        let already_voter = raft.voter_ids().any(|v| v == me.id);
        if already_voter
            || (!me.voter
                && crate::replica::raft_metrics(&raft)
                    .membership_config
                    .membership()
                    .get_node(&me.id)
                    .is_some())
        {
            tracing::info!("already a member: nothing to join");
            return;
        }
        for (seed, admin) in &seeds {
            let admin = match admin {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(seed = %seed, error = %e, "not a usable seed address");
                    continue;
                }
            };
            let asked = if me.voter {
                admin.add_voter_until_done(request.clone(), |_| {}).await.map(|_| ())
            } else {
                admin.add_learner(request.clone()).await.map(|_| ())
            };
            match asked {
                Ok(()) => {
                    tracing::info!(seed = %seed, "joined the cluster");
                    return;
                }
                Err(e) if e.rpc_code().is_some() => {
                    tracing::warn!(seed = %seed, error = %e.message(), "join refused; retrying")
                }
                Err(e) => tracing::warn!(seed = %seed, error = %e, "cannot reach seed; retrying"),
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
