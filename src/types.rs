//! The vocabulary shared by every layer: openraft's type configuration, the commands that
//! travel through the Raft log, and what applying them answers.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's identity: a u64 kept in its data directory (see `identity.rs`).
pub type NodeId = u64;

/// Where a member can be reached. Stored in the Raft membership, so every node knows every
/// other node's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// `host:port` of the Raft (gRPC) listener: Raft traffic and the admin service.
    pub raft_addr: String,
    /// `host:port` of the client HTTP API.
    pub http_addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} http={}", self.raft_addr, self.http_addr)
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for raftkv.
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResult>,
        Node = NodeAddr,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeAddr>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// A precondition on the current state of a key (HTTP `If-Match` / `If-None-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// The key must exist (`If-Match: *`).
    Exists,
    /// The key must not exist (`If-None-Match: *`).
    Absent,
    /// The key must be at exactly this revision (`If-Match: "<revision>"`).
    Revision(u64),
}

impl Precondition {
    /// Whether a key whose current revision is `current` (None: absent) satisfies this.
    pub fn holds(self, current: Option<u64>) -> bool {
        match self {
            Precondition::Exists => current.is_some(),
            Precondition::Absent => current.is_none(),
            Precondition::Revision(r) => current == Some(r),
        }
    }
}

/// A change to the key space, proposed through Raft and applied by every node in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: Bytes,
        value: Bytes,
        precondition: Option<Precondition>,
    },
    Delete {
        key: Bytes,
        precondition: Option<Precondition>,
    },
}

impl Command {
    /// Bytes of user data (key and value) it carries: what batching and caching limits count.
    pub fn size(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.len(),
            Command::Delete { key, .. } => key.len(),
        }
    }
}

impl fmt::Display for Command {
    // Keys and values are user data: logs show sizes, never contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value, .. } => write!(f, "put(key: {}B, value: {}B)", key.len(), value.len()),
            Command::Delete { key, .. } => write!(f, "delete(key: {}B)", key.len()),
        }
    }
}

/// What one Raft entry carries: client writes that arrived together, gathered by the proposer
/// (`replica/propose.rs`) so that one entry, one fsync and one replication message serve them all.
/// They are applied in order, each seeing the effects of those before it, and answered one
/// [`CommandResult`] each, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(pub Vec<Command>);

impl Proposal {
    pub fn size(&self) -> usize {
        self.0.iter().map(Command::size).sum()
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal({} commands)", self.0.len())
    }
}

/// The outcome of applying one command to the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The key now holds the value written at `revision`: the store's revision, a counter that
    /// every change to a key increments (as etcd's does).
    Written { revision: u64 },
    /// The key was deleted; `existed` says whether there was anything to delete.
    Deleted { existed: bool },
    /// The precondition did not hold; nothing changed. `current` is the key's revision.
    PreconditionFailed { current: Option<u64> },
}
