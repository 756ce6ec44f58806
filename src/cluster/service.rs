//! The admin gRPC service (`raftkv.admin.v1`): a thin shell over [`Admin`].

use std::io::Write;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Admin, AdminError};
use crate::pb::admin as pb;
use crate::pb::admin::admin_server::Admin as AdminRpc;

/// Backups are streamed in chunks of this size.
const BACKUP_CHUNK: usize = 1 << 20;

pub(crate) struct AdminService {
    admin: Admin,
    /// The cluster id a bootstrap by this node adopts (e.g. the RaftCluster's UID).
    cluster_id: Option<String>,
}

impl AdminService {
    pub(crate) fn new(admin: Admin, cluster_id: Option<String>) -> Self {
        AdminService { admin, cluster_id }
    }
}

fn pos(p: Option<raftkv_client::model::LogPosition>) -> Option<pb::LogPosition> {
    p.map(|p| pb::LogPosition {
        term: p.term,
        index: p.index,
    })
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::AddVoterProgress, Status>> + Send>>;
type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// A `Write` that cuts what it is given into chunks on a channel (for a blocking producer).
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<pb::BackupChunk, Status>>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_CHUNK));
        self.tx
            .blocking_send(Ok(pb::BackupChunk { data: data.into() }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "backup receiver went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BACKUP_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
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

    type AddVoterStream = ProgressStream;

    async fn add_voter(&self, req: Request<pb::AddMemberRequest>) -> Result<Response<Self::AddVoterStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let (progress_tx, mut progress_rx) = mpsc::channel(64);
        let admin = self.admin.clone();
        let req = req.into_inner();
        tokio::spawn(async move {
            let work = admin.add_voter(req, Some(progress_tx));
            tokio::pin!(work);
            let result = loop {
                tokio::select! {
                    r = &mut work => break r,
                    Some(p) = progress_rx.recv() => { let _ = tx.send(Ok(p)).await; }
                }
            };
            while let Ok(p) = progress_rx.try_recv() {
                let _ = tx.send(Ok(p)).await;
            }
            let last = match result {
                Ok(r) => Ok(pb::AddVoterProgress {
                    stage: if r.log_index == 0 { "already_voter" } else { "promoted" }.to_string(),
                    lag: 0,
                    message: r.message.clone(),
                    result: Some(r),
                }),
                Err(e) => Err(Status::from(e)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

    async fn transfer_leadership(
        &self,
        req: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
        Ok(Response::new(
            self.admin.transfer_leadership_to(req.into_inner().to).await?,
        ))
    }

    async fn members(&self, _req: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        Ok(Response::new(self.admin.members().await?))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.admin.status();
        let keys = self.admin.state_machine().len().unwrap_or(0);
        Ok(Response::new(pb::StatusResponse {
            id: s.id,
            cluster_id: s.cluster_id.unwrap_or_default(),
            role: s.role.as_str().to_string(),
            term: s.term,
            leader_id: s.leader.unwrap_or(0),
            last_log: s.last_log_index.map(|i| pb::LogPosition { term: 0, index: i }),
            committed: pos(s.committed),
            applied: pos(s.applied),
            snapshot: pos(s.snapshot),
            purged: pos(s.purged),
            members: s.members.into_iter().map(super::status::pb_member).collect(),
            uptime_seconds: s.uptime_seconds,
            membership_log_index: s.membership_log_index.unwrap_or(0),
            joint: s.joint,
            keys,
        }))
    }

    async fn snapshot(&self, _req: Request<pb::SnapshotRequest>) -> Result<Response<pb::SnapshotResponse>, Status> {
        Ok(Response::new(self.admin.snapshot().await?))
    }

    type BackupStream = BackupStream;

    async fn backup(&self, req: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        if let Some(mut leader) = self.admin.backup_route().await? {
            let upstream = leader.backup(req.into_inner()).await?.into_inner();
            return Ok(Response::new(Box::pin(upstream.map(|c| c))));
        }
        let (tx, rx) = mpsc::channel(4);
        let sm = self.admin.state_machine().clone();
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkWriter {
                buf: Vec::with_capacity(BACKUP_CHUNK),
                tx: tx.clone(),
            };
            match sm.backup(&mut out).and_then(|r| out.flush().map(|_| r)) {
                Ok((meta, size)) => tracing::info!(
                    last_log_id = %meta.last_log_id.map(|l| l.to_string()).unwrap_or_default(),
                    size_bytes = size,
                    "backup streamed"
                ),
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::from(AdminError::Raft(format!("backup failed: {e}")))));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
