//! A typed client for raftkv, for every program that talks to a cluster from outside: the
//! CLI, the test harnesses, the nemesis, the test bed and the operator.
//!
//! - [`Client`]: one node's HTTP API (keys, status, health, metrics, join), answers decoded
//!   into [`model`] types, the same types the server renders with.
//! - [`Admin`]: the admin gRPC service (membership, status, snapshots, backups) of one node or
//!   of the first of several that can be reached, one kept channel per endpoint.
//! - [`Error`]: sorted by what a caller may conclude about a request's fate (not sent, outcome
//!   unknown, or the node's answer).
//!
//! It builds without the server (no openraft, redb or axum).

mod admin;
pub mod auth;
mod error;
mod http;
pub mod model;
pub mod tls;

pub use admin::{AddVoter, Admin, Backup};
pub use error::Error;
pub use http::{key_path, Client, ClientBuilder, Condition, Consistency, ListOptions, NODE_HEADER, REVISION_HEADER};
/// The protobufs of the admin service, as [`Admin`] takes and returns them.
pub use raftkv_proto::admin as pb;
pub use tls::{Credentials, Tls};
