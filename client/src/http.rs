//! [`Client`]: the HTTP API of one node, typed. It keeps one connection pool (reqwest), so
//! a caller that keeps the `Client` reuses its connections.

use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::model::{query_encode, Deleted, NodeId, Page, Probe, Status, Value, Written};
use crate::tls::{Credentials, Tls};
use crate::Error;

/// The header that names the node that served a request (for a write: the leader).
pub const NODE_HEADER: &str = "x-raftkv-node";
/// The header that carries a read value's revision.
pub const REVISION_HEADER: &str = "x-raftkv-revision";

/// Characters left as they are in a key path: unreserved ones and '/', so that a key with
/// slashes reads as a path in logs; the server percent-decodes the rest to raw bytes.
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');
/// [`KEY_SET`] with '/' escaped too.
const KEY_SET_NO_SLASH: &AsciiSet = &KEY_SET.add(b'/');

/// A key as the path of `/v1/kv/{key}`: percent-encoded (any bytes). URL rules collapse the
/// path segments `.` and `..`, so a key with such a segment travels with its slashes escaped
/// (`%2F`) too; a key that is nothing but `.` or `..` cannot be addressed.
pub fn key_path(key: &[u8]) -> String {
    let dot_segment = key.split(|b| *b == b'/').any(|s| s == b"." || s == b"..");
    let set = if dot_segment { KEY_SET_NO_SLASH } else { KEY_SET };
    format!("/v1/kv/{}", percent_encode(key, set))
}

/// Read consistency, as `?consistency=` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Through the leader's read index: sees every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// The leader's lease: no round trip, safe while clocks drift less than the lease margin.
    Lease,
    /// The node's state as it is: fastest, may be behind.
    Stale,
}

impl Consistency {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Stale => "stale",
        }
    }
}

/// A write's precondition, sent as `If-Match` / `If-None-Match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Condition {
    /// Unconditional.
    #[default]
    None,
    /// Only if the key is at this revision (`If-Match: "<revision>"`).
    IfMatch(u64),
    /// Only if the key exists (`If-Match: *`).
    IfExists,
    /// Only if the key does not exist (`If-None-Match: *`).
    IfAbsent,
}

impl Condition {
    fn apply(self, req: RequestBuilder) -> RequestBuilder {
        match self {
            Condition::None => req,
            Condition::IfMatch(r) => req.header("if-match", format!("\"{r}\"")),
            Condition::IfExists => req.header("if-match", "*"),
            Condition::IfAbsent => req.header("if-none-match", "*"),
        }
    }
}

/// What to list: keys under `prefix`, from `start` on (both raw bytes), at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub prefix: Bytes,
    /// The first key of the page (a previous page's `next_start`).
    pub start: Option<Bytes>,
    /// At most this many keys (the server allows 1 to 1000; it picks 100 when unset). A page
    /// may hold fewer, and name a `next_start`, once it reaches the server's byte bound.
    pub limit: Option<usize>,
    pub consistency: Consistency,
    /// Keys and revisions only: the listed items' values are left empty.
    pub keys_only: bool,
}

/// How a [`Client`] is made.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    timeout: Duration,
    http: Option<reqwest::Client>,
    tls: Option<Tls>,
    credentials: Option<Credentials>,
}

impl ClientBuilder {
    /// The most one request may take, connecting included (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Shares a connection pool with other clients.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Talks HTTPS with these settings (`--cacert`, `--cert`, `--key`); an endpoint without a
    /// scheme then means `https://`.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Presents these credentials on every request.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let base = base_url(&self.endpoint, self.tls.is_some());
        if base.split_once("://").is_none_or(|(_, host)| host.is_empty()) {
            return Err(Error::BadEndpoint {
                endpoint: self.endpoint,
                reason: "no host".into(),
            });
        }
        let http = match self.http {
            Some(h) => h,
            None => {
                let mut builder = reqwest::Client::builder();
                let tls = match (&self.tls, base.starts_with("https://")) {
                    (Some(tls), _) => Some(tls.clone()),
                    (None, true) => Some(Tls::from_pem(None, None, None)?),
                    (None, false) => None,
                };
                if let Some(tls) = tls {
                    // This client speaks HTTP/1.1 only: offer nothing else in ALPN.
                    builder = builder.use_preconfigured_tls(tls.with_alpn(&["http/1.1"]));
                }
                builder.build().map_err(|e| Error::BadEndpoint {
                    endpoint: base.clone(),
                    reason: e.to_string(),
                })?
            }
        };
        let authorization = match &self.credentials {
            Some(c) => Some(
                reqwest::header::HeaderValue::from_str(&c.authorization())
                    .map_err(|_| Error::Tls("credentials that cannot be sent in an HTTP header".into()))?,
            ),
            None => None,
        };
        Ok(Client {
            base,
            http,
            timeout: self.timeout,
            authorization,
        })
    }
}

/// `host:port` or `http[s]://host:port[/]` as a base URL without a trailing slash; without a
/// scheme, `https` when TLS is configured.
fn base_url(ep: &str, tls: bool) -> String {
    let ep = ep.trim().trim_end_matches('/');
    if ep.contains("://") {
        ep.to_string()
    } else if tls {
        format!("https://{ep}")
    } else {
        format!("http://{ep}")
    }
}

/// One node's HTTP API. Cheap to clone (the clones share the connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
    /// Sent with every request, when credentials were given.
    authorization: Option<reqwest::header::HeaderValue>,
}

impl Client {
    /// A client for `endpoint` (`host:port` or `http://host:port`) with the default timeout.
    pub fn new(endpoint: &str) -> Result<Client, Error> {
        Client::builder(endpoint).build()
    }

    pub fn builder(endpoint: &str) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.to_string(),
            timeout: Duration::from_secs(10),
            http: None,
            tls: None,
            credentials: None,
        }
    }

    /// The endpoint as a base URL (`http://host:port`): what error texts name.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, Error> {
        let r = self.send(self.http.get(self.url("/v1/status"))).await?;
        self.json(r).await
    }

    /// `PUT /v1/kv/{key}` with `value` as the body.
    pub async fn put(&self, key: &[u8], value: impl Into<Bytes>, condition: Condition) -> Result<Written, Error> {
        let req = self.http.put(self.url(&key_path(key))).body(value.into());
        let r = self.send(condition.apply(req)).await?;
        self.json(r).await
    }

    /// `GET /v1/kv/{key}`: the value, or `None` if the key does not exist.
    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<Option<Value>, Error> {
        let url = format!("{}?consistency={}", self.url(&key_path(key)), consistency.as_str());
        let r = self.send_raw(self.http.get(url)).await?;
        if r.status() == StatusCode::NOT_FOUND {
            let body = self.body(r).await?;
            let e = Error::api(&self.base, 404, &body);
            return if e.code() == Some("key_not_found") {
                Ok(None)
            } else {
                Err(e)
            };
        }
        let r = self.check(r).await?;
        let headers = r.headers().clone();
        let value = self.body(r).await?;
        let revision = header_u64(&headers, REVISION_HEADER).ok_or_else(|| Error::Decode {
            endpoint: self.base.clone(),
            reason: format!("the answer has no {REVISION_HEADER} header"),
        })?;
        Ok(Some(Value {
            value,
            revision,
            node: header_u64(&headers, NODE_HEADER),
        }))
    }

    /// `DELETE /v1/kv/{key}`.
    pub async fn delete(&self, key: &[u8], condition: Condition) -> Result<Deleted, Error> {
        let req = self.http.delete(self.url(&key_path(key)));
        let r = self.send(condition.apply(req)).await?;
        self.json(r).await
    }

    /// `GET /v1/kv?prefix=&start=&limit=&consistency=&keys_only=`: one page.
    pub async fn list(&self, options: &ListOptions) -> Result<Page, Error> {
        let mut url = format!(
            "{}?prefix={}&consistency={}",
            self.url("/v1/kv"),
            query_encode(&options.prefix),
            options.consistency.as_str()
        );
        if let Some(start) = &options.start {
            url.push_str(&format!("&start={}", query_encode(start)));
        }
        if let Some(limit) = options.limit {
            url.push_str(&format!("&limit={limit}"));
        }
        if options.keys_only {
            url.push_str("&keys_only=true");
        }
        let r = self.send(self.http.get(url)).await?;
        self.json(r).await
    }

    /// `GET /readyz`: ready, or not ready with the node's reason (its 503 is an answer here,
    /// not an error).
    pub async fn ready(&self) -> Result<Probe, Error> {
        self.probe("/readyz").await
    }

    /// `GET /healthz`: whether the process serves HTTP.
    pub async fn healthy(&self) -> Result<Probe, Error> {
        self.probe("/healthz").await
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub async fn metrics(&self) -> Result<String, Error> {
        let r = self.send(self.http.get(self.url("/metrics"))).await?;
        let body = self.body(r).await?;
        String::from_utf8(body.to_vec()).map_err(|e| Error::Decode {
            endpoint: self.base.clone(),
            reason: format!("metrics are not UTF-8: {e}"),
        })
    }

    async fn probe(&self, path: &str) -> Result<Probe, Error> {
        let r = self.send_raw(self.http.get(self.url(path))).await?;
        let status = r.status();
        let body = self.body(r).await?;
        match serde_json::from_slice::<Probe>(&body) {
            Ok(p) if status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE => Ok(p),
            _ if !status.is_success() => Err(Error::api(&self.base, status.as_u16(), &body)),
            Ok(p) => Ok(p),
            Err(e) => Err(self.decode_error(e)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request; any answer is returned, success or not.
    async fn send_raw(&self, req: RequestBuilder) -> Result<reqwest::Response, Error> {
        let req = match &self.authorization {
            Some(value) => req.header(reqwest::header::AUTHORIZATION, value.clone()),
            None => req,
        };
        req.timeout(self.timeout)
            .send()
            .await
            .map_err(|e| Error::from_http(&self.base, self.timeout, e))
    }

    /// Sends a request; an error answer becomes an [`Error::Api`].
    async fn send(&self, req: RequestBuilder) -> Result<reqwest::Response, Error> {
        let r = self.send_raw(req).await?;
        self.check(r).await
    }

    async fn check(&self, r: reqwest::Response) -> Result<reqwest::Response, Error> {
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status().as_u16();
        let body = self.body(r).await?;
        Err(Error::api(&self.base, status, &body))
    }

    async fn body(&self, r: reqwest::Response) -> Result<Bytes, Error> {
        r.bytes()
            .await
            .map_err(|e| Error::from_http(&self.base, self.timeout, e))
    }

    async fn json<T: DeserializeOwned>(&self, r: reqwest::Response) -> Result<T, Error> {
        let body = self.body(r).await?;
        serde_json::from_slice(&body).map_err(|e| self.decode_error(e))
    }

    fn decode_error(&self, e: serde_json::Error) -> Error {
        Error::Decode {
            endpoint: self.base.clone(),
            reason: e.to_string(),
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<NodeId> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn keys_are_percent_encoded_with_slashes_kept() {
        assert_eq!(key_path(b"dir/a b"), "/v1/kv/dir/a%20b");
        assert_eq!(key_path(b"k-1_2.3~"), "/v1/kv/k-1_2.3~");
        assert_eq!(key_path(b"\xff\x00?#%"), "/v1/kv/%FF%00%3F%23%25");
        assert_eq!(
            key_path(b"a/../b"),
            "/v1/kv/a%2F..%2Fb",
            "no dot segment for URL rules to collapse"
        );
        assert_eq!(key_path(b"a/.b"), "/v1/kv/a/.b");
    }

    #[test]
    fn endpoints_take_a_scheme_or_not() {
        assert_eq!(Client::new("127.0.0.1:80").unwrap().endpoint(), "http://127.0.0.1:80");
        assert_eq!(Client::new("http://n1:8080/").unwrap().endpoint(), "http://n1:8080");
        assert!(matches!(Client::new(""), Err(Error::BadEndpoint { .. })));
    }

    /// A one-shot HTTP server that answers the first request with `response` and hands back
    /// the request's text.
    async fn answer_once(response: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).await.expect("read");
            conn.write_all(response.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (addr, task)
    }

    fn response(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn a_conditional_put_sends_the_header_and_reads_a_failed_precondition() {
        let body = r#"{"error":{"code":"precondition_failed","message":"precondition failed: the key is at revision 3","current_revision":3}}"#;
        let (addr, server) = answer_once(response(
            "412 Precondition Failed",
            "content-type: application/json\r\n",
            body,
        ))
        .await;
        let c = Client::new(&addr).unwrap();
        let e = c.put(b"a b", "v", Condition::IfMatch(2)).await.unwrap_err();
        let request = server.await.unwrap();
        assert!(request.starts_with("PUT /v1/kv/a%20b HTTP/1.1"), "{request}");
        assert!(request.contains("if-match: \"2\""), "{request}");
        assert_eq!(
            (e.status(), e.code(), e.current_revision()),
            (Some(412), Some("precondition_failed"), Some(3))
        );
        assert!(
            e.to_string()
                .starts_with(&format!("http://{addr}: 412 precondition failed")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_missing_key_reads_as_none() {
        let body = r#"{"error":{"code":"key_not_found","message":"key not found"}}"#;
        let (addr, server) = answer_once(response("404 Not Found", "", body)).await;
        let c = Client::new(&addr).unwrap();
        assert_eq!(c.get(b"k", Consistency::Stale).await.unwrap(), None);
        assert!(server
            .await
            .unwrap()
            .starts_with("GET /v1/kv/k?consistency=stale HTTP/1.1"));
    }

    #[tokio::test]
    async fn a_value_carries_its_revision_and_node() {
        let (addr, _server) = answer_once(response(
            "200 OK",
            "x-raftkv-revision: 7\r\nx-raftkv-node: 2\r\n",
            "abc",
        ))
        .await;
        let v = Client::new(&addr)
            .unwrap()
            .get(b"k", Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(
            v,
            Some(Value {
                value: Bytes::from_static(b"abc"),
                revision: 7,
                node: Some(2)
            })
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let e = Client::new(&addr).unwrap().status().await.unwrap_err();
        assert!(e.not_sent(), "{e:?}");
        assert!(!e.outcome_unknown());
        assert!(
            e.to_string().starts_with(&format!("http://{addr}: cannot connect")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_timeout_with_an_unknown_outcome() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let _hold = tokio::spawn(async move {
            let conn = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(conn);
        });
        let c = Client::builder(&addr)
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let e = c.put(b"k", "v", Condition::None).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
        assert!(e.outcome_unknown());
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_lost() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let _server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let _ = conn.read(&mut buf).await;
            drop(conn);
        });
        let e = Client::new(&addr)
            .unwrap()
            .put(b"k", "v", Condition::None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Lost { .. }), "{e:?}");
        assert!(e.outcome_unknown());
    }
}
