//! How one operation is sent to each kind of server, over one HTTP/1.1 connection of the
//! worker's own (hyper, no pool, no URL parsing per request): the load client must cost little,
//! since it shares the machine with what it measures.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Raftkv,
    /// etcd's v3 JSON gateway (`/v3/kv/put`, `/v3/kv/range`, `/v3/kv/deleterange`).
    Etcd,
}

/// One worker's connection to one endpoint (`host:port`); reconnects after a failure.
pub struct Conn {
    endpoint: String,
    target: Target,
    consistency: String,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(endpoint: &str, target: Target, consistency: &str, timeout: Duration) -> Conn {
        let endpoint = endpoint
            .strip_prefix("http://")
            .unwrap_or(endpoint)
            .trim_end_matches('/')
            .to_string();
        Conn {
            endpoint,
            target,
            consistency: consistency.to_string(),
            timeout,
            sender: None,
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            self.sender = Some(self.open().await?);
        }
        self.sender.as_mut().ok_or_else(|| "connect".to_string())
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&self.endpoint))
            .await
            .map_err(|_| "connect".to_string())?
            .map_err(|_| "connect".to_string())?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| "connect".to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn request(&self, op: Op, key: &str, value: &Bytes) -> Result<Request<Full<Bytes>>, String> {
        let (method, path, body) = match self.target {
            Target::Raftkv => match op {
                Op::Write => (Method::PUT, format!("/v1/kv/{key}"), value.clone()),
                Op::Read => (
                    Method::GET,
                    format!("/v1/kv/{key}?consistency={}", self.consistency),
                    Bytes::new(),
                ),
                Op::Delete => (Method::DELETE, format!("/v1/kv/{key}"), Bytes::new()),
            },
            Target::Etcd => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let k = b64.encode(key);
                let (path, body) = match op {
                    Op::Write => (
                        "/v3/kv/put",
                        format!(r#"{{"key":"{k}","value":"{}"}}"#, b64.encode(value)),
                    ),
                    Op::Read => (
                        "/v3/kv/range",
                        format!(r#"{{"key":"{k}","serializable":{}}}"#, self.consistency == "stale"),
                    ),
                    Op::Delete => ("/v3/kv/deleterange", format!(r#"{{"key":"{k}"}}"#)),
                };
                (Method::POST, path.to_string(), Bytes::from(body))
            }
        };
        Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.endpoint)
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))
    }

    /// Sends one operation; `Err` names the kind of failure (HTTP status, timeout, ...).
    pub async fn send(&mut self, op: Op, key: &str, value: &Bytes) -> Result<(), String> {
        let req = self.request(op, key, value)?;
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, async {
            let sender = self.connect().await?;
            sender.ready().await.map_err(|_| "transport".to_string())?;
            let resp = sender.send_request(req).await.map_err(|_| "transport".to_string())?;
            let status = resp.status();
            // Read the whole body so the connection can carry the next request.
            resp.into_body().collect().await.map_err(|_| "transport".to_string())?;
            Ok::<StatusCode, String>(status)
        })
        .await;
        let status = match result {
            Ok(Ok(status)) => status,
            Ok(Err(kind)) => {
                self.sender = None;
                return Err(kind);
            }
            Err(_) => {
                // The connection may still carry the late answer: start afresh.
                self.sender = None;
                return Err("timeout".into());
            }
        };
        // A read of a key that was never written is an answer, not an error.
        if status.is_success() || (op == Op::Read && status == StatusCode::NOT_FOUND) {
            Ok(())
        } else {
            Err(format!("http {}", status.as_u16()))
        }
    }
}
