//! Who is calling, and what they may do: credentials on every request (HTTP Basic, a Bearer
//! token, or a client certificate's common name) checked against the replicated users and
//! roles, and the `/v1/auth` endpoints that manage them ([`manage`]).
//!
//! With authentication off (the default) every request passes, as today. With it on, the
//! [`authenticate`] layer identifies the caller and checks what the request needs
//! ([`access`]): a key read or write needs a permission on the key, a conditional write
//! both, a listing a read permission over its whole range (a listing that reaches past what
//! the user may read is refused, as etcd refuses such a range), the `/v1/auth` management
//! endpoints the root role. `/healthz`, `/readyz` and `/metrics` stay open for probes and
//! Prometheus, as etcd's `/health` and `/metrics` do.
//!
//! `/v1/status` answers everyone, but only the root role sees the details: for anyone else
//! the members' addresses and the replication progress are left out (and the cluster id,
//! which fences Raft traffic and which the handler never shows), while ids, roles, terms,
//! log positions and alarms, which probes and operators' waits need, stay.
//!
//! The checks use this node's applied auth state. A refusal is made sure of first: after a
//! refusal the node catches up with the leader (a read-index barrier) and checks once more,
//! so a user or token created a moment ago through another node is never refused for this
//! node's lag. (A revocation, the other way round, takes effect on each node as it applies
//! it, within the replication delay.)

mod access;
mod manage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use raftkv_client::model;
use serde_json::json;

use self::access::Need;
use super::error::ApiError;
use super::ApiState;
use crate::auth::{Access, AuthError, AuthState, Credentials};
use crate::replica::Confirmation;
use crate::tls::ClientCertName;

/// How long a refusal may wait for this node to catch up before it is given as it is.
const RECHECK_PATIENCE: Duration = Duration::from_secs(2);
/// Largest status answer read back to be cut down (a status of many members is kilobytes).
const MAX_STATUS_BYTES: usize = 16 << 20;

/// The `/v1/auth` endpoints.
pub(super) fn routes() -> Router<Arc<ApiState>> {
    manage::routes()
}

/// Who a request was found to come from, for the handlers that decide themselves (the
/// `/v1/auth` endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Caller {
    /// Authentication is off: anyone may do anything.
    Anyone,
    User {
        name: String,
        root: bool,
    },
}

impl Caller {
    /// Root (or authentication off) only.
    fn require_root(&self) -> Result<(), AuthError> {
        match self {
            Caller::Anyone | Caller::User { root: true, .. } => Ok(()),
            Caller::User { .. } => Err(AuthError::PermissionDenied),
        }
    }

    /// Root, or the user `name` itself.
    fn require_root_or(&self, name: &str) -> Result<(), AuthError> {
        match self {
            Caller::User { name: me, root: false } if me != name => Err(AuthError::PermissionDenied),
            _ => Ok(()),
        }
    }
}

/// What the layer decided.
enum Verdict {
    Pass(Caller),
    /// `/v1/status` for a caller without the root role.
    ReducedStatus,
}

/// Checks the caller's rights to the request before it reaches its handler.
pub(super) async fn authenticate(State(state): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    // With authentication off (a flag read, no lock), nothing else is looked at.
    if !state.replica.state().auth_enabled() {
        req.extensions_mut().insert(Caller::Anyone);
        return next.run(req).await;
    }
    let need = access::needed(req.method(), req.uri(), req.headers());
    if matches!(need, Need::Nothing) {
        return next.run(req).await;
    }
    let auth = state.replica.state().auth();
    let credentials = match credentials(&req) {
        Ok(c) => c,
        Err(e) => return refusal_after_body(req, e).await,
    };
    let verdict = match decide(&state, &auth, credentials.as_ref(), &need).await {
        // Without credentials there is nothing that catching up could change.
        Err(first) if credentials.is_some() => match caught_up(&state, &auth).await {
            Some(fresh) => decide(&state, &fresh, credentials.as_ref(), &need).await,
            None => Err(first),
        },
        other => other,
    };
    match verdict {
        Ok(Verdict::Pass(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(Verdict::ReducedStatus) => reduced_status(next.run(req).await).await,
        Err(e) => refusal_after_body(req, e).await,
    }
}

/// The largest request body read before a refusal is sent.
const DRAINED_BODY_BYTES: usize = 1 << 20;

/// The refusal, once the request's body (up to [`DRAINED_BODY_BYTES`]) has arrived. Answering
/// an HTTP/2 request before its body ends resets the stream (`RST_STREAM NO_ERROR`, as RFC 9113
/// allows), which curl before 8.x takes for a failed transfer instead of reading the 401; a
/// larger body is not waited for (the connection's body timeout bounds the wait as for any).
async fn refusal_after_body(req: Request, e: AuthError) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_none_or(|n| n > 0 && n <= DRAINED_BODY_BYTES) {
        let _ = axum::body::to_bytes(req.into_body(), DRAINED_BODY_BYTES).await;
    }
    refusal(e)
}

/// The credentials a request carries: an `Authorization` header (Basic, Bearer, or a bare
/// token as etcd's clients send it), else etcd's `token` header, else the verified client
/// certificate's common name.
fn credentials(req: &Request) -> Result<Option<Credentials>, AuthError> {
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    if let Some(value) = values.next() {
        if values.next().is_some() {
            return Err(AuthError::AuthFailed);
        }
        let value = value.to_str().map_err(|_| AuthError::AuthFailed)?;
        return Credentials::from_authorization(value).map(Some);
    }
    if let Some(token) = req.headers().get("token") {
        let token = token.to_str().map_err(|_| AuthError::InvalidAuthToken)?;
        return Ok(Some(Credentials::Token(token.to_string())));
    }
    Ok(req
        .extensions()
        .get::<ClientCertName>()
        .map(|cn| Credentials::Certificate(cn.0.clone())))
}

async fn decide(
    state: &ApiState,
    auth: &Arc<AuthState>,
    credentials: Option<&Credentials>,
    need: &Need,
) -> Result<Verdict, AuthError> {
    if !auth.enabled() {
        return Ok(Verdict::Pass(Caller::Anyone));
    }
    let Some(credentials) = credentials else {
        return match need {
            Need::Status => Ok(Verdict::ReducedStatus),
            _ => Err(AuthError::UserEmpty),
        };
    };
    let name = state.auth.identify(auth, credentials).await?;
    let root = auth.is_root(&name);
    match need {
        Need::Nothing | Need::Caller => {}
        Need::Status if root => {}
        Need::Status => return Ok(Verdict::ReducedStatus),
        Need::Read(range) => auth.check(&name, Access::Read(range))?,
        Need::Write(range) => auth.check(&name, Access::Write(range))?,
        Need::ReadWrite(range) => {
            auth.check(&name, Access::Read(range))?;
            auth.check(&name, Access::Write(range))?;
        }
    }
    Ok(Verdict::Pass(Caller::User { name, root }))
}

/// After a refusal: this node's auth state once it has caught up with the leader, if that
/// is newer than `seen` (`None`: nothing newer, or no leader to catch up with in time).
async fn caught_up(state: &ApiState, seen: &Arc<AuthState>) -> Option<Arc<AuthState>> {
    let deadline = Instant::now() + RECHECK_PATIENCE.min(state.limits.request_timeout);
    state.replica.barrier(Confirmation::ReadIndex, deadline).await.ok()?;
    let fresh = state.replica.state().auth();
    (!Arc::ptr_eq(&fresh, seen)).then_some(fresh)
}

/// The layer's refusal: 401 for who (no credentials included: etcd's "user name is empty"),
/// 403 for what, with etcd's texts.
fn refusal(e: AuthError) -> Response {
    let e = if e.unauthenticated() {
        ApiError::Unauthenticated(e.to_string())
    } else {
        ApiError::PermissionDenied(e.to_string())
    };
    e.into_response()
}

/// The status handler's answer without what only root may see (see the module doc). The
/// handler's answer is taken and cut down, so whatever else it comes to say stays.
async fn reduced_status(full: Response) -> Response {
    if !full.status().is_success() {
        return full;
    }
    let Ok(bytes) = axum::body::to_bytes(full.into_body(), MAX_STATUS_BYTES).await else {
        return ApiError::Internal("cannot read the status answer".into()).into_response();
    };
    let mut status: model::Status = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => return ApiError::Internal(format!("cannot read the status answer: {e}")).into_response(),
    };
    status.cluster_id = None;
    for m in &mut status.members {
        m.raft_addr.clear();
        m.http_addr.clear();
        m.matched_index = None;
        m.lag = None;
        m.last_contact_ms = None;
    }
    Json(status).into_response()
}

/// An answer that is not a success: the API's errors, and the auth state's refusals with
/// etcd's texts, both as `{"error":{"code","message"}}`.
#[derive(Debug)]
pub(super) enum Refusal {
    Api(ApiError),
    Auth(AuthError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        Refusal::Auth(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        use axum::http::StatusCode;
        let e = match self {
            Refusal::Api(e) => return e.into_response(),
            Refusal::Auth(e) => e,
        };
        let status = match e {
            AuthError::AuthFailed | AuthError::InvalidAuthToken => {
                return ApiError::Unauthenticated(e.to_string()).into_response()
            }
            AuthError::PermissionDenied => return ApiError::PermissionDenied(e.to_string()).into_response(),
            AuthError::UserEmpty | AuthError::RoleEmpty | AuthError::InvalidAuthMgmt => StatusCode::BAD_REQUEST,
            AuthError::UserNotFound | AuthError::RoleNotFound => StatusCode::NOT_FOUND,
            AuthError::UserAlreadyExist
            | AuthError::RoleAlreadyExist
            | AuthError::RoleNotGranted
            | AuthError::PermissionNotGranted
            | AuthError::RootUserNotExist
            | AuthError::RootRoleNotExist
            | AuthError::AuthNotEnabled => StatusCode::CONFLICT,
        };
        let body = json!({ "error": { "code": e.code(), "message": e.to_string() } });
        (status, Json(body)).into_response()
    }
}
