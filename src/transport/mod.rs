//! Raft traffic between nodes over gRPC (`raftkv.raft.v1`): the client side that openraft
//! drives ([`Network`], which also carries the replica's calls to the leader: it implements
//! [`crate::replica::LeaderLink`]) and the service that feeds incoming RPCs to openraft and the
//! replica ([`RaftService`]). Only the wire: what to send and when is decided above and below.

mod calls;
mod coalesce;
mod connection;
mod network;
mod server;
mod snapshot;

pub(crate) use network::Network;
pub(crate) use server::RaftService;

use std::sync::{Arc, RwLock};

use crate::identity::ClusterIdFile;

/// The id of the cluster this node belongs to. Every Raft message carries it, and a node
/// refuses messages of another cluster, so that two clusters whose addresses overlap (a stale
/// volume, a recycled pod IP) can never mix their logs.
#[derive(Clone)]
pub(crate) struct ClusterFence {
    current: Arc<RwLock<Option<String>>>,
    file: Arc<ClusterIdFile>,
}

impl ClusterFence {
    pub(crate) fn new(file: ClusterIdFile) -> std::io::Result<Self> {
        let current = file.read()?;
        Ok(ClusterFence {
            current: Arc::new(RwLock::new(current)),
            file: Arc::new(file),
        })
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The id to put on outgoing messages ("" while this node belongs to no cluster yet).
    pub(crate) fn outgoing(&self) -> String {
        self.get().unwrap_or_default()
    }

    /// Records the cluster id, if this node has none yet.
    pub(crate) fn adopt(&self, id: &str) -> std::io::Result<()> {
        if id.is_empty() {
            return Ok(());
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.is_none() {
            self.file.write(id)?;
            tracing::info!(cluster_id = id, "joined cluster");
            *cur = Some(id.to_string());
        }
        Ok(())
    }

    /// Checks an incoming message's cluster id; a node without one adopts the sender's.
    pub(crate) fn check(&self, incoming: &str) -> Result<(), tonic::Status> {
        match self.get() {
            Some(mine) if !incoming.is_empty() && mine != incoming => Err(tonic::Status::failed_precondition(format!(
                "cluster id mismatch: this node belongs to cluster {mine}, the message to {incoming}"
            ))),
            Some(_) => Ok(()),
            None => self
                .adopt(incoming)
                .map_err(|e| tonic::Status::internal(format!("cannot persist cluster id: {e}"))),
        }
    }
}

/// The read-index vocabulary on the wire and in `replica::vouch`.
mod vouch_wire {
    use crate::pb::raft as pb;
    use crate::replica::{Stamp, Vouch};

    impl From<Stamp> for pb::Stamp {
        fn from(s: Stamp) -> Self {
            pb::Stamp {
                epoch: s.epoch,
                nanos: s.nanos,
            }
        }
    }

    impl From<&pb::Stamp> for Stamp {
        fn from(s: &pb::Stamp) -> Self {
            Stamp {
                epoch: s.epoch,
                nanos: s.nanos,
            }
        }
    }

    impl From<Vouch> for pb::Vouch {
        fn from(v: Vouch) -> Self {
            pb::Vouch {
                from: v.from,
                term: v.term,
                leader: v.leader,
                after: v.after.map(Into::into),
            }
        }
    }

    impl From<&pb::Vouch> for Vouch {
        fn from(v: &pb::Vouch) -> Self {
            Vouch {
                from: v.from,
                term: v.term,
                leader: v.leader,
                after: v.after.as_ref().map(Into::into),
            }
        }
    }
}
