//! The admin gRPC service (`raftkv.admin.v1`): a thin shell over [`Admin`].

use tonic::{Request, Response, Status};

use super::Admin;
use crate::pb::admin as pb;
use crate::pb::admin::admin_server::Admin as AdminRpc;

pub struct AdminService {
    admin: Admin,
    /// The cluster id a bootstrap by this node adopts (e.g. the RaftCluster's UID).
    cluster_id: Option<String>,
}

impl AdminService {
    pub fn new(admin: Admin, cluster_id: Option<String>) -> Self {
        AdminService { admin, cluster_id }
    }
}

fn pos(p: Option<super::status::LogPosition>) -> Option<pb::LogPosition> {
    p.map(|p| pb::LogPosition {
        term: p.term,
        index: p.index,
    })
}

#[tonic::async_trait]
impl AdminRpc for AdminService {
    async fn initialize(
        &self,
        req: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let r = self
            .admin
            .initialize(req.into_inner().members, self.cluster_id.clone())
            .await?;
        Ok(Response::new(r))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Ok(Response::new(self.admin.add_learner(req.into_inner()).await?))
    }

    async fn add_voter(&self, req: Request<pb::AddMemberRequest>) -> Result<Response<pb::MembershipResponse>, Status> {
        Ok(Response::new(self.admin.add_voter(req.into_inner()).await?))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Ok(Response::new(self.admin.remove_member(req.into_inner()).await?))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        Ok(Response::new(self.admin.change_membership(req.into_inner()).await?))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.admin.status();
        Ok(Response::new(pb::StatusResponse {
            id: s.id,
            cluster_id: s.cluster_id.unwrap_or_default(),
            role: s.role.to_string(),
            term: s.term,
            leader_id: s.leader.unwrap_or(0),
            last_log: s.last_log_index.map(|i| pb::LogPosition { term: 0, index: i }),
            committed: pos(s.committed),
            applied: pos(s.applied),
            snapshot: pos(s.snapshot),
            purged: pos(s.purged),
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member {
                    id: m.id,
                    raft_addr: m.raft_addr,
                    http_addr: m.http_addr,
                    voter: m.voter,
                })
                .collect(),
            uptime_seconds: s.uptime_seconds,
        }))
    }
}
