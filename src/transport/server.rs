//! The receiving side of Raft traffic: decodes each RPC and hands it to openraft.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::coalesce::FollowerReads;
use super::snapshot::receive_snapshot;
use super::ClusterFence;
use crate::codec::{decode, encode};
use crate::pb::raft::raft_server::Raft as RaftRpc;
use crate::pb::raft::{
    call, reply, snapshot_chunk, Call, Failure, ProposeRequest, ProposeResponse, RaftMessage, ReadIndexRequest,
    ReadIndexResponse, Reply, SnapshotChunk,
};
use crate::replica::{NoReadIndex, ProposeError, Raft, Replica, Vouch, WriteError};
use crate::storage::SnapshotData;
use crate::types::{NodeId, Proposal, SnapshotMeta, TypeConfig, Vote};

/// The Raft service (`raftkv.raft.v1`) of one node.
#[derive(Clone)]
pub(crate) struct RaftService {
    fence: ClusterFence,
    /// This node's Raft and state; followers' writes join this node's proposals, and their read-index requests this
    /// node's confirmations.
    replica: Replica,
    /// Told of each: commit updates then reach followers at once (see `coalesce`).
    follower_reads: FollowerReads,
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
    pub(crate) fn new(replica: Replica, fence: ClusterFence, follower_reads: FollowerReads) -> Self {
        RaftService {
            fence,
            replica,
            follower_reads,
        }
    }

    fn open<T: DeserializeOwned>(&self, msg: &RaftMessage) -> Result<T, Status> {
        check_target(self.id(), msg.target)?;
        self.fence.check(&msg.cluster_id)?;
        decode(&msg.payload).map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
    }

    /// An answer to a peer, stamped with this node's cluster id.
    fn message<T: Serialize>(&self, value: &T) -> Result<RaftMessage, Status> {
        Ok(RaftMessage {
            cluster_id: self.fence.outgoing(),
            payload: Bytes::from(encode(value).map_err(|e| Status::internal(e.to_string()))?),
            target: 0,
        })
    }

    fn reply<T: Serialize>(&self, value: &T) -> Result<Response<RaftMessage>, Status> {
        self.message(value).map(Response::new)
    }

    fn id(&self) -> NodeId {
        self.replica.id()
    }

    fn raft(&self) -> &Raft {
        self.replica.raft()
    }
}

impl RaftService {
    /// Answers one call of the call stream.
    async fn answer(&self, kind: call::Kind) -> Result<reply::Kind, Status> {
        match kind {
            call::Kind::Append(msg) => self.append_one(&msg).await.map(reply::Kind::Append),
            call::Kind::ReadIndex(r) => self.read_index(&r).await.map(reply::Kind::ReadIndex),
            call::Kind::Propose(r) => self.propose(r).await.map(reply::Kind::Propose),
        }
    }

    /// One AppendEntries request (a heartbeat), answered as `StreamAppend` answers.
    async fn append_one(&self, msg: &RaftMessage) -> Result<RaftMessage, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(msg)?;
        let mut results = Box::pin(self.raft().stream_append(futures::stream::once(async move { rpc })));
        match results.next().await {
            Some(Ok(result)) => self.message(&result),
            Some(Err(e)) => Err(fatal(e)),
            None => Err(Status::unavailable("raft node unavailable")),
        }
    }

    async fn read_index(&self, r: &ReadIndexRequest) -> Result<ReadIndexResponse, Status> {
        check_target(self.id(), r.target)?;
        self.fence.check(&r.cluster_id)?;
        self.follower_reads.asked();
        match self
            .replica
            .read_index_here(r.lease, r.vouch.as_ref().map(Vouch::from))
            .await
        {
            Ok(index) => Ok(ReadIndexResponse {
                index,
                stamp: Some(self.replica.stamp().into()),
            }),
            Err(NoReadIndex::NotLeader) => Err(Status::failed_precondition("this node is not the leader")),
            Err(NoReadIndex::Retry(m)) => Err(Status::unavailable(m)),
            Err(NoReadIndex::Stopped(m)) => Err(fatal(m)),
        }
    }

    async fn propose(&self, r: ProposeRequest) -> Result<ProposeResponse, Status> {
        check_target(self.id(), r.target)?;
        self.fence.check(&r.cluster_id)?;
        let Proposal(commands) =
            decode(&r.proposal).map_err(|e| Status::invalid_argument(format!("undecodable proposal: {e}")))?;
        let deadline = Instant::now() + Duration::from_millis(u64::from(r.timeout_ms));
        match self.replica.propose_here(commands, deadline).await {
            Ok(results) => Ok(ProposeResponse {
                results: Bytes::from(encode(&results).map_err(|e| Status::internal(e.to_string()))?),
            }),
            // As etcd answers a put under its NOSPACE alarm.
            Err(WriteError::NoSpace(m)) => Err(Status::resource_exhausted(m)),
            Err(WriteError::Propose(e)) => Err(match e {
                ProposeError::NotLeader(m) | ProposeError::NoLeader(m) => Status::failed_precondition(m),
                ProposeError::Timeout(m) => Status::deadline_exceeded(m),
                ProposeError::Unknown(m) => Status::aborted(m),
                ProposeError::Stopped(m) => Status::unavailable(m),
            }),
        }
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
        let resp = self.raft().vote(rpc).await.map_err(fatal)?;
        self.reply(&resp)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = self.open(req.get_ref())?;
        let resp = self.raft().pre_vote(rpc).await.map_err(fatal)?;
        self.reply(&resp)
    }

    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(req.get_ref())?;
        let resp = self.raft().append_entries(rpc).await.map_err(fatal)?;
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
        let me = self.id();
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
        let out = self.raft().stream_append(requests).map(move |res| match res {
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
        check_target(self.id(), header.target)?;
        self.fence.check(&header.cluster_id)?;
        let vote: Vote = decode(&header.vote).map_err(|e| Status::invalid_argument(format!("bad vote: {e}")))?;
        let meta: SnapshotMeta =
            decode(&header.meta).map_err(|e| Status::invalid_argument(format!("bad snapshot meta: {e}")))?;

        let path = self.replica.state().incoming_snapshot_path();
        let result = receive_snapshot(&mut stream, &path, header.size_bytes).await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::open(path.clone()).map_err(|e| Status::internal(e.to_string()))?,
        };
        let resp = self.raft().install_full_snapshot(vote, snapshot).await.map_err(fatal);
        // Installed snapshots are renamed away; a refused one is left behind as a .part file.
        let _ = std::fs::remove_file(&path);
        self.reply(&resp?)
    }

    type CallsStream = Pin<Box<dyn Stream<Item = Result<Reply, Status>> + Send>>;

    async fn calls(&self, req: Request<Streaming<Call>>) -> Result<Response<Self::CallsStream>, Status> {
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::unbounded_channel::<Result<Reply, Status>>();
        let service = self.clone();
        // Each call is answered as soon as it is done: a proposal waits for its commit, a
        // heartbeat or a read index does not wait behind it.
        tokio::spawn(async move {
            while let Some(Ok(Call { id, kind })) = input.next().await {
                let service = service.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let answer = match kind {
                        Some(kind) => service.answer(kind).await,
                        None => Err(Status::invalid_argument("an empty call")),
                    };
                    let kind = answer.unwrap_or_else(|s| {
                        reply::Kind::Failure(Failure {
                            code: s.code() as i32,
                            message: s.message().to_string(),
                        })
                    });
                    let _ = tx.send(Ok(Reply { id, kind: Some(kind) }));
                });
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn transfer_leader(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = self.open(req.get_ref())?;
        let resp = self.raft().handle_transfer_leader(rpc).await.map_err(fatal)?;
        self.reply(&resp)
    }
}
