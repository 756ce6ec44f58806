//! One client connection, in its own task: the TLS handshake (bounded by the header timeout),
//! then HTTP/1.1 or HTTP/2 through hyper, with the connection's timeouts watched beside it.
//!
//! Requests reach the router through [`Front`]: it notes each request in the connection's
//! [`Activity`], gives it the client certificate's name, and bounds the time its body may take
//! ([`TimedBody`]). hyper's own `header_read_timeout` is not used: it starts when hyper begins
//! waiting for a request head, which on a kept-alive connection is right after the previous
//! answer, so it would also cut every idle connection at the header timeout; here the header
//! timeout runs from a head's first byte and the idle timeout covers the wait between requests.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, Version};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::activity::{Activity, Expiry, RequestGuard, Watched};
use super::FrontDoor;
use crate::api::error::ApiError;
use crate::tls::{client_common_name, ClientCertName};

/// How long a connection told to close (idle, or the node stopping) may take to finish what
/// it is doing before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves one accepted connection until it closes, times out, or the node stops.
pub(super) async fn serve(front: Arc<FrontDoor>, tcp: TcpStream, shutdown: watch::Receiver<bool>) {
    let activity = Arc::new(Activity::new());
    let Some(tls) = &front.tls else {
        return serve_http(&front, tcp, None, activity, shutdown).await;
    };
    match tokio::time::timeout(front.limits.header_timeout, tls.acceptor().accept(tcp)).await {
        Ok(Ok(stream)) => {
            let name = client_common_name(stream.get_ref().1).map(ClientCertName);
            serve_http(&front, stream, name, activity, shutdown).await;
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake with a client failed"),
        Err(_) => tracing::debug!("TLS handshake with a client timed out"),
    }
}

async fn serve_http<T>(
    front: &FrontDoor,
    io: T,
    cert_name: Option<ClientCertName>,
    activity: Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &front.limits;
    let service = Front {
        router: front.router.clone(),
        activity: activity.clone(),
        body_timeout: limits.body_timeout,
        cert_name,
    };
    let conn = front
        .builder
        .serve_connection(TokioIo::new(Watched::new(io, activity.clone())), service);
    tokio::pin!(conn);
    let due = activity.due(limits.header_timeout, limits.idle_timeout);
    let watchdog = tokio::time::sleep_until(due.at.into());
    tokio::pin!(watchdog);
    // Once the connection has been told to close: when it is dropped if it has not.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return;
            }
            () = &mut watchdog => {
                let now = Instant::now();
                if closing.is_some_and(|at| now >= at) {
                    tracing::debug!("client connection did not close in time; dropped");
                    return;
                }
                let due = activity.due(limits.header_timeout, limits.idle_timeout);
                let at = Instant::from_std(due.at);
                if now < at {
                    watchdog.as_mut().reset(closing.map_or(at, |c| c.min(at)));
                    continue;
                }
                match due.expiry {
                    // hyper closes an idle HTTP/1 connection at once, and tells an HTTP/2
                    // client to open no more streams on it (GOAWAY) before closing it.
                    Expiry::Idle if closing.is_none() => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(now + CLOSE_GRACE);
                        watchdog.as_mut().reset(now + CLOSE_GRACE);
                    }
                    Expiry::Idle => watchdog.as_mut().reset(closing.unwrap_or(now)),
                    Expiry::SlowHeaders => {
                        tracing::debug!("client sent no complete request head within the header timeout; closed");
                        return;
                    }
                    Expiry::Stalled => {
                        tracing::debug!("client request moved no bytes within the idle timeout; closed");
                        return;
                    }
                }
            }
            () = activity.changed() => {
                let at = Instant::from_std(activity.due(limits.header_timeout, limits.idle_timeout).at);
                watchdog.as_mut().reset(closing.map_or(at, |c| c.min(at)));
            }
            _ = shutdown.wait_for(|s| *s), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                let at = Instant::now() + CLOSE_GRACE;
                closing = Some(at);
                watchdog.as_mut().reset(at);
            }
        }
    }
}

/// The connection's service: a request, noted and bounded, handed to the router.
#[derive(Clone)]
struct Front {
    router: axum::Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
    cert_name: Option<ClientCertName>,
}

impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = Response<Answer>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Answer>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() != Version::HTTP_2;
        let guard = self.activity.request_started(http1, req.method() == Method::HEAD);
        let (mut parts, body) = req.into_parts();
        if let Some(name) = &self.cert_name {
            parts.extensions.insert(name.clone());
        }
        // Most requests (reads) have no body, and need no timer for it.
        let late = (!body.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let body = match &late {
            None => Body::new(body),
            Some(late) => Body::new(TimedBody {
                body,
                deadline: Instant::now() + self.body_timeout,
                timer: None,
                late: late.clone(),
            }),
        };
        let router = self.router.clone();
        let body_timeout = self.body_timeout;
        Box::pin(async move {
            let resp = match router.oneshot(Request::from_parts(parts, body)).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            let resp = match late {
                Some(late) if late.load(Ordering::Relaxed) => body_late(body_timeout, http1),
                _ => resp,
            };
            Ok(resp.map(|body| Answer { body, _request: guard }))
        })
    }
}

/// The answer to a request whose body did not arrive in time (whatever the handler made of
/// the failed read): `408 request_timeout`, and on HTTP/1 the connection closes, as the rest
/// of the body would otherwise be read as the next request.
fn body_late(timeout: Duration, http1: bool) -> Response<Body> {
    let mut resp = ApiError::RequestTimeout(format!(
        "the request body did not arrive within {} ms",
        timeout.as_millis()
    ))
    .into_response();
    if http1 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request body that must arrive in full by a deadline; past it, reading fails (and `late`
/// is set, so the answer becomes a 408).
struct TimedBody {
    body: Incoming,
    deadline: Instant,
    /// Made the first time the body is not ready at once (most bodies arrive with their head).
    timer: Option<Pin<Box<Sleep>>>,
    late: Arc<AtomicBool>,
}

/// A request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyLate;

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.late.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(BodyLate.into())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        self.late.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(BodyLate.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body, carrying its request's guard: the request is in flight until hyper has
/// sent the body in full (or given up on it) and drops it.
struct Answer {
    body: Body,
    _request: RequestGuard,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
