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
    /// A change to the users, roles and permissions (the auth state, `crate::auth`), applied
    /// only while the auth state is still at `revision`: the one the change was checked
    /// against before it was proposed. So a change that was valid when checked is valid when
    /// applied, and one that a concurrent change overtook is refused whole
    /// ([`CommandResult::PreconditionFailed`] with the auth revision it met).
    Auth { change: AuthChange, revision: u64 },
}

impl Command {
    /// Bytes of user data (key and value) it carries: what batching and caching limits count.
    pub fn size(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.len(),
            Command::Delete { key, .. } => key.len(),
            Command::Auth { change, .. } => change.size(),
        }
    }
}

impl fmt::Display for Command {
    // Keys and values are user data: logs show sizes, never contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value, .. } => write!(f, "put(key: {}B, value: {}B)", key.len(), value.len()),
            Command::Delete { key, .. } => write!(f, "delete(key: {}B)", key.len()),
            Command::Auth { change, .. } => write!(f, "auth({})", change.name()),
        }
    }
}

/// etcd's permission types: what a role may do on a key or a range of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionType {
    Read,
    Write,
    ReadWrite,
}

impl PermissionType {
    /// Whether this permission allows reading.
    pub fn reads(self) -> bool {
        matches!(self, PermissionType::Read | PermissionType::ReadWrite)
    }

    /// Whether this permission allows writing.
    pub fn writes(self) -> bool {
        matches!(self, PermissionType::Write | PermissionType::ReadWrite)
    }
}

/// A role's permission on one key or a range, with etcd's encoding of the range: an empty
/// `range_end` is the single key `key`; otherwise the keys in `[key, range_end)`, where a
/// `range_end` of one zero byte means "every key from `key` on" (and with `key` also a zero
/// byte, every key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub perm_type: PermissionType,
    pub key: Bytes,
    pub range_end: Bytes,
}

/// A change to the auth state, as etcd's Auth API names them. Passwords travel only as bcrypt
/// hashes, made before the change is proposed: no plain password is ever in the log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    /// Turns authentication on with a new key for signing tokens (made by the proposer, so
    /// every node signs and verifies with the same one).
    Enable {
        signing_key: [u8; 32],
    },
    Disable,
    /// A new user; no hash: a user that cannot log in with a password (a certificate's
    /// common name only, etcd's `--no-password`).
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        name: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    /// Invalidates every token issued to the user so far.
    UserRevokeTokens {
        name: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        permission: Permission,
    },
    RoleRevokePermission {
        name: String,
        key: Bytes,
        range_end: Bytes,
    },
}

impl AuthChange {
    /// etcd's name of the request, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            AuthChange::Enable { .. } => "auth_enable",
            AuthChange::Disable => "auth_disable",
            AuthChange::UserAdd { .. } => "user_add",
            AuthChange::UserDelete { .. } => "user_delete",
            AuthChange::UserChangePassword { .. } => "user_change_password",
            AuthChange::UserGrantRole { .. } => "user_grant_role",
            AuthChange::UserRevokeRole { .. } => "user_revoke_role",
            AuthChange::UserRevokeTokens { .. } => "user_revoke_tokens",
            AuthChange::RoleAdd { .. } => "role_add",
            AuthChange::RoleDelete { .. } => "role_delete",
            AuthChange::RoleGrantPermission { .. } => "role_grant_permission",
            AuthChange::RoleRevokePermission { .. } => "role_revoke_permission",
        }
    }

    /// Bytes it carries, roughly (as [`Command::size`] counts).
    fn size(&self) -> usize {
        match self {
            AuthChange::Enable { signing_key } => signing_key.len(),
            AuthChange::Disable => 0,
            AuthChange::UserAdd { name, password_hash } => name.len() + password_hash.as_ref().map_or(0, String::len),
            AuthChange::UserChangePassword { name, password_hash } => name.len() + password_hash.len(),
            AuthChange::UserDelete { name }
            | AuthChange::UserRevokeTokens { name }
            | AuthChange::RoleAdd { name }
            | AuthChange::RoleDelete { name } => name.len(),
            AuthChange::UserGrantRole { name, role } | AuthChange::UserRevokeRole { name, role } => {
                name.len() + role.len()
            }
            AuthChange::RoleGrantPermission { name, permission } => {
                name.len() + permission.key.len() + permission.range_end.len()
            }
            AuthChange::RoleRevokePermission { name, key, range_end } => name.len() + key.len() + range_end.len(),
        }
    }
}

// Hashes and signing keys are secrets: debug output names the change only.
impl fmt::Debug for AuthChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthChange::{}", self.name())
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
    /// every change to a key increments (as etcd's does). An auth change answers this too,
    /// with the auth state's revision after it (auth changes leave the store's revision alone).
    Written { revision: u64 },
    /// The key was deleted; `existed` says whether there was anything to delete.
    Deleted { existed: bool },
    /// The precondition did not hold; nothing changed. `current` is the key's revision (for
    /// an auth change: the auth state's).
    PreconditionFailed { current: Option<u64> },
}
