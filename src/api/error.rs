//! Every client-visible failure, as HTTP status + `{"error":{"code","message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub(super) enum ApiError {
    #[error("{0}")]
    InvalidKey(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidHeader(String),
    #[error("{0}")]
    InvalidBody(String),
    #[error("a {method} request must not have a body")]
    UnexpectedBody { method: &'static str },
    #[error("value is {size} bytes; the limit is {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("key not found")]
    KeyNotFound,
    #[error("precondition failed: {message}")]
    PreconditionFailed { message: String, current: Option<u64> },
    #[error("no leader is available ({0}); the cluster may have lost quorum or be electing a new leader")]
    NoLeader(String),
    #[error("{0}; the outcome of a write is unknown, read the key before retrying")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("this node has been removed from the cluster and no longer serves; use another member")]
    Removed,
    #[error("the leader's answer was lost: {0}")]
    BadGateway(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Admin(String, StatusCode),
    #[error("internal error: {0}")]
    Internal(String),
    /// The NOSPACE alarm is raised (quota reached or the disk is full): writes are refused
    /// while reads go on (etcd's "etcdserver: mvcc: database space exceeded").
    #[error("{0}")]
    NoSpace(String),
    /// No credentials, or credentials that are not (or no longer) valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials whose roles do not allow this request.
    #[error("{0}")]
    PermissionDenied(String),
    /// The node already serves as many client connections as it may.
    #[error("this node already serves {0} client connections; retry later or use another node")]
    TooManyConnections(usize),
    /// The request's headers were larger than the node accepts.
    #[error("request headers are too large")]
    HeadersTooLarge,
    /// The client did not send its request (headers or body) in time.
    #[error("{0}")]
    RequestTimeout(String),
}

impl ApiError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidKey(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidHeader(_)
            | ApiError::InvalidBody(_)
            | ApiError::UnexpectedBody { .. } => StatusCode::BAD_REQUEST,
            ApiError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::KeyNotFound | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::NoLeader(_) | ApiError::Unavailable(_) | ApiError::Removed => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Admin(_, s) => *s,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub(super) fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidKey(_) => "invalid_key",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::InvalidHeader(_) => "invalid_header",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::UnexpectedBody { .. } => "unexpected_body",
            ApiError::ValueTooLarge { .. } => "value_too_large",
            ApiError::KeyNotFound => "key_not_found",
            ApiError::PreconditionFailed { .. } => "precondition_failed",
            ApiError::NoLeader(_) => "no_leader",
            ApiError::Timeout(_) => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Removed => "removed",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::NoRoute(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Admin(_, s) if *s == StatusCode::BAD_REQUEST => "invalid_request",
            ApiError::Admin(_, s) if *s == StatusCode::CONFLICT => "refused",
            ApiError::Admin(..) => "admin_failed",
            ApiError::Internal(_) => "internal",
            ApiError::NoSpace(_) => "no_space",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::PermissionDenied(_) => "permission_denied",
            ApiError::TooManyConnections(_) => "too_many_connections",
            ApiError::HeadersTooLarge => "headers_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({ "code": self.code(), "message": self.to_string() });
        if let ApiError::PreconditionFailed { current, .. } = &self {
            err["current_revision"] = json!(current);
        }
        let mut resp = (self.status(), Json(json!({ "error": err }))).into_response();
        if matches!(self, ApiError::Unauthenticated(_)) {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"raftkv\", Bearer"),
            );
        }
        resp
    }
}

impl From<crate::cluster::AdminError> for ApiError {
    fn from(e: crate::cluster::AdminError) -> Self {
        use crate::cluster::AdminError as A;
        let status = match &e {
            A::Invalid(_) => StatusCode::BAD_REQUEST,
            A::Refused(_) => StatusCode::CONFLICT,
            A::NotFound(_) => StatusCode::NOT_FOUND,
            A::NoLeader | A::Forward { .. } => StatusCode::SERVICE_UNAVAILABLE,
            A::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            A::Raft(_) => StatusCode::INTERNAL_SERVER_ERROR,
            A::Leader(s) => match s.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        ApiError::Admin(e.to_string(), status)
    }
}
