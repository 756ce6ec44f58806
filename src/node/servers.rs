//! The node's two servers: gRPC (Raft and admin, on the Raft listener) and HTTP (the client
//! API), each ending when the shutdown signal turns true.

use std::future::Future;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::AdminService;
use crate::pb::admin::admin_server::AdminServer;
use crate::pb::raft::raft_server::RaftServer;
use crate::transport::RaftService;

/// Largest gRPC message between nodes: a batch of AppendEntries may carry many large values.
const MAX_RAFT_MESSAGE: usize = 512 << 20;

/// Serves Raft traffic and the admin service on `listener` until `shutdown` turns true.
pub(super) fn serve_grpc(
    listener: TcpListener,
    raft: RaftService,
    admin: AdminService,
    mut shutdown: watch::Receiver<bool>,
) -> impl Future<Output = anyhow::Result<()>> {
    let raft = RaftServer::new(raft)
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
    let admin = AdminServer::new(admin);
    // tonic's own tcp_nodelay applies only to listeners it binds itself: set it on each
    // accepted connection, or small Raft messages wait for delayed ACKs (~40 ms).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        conn.inspect(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    });
    async move {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_connection_window_size(4 << 20)
            .initial_stream_window_size(2 << 20)
            .add_service(raft)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await
            .context("raft gRPC server failed")
    }
}

/// Serves the client HTTP API on `listener` until `shutdown` turns true.
pub(super) async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Without TCP_NODELAY, a response written in two segments waits for the client's
    // delayed ACK: 40 ms stalls at the tail of every latency distribution.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
        .context("HTTP server failed")
}
