//! The admin gRPC service (`raftkv.admin.v1`): a thin shell over [`Admin`].
//!
//! With authentication on, every call needs the root role, as etcd's maintenance and cluster
//! calls do (`--force` and backups included): credentials in the `authorization` metadata
//! (Basic, Bearer, or a bare token) or in etcd's `token` key, else a verified client
//! certificate's common name. A call that only the leader serves is sent on to it from here,
//! with a short-lived root token of this node's making (etcd's `WithRoot`): the caller has
//! been checked here, and its own credentials may not travel (a certificate does not).

use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::{Admin, AdminError, PeerAdmin, Route};
use crate::auth::{Access, AuthError, Authenticator, Credentials};
use crate::pb::admin as pb;
use crate::pb::admin::admin_server::Admin as AdminRpc;
use crate::tls::ClientCertName;

/// Backups are streamed in chunks of this size.
const BACKUP_CHUNK: usize = 1 << 20;

pub(crate) struct AdminService {
    admin: Admin,
    /// The cluster id a bootstrap by this node adopts (e.g. the RaftCluster's UID).
    cluster_id: Option<String>,
    /// Checks callers against the replicated users (with its own remembered password checks).
    auth: Authenticator,
}

impl AdminService {
    pub(crate) fn new(admin: Admin, cluster_id: Option<String>) -> Self {
        AdminService {
            admin,
            cluster_id,
            auth: Authenticator::default(),
        }
    }

    /// Refuses the call unless authentication is off or the caller has the root role.
    async fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if !self.admin.state_machine().auth_enabled() {
            return Ok(());
        }
        let state = self.admin.state_machine().auth();
        let cert = req.extensions().get::<ClientCertName>().cloned().or_else(|| {
            let certs = req.peer_certs()?;
            certs.first().and_then(crate::tls::common_name).map(ClientCertName)
        });
        let credentials = credentials(req.metadata(), cert.as_ref())
            .map_err(refusal)?
            .ok_or(refusal(AuthError::UserEmpty))?;
        let name = self.auth.identify(&state, &credentials).await.map_err(refusal)?;
        state.check(&name, Access::Admin).map_err(refusal)
    }

    /// With authentication on and another node leading: a client of the leader's admin
    /// service, for a call only the leader serves (see the module doc). `None`: this node
    /// serves it (it leads, or authentication is off and [`Admin`] forwards by itself).
    async fn leader_elsewhere(&self) -> Result<Option<PeerAdmin>, Status> {
        if !self.admin.state_machine().auth_enabled() {
            return Ok(None);
        }
        match self.admin.route_patiently(Duration::from_secs(5)).await? {
            Route::Local => Ok(None),
            Route::Leader(l, addr) => Ok(Some(self.admin.leader_client(l, &addr)?)),
        }
    }
}

/// The credentials of a call: `authorization` metadata (Basic, Bearer, or a bare token),
/// etcd's `token` key, or the verified client certificate's common name.
fn credentials(md: &MetadataMap, cert: Option<&ClientCertName>) -> Result<Option<Credentials>, AuthError> {
    if let Some(value) = md.get("authorization") {
        let value = value.to_str().map_err(|_| AuthError::AuthFailed)?;
        return Credentials::from_authorization(value).map(Some);
    }
    if let Some(token) = md.get("token") {
        let token = token.to_str().map_err(|_| AuthError::InvalidAuthToken)?;
        return Ok(Some(Credentials::Token(token.to_string())));
    }
    Ok(cert.map(|cn| Credentials::Certificate(cn.0.clone())))
}

/// A refusal as etcd's gRPC answers it: `Unauthenticated` for who, `PermissionDenied` for what.
fn refusal(e: AuthError) -> Status {
    if e.unauthenticated() {
        Status::unauthenticated(e.to_string())
    } else {
        Status::permission_denied(e.to_string())
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
        self.authorize(&req).await?;
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
        self.authorize(&req).await?;
        if let Some(mut leader) = self.leader_elsewhere().await? {
            return leader.add_learner(req.into_inner()).await;
        }
        Ok(Response::new(self.admin.add_learner(req.into_inner()).await?))
    }

    type AddVoterStream = ProgressStream;

    async fn add_voter(&self, req: Request<pb::AddMemberRequest>) -> Result<Response<Self::AddVoterStream>, Status> {
        self.authorize(&req).await?;
        if let Some(mut leader) = self.leader_elsewhere().await? {
            let upstream = leader.add_voter(req.into_inner()).await?.into_inner();
            return Ok(Response::new(Box::pin(upstream)));
        }
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
        self.authorize(&req).await?;
        if let Some(mut leader) = self.leader_elsewhere().await? {
            return leader.remove_member(req.into_inner()).await;
        }
        Ok(Response::new(self.admin.remove_member(req.into_inner()).await?))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.authorize(&req).await?;
        if let Some(mut leader) = self.leader_elsewhere().await? {
            return leader.change_membership(req.into_inner()).await;
        }
        Ok(Response::new(self.admin.change_membership(req.into_inner()).await?))
    }

    async fn transfer_leadership(
        &self,
        req: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
        self.authorize(&req).await?;
        if let Some(mut leader) = self.leader_elsewhere().await? {
            return leader.transfer_leadership(req.into_inner()).await;
        }
        Ok(Response::new(
            self.admin.transfer_leadership_to(req.into_inner().to).await?,
        ))
    }

    async fn members(&self, req: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        self.authorize(&req).await?;
        if let Some(mut leader) = self.leader_elsewhere().await? {
            return leader.members(req.into_inner()).await;
        }
        Ok(Response::new(self.admin.members().await?))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        self.authorize(&req).await?;
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

    async fn snapshot(&self, req: Request<pb::SnapshotRequest>) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.authorize(&req).await?;
        Ok(Response::new(self.admin.snapshot().await?))
    }

    type BackupStream = BackupStream;

    async fn backup(&self, req: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        self.authorize(&req).await?;
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
