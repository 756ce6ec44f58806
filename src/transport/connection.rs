//! openraft's handle on one peer ([`Connection`]): unary RPCs with deadlines, the pipelined
//! `StreamAppend` stream (with commit-only updates folded away, see `coalesce`), heartbeats on
//! the call stream, and the backoff from a peer that cannot be reached.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
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
use openraft::{OptionalSend, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::coalesce::{fold_commit_updates, Ledger};
use super::network::Network;
use super::ClusterFence;
use crate::codec::{decode, encode};
use crate::metrics::Metrics;
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::RaftMessage;
use crate::storage::SnapshotData;
use crate::types::{NodeId, TypeConfig, Vote};

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// openraft's handle on one peer.
pub(crate) struct Connection {
    pub(super) target: NodeId,
    pub(super) addr: String,
    /// An invalid address is reported by every RPC rather than at construction.
    pub(super) client: Result<RaftClient<Channel>, String>,
    /// For the call stream to this peer.
    pub(super) network: Network,
    pub(super) fence: ClusterFence,
    pub(super) metrics: Option<Arc<Metrics>>,
}

/// The result label of an RPC.
pub(super) fn result_label<T>(r: &Result<T, RPCError<TypeConfig>>) -> &'static str {
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

pub(super) fn unreachable<E: std::fmt::Display>(e: E) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&TransportError(e.to_string())))
}

pub(super) fn network_err<E: std::fmt::Display>(e: E) -> NetworkError<TypeConfig> {
    NetworkError::new(&TransportError(e.to_string()))
}

/// An RPC to `target` that did not finish within `ttl`.
pub(super) fn timeout(action: RPCTypes, target: NodeId, ttl: Duration) -> Timeout<TypeConfig> {
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
pub(super) fn status_err(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition => unreachable(status.message()),
        _ => RPCError::Network(network_err(format!("{}: {}", status.code(), status.message()))),
    }
}

impl Connection {
    /// Counts one RPC to this peer by method and result, and its round trip if it succeeded.
    fn observe(&self, method: &str, result: &str, started: std::time::Instant) {
        if let Some(m) = &self.metrics {
            let elapsed = (result == "ok").then(|| started.elapsed());
            m.rpc(self.target, method, result, elapsed);
        }
    }

    pub(super) fn client(&self) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().map_err(unreachable)
    }

    pub(super) fn message<T: Serialize>(&self, value: &T) -> Result<RaftMessage, RPCError<TypeConfig>> {
        Ok(RaftMessage {
            cluster_id: self.fence.outgoing(),
            payload: Bytes::from(encode(value).map_err(|e| RPCError::Network(network_err(e)))?),
            target: self.target,
        })
    }

    pub(super) fn timeout_err(&self, action: RPCTypes, ttl: Duration) -> RPCError<TypeConfig> {
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
        self.observe(method_label(action), result_label(&result), started);
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
            let reads = self.network.follower_reads();
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
        let result = self.send_snapshot(vote, snapshot, cancel, option).await;
        self.observe("install_snapshot", if result.is_ok() { "ok" } else { "error" }, started);
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
        self.observe("append_entries_call", result_label(&result), started);
        result
    }
}
