//! The sending side of Raft traffic: one long-lived gRPC channel per peer.
//!
//! tonic's `Channel` reconnects by itself; openraft backs off from a peer that answers
//! `Unreachable` (see [`Connection::backoff`]). Every RPC is bounded by the timeout openraft
//! gives it, so a dead peer never stalls replication to the others.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{Backoff, RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use super::calls::{CallError, PeerCalls};
use super::coalesce::{fold_commit_updates, FollowerReads, Ledger};
use super::ClusterFence;
use crate::api::vouch::{Stamp, Vouch};
use crate::metrics::Metrics;
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::{
    call, reply, snapshot_chunk, ProposeRequest, RaftMessage, ReadIndexRequest, SnapshotChunk, SnapshotHeader,
};
use crate::storage::codec::{decode, encode};
use crate::storage::SnapshotData;
use crate::types::{CommandResult, NodeAddr, NodeId, Proposal, TypeConfig, Vote};

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// A leader's answer to a read-index call.
pub struct ReadIndexAnswer {
    pub index: u64,
    /// When it answered, on its clock (none from a node that does not stamp answers).
    pub stamp: Option<Stamp>,
}

/// Snapshot data is sent in chunks of this size.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Creates connections for openraft; caches one channel per peer address.
#[derive(Clone)]
pub struct Network {
    fence: ClusterFence,
    metrics: Option<Arc<Metrics>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    calls: Arc<Mutex<HashMap<String, PeerCalls>>>,
    connect_timeout: Duration,
    follower_reads: FollowerReads,
}

impl Network {
    pub fn new(fence: ClusterFence) -> Self {
        Network {
            fence,
            metrics: None,
            channels: Arc::default(),
            calls: Arc::default(),
            connect_timeout: Duration::from_secs(2),
            follower_reads: FollowerReads::default(),
        }
    }

    /// Where the service that answers followers' read-index calls records them.
    pub fn follower_reads(&self) -> FollowerReads {
        self.follower_reads.clone()
    }

    /// Reports every Raft RPC to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The channel to `addr`, created lazily and shared by every user of this peer.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(4 << 20)
            .initial_stream_window_size(2 << 20)
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

impl Network {
    /// The call stream to `addr`, started lazily and shared by every user of this peer.
    fn calls(&self, addr: &str) -> Result<PeerCalls, CallError> {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = calls.get(addr) {
            return Ok(c.clone());
        }
        let channel = self
            .channel(addr)
            .map_err(|e| CallError::NotSent(format!("bad peer address {addr}: {e}")))?;
        let c = PeerCalls::start(channel, self.connect_timeout);
        calls.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Asks the leader `target` at `addr` for the index a linearizable (or, with `lease`, lease)
    /// read must wait for on this node. See `Call.read_index` in raft.proto.
    pub async fn read_index(
        &self,
        addr: &str,
        target: NodeId,
        lease: bool,
        vouch: Option<Vouch>,
        timeout: Duration,
    ) -> Result<ReadIndexAnswer, String> {
        let call = call::Kind::ReadIndex(ReadIndexRequest {
            cluster_id: self.fence.outgoing(),
            target,
            lease,
            vouch: vouch.map(Into::into),
        });
        let calls = self.calls(addr).map_err(|e| format!("{e:?}"))?;
        match tokio::time::timeout(timeout, calls.call(call)).await {
            Err(_) => Err("no answer from the leader in time".into()),
            Ok(Ok(reply::Kind::ReadIndex(r))) => Ok(ReadIndexAnswer {
                index: r.index,
                stamp: r.stamp.as_ref().map(Into::into),
            }),
            Ok(Ok(_)) => Err("a reply of the wrong kind".into()),
            Ok(Err(CallError::Failed(s))) => Err(s.message().to_string()),
            Ok(Err(CallError::NotSent(m) | CallError::Lost(m))) => Err(m),
        }
    }

    /// Sends `proposal` to the leader `target` at `addr` (see `Call.propose` in raft.proto).
    pub async fn propose(
        &self,
        addr: &str,
        target: NodeId,
        proposal: &Proposal,
        timeout: Duration,
    ) -> Result<Vec<CommandResult>, ProposeFailure> {
        let payload = encode(proposal).map_err(|e| ProposeFailure::NotSent(e.to_string()))?;
        let call = call::Kind::Propose(ProposeRequest {
            cluster_id: self.fence.outgoing(),
            target,
            proposal: Bytes::from(payload),
            timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
        });
        let calls = self
            .calls(addr)
            .map_err(|e| ProposeFailure::NotSent(format!("{e:?}")))?;
        // A little longer than the leader's own bound, so that its answer (a timeout included)
        // arrives rather than being cut off.
        let wait = timeout + Duration::from_millis(250);
        match tokio::time::timeout(wait, calls.call(call)).await {
            Err(_) => Err(ProposeFailure::Timeout),
            Ok(Ok(reply::Kind::Propose(r))) => decode(&r.results).map_err(|e| ProposeFailure::Unknown(e.to_string())),
            Ok(Ok(_)) => Err(ProposeFailure::Unknown("a reply of the wrong kind".into())),
            Ok(Err(CallError::NotSent(m))) => Err(ProposeFailure::NotSent(m)),
            Ok(Err(CallError::Lost(m))) => Err(ProposeFailure::Unknown(m)),
            Ok(Err(CallError::Failed(s))) => Err(match s.code() {
                tonic::Code::FailedPrecondition => ProposeFailure::NotLeader(s.message().to_string()),
                tonic::Code::DeadlineExceeded => ProposeFailure::Timeout,
                _ => ProposeFailure::Unknown(format!("{}: {}", s.code(), s.message())),
            }),
        }
    }

    /// One AppendEntries request on the call stream, answered as `StreamAppend` would.
    async fn append_call(
        &self,
        addr: &str,
        msg: RaftMessage,
    ) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
        let calls = self.calls(addr).map_err(|e| unreachable(format!("{e:?}")))?;
        match calls.call(call::Kind::Append(msg)).await {
            Ok(reply::Kind::Append(m)) => decode(&m.payload).map_err(|e| RPCError::Network(network_err(e))),
            Ok(_) => Err(RPCError::Network(network_err("a reply of the wrong kind"))),
            Err(CallError::NotSent(m)) => Err(unreachable(m)),
            Err(CallError::Lost(m)) => Err(RPCError::Network(network_err(m))),
            Err(CallError::Failed(s)) => Err(status_err(s)),
        }
    }
}

/// Why a proposal sent to the leader brought no results.
#[derive(Debug)]
pub enum ProposeFailure {
    /// The node asked does not lead (or is not the node meant): nothing was proposed.
    NotLeader(String),
    /// No connection was made: nothing was sent.
    NotSent(String),
    /// No answer in time: the writes may or may not be applied.
    Timeout,
    /// The request was sent and the answer is unusable: the writes may or may not be applied.
    Unknown(String),
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        let client = self
            .channel(&node.raft_addr)
            .map(|ch| {
                RaftClient::new(ch)
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20)
            })
            .map_err(|e| e.to_string());
        Connection {
            target,
            addr: node.raft_addr.clone(),
            client,
            network: self.clone(),
            fence: self.fence.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// openraft's handle on one peer.
pub struct Connection {
    target: NodeId,
    addr: String,
    /// An invalid address is reported by every RPC rather than at construction.
    client: Result<RaftClient<Channel>, String>,
    /// For the call stream to this peer.
    network: Network,
    fence: ClusterFence,
    metrics: Option<Arc<Metrics>>,
}

/// The result label of an RPC.
fn result_label<T>(r: &Result<T, RPCError<TypeConfig>>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(RPCError::Timeout(_)) => "timeout",
        Err(RPCError::Unreachable(_)) => "unreachable",
        Err(_) => "error",
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

fn unreachable<E: std::fmt::Display>(e: E) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&TransportError(e.to_string())))
}

fn network_err<E: std::fmt::Display>(e: E) -> NetworkError<TypeConfig> {
    NetworkError::new(&TransportError(e.to_string()))
}

/// An RPC to `target` that did not finish within `ttl`.
fn timeout(action: RPCTypes, target: NodeId, ttl: Duration) -> Timeout<TypeConfig> {
    Timeout {
        action,
        id: 0,
        target,
        timeout: ttl,
    }
}

fn method_label(action: RPCTypes) -> &'static str {
    match action {
        RPCTypes::Vote => "vote",
        RPCTypes::AppendEntries => "append_entries",
        RPCTypes::InstallSnapshot => "install_snapshot",
        RPCTypes::TransferLeader => "transfer_leader",
    }
}

/// Transport failures (no connection) make openraft back off; anything else is a network
/// error that it retries on its own schedule.
fn status_err(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition => unreachable(status.message()),
        _ => RPCError::Network(network_err(format!("{}: {}", status.code(), status.message()))),
    }
}

impl Connection {
    fn client(&self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().map_err(unreachable)
    }

    fn message<T: Serialize>(&self, value: &T) -> Result<RaftMessage, RPCError<TypeConfig>> {
        Ok(RaftMessage {
            cluster_id: self.fence.outgoing(),
            payload: Bytes::from(encode(value).map_err(|e| RPCError::Network(network_err(e)))?),
            target: self.target,
        })
    }

    fn timeout_err(&self, action: RPCTypes, ttl: Duration) -> RPCError<TypeConfig> {
        RPCError::Timeout(timeout(action, self.target, ttl))
    }

    /// One unary RPC: encode, call with a deadline, decode.
    async fn unary<Req, Resp, F, Fut>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        action: RPCTypes,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let started = std::time::Instant::now();
        let result = async {
            let msg = self.message(req)?;
            let ttl = option.hard_ttl();
            let resp = tokio::time::timeout(ttl, call(self.client()?, msg))
                .await
                .map_err(|_| self.timeout_err(action, ttl))?
                .map_err(status_err)?;
            decode(&resp.into_inner().payload).map_err(|e| RPCError::Network(network_err(e)))
        }
        .await;
        if let Some(m) = &self.metrics {
            let elapsed = result.is_ok().then(|| started.elapsed());
            m.rpc(self.target, method_label(action), result_label(&result), elapsed);
        }
        result
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, RPCTypes::AppendEntries, |mut c, m| async move {
            c.append_entries(m).await
        })
        .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            // openraft applies its backoff inside the request stream: wait for the first
            // request before connecting, or a dead peer would be redialled in a tight loop.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            // A stream of one request (openraft's heartbeats are) goes on the call stream: a
            // message each way instead of an HTTP/2 stream opened and closed per heartbeat.
            let second = match input.next().now_or_never() {
                Some(None) => {
                    // Failures are the call's, as they would be for a stream that cannot open.
                    let result = self.single_append(first, option).await?;
                    return Ok(Box::pin(futures::stream::once(futures::future::ready(Ok(result)))) as BoxStream<'s, _>);
                }
                Some(Some(second)) => Some(second),
                None => None,
            };
            let input = futures::stream::iter(std::iter::once(first).chain(second)).chain(input);
            let mut client = self.client()?;
            let cluster_id = self.fence.outgoing();
            let target = self.target;
            // What became of each request, in order: sent (and when), or folded into the next
            // and answered here (`coalesce`).
            let ledger = Arc::new(Ledger::default());
            let sent = ledger.clone();
            let reads = self.network.follower_reads.clone();
            let requests = fold_commit_updates(input, ledger.clone(), move || reads.hold()).filter_map(move |req| {
                let cluster_id = cluster_id.clone();
                let sent = sent.clone();
                async move {
                    match encode(&req) {
                        Ok(payload) => {
                            sent.sent();
                            Some(RaftMessage {
                                cluster_id,
                                payload: Bytes::from(payload),
                                target,
                            })
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot encode an AppendEntries request");
                            None
                        }
                    }
                }
            });
            let ttl = option.soft_ttl();
            let target = self.target;
            let resp = tokio::time::timeout(ttl, client.stream_append(requests))
                .await
                .map_err(|_| self.timeout_err(RPCTypes::AppendEntries, ttl))?
                .map_err(status_err)?;
            let responses = resp.into_inner();
            // A peer that stops answering must not hold the stream open forever: while requests
            // are outstanding, each response must arrive within the soft TTL.
            let metrics = self.metrics.clone();
            type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;
            let ready: VecDeque<Answer> = VecDeque::new();
            let out = futures::stream::unfold(Some((responses, ready)), move |state| {
                let ledger = ledger.clone();
                let metrics = metrics.clone();
                async move {
                    let (mut responses, mut ready) = state?;
                    if let Some(answer) = ready.pop_front() {
                        let go_on = answer.is_ok();
                        return Some((answer, go_on.then_some((responses, ready))));
                    }
                    if let Some(matched) = ledger.next_answered() {
                        return Some((Ok(Ok(matched)), Some((responses, ready))));
                    }
                    let next = loop {
                        match tokio::time::timeout(ttl, responses.next()).await {
                            Ok(next) => break next,
                            Err(_) if !ledger.awaiting() => continue,
                            Err(_) => {
                                let err = RPCError::Timeout(timeout(RPCTypes::AppendEntries, target, ttl));
                                return Some((Err(err), None));
                            }
                        }
                    };
                    if next.is_some() {
                        // Answers given here to requests before this one go first.
                        let (before, started) = ledger.follower_answered();
                        ready.extend(before.into_iter().map(|m| Ok(Ok(m))));
                        if let Some(m) = &metrics {
                            let ok = matches!(next, Some(Ok(_)));
                            let rtt = started.filter(|_| ok).map(|t| t.elapsed());
                            m.rpc(target, "append_entries_stream", if ok { "ok" } else { "error" }, rtt);
                        }
                    }
                    let answer = match next {
                        None => return None,
                        Some(Err(status)) => Err(status_err(status)),
                        Some(Ok(msg)) => decode::<StreamAppendResult<TypeConfig>>(&msg.payload)
                            .map_err(|e| RPCError::Network(network_err(e))),
                    };
                    ready.push_back(answer);
                    let answer = ready.pop_front()?;
                    let go_on = answer.is_ok();
                    Some((answer, go_on.then_some((responses, ready))))
                }
            });
            Ok(Box::pin(out) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&rpc, &option, RPCTypes::Vote, |mut c, m| async move { c.vote(m).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(
            &rpc,
            &option,
            RPCTypes::Vote,
            |mut c, m| async move { c.pre_vote(m).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let started = std::time::Instant::now();
        let target = self.target;
        let metrics = self.metrics.clone();
        let result = self.send_snapshot(vote, snapshot, cancel, option).await;
        if let Some(m) = metrics {
            let label = if result.is_ok() { "ok" } else { "error" };
            m.rpc(
                target,
                "install_snapshot",
                label,
                result.is_ok().then(|| started.elapsed()),
            );
        }
        result
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(&req, &option, RPCTypes::TransferLeader, |mut c, m| async move {
            c.transfer_leader(m).await
        })
        .await
    }

    fn backoff(&self) -> Option<Backoff> {
        // 50 ms doubling to 2 s: a restarted peer is picked up quickly, a dead one costs little.
        let mut delay = Duration::from_millis(50);
        Some(Backoff::new(std::iter::from_fn(move || {
            let d = delay;
            delay = (delay * 2).min(Duration::from_secs(2));
            Some(d)
        })))
    }
}

impl Connection {
    /// One AppendEntries request on the call stream.
    async fn single_append(
        &self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
        let started = std::time::Instant::now();
        let ttl = option.soft_ttl();
        let result = match self.message(&req) {
            Ok(msg) => tokio::time::timeout(ttl, self.network.append_call(&self.addr, msg))
                .await
                .unwrap_or_else(|_| Err(self.timeout_err(RPCTypes::AppendEntries, ttl))),
            Err(e) => Err(e),
        };
        if let Some(m) = &self.metrics {
            let elapsed = result.is_ok().then(|| started.elapsed());
            m.rpc(self.target, "append_entries_call", result_label(&result), elapsed);
        }
        result
    }

    /// Streams a snapshot file: a header, then the data in chunks read as gRPC drains them.
    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let header = SnapshotHeader {
            cluster_id: self.fence.outgoing(),
            vote: Bytes::from(encode(&vote).map_err(network_err)?),
            meta: Bytes::from(encode(&snapshot.meta).map_err(network_err)?),
            size_bytes: snapshot.snapshot.file.metadata().map_err(network_err)?.len(),
            target: self.target,
        };
        let file = snapshot.snapshot.file.try_clone().map_err(network_err)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        // Read the file chunk by chunk as gRPC drains the channel: memory stays at a few chunks.
        let reader = tokio::spawn(async move {
            let mut file = tokio::fs::File::from_std(file);
            if tx
                .send(SnapshotChunk {
                    kind: Some(snapshot_chunk::Kind::Header(header)),
                })
                .await
                .is_err()
            {
                return Ok(());
            }
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                buf.truncate(filled);
                let chunk = SnapshotChunk {
                    kind: Some(snapshot_chunk::Kind::Data(Bytes::from(buf))),
                };
                if tx.send(chunk).await.is_err() {
                    return Ok(());
                }
            }
        });
        let ttl = option.hard_ttl();
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let result = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            r = tokio::time::timeout(ttl, call) => r,
        };
        let resp = match result {
            Err(_) => {
                reader.abort();
                return Err(StreamingError::Timeout(timeout(
                    RPCTypes::InstallSnapshot,
                    self.target,
                    ttl,
                )));
            }
            Ok(Err(status)) => return Err(StreamingError::from(status_err(status))),
            Ok(Ok(resp)) => resp,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(StreamingError::Network(network_err(format!(
                    "reading snapshot file: {e}"
                ))))
            }
            Err(e) => return Err(StreamingError::Network(network_err(e))),
        }
        decode(&resp.into_inner().payload).map_err(|e| StreamingError::Network(network_err(e)))
    }
}
