//! What a request needs, read from its method, path, query and headers before any handler
//! parses it. Where the request cannot be read (a malformed key or query), it needs the most
//! (read and write on every key): the handler refuses it anyway, and a check that is unsure
//! what a request touches must never let it through.

use axum::http::{HeaderMap, Method, Uri};
use bytes::Bytes;
use percent_encoding::percent_decode;

use super::super::request::{key_from_path, KV_PREFIX};
use crate::auth::KeyRange;

/// What a request must be allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Need {
    /// Open to all: probes, metrics, and the login itself.
    Nothing,
    /// A known caller; the handler decides the rest (`/v1/auth`), or there is nothing to
    /// allow (an unknown path, a method a route does not take).
    Caller,
    /// `/v1/status`: details for root, the rest for anyone.
    Status,
    Read(KeyRange),
    Write(KeyRange),
    /// A conditional write: it reads the key's revision, then writes.
    ReadWrite(KeyRange),
}

/// Every key: what an unreadable request is taken to touch.
fn everything() -> KeyRange {
    KeyRange::listing(b"", b"")
}

pub(super) fn needed(method: &Method, uri: &Uri, headers: &HeaderMap) -> Need {
    let path = uri.path();
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/v1/auth/authenticate" => return Need::Nothing,
        "/v1/status" => return Need::Status,
        "/v1/kv" if method == Method::GET || method == Method::HEAD => {
            return Need::Read(listing(uri.query()).unwrap_or_else(everything))
        }
        _ => {}
    }
    if !path.starts_with(KV_PREFIX) {
        return Need::Caller;
    }
    let key = match key_from_path(path) {
        Ok(key) => KeyRange::key(&key),
        Err(_) => return Need::ReadWrite(everything()),
    };
    let conditional = headers.contains_key("if-match") || headers.contains_key("if-none-match");
    match *method {
        Method::GET | Method::HEAD => Need::Read(key),
        Method::PUT | Method::DELETE if conditional => Need::ReadWrite(key),
        Method::PUT | Method::DELETE => Need::Write(key),
        _ => Need::Caller,
    }
}

/// The range a listing's `prefix` and `start` cover, decoded as the listing decodes them
/// (`+` is a space, percent-escapes must be well formed); `None` if they cannot be read or
/// are given twice.
fn listing(query: Option<&str>) -> Option<KeyRange> {
    let mut prefix: Option<Bytes> = None;
    let mut start: Option<Bytes> = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "prefix" => &mut prefix,
            "start" => &mut start,
            _ => continue,
        };
        if slot.replace(decode(value)?).is_some() {
            return None;
        }
    }
    Some(KeyRange::listing(
        prefix.as_deref().unwrap_or_default(),
        start.as_deref().unwrap_or_default(),
    ))
}

fn decode(raw: &str) -> Option<Bytes> {
    let raw = raw.replace('+', "%20");
    let b = raw.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'%' && !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
            return None;
        }
    }
    Some(Bytes::from(percent_decode(b).collect::<Vec<u8>>()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn need(method: Method, uri: &str) -> Need {
        needed(&method, &uri.parse().unwrap(), &HeaderMap::new())
    }

    #[test]
    fn keys_need_a_read_or_a_write_on_themselves() {
        assert_eq!(need(Method::GET, "/v1/kv/app/x"), Need::Read(KeyRange::key(b"app/x")));
        assert_eq!(
            need(Method::PUT, "/v1/kv/app%2Fx"),
            Need::Write(KeyRange::key(b"app/x"))
        );
        assert_eq!(need(Method::DELETE, "/v1/kv/a"), Need::Write(KeyRange::key(b"a")));
        let mut h = HeaderMap::new();
        h.insert("if-match", HeaderValue::from_static("\"3\""));
        assert_eq!(
            needed(&Method::PUT, &"/v1/kv/a".parse().unwrap(), &h),
            Need::ReadWrite(KeyRange::key(b"a")),
            "a conditional write reads the key's revision"
        );
        assert_eq!(need(Method::PUT, "/v1/kv/bad%zz"), Need::ReadWrite(everything()));
    }

    #[test]
    fn a_listing_needs_its_whole_range() {
        assert_eq!(
            need(Method::GET, "/v1/kv?prefix=app%2F&limit=10"),
            Need::Read(KeyRange::listing(b"app/", b""))
        );
        assert_eq!(
            need(Method::GET, "/v1/kv?prefix=app/&start=app/m"),
            Need::Read(KeyRange::listing(b"app/", b"app/m"))
        );
        assert_eq!(need(Method::GET, "/v1/kv"), Need::Read(everything()));
        assert_eq!(
            need(Method::GET, "/v1/kv?prefix=a&prefix=b"),
            Need::Read(everything()),
            "ambiguous: taken as everything"
        );
        assert_eq!(need(Method::GET, "/v1/kv?prefix=%zz"), Need::Read(everything()));
    }

    #[test]
    fn probes_are_open_and_the_rest_needs_a_caller() {
        for open in ["/healthz", "/readyz", "/metrics", "/v1/auth/authenticate"] {
            assert_eq!(need(Method::GET, open), Need::Nothing, "{open}");
        }
        assert_eq!(need(Method::GET, "/v1/status"), Need::Status);
        assert_eq!(need(Method::GET, "/v1/auth/users"), Need::Caller);
        assert_eq!(need(Method::GET, "/nope"), Need::Caller);
    }
}
