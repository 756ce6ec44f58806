//! The receiving side of Raft traffic: decodes each RPC and hands it to openraft.

use std::io::Write;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use openraft::errors::{LinearizableReadError, RaftError};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::ReadPolicy;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::ClusterFence;
use crate::api::propose::{ProposeError, Proposer};
use crate::pb::raft::raft_server::Raft as RaftRpc;
use crate::pb::raft::{
    snapshot_chunk, ProposeRequest, ProposeResponse, RaftMessage, ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use crate::storage::codec::{decode, encode};
use crate::storage::snapshot::SnapshotReader;
use crate::storage::{SnapshotData, StateMachine};
use crate::types::{NodeId, Proposal, Raft, SnapshotMeta, TypeConfig, Vote};

pub struct RaftService {
    id: NodeId,
    raft: Raft,
    fence: ClusterFence,
    sm: StateMachine,
    /// Followers' writes join this node's proposals.
    proposer: Proposer,
}

/// Refuses a message meant for another node id (see `RaftMessage.target` in raft.proto).
fn check_target(me: NodeId, target: u64) -> Result<(), Status> {
    if target != 0 && target != me {
        return Err(Status::failed_precondition(format!(
            "this is node {me}, not node {target}: the member at this address has been replaced"
        )));
    }
    Ok(())
}

impl RaftService {
    pub fn new(id: NodeId, raft: Raft, fence: ClusterFence, sm: StateMachine, proposer: Proposer) -> Self {
        RaftService {
            id,
            raft,
            fence,
            sm,
            proposer,
        }
    }

    fn open<T: DeserializeOwned>(&self, msg: &RaftMessage) -> Result<T, Status> {
        check_target(self.id, msg.target)?;
        self.fence.check(&msg.cluster_id)?;
        decode(&msg.payload).map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
    }

    fn reply<T: Serialize>(&self, value: &T) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(RaftMessage {
            cluster_id: self.fence.outgoing(),
            payload: Bytes::from(encode(value).map_err(|e| Status::internal(e.to_string()))?),
            target: 0,
        }))
    }
}

/// openraft fails these calls only when the node is shutting down or has hit a fatal error.
fn fatal<E: std::fmt::Display>(e: E) -> Status {
    Status::unavailable(format!("raft node unavailable: {e}"))
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = self.open(req.get_ref())?;
        let resp = self.raft.vote(rpc).await.map_err(fatal)?;
        self.reply(&resp)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = self.open(req.get_ref())?;
        let resp = self.raft.pre_vote(rpc).await.map_err(fatal)?;
        self.reply(&resp)
    }

    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(req.get_ref())?;
        let resp = self.raft.append_entries(rpc).await.map_err(fatal)?;
        self.reply(&resp)
    }

    type StreamAppendStream = ResponseStream;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let fence = self.fence.clone();
        let input = req.into_inner();
        // A request that cannot be decoded or belongs to another cluster ends the stream: the
        // leader reconnects and starts over, which is what Raft needs anyway.
        let fence_in = fence.clone();
        let me = self.id;
        let mut input = input;
        // The first message decides: a stream meant for another node (or cluster) is refused
        // with an error the leader can see, rather than silently ended.
        let first = match input.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e),
            None => return Ok(Response::new(Box::pin(futures::stream::empty()))),
        };
        check_target(me, first.target)?;
        fence.check(&first.cluster_id)?;
        let requests = futures::stream::iter([Ok(first)])
            .chain(input)
            .take_while(move |msg| {
                let ok = match msg {
                    Ok(m) => fence_in.check(&m.cluster_id).is_ok() && check_target(me, m.target).is_ok(),
                    Err(_) => false,
                };
                futures::future::ready(ok)
            })
            .filter_map(|msg| async move {
                let msg = msg.ok()?;
                match decode::<AppendEntriesRequest<TypeConfig>>(&msg.payload) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable AppendEntries in stream");
                        None
                    }
                }
            });
        let out = self.raft.stream_append(requests).map(move |res| match res {
            Ok(r) => encode(&r)
                .map(|payload| RaftMessage {
                    cluster_id: fence.outgoing(),
                    payload: Bytes::from(payload),
                    target: 0,
                })
                .map_err(|e| Status::internal(e.to_string())),
            Err(e) => Err(fatal(e)),
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftMessage>, Status> {
        let mut stream = req.into_inner();
        let header = match stream.next().await {
            Some(Ok(SnapshotChunk {
                kind: Some(snapshot_chunk::Kind::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("a snapshot stream must start with its header")),
        };
        check_target(self.id, header.target)?;
        self.fence.check(&header.cluster_id)?;
        let vote: Vote = decode(&header.vote).map_err(|e| Status::invalid_argument(format!("bad vote: {e}")))?;
        let meta: SnapshotMeta =
            decode(&header.meta).map_err(|e| Status::invalid_argument(format!("bad snapshot meta: {e}")))?;

        let path = self.sm.incoming_snapshot_path();
        let result = receive_snapshot(&mut stream, &path, header.size_bytes).await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::open(path.clone()).map_err(|e| Status::internal(e.to_string()))?,
        };
        let resp = self.raft.install_full_snapshot(vote, snapshot).await.map_err(fatal);
        // Installed snapshots are renamed away; a refused one is left behind as a .part file.
        let _ = std::fs::remove_file(&path);
        self.reply(&resp?)
    }

    async fn read_index(&self, req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        let r = req.get_ref();
        check_target(self.id, r.target)?;
        self.fence.check(&r.cluster_id)?;
        let policy = if r.lease {
            ReadPolicy::LeaseRead
        } else {
            ReadPolicy::ReadIndex
        };
        match self.raft.get_read_linearizer(policy).await {
            Ok(linearizer) => Ok(Response::new(ReadIndexResponse {
                index: linearizer.read_log_id().index(),
            })),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                Err(Status::failed_precondition("this node is not the leader"))
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
                Err(Status::unavailable(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    async fn propose(&self, req: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let r = req.into_inner();
        check_target(self.id, r.target)?;
        self.fence.check(&r.cluster_id)?;
        let Proposal(commands) =
            decode(&r.proposal).map_err(|e| Status::invalid_argument(format!("undecodable proposal: {e}")))?;
        let deadline = Instant::now() + Duration::from_millis(u64::from(r.timeout_ms));
        match self.proposer.propose_here(commands, deadline).await {
            Ok(results) => Ok(Response::new(ProposeResponse {
                results: Bytes::from(encode(&results).map_err(|e| Status::internal(e.to_string()))?),
            })),
            Err(ProposeError::NotLeader(m) | ProposeError::NoLeader(m)) => Err(Status::failed_precondition(m)),
            Err(ProposeError::Timeout(m)) => Err(Status::deadline_exceeded(m)),
            Err(ProposeError::Unknown(m)) => Err(Status::aborted(m)),
            Err(ProposeError::Stopped(m)) => Err(Status::unavailable(m)),
        }
    }

    async fn transfer_leader(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = self.open(req.get_ref())?;
        let resp = self.raft.handle_transfer_leader(rpc).await.map_err(fatal)?;
        self.reply(&resp)
    }
}

/// Writes the data chunks to `path`, then verifies the whole file (format and checksum)
/// before anyone trusts it.
async fn receive_snapshot(
    stream: &mut Streaming<SnapshotChunk>,
    path: &std::path::Path,
    expected: u64,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("writing snapshot: {e}"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk?.kind {
            Some(snapshot_chunk::Kind::Data(data)) => {
                received += data.len() as u64;
                file.write_all(&data).map_err(io)?;
            }
            _ => {
                return Err(Status::invalid_argument(
                    "only data chunks may follow the snapshot header",
                ))
            }
        }
    }
    if received != expected {
        return Err(Status::data_loss(format!(
            "snapshot truncated: received {received} of {expected} bytes"
        )));
    }
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || SnapshotReader::open(&path)?.verify())
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::data_loss(format!("received snapshot is corrupt: {e}")))?;
    Ok(())
}
