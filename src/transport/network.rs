//! The sending side of Raft traffic: one long-lived gRPC channel per peer.
//!
//! tonic's `Channel` reconnects by itself; openraft backs off from a peer that answers
//! `Unreachable` (see [`Connection::backoff`]). Every RPC is bounded by the timeout openraft
//! gives it, so a dead peer never stalls replication to the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use openraft::errors::RPCError;
use openraft::raft::StreamAppendResult;
use openraft::RaftNetworkFactory;
use tonic::transport::{Channel, Endpoint};

use super::calls::{CallError, PeerCalls};
use super::coalesce::FollowerReads;
use super::connection::{network_err, status_err, unreachable, Connection};
use super::ClusterFence;
use crate::codec::{decode, encode};
use crate::metrics::Metrics;
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::{call, reply, ProposeRequest, RaftMessage, ReadIndexRequest};
use crate::replica::{LeaderLink, ProposeFailure, ReadIndexAnswer, Vouch};
use crate::types::{CommandResult, NodeAddr, NodeId, Proposal, TypeConfig};

/// Creates connections for openraft; caches one channel per peer address.
#[derive(Clone)]
pub(crate) struct Network {
    fence: ClusterFence,
    metrics: Option<Arc<Metrics>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    calls: Arc<Mutex<HashMap<String, PeerCalls>>>,
    connect_timeout: Duration,
    follower_reads: FollowerReads,
    /// Mutual TLS to peers (`--peer-cert-file`): the configuration at the time of each
    /// connection, so a reloaded certificate reaches every new one.
    tls: Option<raftkv_client::Tls>,
}

impl Network {
    pub(crate) fn new(fence: ClusterFence) -> Self {
        Network {
            fence,
            metrics: None,
            channels: Arc::default(),
            calls: Arc::default(),
            connect_timeout: Duration::from_secs(2),
            follower_reads: FollowerReads::default(),
            tls: None,
        }
    }

    /// Calls peers over mutual TLS with `tls`.
    pub(crate) fn with_tls(mut self, tls: raftkv_client::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The TLS this node calls its peers with, if any (for other clients of the peer port:
    /// the join call).
    pub(crate) fn tls(&self) -> Option<&raftkv_client::Tls> {
        self.tls.as_ref()
    }

    /// Where the service that answers followers' read-index calls records them.
    pub(crate) fn follower_reads(&self) -> FollowerReads {
        self.follower_reads.clone()
    }

    /// Reports every Raft RPC to `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The channel to `addr`, created lazily and shared by every user of this peer.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(4 << 20)
            .initial_stream_window_size(2 << 20);
        let ch = match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(raftkv_client::tls::TlsConnector::grpc(tls.clone())),
            None => endpoint.connect_lazy(),
        };
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
    async fn read_index_call(
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
    async fn propose_call(
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
                tonic::Code::ResourceExhausted => ProposeFailure::NoSpace(s.message().to_string()),
                tonic::Code::DeadlineExceeded => ProposeFailure::Timeout,
                _ => ProposeFailure::Unknown(format!("{}: {}", s.code(), s.message())),
            }),
        }
    }

    /// One AppendEntries request on the call stream, answered as `StreamAppend` would.
    pub(super) async fn append_call(
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

impl LeaderLink for Network {
    fn read_index<'a>(
        &'a self,
        addr: &'a str,
        target: NodeId,
        lease: bool,
        vouch: Option<Vouch>,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'a, Result<ReadIndexAnswer, String>> {
        Box::pin(self.read_index_call(addr, target, lease, vouch, timeout))
    }

    fn propose<'a>(
        &'a self,
        addr: &'a str,
        target: NodeId,
        proposal: &'a Proposal,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'a, Result<Vec<CommandResult>, ProposeFailure>> {
        Box::pin(self.propose_call(addr, target, proposal, timeout))
    }
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
