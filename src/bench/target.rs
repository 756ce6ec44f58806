//! How one operation is sent to each kind of server: over one HTTP/1.1 keep-alive connection of
//! the worker's own, the request written into a reused buffer and the answer parsed in place
//! (as wrk does), all in the worker's task: one write and, mostly, one read per operation.
//!
//! The load client shares the machine with what it measures, so every cycle it spends is
//! taken from the servers. Hence no general HTTP client here: no connection task beside each
//! worker, no channel between them, no request object built per operation.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Raftkv,
    /// etcd's v3 JSON gateway (`/v3/kv/put`, `/v3/kv/range`, `/v3/kv/deleterange`).
    Etcd,
}

/// Largest answer accepted; a bigger one is an error, not a buffer that grows without end.
const MAX_RESPONSE: usize = 16 << 20;

/// A connection as the bench sees it: plain TCP, or TLS over it (`https://` endpoints).
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => s.write_all(buf).await,
        }
    }

    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }
}

/// The TLS client configuration for `https://` endpoints (HTTP/1.1 in ALPN), if any.
#[derive(Clone, Default)]
pub(super) struct Dialer {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    pub(super) fn new(tls: Option<raftkv_client::Tls>) -> Dialer {
        Dialer {
            tls: tls.map(|t| {
                let mut config = (*t.config()).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(config)
            }),
        }
    }

    async fn dial(&self, endpoint: &str, https: bool) -> Result<Stream, String> {
        let tcp = TcpStream::connect(endpoint).await.map_err(|_| "connect".to_string())?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Stream::Plain(tcp));
        }
        let config = self
            .tls
            .clone()
            .ok_or_else(|| "https endpoint without --cacert".to_string())?;
        let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|_| "bad TLS server name".to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|_| "tls handshake".to_string())?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// One worker's connection to one endpoint (`host:port`); reconnects after a failure.
pub(super) struct Conn {
    endpoint: String,
    https: bool,
    dialer: Dialer,
    target: Target,
    consistency: String,
    timeout: Duration,
    stream: Option<Stream>,
    /// The request being sent.
    out: Vec<u8>,
    /// Bytes received and not yet consumed.
    input: Vec<u8>,
}

impl Conn {
    pub(super) fn new(endpoint: &str, dialer: &Dialer, target: Target, consistency: &str, timeout: Duration) -> Conn {
        let https = endpoint.starts_with("https://") || (dialer.tls.is_some() && !endpoint.contains("://"));
        let endpoint = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest)
            .trim_end_matches('/')
            .to_string();
        Conn {
            endpoint,
            https,
            dialer: dialer.clone(),
            target,
            consistency: consistency.to_string(),
            timeout,
            stream: None,
            out: Vec::with_capacity(512),
            input: Vec::with_capacity(4096),
        }
    }

    /// Sends one operation; `Err` names the kind of failure (HTTP status, timeout, ...).
    pub(super) async fn send(&mut self, op: Op, key: &str, value: &Bytes) -> Result<(), String> {
        self.encode(op, key, value)?;
        let status = match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(Ok(status)) => status,
            Ok(Err(kind)) => {
                self.stream = None;
                return Err(kind);
            }
            Err(_) => {
                // The connection may still carry the late answer: start afresh.
                self.stream = None;
                return Err("timeout".into());
            }
        };
        // A read of a key that was never written is an answer, not an error.
        if (200..300).contains(&status) || (op == Op::Read && status == 404) {
            Ok(())
        } else {
            Err(format!("http {status}"))
        }
    }

    /// Writes the request for `op` into `self.out`.
    fn encode(&mut self, op: Op, key: &str, value: &Bytes) -> Result<(), String> {
        let out = &mut self.out;
        out.clear();
        let host = &self.endpoint;
        let written = match self.target {
            Target::Raftkv => match op {
                Op::Write => write!(
                    out,
                    "PUT /v1/kv/{key} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n\r\n",
                    value.len()
                )
                .map(|()| out.extend_from_slice(value)),
                Op::Read => write!(
                    out,
                    "GET /v1/kv/{key}?consistency={} HTTP/1.1\r\nhost: {host}\r\n\r\n",
                    self.consistency
                ),
                Op::Delete => write!(out, "DELETE /v1/kv/{key} HTTP/1.1\r\nhost: {host}\r\n\r\n"),
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
                write!(
                    out,
                    "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
        };
        written.map_err(|e| format!("request: {e}"))
    }

    /// Sends `self.out` and reads one answer; returns its status.
    async fn exchange(&mut self) -> Result<u16, String> {
        if self.stream.is_none() {
            let stream = self.dialer.dial(&self.endpoint, self.https).await?;
            self.input.clear();
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().ok_or_else(|| "connect".to_string())?;
        stream.write_all(&self.out).await.map_err(|_| "transport".to_string())?;
        let mut eof = false;
        loop {
            if let Some(answer) = parse_response(&self.input, eof)? {
                self.input.drain(..answer.len);
                if !answer.keep_alive {
                    self.stream = None;
                }
                return Ok(answer.status);
            }
            if eof {
                return Err("transport".into());
            }
            if self.input.len() >= MAX_RESPONSE {
                return Err("response too large".into());
            }
            self.input.reserve(4096);
            eof = stream
                .read_buf(&mut self.input)
                .await
                .map_err(|_| "transport".to_string())?
                == 0;
        }
    }
}

/// One complete HTTP/1.1 answer at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// Bytes it takes up, head and body.
    len: usize,
    /// Whether the connection may carry the next request.
    keep_alive: bool,
}

/// The answer at the start of `buf`, if all of it is there (`eof`: no more bytes will come, which
/// ends a body framed by the connection's close). `Err` for what is not HTTP.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Answer>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let (mut length, mut chunked) = (None, false);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            length = Some(v.ok_or_else(|| "bad response: content-length".to_string())?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let body = if status / 100 == 1 || status == 204 || status == 304 {
        Some(0)
    } else if chunked {
        chunked_len(&buf[head..])?
    } else if let Some(n) = length {
        (buf.len() - head >= n).then_some(n)
    } else if eof {
        // Neither length nor chunks: the body runs to the close.
        keep_alive = false;
        Some(buf.len() - head)
    } else {
        None
    };
    Ok(body.map(|body| Answer {
        status,
        len: head + body,
        keep_alive,
    }))
}

/// Length of the chunked body at the start of `buf`, trailers included, if all of it is there.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let Some(line) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let size_text = &buf[at..at + line];
        let size_text = size_text.split(|&b| b == b';').next().unwrap_or(size_text);
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| "bad response: chunk size".to_string())?;
        at += line + 2;
        if size == 0 {
            // Trailer lines, each ended by CRLF, then an empty line.
            loop {
                let Some(line) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += line + 2;
                if line == 0 {
                    return Ok(Some(at));
                }
            }
        }
        let end = at.checked_add(size).and_then(|e| e.checked_add(2));
        match end {
            Some(end) if end <= buf.len() => at = end,
            Some(_) if size <= MAX_RESPONSE => return Ok(None),
            _ => return Err("response too large".into()),
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_a_length_are_complete_only_when_the_body_is_there() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        for cut in 0..full.len() {
            assert_eq!(parse_response(&full[..cut], false), Ok(None), "cut at {cut}");
        }
        let answer = parse_response(full, false).unwrap().unwrap();
        assert_eq!(
            answer,
            Answer {
                status: 200,
                len: full.len(),
                keep_alive: true
            }
        );
    }

    #[test]
    fn an_answer_takes_only_its_own_bytes() {
        let two = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 201 Created\r\n\r\n";
        let first = parse_response(two, false).unwrap().unwrap();
        assert_eq!((first.status, first.len), (404, 47));
        // The second has no length: it runs to the close, and only the close completes it.
        assert_eq!(parse_response(&two[first.len..], false), Ok(None));
        let second = parse_response(&two[first.len..], true).unwrap().unwrap();
        assert_eq!(
            second,
            Answer {
                status: 201,
                len: two.len() - first.len,
                keep_alive: false
            }
        );
    }

    #[test]
    fn chunked_bodies_end_at_the_empty_chunk_and_its_trailers() {
        let full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n1\r\ne\r\n0\r\nT: v\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_response(&full[..cut], false), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_response(full, false).unwrap().unwrap().len, full.len());
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(bad, false).is_err());
    }

    #[test]
    fn close_and_bad_input_are_reported() {
        let close = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let answer = parse_response(close, false).unwrap().unwrap();
        assert_eq!((answer.status, answer.keep_alive), (503, false));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
    }
}
