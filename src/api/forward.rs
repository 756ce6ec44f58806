//! Leader forwarding: a follower sends writes and linearizable reads to the leader itself, so
//! a client may talk to any node and never retries on its own.
//!
//! A forwarded request carries `x-raftkv-forwarded-by`; a node that receives one but is no
//! longer the leader answers `not_leader` instead of forwarding again, and the first node
//! retries after the next leader is known. Only a request that certainly did not reach a
//! leader is retried: a write whose fate is unknown is never sent twice.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;

use crate::types::NodeId;

pub const FORWARDED_BY: &str = "x-raftkv-forwarded-by";
pub const NODE_HEADER: &str = "x-raftkv-node";

/// Request headers that carry meaning to the leader.
const PASS_REQUEST: [&str; 3] = ["if-match", "if-none-match", "content-type"];

#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
}

#[derive(Debug)]
pub enum ForwardError {
    /// The request never reached the target: safe to retry.
    NotSent(String),
    /// The request may or may not have been processed.
    Unknown(String),
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarder {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Forwarder { client }
    }

    /// Sends the request to the node at `http_addr` and returns its answer as ours.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        http_addr: &str,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
        origin: NodeId,
        timeout: Duration,
    ) -> Result<Response, ForwardError> {
        let url = format!("http://{http_addr}{path_and_query}");
        let mut req = self
            .client
            .request(method.clone(), &url)
            .timeout(timeout)
            .header(FORWARDED_BY, origin.to_string())
            .body(body);
        for name in PASS_REQUEST {
            for v in headers.get_all(name) {
                req = req.header(name, v.clone());
            }
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                ForwardError::NotSent(e.to_string())
            } else {
                ForwardError::Unknown(e.to_string())
            }
        })?;
        let status = resp.status();
        let mut out =
            Response::builder().status(StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY));
        for (name, value) in resp.headers() {
            if is_end_to_end(name.as_str()) {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_str().as_bytes()),
                    HeaderValue::from_bytes(value.as_bytes()),
                ) {
                    out = out.header(n, v);
                }
            }
        }
        let body = resp.bytes().await.map_err(|e| ForwardError::Unknown(e.to_string()))?;
        out.body(Body::from(body))
            .map_err(|e| ForwardError::Unknown(e.to_string()))
    }
}

/// Headers that describe the answer itself (not the hop).
fn is_end_to_end(name: &str) -> bool {
    matches!(
        name,
        "content-type" | "etag" | "x-raftkv-node" | "x-raftkv-revision" | "x-raftkv-consistency"
    )
}

/// Whether a forwarded answer says "I am not the leader (any more)".
pub async fn is_not_leader(resp: Response) -> (bool, Response) {
    if resp.status() != StatusCode::SERVICE_UNAVAILABLE {
        return (false, resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let not_leader = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(|c| c == "not_leader"))
        .unwrap_or(false);
    (not_leader, Response::from_parts(parts, Body::from(bytes)))
}
