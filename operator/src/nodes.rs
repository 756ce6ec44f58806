//! Talking to the raftkv nodes: their admin gRPC service (`raftkv.admin.v1`), the one way the
//! operator changes a cluster. Behind a trait, so that reconcile tests can use a fake.

use std::time::Duration;

use futures::future::BoxFuture;
use raftkv::pb::admin as pb;
use raftkv::pb::admin::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

/// The admin calls the operator makes. Errors are human-readable strings that end up in
/// Events and status conditions.
pub trait Nodes: Send + Sync + 'static {
    fn status(&self, addr: String) -> BoxFuture<'static, Result<pb::StatusResponse, String>>;
    fn members(&self, addr: String) -> BoxFuture<'static, Result<pb::MembersResponse, String>>;
    fn initialize(&self, addr: String, members: Vec<pb::Member>) -> BoxFuture<'static, Result<String, String>>;
    fn add_learner(&self, addr: String, req: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>>;
    /// AddVoter for a learner that has caught up (idempotent: it promotes an existing learner).
    fn promote(&self, addr: String, req: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>>;
    fn remove(&self, addr: String, id: u64, force: bool) -> BoxFuture<'static, Result<String, String>>;
    fn transfer_leadership(&self, addr: String, to: u64) -> BoxFuture<'static, Result<String, String>>;
}

/// The real thing, over gRPC.
pub struct GrpcNodes {
    pub timeout: Duration,
}

impl GrpcNodes {
    async fn client(addr: &str, timeout: Duration) -> Result<AdminClient<Channel>, String> {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{addr}: bad address: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .connect()
            .await
            .map_err(|e| format!("{addr}: cannot connect: {e}"))?;
        Ok(AdminClient::new(ch))
    }
}

fn err(addr: &str, s: tonic::Status) -> String {
    format!("{addr}: {}", s.message())
}

impl Nodes for GrpcNodes {
    fn status(&self, addr: String) -> BoxFuture<'static, Result<pb::StatusResponse, String>> {
        let t = self.timeout;
        Box::pin(async move {
            let mut c = Self::client(&addr, t).await?;
            c.status(pb::StatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| err(&addr, s))
        })
    }

    fn members(&self, addr: String) -> BoxFuture<'static, Result<pb::MembersResponse, String>> {
        let t = self.timeout;
        Box::pin(async move {
            let mut c = Self::client(&addr, t).await?;
            c.members(pb::MembersRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| err(&addr, s))
        })
    }

    fn initialize(&self, addr: String, members: Vec<pb::Member>) -> BoxFuture<'static, Result<String, String>> {
        let t = self.timeout;
        Box::pin(async move {
            let mut c = Self::client(&addr, t).await?;
            c.initialize(pb::InitializeRequest { members })
                .await
                .map(|r| r.into_inner().message)
                .map_err(|s| err(&addr, s))
        })
    }

    fn add_learner(&self, addr: String, req: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>> {
        let t = self.timeout;
        Box::pin(async move {
            let mut c = Self::client(&addr, t).await?;
            c.add_learner(req)
                .await
                .map(|r| r.into_inner().message)
                .map_err(|s| err(&addr, s))
        })
    }

    fn promote(&self, addr: String, req: pb::AddMemberRequest) -> BoxFuture<'static, Result<String, String>> {
        let t = self.timeout;
        Box::pin(async move {
            let mut c = Self::client(&addr, t).await?;
            let mut stream = c.add_voter(req).await.map_err(|s| err(&addr, s))?.into_inner();
            while let Some(p) = stream.message().await.map_err(|s| err(&addr, s))? {
                if let Some(r) = p.result {
                    return Ok(r.message);
                }
            }
            Err(format!("{addr}: add-voter ended without a result"))
        })
    }

    fn remove(&self, addr: String, id: u64, force: bool) -> BoxFuture<'static, Result<String, String>> {
        let t = self.timeout;
        Box::pin(async move {
            let mut c = Self::client(&addr, t).await?;
            c.remove_member(pb::RemoveMemberRequest { id, force })
                .await
                .map(|r| r.into_inner().message)
                .map_err(|s| err(&addr, s))
        })
    }

    fn transfer_leadership(&self, addr: String, to: u64) -> BoxFuture<'static, Result<String, String>> {
        let t = self.timeout;
        Box::pin(async move {
            let mut c = Self::client(&addr, t).await?;
            c.transfer_leadership(pb::TransferLeadershipRequest { to })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    format!("leadership moved from {} to {}", r.old_leader, r.new_leader)
                })
                .map_err(|s| err(&addr, s))
        })
    }
}
