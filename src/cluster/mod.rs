//! Cluster membership: bootstrap, adding and removing members, and the admin gRPC service
//! (`raftkv.admin.v1`) that exposes them.
//!
//! [`Admin`] holds the logic and the safety rails; it forwards to the leader whatever only the
//! leader can do, so every caller (the admin service, a joining node, the operator) may talk
//! to any member.

mod error;
mod leadership;
mod membership;
mod rails;
mod service;
mod snapshots;
pub(crate) mod status;

pub(crate) use error::AdminError;

pub(crate) use service::AdminService;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::pb::admin as pb;
use crate::pb::admin::admin_client::AdminClient;
use crate::replica::{Leader, Raft};
use crate::storage::StateMachine;
use crate::transport::{ClusterFence, Network};
use crate::types::NodeId;
/// Adds this node's root token (if any) to every call of a [`PeerAdmin`].
#[derive(Clone)]
pub(crate) struct AsRoot(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for AsRoot {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// A client of a peer's admin service.
pub(crate) type PeerAdmin = AdminClient<InterceptedService<Channel, AsRoot>>;

/// Where a membership call must run: here, or at the leader.
enum Route {
    Local,
    Leader(NodeId, String),
}

/// Membership operations with their safety rails. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Admin {
    raft: Raft,
    id: NodeId,
    fence: ClusterFence,
    network: Network,
    sm: StateMachine,
    /// One membership change at a time on this node (openraft also refuses overlapping ones).
    change_lock: Arc<Mutex<()>>,
    started: Instant,
    /// A learner counts as caught up when it is at most this many entries behind.
    pub catch_up_lag: u64,
    pub default_catch_up_timeout: Duration,
}

impl Admin {
    pub(crate) fn new(raft: Raft, id: NodeId, fence: ClusterFence, network: Network, sm: StateMachine) -> Self {
        Admin {
            raft,
            id,
            fence,
            network,
            sm,
            change_lock: Arc::default(),
            started: Instant::now(),
            catch_up_lag: 64,
            default_catch_up_timeout: Duration::from_secs(60),
        }
    }

    pub(crate) fn status(&self) -> raftkv_client::model::Status {
        status::read(&self.raft, self.fence.get(), self.started)
    }

    fn route(&self) -> Result<Route, AdminError> {
        match Leader::of(&self.raft, self.id) {
            Leader::Me => Ok(Route::Local),
            Leader::Other { id, raft_addr, .. } => Ok(Route::Leader(id, raft_addr)),
            Leader::Unknown => Err(AdminError::NoLeader),
        }
    }

    /// Waits up to `patience` for a leader to be known, then routes.
    async fn route_patiently(&self, patience: Duration) -> Result<Route, AdminError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.route() {
                Err(AdminError::NoLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    fn leader_client(&self, leader: NodeId, addr: &str) -> Result<PeerAdmin, AdminError> {
        self.peer_admin(addr).map_err(|e| AdminError::Forward {
            leader,
            addr: addr.to_string(),
            message: e.to_string(),
        })
    }

    /// The admin service of the peer at `addr`, called as root when authentication is on
    /// (etcd's internal root calls): what this node asks a peer for has been checked here
    /// already, or is the node's own business (its membership).
    pub(crate) fn peer_admin(&self, addr: &str) -> Result<PeerAdmin, tonic::transport::Error> {
        let channel = self.network.channel(addr)?;
        let token = crate::auth::Authenticator::default().internal_root_token(&self.sm.auth());
        let authorization = token.and_then(|t| format!("Bearer {t}").parse().ok());
        Ok(AdminClient::with_interceptor(channel, AsRoot(authorization)))
    }

    fn members_now(&self) -> Vec<pb::Member> {
        self.status().members.into_iter().map(status::pb_member).collect()
    }

    fn done(&self, log_index: u64, message: String) -> pb::MembershipResponse {
        tracing::info!(log_index, "{message}");
        pb::MembershipResponse {
            log_index,
            members: self.members_now(),
            message,
        }
    }

    pub(crate) fn state_machine(&self) -> &StateMachine {
        &self.sm
    }
}
