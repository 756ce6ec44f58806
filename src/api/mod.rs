//! The client HTTP API (axum): keys and values under `/v1/kv`, node status and health,
//! authentication and its management under `/v1/auth`.

mod auth;
mod error;
mod kv;
mod probes;
mod request;
mod serve;

pub(crate) use serve::{serve, HttpLimits};

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::cluster::Admin;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::types::NodeId;
use error::ApiError;

/// Every response names the node that served it (for a write: the leader that proposed it).
pub(crate) const NODE_HEADER: &str = "x-raftkv-node";

/// Limits on what a client may send and how long a request may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_value_bytes: usize,
    /// Upper bound for a write or linearizable read, including waiting for a leader.
    pub(crate) request_timeout: Duration,
    /// Most bytes of keys and values in one listing page (past its first key).
    pub(crate) max_list_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 1 << 20,
            request_timeout: Duration::from_secs(5),
            max_list_bytes: 4 << 20,
        }
    }
}

/// Everything a handler needs (shared behind an `Arc`).
pub(crate) struct ApiState {
    pub(crate) id: NodeId,
    /// Writes are proposed, and reads wait for their consistency barrier, through it.
    pub(crate) replica: Replica,
    pub(crate) admin: Admin,
    pub(crate) limits: Limits,
    /// Set on SIGTERM or removal: new requests are refused while the node stops.
    pub(crate) stopping: Arc<Stopping>,
    pub(crate) metrics: Arc<Metrics>,
    /// Identifies callers against the replicated users (token TTL, bcrypt cost, remembered
    /// password checks).
    pub(crate) auth: crate::auth::Authenticator,
}

/// Whether (and why) a node is stopping.
#[derive(Debug, Default)]
pub(crate) struct Stopping(AtomicU8);

impl Stopping {
    const RUNNING: u8 = 0;
    const SHUTTING_DOWN: u8 = 1;
    const REMOVED: u8 = 2;

    pub(crate) fn shutting_down(&self) {
        let _ = self
            .0
            .compare_exchange(Self::RUNNING, Self::SHUTTING_DOWN, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub(crate) fn removed(&self) {
        self.0.store(Self::REMOVED, Ordering::SeqCst);
    }

    fn refusal(&self) -> Option<ApiError> {
        match self.0.load(Ordering::Relaxed) {
            Self::SHUTTING_DOWN => Some(ApiError::Unavailable(
                "this node is shutting down; use another node".into(),
            )),
            Self::REMOVED => Some(ApiError::Removed),
            _ => None,
        }
    }
}

pub(crate) fn router(state: ApiState) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/v1/kv", get(kv::list))
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/status", get(status))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(metrics))
        .merge(auth::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), around))
        .with_state(state)
}

/// What every request goes through (one layer, as it runs for every request): refused while
/// the node stops (but for `/healthz`), named with the node that served it, and counted and
/// timed by its route template (never the raw path: keys would make the label set unbounded).
async fn around(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req.extensions().get::<axum::extract::MatchedPath>().cloned();
    let method = req.method().clone();
    let refusal = if req.uri().path() != "/healthz" {
        state.stopping.refusal()
    } else {
        None
    };
    let mut resp = match refusal {
        Some(refusal) => refusal.into_response(),
        None => next.run(req).await,
    };
    // A write's answer already names the leader that served it.
    resp.headers_mut()
        .entry(NODE_HEADER)
        .or_insert_with(|| HeaderValue::from(state.id));
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    state
        .metrics
        .http_request(route, method.as_str(), resp.status(), started.elapsed());
    resp
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn no_route(req: Request) -> ApiError {
    ApiError::NoRoute(format!("{} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(req.method().to_string())
}

/// `GET /v1/status`. Without the cluster id: it fences Raft traffic between clusters, and the
/// client port is public (the admin service on the peer port reports it).
async fn status(State(state): State<Arc<ApiState>>) -> Response {
    let mut status = state.admin.status();
    status.cluster_id = None;
    status.alarms = crate::cluster::status::alarms(&state.replica);
    Json(status).into_response()
}
