//! Why an admin operation failed, and how that reads as a gRPC status.

use openraft::errors::RaftError;

use crate::types::NodeId;

/// Why an admin operation failed; each maps to a precise gRPC status and HTTP code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("node {0} is not a member of this cluster")]
    NotFound(NodeId),
    #[error("no leader is known (the cluster may have lost quorum or be electing); retry shortly")]
    NoLeader,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("forwarding to leader {leader} at {addr} failed: {message}")]
    Forward {
        leader: NodeId,
        addr: String,
        message: String,
    },
    #[error("raft error: {0}")]
    Raft(String),
    /// The leader's answer to a forwarded call, passed on unchanged.
    #[error("{}", .0.message())]
    Leader(tonic::Status),
}

impl From<AdminError> for tonic::Status {
    fn from(e: AdminError) -> Self {
        let msg = e.to_string();
        match e {
            AdminError::Invalid(_) => tonic::Status::invalid_argument(msg),
            AdminError::Refused(_) => tonic::Status::failed_precondition(msg),
            AdminError::NotFound(_) => tonic::Status::not_found(msg),
            AdminError::NoLeader | AdminError::Forward { .. } => tonic::Status::unavailable(msg),
            AdminError::Timeout(_) => tonic::Status::deadline_exceeded(msg),
            AdminError::Raft(_) => tonic::Status::internal(msg),
            AdminError::Leader(status) => status,
        }
    }
}

impl From<tonic::Status> for AdminError {
    fn from(s: tonic::Status) -> Self {
        AdminError::Leader(s)
    }
}

pub(super) fn write_err<E: std::fmt::Debug + std::fmt::Display>(
    e: RaftError<crate::types::TypeConfig, E>,
) -> AdminError {
    AdminError::Raft(e.to_string())
}
