//! Parsing what a client sends: keys from the raw path, query parameters, conditional
//! headers. Pure functions, so every rule is unit-tested.

use axum::http::HeaderMap;
use bytes::Bytes;
use percent_encoding::percent_decode;

use super::error::ApiError;
use crate::types::Precondition;

pub(super) const MAX_KEY_BYTES: usize = 4096;
pub(super) const KV_PREFIX: &str = "/v1/kv/";

/// The key of a `/v1/kv/<key>` path: percent-decoded to raw bytes, so any byte string
/// (UTF-8 or not, with slashes or not) can be a key.
pub(super) fn key_from_path(path: &str) -> Result<Bytes, ApiError> {
    let raw = path
        .strip_prefix(KV_PREFIX)
        .ok_or_else(|| ApiError::InvalidKey(format!("path {path:?} does not start with {KV_PREFIX}")))?;
    let key = decode_component(raw).map_err(ApiError::InvalidKey)?;
    validate_key(&key)?;
    Ok(key)
}

pub(super) fn validate_key(key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::InvalidKey("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::InvalidKey(format!(
            "the key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Percent-decodes, refusing malformed escapes (which `percent_decode` would pass through).
fn decode_component(raw: &str) -> Result<Bytes, String> {
    let b = raw.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'%' {
            let ok = i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(format!("malformed percent-escape at byte {i} of {raw:?}"));
            }
        }
    }
    Ok(Bytes::from(percent_decode(b).collect::<Vec<u8>>()))
}

/// Read consistency, chosen per request with `?consistency=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Consistency {
    /// ReadIndex through the leader: sees every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// The leader serves from its state while its lease holds: no round trip, safe as long as
    /// clocks do not drift more than the lease margin.
    Lease,
    /// This node's state machine as it is: any node, fastest, may be behind.
    Stale,
}

impl Consistency {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Stale => "stale",
        }
    }
}

/// Query parameters, decoded to bytes; unknown or repeated parameters are errors.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Query {
    pub consistency: Option<Consistency>,
    pub prefix: Option<Bytes>,
    pub start: Option<Bytes>,
    pub limit: Option<usize>,
    /// `keys_only=true`: a listing without values (etcd's `keys_only`).
    pub keys_only: Option<bool>,
}

pub(super) const MAX_LIST_LIMIT: usize = 1000;

pub(super) fn parse_query(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
    let mut q = Query::default();
    let Some(raw) = raw else { return Ok(q) };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&name) {
            return Err(ApiError::InvalidQuery(if allowed.is_empty() {
                format!("unknown query parameter {name:?}; this request takes none")
            } else {
                format!("unknown query parameter {name:?}; allowed: {}", allowed.join(", "))
            }));
        }
        let bytes = decode_component(&value.replace('+', "%20")).map_err(ApiError::InvalidQuery)?;
        let text = || {
            std::str::from_utf8(&bytes)
                .map(str::to_string)
                .map_err(|_| ApiError::InvalidQuery(format!("{name} must be UTF-8")))
        };
        let dup = || ApiError::InvalidQuery(format!("query parameter {name:?} given twice"));
        match name {
            "consistency" => {
                let c = match text()?.as_str() {
                    "linearizable" => Consistency::Linearizable,
                    "lease" => Consistency::Lease,
                    "stale" => Consistency::Stale,
                    other => {
                        return Err(ApiError::InvalidQuery(format!(
                            "consistency {other:?} is not one of linearizable, lease, stale"
                        )))
                    }
                };
                if q.consistency.replace(c).is_some() {
                    return Err(dup());
                }
            }
            "prefix" => {
                if q.prefix.replace(bytes.clone()).is_some() {
                    return Err(dup());
                }
            }
            "start" => {
                if q.start.replace(bytes.clone()).is_some() {
                    return Err(dup());
                }
            }
            "limit" => {
                let n: usize = text()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::InvalidQuery(format!("limit must be an integer from 1 to {MAX_LIST_LIMIT}"))
                    })?;
                if q.limit.replace(n).is_some() {
                    return Err(dup());
                }
            }
            "keys_only" => {
                let k = match text()?.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(ApiError::InvalidQuery(format!(
                            "keys_only {other:?} is not one of true, false"
                        )))
                    }
                };
                if q.keys_only.replace(k).is_some() {
                    return Err(dup());
                }
            }
            _ => unreachable!("checked against `allowed` above"),
        }
    }
    Ok(q)
}

/// `If-Match` / `If-None-Match` on a write, as a [`Precondition`].
pub(super) fn write_precondition(headers: &HeaderMap) -> Result<Option<Precondition>, ApiError> {
    let if_match = header_str(headers, "if-match")?;
    let if_none = header_str(headers, "if-none-match")?;
    match (if_match, if_none) {
        (Some(_), Some(_)) => Err(ApiError::InvalidHeader(
            "use If-Match or If-None-Match, not both".into(),
        )),
        (Some(m), None) if m.trim() == "*" => Ok(Some(Precondition::Exists)),
        (Some(m), None) => Ok(Some(Precondition::Revision(parse_etag(m)?))),
        (None, Some(n)) if n.trim() == "*" => Ok(Some(Precondition::Absent)),
        (None, Some(n)) => Err(ApiError::InvalidHeader(format!(
            "If-None-Match on a write supports only \"*\" (create only), not {n:?}"
        ))),
        (None, None) => Ok(None),
    }
}

/// `If-None-Match: "<revision>"` on a read: answer 304 if the key is still at that revision.
pub(super) fn read_precondition(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    if header_str(headers, "if-match")?.is_some() {
        return Err(ApiError::InvalidHeader(
            "If-Match is for writes; reads take If-None-Match".into(),
        ));
    }
    header_str(headers, "if-none-match")?.map(parse_etag).transpose()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::InvalidHeader(format!("{name} given more than once")));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| ApiError::InvalidHeader(format!("{name} is not visible ASCII")))
}

/// A revision ETag: `"123"` (quotes required, as HTTP says; a weak `W/` tag is refused).
pub(super) fn parse_etag(v: &str) -> Result<u64, ApiError> {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| ApiError::InvalidHeader(format!("{v:?} is not a revision ETag like \"42\" (with the quotes)")))
}

pub(super) fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_decode_to_raw_bytes() {
        assert_eq!(key_from_path("/v1/kv/a/b").unwrap(), Bytes::from_static(b"a/b"));
        assert_eq!(
            key_from_path("/v1/kv/%ff%00x").unwrap(),
            Bytes::from_static(b"\xff\x00x")
        );
        assert_eq!(
            key_from_path("/v1/kv/hello%20world").unwrap(),
            Bytes::from_static(b"hello world")
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(key_from_path("/v1/kv/"), Err(ApiError::InvalidKey(_))));
        assert!(matches!(key_from_path("/v1/kv/%zz"), Err(ApiError::InvalidKey(_))));
        assert!(matches!(key_from_path("/v1/kv/ab%4"), Err(ApiError::InvalidKey(_))));
        let long = format!("/v1/kv/{}", "k".repeat(MAX_KEY_BYTES + 1));
        assert!(matches!(key_from_path(&long), Err(ApiError::InvalidKey(_))));
        let max = format!("/v1/kv/{}", "k".repeat(MAX_KEY_BYTES));
        assert!(key_from_path(&max).is_ok());
    }

    #[test]
    fn query_parameters() {
        let q = parse_query(
            Some("consistency=stale&prefix=a%2Fb&limit=10"),
            &["consistency", "prefix", "limit"],
        )
        .unwrap();
        assert_eq!(q.consistency, Some(Consistency::Stale));
        assert_eq!(q.prefix, Some(Bytes::from_static(b"a/b")));
        assert_eq!(q.limit, Some(10));
        assert!(parse_query(Some("consistency=strong"), &["consistency"]).is_err());
        assert!(parse_query(Some("limit=0"), &["limit"]).is_err());
        assert!(parse_query(Some("limit=1001"), &["limit"]).is_err());
        assert!(parse_query(Some("bogus=1"), &["limit"]).is_err());
        assert!(parse_query(Some("limit=1&limit=2"), &["limit"]).is_err());
        assert!(parse_query(Some("x=1"), &[]).is_err());
        let q = parse_query(Some("keys_only=true"), &["keys_only"]).unwrap();
        assert_eq!(q.keys_only, Some(true));
        assert_eq!(
            parse_query(Some("keys_only=false"), &["keys_only"]).unwrap().keys_only,
            Some(false)
        );
        assert!(parse_query(Some("keys_only=yes"), &["keys_only"]).is_err());
        assert!(parse_query(Some("keys_only=true&keys_only=true"), &["keys_only"]).is_err());
    }

    #[test]
    fn conditional_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(write_precondition(&h).unwrap(), None);
        h.insert("if-match", HeaderValue::from_static("\"7\""));
        assert_eq!(write_precondition(&h).unwrap(), Some(Precondition::Revision(7)));
        h.insert("if-match", HeaderValue::from_static("*"));
        assert_eq!(write_precondition(&h).unwrap(), Some(Precondition::Exists));
        h.insert("if-match", HeaderValue::from_static("7"));
        assert!(write_precondition(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert("if-none-match", HeaderValue::from_static("*"));
        assert_eq!(write_precondition(&h).unwrap(), Some(Precondition::Absent));
        h.insert("if-match", HeaderValue::from_static("\"1\""));
        assert!(write_precondition(&h).is_err());
    }
}
