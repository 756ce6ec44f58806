//! Who leads, as this node knows it: the one place that reads it out of openraft's metrics.

use openraft::async_runtime::WatchReceiver;

use super::Raft;
use crate::types::NodeId;

/// The leader as a node currently knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Leader {
    /// This node leads.
    Me,
    /// Another member leads, reachable at these addresses (from the membership).
    Other {
        id: NodeId,
        http_addr: String,
        raft_addr: String,
    },
    /// No leader known, or one that is not in this node's membership yet.
    Unknown,
}

impl Leader {
    /// The leader as `raft` (node `me`) currently knows it.
    pub(crate) fn of(raft: &Raft, me: NodeId) -> Leader {
        // Borrowed, not cloned: this runs for every proposal and read batch.
        let rx = raft.metrics();
        let m = rx.borrow_watched();
        match m.current_leader {
            Some(l) if l == me => Leader::Me,
            Some(l) => match m.membership_config.membership().get_node(&l) {
                Some(node) => Leader::Other {
                    id: l,
                    http_addr: node.http_addr.clone(),
                    raft_addr: node.raft_addr.clone(),
                },
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }
}
