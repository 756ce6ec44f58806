//! The gRPC server of the Raft listener (Raft and admin), ending when the shutdown signal
//! turns true. The client HTTP API is served by `api::serve`.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::cluster::AdminService;
use crate::pb::admin::admin_server::AdminServer;
use crate::pb::raft::raft_server::RaftServer;
use crate::tls::ServerTls;
use crate::transport::RaftService;

/// Largest gRPC message between nodes: a batch of AppendEntries may carry many large values.
const MAX_RAFT_MESSAGE: usize = 512 << 20;

/// How long a connecting peer may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves Raft traffic and the admin service on `listener` until `shutdown` turns true; over
/// TLS when `tls` is given, and then the admin service takes only callers that presented a
/// certificate from the peer CA (the other members, the operator, an administrator).
pub(super) fn serve_grpc(
    listener: TcpListener,
    raft: RaftService,
    admin: AdminService,
    tls: Option<ServerTls>,
    mut shutdown: watch::Receiver<bool>,
) -> impl Future<Output = anyhow::Result<()>> {
    let raft = RaftServer::new(raft)
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
    let needs_cert = tls.is_some();
    let admin = AdminServer::with_interceptor(admin, move |req: tonic::Request<()>| {
        if needs_cert && req.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(tonic::Status::unauthenticated(
                "the admin service needs a client certificate signed by the peer CA (--peer-trusted-ca-file); \
                 pass --cacert, --cert and --key",
            ));
        }
        Ok(req)
    });
    let builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_connection_window_size(4 << 20)
        .initial_stream_window_size(2 << 20)
        .add_service(raft)
        .add_service(admin);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    async move {
        match tls {
            Some(tls) => {
                builder
                    .serve_with_incoming_shutdown(tls_incoming(listener, tls), stop)
                    .await
            }
            None => {
                builder
                    .serve_with_incoming_shutdown(plain_incoming(listener), stop)
                    .await
            }
        }
        .context("raft gRPC server failed")
    }
}

/// Accepted connections as they are. tonic's own tcp_nodelay applies only to listeners it
/// binds itself: set it on each accepted connection, or small Raft messages wait for delayed
/// ACKs (~40 ms).
fn plain_incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<TcpStream>> {
    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        conn.inspect(nodelay)
    })
}

fn nodelay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Accepted connections after their TLS handshake, each done in its own task so that a slow
/// or silent client never holds up the others. Failed handshakes (plain text, no certificate,
/// a certificate from another CA, an expired one) end there (logged at debug level: the
/// client is told why by the handshake itself, and a scan must not flood the log).
fn tls_incoming(
    listener: TcpListener,
    tls: ServerTls,
) -> ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "peer listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            nodelay(&tcp);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "peer listener: TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "peer listener: TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
