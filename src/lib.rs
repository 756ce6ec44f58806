//! raftkv: a replicated key-value store on Raft (openraft), with its state in redb.
//!
//! A request enters at [`api`] (HTTP) or [`cluster`] (admin gRPC), becomes a [`types::Command`],
//! is replicated by openraft over [`transport`], persisted by [`storage`], applied by the state
//! machine, and answered.

pub mod storage;
pub mod types;
