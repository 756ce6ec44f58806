//! raftkv's wire contracts, generated from the `.proto` files beside this crate: the Raft
//! transport between nodes and the admin service that `raftkv admin` and the operator call.
//! A crate of its own so that a client (the CLI, the operator, the tests) can speak them
//! without building the server.

/// `raftkv.raft.v1`: node-to-node Raft traffic (see `raft.proto`).
pub mod raft {
    tonic::include_proto!("raftkv.raft.v1");
}

/// `raftkv.admin.v1`: membership, status, snapshots and backups (see `admin.proto`).
pub mod admin {
    tonic::include_proto!("raftkv.admin.v1");
}
