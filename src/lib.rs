//! raftkv: a replicated key-value store on Raft (openraft), with its state in redb.
//!
//! A request enters at [`api`] (HTTP) or [`cluster`] (admin gRPC), becomes a [`types::Command`],
//! is replicated by openraft over [`transport`], persisted by [`storage`], applied by the state
//! machine, and answered.

pub mod identity;
pub mod storage;
pub mod transport;
pub mod types;

/// Generated protobuf and gRPC code.
pub mod pb {
    pub mod raft {
        tonic::include_proto!("raftkv.raft.v1");
    }
    pub mod admin {
        tonic::include_proto!("raftkv.admin.v1");
    }
}
pub mod api;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod logging;
pub mod metrics;
pub mod node;
