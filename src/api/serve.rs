//! The HTTP listener's accept loop: TLS, connection limits and timeouts in front of the router.
//!
//! No one client may use the node up: connections are capped below the open-file limit (one
//! beyond the cap is answered `503 too_many_connections` and closed, under TLS closed at once,
//! and the loop goes on accepting); a failing `accept` (out of file descriptors) backs off
//! instead of spinning, and is logged once per interval; every connection is served in its
//! own task, where a slow TLS handshake, request head or body, an idle connection and a
//! stalled one are each cut off by a timeout (see [`connection`]). Every error a client gets
//! has the JSON body, those hyper writes itself included (see [`parse_errors`]).

mod activity;
mod connection;
mod parse_errors;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use super::error::ApiError;
use crate::tls::ServerTls;

/// The client listener's limits (the `--max-client-connections`, `--http-*` and
/// `--max-concurrent-streams` flags).
#[derive(Debug, Clone)]
pub(crate) struct HttpLimits {
    /// Connections served at once (already lowered to what the open-file limit allows).
    pub(crate) max_connections: usize,
    /// From a request head's first byte (a connection's opening, for its first) to its end.
    pub(crate) header_timeout: Duration,
    /// From the end of a request's head to the end of its body.
    pub(crate) body_timeout: Duration,
    /// No request in flight and no bytes, or a request in flight that moves no bytes.
    pub(crate) idle_timeout: Duration,
    /// Largest HTTP/1 request head.
    pub(crate) max_header_bytes: usize,
    /// Streams in flight at once on one HTTP/2 connection.
    pub(crate) max_concurrent_streams: u32,
    /// HTTP/2 keep-alive pings, if any, and how long an answer to one may take.
    pub(crate) h2_keepalive_interval: Option<Duration>,
    pub(crate) h2_keepalive_timeout: Duration,
}

/// What every connection task shares.
struct FrontDoor {
    router: axum::Router,
    tls: Option<ServerTls>,
    builder: auto::Builder<TokioExecutor>,
    limits: HttpLimits,
}

/// Connections refused at once: each holds a descriptor while it is told why.
const REFUSING_AT_ONCE: usize = 128;
/// How long a refused client is given to take its `503`.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// At most one log line per kind of trouble (refusals, accept failures) per interval.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// Back-off after an accept failure that is not the client's (no descriptors, no memory).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves the client HTTP API on `listener` (with TLS if `tls` is given) until `shutdown`
/// turns true; then tells every connection to close and waits for them.
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    tls: Option<ServerTls>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let refusal = Arc::new(refusal_answer(max));
    let front = Arc::new(FrontDoor {
        router,
        tls,
        builder: builder(&limits),
        limits,
    });
    let mut refused = Occasional::default();
    let mut failures = Occasional::default();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                tcp
            }
            // The client gave up before we took its connection: nothing wrong here.
            Err(e) if is_the_clients(&e) => continue,
            Err(e) => {
                if let Some(times) = failures.happened() {
                    tracing::warn!(
                        error = %e, times, open = max - permits.available_permits(),
                        "cannot accept client connections; backing off (reported every {}s)",
                        REPORT_EVERY.as_secs()
                    );
                }
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        // Without TCP_NODELAY, a response written in two segments waits for the client's
        // delayed ACK: 40 ms stalls at the tail of every latency distribution.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let conn = connection::serve(front.clone(), tcp, shutdown.clone());
                tokio::spawn(
                    async move {
                        conn.await;
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
            Err(_) => {
                if let Some(times) = refused.happened() {
                    tracing::warn!(
                        times,
                        "refused client connections: {max} are open, the most --max-client-connections allows \
                         (reported every {}s)",
                        REPORT_EVERY.as_secs()
                    );
                }
                // Beyond the refusals in progress, a connection is closed without a word; so is
                // one to a TLS listener, whose client would take a plain-text answer for a
                // broken handshake.
                let slot = match front.tls {
                    None => refusing.clone().try_acquire_owned().ok(),
                    Some(_) => None,
                };
                if let Some(slot) = slot {
                    let answer = refusal.clone();
                    tokio::spawn(async move {
                        refuse(tcp, &answer).await;
                        drop(slot);
                    });
                }
            }
        }
    }
    // Every connection has seen the shutdown signal; all are done once all permits are back.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}

/// hyper's HTTP/1.1 and HTTP/2 (by prior knowledge, or ALPN under TLS), with the limits.
fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        // The header timeout is the connection's own (see `connection`).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout);
    builder
}

/// Accept errors that concern one client's connection only.
fn is_the_clients(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// Tells a client beyond the cap why it is refused, then closes. The request is not read
/// first; the connection is drained a little after the answer, so that closing it with the
/// request unread does not reset it before the client has read the answer.
async fn refuse(mut tcp: TcpStream, answer: &[u8]) {
    let _ = tokio::time::timeout(REFUSAL_GRACE, async {
        tcp.write_all(answer).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// The whole answer to a connection beyond the cap.
fn refusal_answer(max: usize) -> Vec<u8> {
    let error = ApiError::TooManyConnections(max);
    let body = error_json(error.code(), &error.to_string());
    let mut answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

/// The JSON error body, `{"error":{"code","message"}}`, as the router's errors have it.
fn error_json(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({ "error": { "code": code, "message": message } })
        .to_string()
        .into_bytes()
}

/// Counts an event that may repeat fast, to log it at most once per [`REPORT_EVERY`].
#[derive(Debug, Default)]
struct Occasional {
    last: Option<Instant>,
    since: u64,
}

impl Occasional {
    /// Notes one more; returns how many there have been since the last report, if one is due.
    fn happened(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|at| now.duration_since(at) < REPORT_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}
