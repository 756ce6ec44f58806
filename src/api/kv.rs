//! The key-value endpoints: parse, then read locally or propose through Raft, then encode.
//! Every handler follows those steps in that order.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use percent_encoding::NON_ALPHANUMERIC;

use super::error::ApiError;
use super::request::{self, Consistency};
use super::{ApiState, NODE_HEADER};
use crate::replica::{BarrierError, Confirmation, ProposeError, WriteError};
use crate::storage::KeyValue;
use crate::types::{Command, CommandResult, NodeId};

/// A request as the handlers need it.
struct Incoming {
    path: String,
    query: Option<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Incoming {
    async fn read(req: Request, body_limit: usize) -> Result<Incoming, ApiError> {
        let (parts, body) = req.into_parts();
        let mut declared = 0;
        if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
            declared = len
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::InvalidHeader("Content-Length is not a number".into()))?;
            if declared > body_limit {
                return Err(too_large(declared, body_limit));
            }
        }
        let body = read_body(body, declared, body_limit).await?;
        Ok(Incoming {
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            body,
        })
    }

    fn no_body(&self, method: &'static str) -> Result<(), ApiError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(ApiError::UnexpectedBody { method })
        }
    }
}

/// Reads a whole body into an allocation of its own, in one copy. Each frame is a slice of
/// the connection's read buffer: kept as it is, every value held in the log's tail cache and
/// the state's layers would pin a whole buffer (kilobytes for a 100-byte value).
async fn read_body(mut body: Body, declared: usize, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut out = bytes::BytesMut::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::InvalidBody(format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(too_large(out.len() + data.len(), limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

fn too_large(size: usize, limit: usize) -> ApiError {
    ApiError::ValueTooLarge { size, limit }
}

/// Reads are served by the node asked: stale ones at once; linearizable and lease ones on the
/// leader once it has confirmed its leadership, and on a follower once the leader has answered
/// a `ReadIndex` and this node has applied that far (openraft's follower read). A follower
/// never relays the request itself, so reads spread over the cluster.
async fn read<F>(state: &ApiState, consistency: Consistency, serve: F) -> Result<Response, ApiError>
where
    F: Fn() -> Result<Response, ApiError>,
{
    if consistency != Consistency::Stale {
        linearize_here(state, consistency).await?;
    }
    let mut resp = serve()?;
    resp.headers_mut()
        .insert("x-raftkv-consistency", HeaderValue::from_static(consistency.as_str()));
    Ok(resp)
}

/// Waits until this node's state machine may serve a read at `consistency` (the replica's
/// consistency barrier).
async fn linearize_here(state: &ApiState, consistency: Consistency) -> Result<(), ApiError> {
    let deadline = Instant::now() + state.limits.request_timeout;
    let confirmation = if consistency == Consistency::Lease {
        Confirmation::Lease
    } else {
        Confirmation::ReadIndex
    };
    state
        .replica
        .barrier(confirmation, deadline)
        .await
        .map_err(|e| match e {
            BarrierError::NoLeader(why) => ApiError::NoLeader(why),
            BarrierError::Stopped(why) => ApiError::Unavailable(why),
        })
}

/// Proposes `cmd` through Raft (batched with the writes that arrive with it; on a follower,
/// sent to the leader) and renders its result.
async fn write(state: &ApiState, cmd: Command) -> Result<Response, ApiError> {
    let deadline = Instant::now() + state.limits.request_timeout;
    let (result, leader) = state.replica.propose(cmd, deadline).await.map_err(|e| match e {
        WriteError::NoSpace(m) => ApiError::NoSpace(m),
        WriteError::Propose(ProposeError::NoLeader(m) | ProposeError::NotLeader(m)) => ApiError::NoLeader(m),
        WriteError::Propose(ProposeError::Timeout(m)) => ApiError::Timeout(m),
        WriteError::Propose(ProposeError::Unknown(m)) => ApiError::BadGateway(format!("{m}; the outcome is unknown")),
        WriteError::Propose(ProposeError::Stopped(m)) => ApiError::Unavailable(m),
    })?;
    render_write(result, leader)
}

/// The answer to a write names the leader that proposed it, as the node that served it.
fn render_write(result: CommandResult, leader: NodeId) -> Result<Response, ApiError> {
    // Formatted by hand: this answer is written for every write.
    let json = |body: String| {
        let mut resp = Response::new(Body::from(body));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    };
    let mut resp = match result {
        CommandResult::Written { revision } => {
            let mut resp = json(format!(r#"{{"revision":{revision},"node":{leader}}}"#));
            resp.headers_mut()
                .insert(header::ETAG, header_value(&request::etag(revision)));
            resp
        }
        CommandResult::Deleted { existed } => json(format!(r#"{{"deleted":{existed},"node":{leader}}}"#)),
        CommandResult::PreconditionFailed { current } => {
            return Err(ApiError::PreconditionFailed {
                message: match current {
                    Some(r) => format!("the key is at revision {r}"),
                    None => "the key does not exist".into(),
                },
                current,
            })
        }
    };
    resp.headers_mut().insert(NODE_HEADER, HeaderValue::from(leader));
    Ok(resp)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn storage_err(e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("reading the state machine: {e}"))
}

/// `PUT /v1/kv/{key}`: the body is the value.
pub(super) async fn put(State(state): State<Arc<ApiState>>, req: Request) -> Result<Response, ApiError> {
    let req = Incoming::read(req, state.limits.max_value_bytes).await?;
    let key = request::key_from_path(&req.path)?;
    request::parse_query(req.query.as_deref(), &[])?;
    let precondition = request::write_precondition(&req.headers)?;
    let cmd = Command::Put {
        key,
        value: req.body.clone(),
        precondition,
    };
    write(&state, cmd).await
}

/// `DELETE /v1/kv/{key}`.
pub(super) async fn delete(State(state): State<Arc<ApiState>>, req: Request) -> Result<Response, ApiError> {
    let req = Incoming::read(req, state.limits.max_value_bytes).await?;
    req.no_body("DELETE")?;
    let key = request::key_from_path(&req.path)?;
    request::parse_query(req.query.as_deref(), &[])?;
    let precondition = request::write_precondition(&req.headers)?;
    write(&state, Command::Delete { key, precondition }).await
}

/// `GET /v1/kv/{key}`: the raw value.
pub(super) async fn get(State(state): State<Arc<ApiState>>, req: Request) -> Result<Response, ApiError> {
    let req = Incoming::read(req, state.limits.max_value_bytes).await?;
    req.no_body("GET")?;
    let key = request::key_from_path(&req.path)?;
    let q = request::parse_query(req.query.as_deref(), &["consistency"])?;
    let not_modified_at = request::read_precondition(&req.headers)?;
    let consistency = q.consistency.unwrap_or_default();
    read(&state, consistency, || {
        let (revision, value) = state
            .replica
            .state()
            .get(&key)
            .map_err(storage_err)?
            .ok_or(ApiError::KeyNotFound)?;
        let etag = header_value(&request::etag(revision));
        if not_modified_at == Some(revision) {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.headers_mut().insert(header::ETAG, etag);
            return Ok(resp);
        }
        let mut resp = Response::new(Body::from(value));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::ETAG, etag);
        h.insert("x-raftkv-revision", header_value(&revision.to_string()));
        Ok(resp)
    })
    .await
}

/// `GET /v1/kv?prefix=&start=&limit=&keys_only=`: keys (and values) in key order, one page
/// at a time; a page also ends once it holds `--max-list-bytes` of keys and values.
pub(super) async fn list(State(state): State<Arc<ApiState>>, req: Request) -> Result<Response, ApiError> {
    let req = Incoming::read(req, state.limits.max_value_bytes).await?;
    req.no_body("GET")?;
    let q = request::parse_query(
        req.query.as_deref(),
        &["consistency", "prefix", "start", "limit", "keys_only"],
    )?;
    let consistency = q.consistency.unwrap_or_default();
    let prefix = q.prefix.unwrap_or_default();
    let start = q.start.unwrap_or_default();
    let limit = q.limit.unwrap_or(100);
    let keys_only = q.keys_only.unwrap_or(false);
    read(&state, consistency, || {
        let (items, next) = state
            .replica
            .state()
            .list(&prefix, &start, limit, state.limits.max_list_bytes, keys_only)
            .map_err(storage_err)?;
        let page = ListPage {
            items: ListedItems {
                items: &items,
                keys_only,
            },
            next_start: next.map(|k| percent_encode_key(&k)),
            node: state.id,
        };
        // Serialized straight from the page's items: a page is as large as the byte bound
        // allows, and a copy of it as a JSON tree would double what the node holds for it.
        let body = serde_json::to_vec(&page).map_err(|e| ApiError::Internal(format!("rendering a listing: {e}")))?;
        let mut resp = Response::new(Body::from(body));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(resp)
    })
    .await
}

/// A listing page as it is sent: `{"items":[...],"next_start":...,"node":...}`.
#[derive(serde::Serialize)]
struct ListPage<'a> {
    items: ListedItems<'a>,
    next_start: Option<String>,
    node: NodeId,
}

struct ListedItems<'a> {
    items: &'a [KeyValue],
    keys_only: bool,
}

impl serde::Serialize for ListedItems<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.items.iter().map(|kv| ListedItem {
            kv,
            keys_only: self.keys_only,
        }))
    }
}

/// A listed key: `key`/`value` as strings when they are UTF-8, else `key_base64`/`value_base64`,
/// so that any byte string survives the trip through JSON; no value in a keys-only listing.
struct ListedItem<'a> {
    kv: &'a KeyValue,
    keys_only: bool,
}

impl serde::Serialize for ListedItem<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(if self.keys_only { 2 } else { 3 }))?;
        let bytes = |m: &mut S::SerializeMap, name: &str, b: &[u8]| match std::str::from_utf8(b) {
            Ok(text) => m.serialize_entry(name, text),
            Err(_) => m.serialize_entry(
                &format!("{name}_base64"),
                &base64::engine::general_purpose::STANDARD.encode(b),
            ),
        };
        bytes(&mut m, "key", &self.kv.key)?;
        if !self.keys_only {
            bytes(&mut m, "value", &self.kv.value)?;
        }
        m.serialize_entry("revision", &self.kv.revision)?;
        m.end()
    }
}

/// A key as a query-string value (for `next_start`): percent-encoded, any bytes.
fn percent_encode_key(key: &[u8]) -> String {
    percent_encoding::percent_encode(key, NON_ALPHANUMERIC).to_string()
}
