//! The client HTTP API (axum): keys and values under `/v1/kv`, node status and health, and
//! the join endpoint that `serve --join` uses.

mod error;
mod kv;
mod request;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use raftkv_client::model;

use crate::cluster::status::not_ready_reason;
use crate::cluster::Admin;
use crate::metrics::Metrics;
use crate::pb::admin::AddMemberRequest;
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 1 << 20,
            request_timeout: Duration::from_secs(5),
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
        .route("/v1/cluster/join", post(join))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
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

/// Liveness: the process serves HTTP.
async fn healthz() -> Json<model::Probe> {
    Json(model::Probe {
        status: "ok".into(),
        reason: None,
    })
}

/// Readiness: a member of a cluster that has a leader, with everything it knows to be
/// committed applied.
async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    match not_ready_reason(state.replica.raft()) {
        None => Json(model::Probe {
            status: "ready".into(),
            reason: None,
        })
        .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(model::Probe {
                status: "not_ready".into(),
                reason: Some(reason),
            }),
        )
            .into_response(),
    }
}

async fn status(State(state): State<Arc<ApiState>>) -> Response {
    Json(state.admin.status()).into_response()
}

/// `POST /v1/cluster/join`: add the caller as a voter (or learner), forwarded to the leader.
async fn join(State(state): State<Arc<ApiState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: model::JoinRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidBody(format!("join request: {e}")))?;
    let add = AddMemberRequest {
        id: req.id,
        raft_addr: req.raft_addr,
        http_addr: req.http_addr,
        catch_up_timeout_ms: 0,
    };
    let resp = if req.learner_only {
        state.admin.add_learner(add).await?
    } else {
        state.admin.add_voter(add, None).await?
    };
    Ok(Json(model::Joined {
        log_index: resp.log_index,
        message: resp.message,
    })
    .into_response())
}
