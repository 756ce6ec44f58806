//! raftkv: a replicated key-value store on Raft (openraft), with its state in redb.
//!
//! The modules are layers, and imports point one way, down the path a request takes:
//!
//! ```text
//! node      wiring: storage, Raft, the replica, both servers; start-up and shutdown
//! api       front ends: parse, call the replica or the cluster, render (HTTP today)
//! cluster   membership changes and their safety rails, the admin gRPC service, status
//! transport Raft and the replica's calls to the leader over gRPC (the wire only)
//! replica   write batching, read-index batching, the leader lookup, the consistency barrier
//! metrics   Prometheus collectors
//! storage   the Raft log, the state machine (keys and the auth state), snapshots, the space watcher
//! auth      users, roles, permissions, tokens: the model and its checks (pure logic)
//! tls       certificate files made into rustls configurations, reloaded when they change
//! codec     how values are encoded at rest and on the wire
//! types     the vocabulary of every layer; imports nothing from the crate
//! ```
//!
//! `cli`, `bench`, `dev`, `config` and `logging` are the binary's: command-line tools that use
//! the node only through its public APIs.

mod auth;
mod codec;
mod identity;
pub mod storage;
mod tls;
pub mod types;

/// Generated protobuf and gRPC code (the `raftkv-proto` crate).
pub use raftkv_proto as pb;

mod api;
pub mod bench;
pub mod cli;
mod cluster;
pub mod config;
pub mod dev;
pub mod logging;
mod metrics;
pub mod node;
mod replica;
mod transport;
