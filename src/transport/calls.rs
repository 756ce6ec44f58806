//! Short calls to one peer, multiplexed on one long-lived `Calls` stream (see raft.proto): a
//! heartbeat, a read index or a proposal costs one message each way, not an HTTP/2 stream of
//! its own, which under load is most of what these calls cost.
//!
//! A task per peer owns the stream. It opens it when a call is waiting (never in a loop
//! against a dead peer), numbers the calls, and hands each reply to its caller. When the stream
//! breaks, every call in flight fails as *lost* (its outcome is unknown) and calls still queued
//! wait for the next stream; a call that could not be sent because no stream could be opened
//! fails as *not sent*.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::{call, reply, Call, Reply};

/// Why a call has no reply.
#[derive(Debug, Clone)]
pub(super) enum CallError {
    /// It never left this node.
    NotSent(String),
    /// It was sent and its reply will never come: the peer may or may not have acted on it.
    Lost(String),
    /// The peer answered with this failure.
    Failed(tonic::Status),
}

type ReplyTx = oneshot::Sender<Result<reply::Kind, CallError>>;

struct Outgoing {
    kind: call::Kind,
    reply: ReplyTx,
}

/// The handle on one peer's call stream; cheap to clone.
#[derive(Clone)]
pub(super) struct PeerCalls {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl PeerCalls {
    /// Starts the task that serves calls to the peer behind `channel`.
    pub(super) fn start(channel: Channel, open_timeout: Duration) -> PeerCalls {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(channel, open_timeout, rx));
        PeerCalls { tx }
    }

    /// Sends one call and waits for its reply (callers bound the wait).
    pub(super) async fn call(&self, kind: call::Kind) -> Result<reply::Kind, CallError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Outgoing { kind, reply })
            .map_err(|_| CallError::NotSent("the node is stopping".into()))?;
        rx.await
            .map_err(|_| CallError::Lost("the call stream was dropped".into()))?
    }
}

/// One stream after another, for as long as the handle lives.
async fn serve(channel: Channel, open_timeout: Duration, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut next_id: u64 = 1;
    while let Some(first) = rx.recv().await {
        let (calls_tx, calls_rx) = mpsc::unbounded_channel::<Call>();
        let mut client = RaftClient::new(channel.clone())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        // Nothing is put on the stream before the peer has accepted it, so a failure to open
        // it means that nothing was sent.
        let opened = tokio::time::timeout(open_timeout, client.calls(UnboundedReceiverStream::new(calls_rx))).await;
        let mut replies = match opened {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => {
                let _ = first.reply.send(Err(CallError::NotSent(status.message().to_string())));
                continue;
            }
            Err(_) => {
                let _ = first
                    .reply
                    .send(Err(CallError::NotSent(format!("no stream within {open_timeout:?}"))));
                continue;
            }
        };
        let mut pending: HashMap<u64, ReplyTx> = HashMap::new();
        let mut send = |out: Outgoing, pending: &mut HashMap<u64, ReplyTx>| {
            let id = next_id;
            next_id += 1;
            if calls_tx
                .send(Call {
                    id,
                    kind: Some(out.kind),
                })
                .is_ok()
            {
                pending.insert(id, out.reply);
            } else {
                let _ = out.reply.send(Err(CallError::Lost("the call stream closed".into())));
            }
        };
        send(first, &mut pending);
        let lost = loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(out) => send(out, &mut pending),
                    None => return,
                },
                r = replies.message() => match r {
                    Ok(Some(Reply { id, kind })) => {
                        if let Some(tx) = pending.remove(&id) {
                            let _ = tx.send(match kind {
                                Some(reply::Kind::Failure(f)) => {
                                    Err(CallError::Failed(tonic::Status::new(tonic::Code::from(f.code), f.message)))
                                }
                                Some(kind) => Ok(kind),
                                None => Err(CallError::Lost("an empty reply".into())),
                            });
                        }
                    }
                    Ok(None) => break "the peer closed the call stream".to_string(),
                    Err(status) => break format!("the call stream failed: {}", status.message()),
                },
            }
        };
        for (_, tx) in pending.drain() {
            let _ = tx.send(Err(CallError::Lost(lost.clone())));
        }
    }
}
