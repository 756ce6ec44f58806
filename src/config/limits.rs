//! Limits that keep a node serving under abuse: connections, timeouts, response sizes.
//!
//! Each bounds what one client can take from the node (file descriptors, memory, time), so that
//! no single client can stop the node from answering the others.

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Most client HTTP connections served at once; a connection beyond it is answered
    /// `503 too_many_connections` and closed (on a TLS listener, closed at once). Lowered at
    /// start to what the open-file limit allows (after raising the soft limit to the hard one),
    /// keeping a reserve for the data files and the peers.
    #[arg(long, env = "RAFTKV_MAX_CLIENT_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_client_connections: u32,
    /// Time a client has to send a request's line and headers (ms), from its first byte; for a
    /// new connection, from its opening (the TLS handshake included). A connection that does
    /// not make it is closed.
    #[arg(long, env = "RAFTKV_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout_ms: u64,
    /// Time a request's whole body may take to arrive (ms), from the end of its headers; a
    /// request that is late is answered `408 request_timeout` and its connection closed.
    #[arg(long, env = "RAFTKV_HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_timeout_ms: u64,
    /// A connection with no request in flight and no bytes either way for this long (ms) is
    /// closed; so is one whose request has moved no bytes for this long (a client that stopped
    /// reading its answer), so keep it above --request-timeout-ms.
    #[arg(long, env = "RAFTKV_HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_idle_timeout_ms: u64,
    /// Largest request head (request line and headers, bytes) on HTTP/1.1; a larger one is
    /// answered `431 headers_too_large`.
    #[arg(long, env = "RAFTKV_HTTP_MAX_HEADER_BYTES", default_value_t = 64 << 10,
          value_parser = clap::value_parser!(u64).range(8192..=(16 << 20)))]
    pub http_max_header_bytes: u64,
    /// Most requests in flight at once on one HTTP/2 connection (its concurrent streams).
    #[arg(long, env = "RAFTKV_MAX_CONCURRENT_STREAMS", default_value_t = 250,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// Interval of the HTTP/2 keep-alive pings the node sends (ms; 0: none).
    #[arg(long, env = "RAFTKV_HTTP2_KEEPALIVE_INTERVAL_MS", default_value_t = 30_000)]
    pub http2_keepalive_interval_ms: u64,
    /// Time an HTTP/2 client has to answer a keep-alive ping before its connection is closed (ms).
    #[arg(long, env = "RAFTKV_HTTP2_KEEPALIVE_TIMEOUT_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http2_keepalive_timeout_ms: u64,
    /// Most bytes of keys and values in one listing page (`GET /v1/kv`): the page ends early,
    /// with `next_start`, once the next key would cross it (a page always holds at least one
    /// key). The node reads no more than this (and one key beyond it) for a page.
    #[arg(long, env = "RAFTKV_MAX_LIST_BYTES", default_value_t = 4 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_list_bytes: u64,
}
