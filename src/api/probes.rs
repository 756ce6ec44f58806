//! The probes a supervisor asks: liveness (`/healthz`) and readiness (`/readyz`).
//!
//! Liveness fails only when the node cannot go on in this process (a store the disk refused a
//! write, a Raft stopped after a storage error): a supervisor should restart it, and the node
//! exits by itself soon after (see `crate::replica::Replica::unrecoverable`). The NOSPACE
//! alarm alone fails neither probe: reads and deletes go on, and a node restarted or taken out
//! of service for it would serve nothing at all.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftkv_client::model;

use super::ApiState;
use crate::cluster::status::not_ready_reason;

/// Liveness: the process serves HTTP and can go on.
pub(super) async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    match state.replica.health() {
        Ok(()) => probe(StatusCode::OK, "ok", None),
        Err(reason) => probe(StatusCode::SERVICE_UNAVAILABLE, "failed", Some(reason)),
    }
}

/// Readiness: a member of a cluster that has a leader, with everything it knows to be
/// committed applied, and able to go on.
pub(super) async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let reason = state
        .replica
        .health()
        .err()
        .or_else(|| not_ready_reason(state.replica.raft()));
    match reason {
        None => probe(StatusCode::OK, "ready", None),
        Some(reason) => probe(StatusCode::SERVICE_UNAVAILABLE, "not_ready", Some(reason)),
    }
}

fn probe(code: StatusCode, status: &str, reason: Option<String>) -> Response {
    let body = model::Probe {
        status: status.into(),
        reason,
    };
    (code, Json(body)).into_response()
}
