//! What can go wrong talking to a node, sorted by what a caller may conclude: a request that
//! was certainly not received ([`Error::NotSent`]), one whose outcome is unknown
//! ([`Error::Timeout`], [`Error::Lost`]), and the node's own answer ([`Error::Api`] over HTTP,
//! [`Error::Rpc`] over gRPC). Every text names the endpoint.

use std::error::Error as _;
use std::time::Duration;

use crate::model::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not an address this client can use.
    #[error("{endpoint}: bad endpoint: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    /// No connection could be made: the request certainly did not arrive.
    #[error("{endpoint}: cannot connect: {reason}")]
    NotSent { endpoint: String, reason: String },
    /// No answer in time: the request may or may not have taken effect.
    #[error("{endpoint}: no answer within {timeout:?}; the outcome is unknown")]
    Timeout { endpoint: String, timeout: Duration },
    /// The request was sent and the connection broke before the answer: the outcome is unknown.
    #[error("{endpoint}: the connection broke before the answer ({reason}); the outcome is unknown")]
    Lost { endpoint: String, reason: String },
    /// The HTTP API answered with an error. `code` and `current_revision` come from raftkv's
    /// error JSON; when the body is not that JSON, `code` is empty and `message` is the body.
    #[error("{endpoint}: {status} {message}")]
    Api {
        endpoint: String,
        status: u16,
        code: String,
        message: String,
        current_revision: Option<u64>,
    },
    /// The admin service answered with an error status.
    #[error("{endpoint}: {}", rpc_text(*.code, .message))]
    Rpc {
        endpoint: String,
        code: tonic::Code,
        message: String,
    },
    /// An answer came but is not what the API sends.
    #[error("{endpoint}: cannot read the answer: {reason}")]
    Decode { endpoint: String, reason: String },
    /// TLS settings that cannot be used (unreadable or malformed certificates or keys).
    #[error("TLS: {0}")]
    Tls(String),
    /// None of several endpoints could be reached.
    #[error("no endpoint answered: {}", join(.failures))]
    NoEndpoint { failures: Vec<Error> },
}

/// The server's messages already say what kind of failure it was ("refused: ..."); an
/// unavailable one says so, since it usually means "try again or elsewhere".
fn rpc_text(code: tonic::Code, message: &str) -> String {
    match code {
        tonic::Code::Unavailable if !message.is_empty() => format!("unavailable: {message}"),
        _ if !message.is_empty() => message.to_string(),
        code => format!("{code}"),
    }
}

fn join(failures: &[Error]) -> String {
    failures.iter().map(Error::to_string).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// The endpoint the error is about (`None` for [`Error::NoEndpoint`]).
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Error::BadEndpoint { endpoint, .. }
            | Error::NotSent { endpoint, .. }
            | Error::Timeout { endpoint, .. }
            | Error::Lost { endpoint, .. }
            | Error::Api { endpoint, .. }
            | Error::Rpc { endpoint, .. }
            | Error::Decode { endpoint, .. } => Some(endpoint),
            Error::NoEndpoint { .. } | Error::Tls(_) => None,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error code (`"precondition_failed"`, `"no_leader"`, ...) of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The gRPC status code of an admin error.
    pub fn rpc_code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server's own words: the message of an API or admin error, else the whole text.
    pub fn message(&self) -> String {
        match self {
            Error::Api { message, .. } | Error::Rpc { message, .. } if !message.is_empty() => message.clone(),
            e => e.to_string(),
        }
    }

    /// A failed precondition's current revision (`None` also when the key does not exist).
    pub fn current_revision(&self) -> Option<u64> {
        match self {
            Error::Api { current_revision, .. } => *current_revision,
            _ => None,
        }
    }

    /// Whether the request certainly never reached a node (so retrying it is safe).
    pub fn not_sent(&self) -> bool {
        match self {
            Error::NotSent { .. } | Error::BadEndpoint { .. } => true,
            Error::NoEndpoint { failures } => failures.iter().all(Error::not_sent),
            _ => false,
        }
    }

    /// Whether a write may or may not have taken effect: no answer in time, a connection that
    /// broke after sending, or the server saying so itself (504 `timeout`: the proposal did not
    /// commit in time; 502 `bad_gateway`: the leader's answer was lost).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Lost { .. } => true,
            Error::Api { status, .. } => *status == 502 || *status == 504,
            Error::Rpc { code, .. } => *code == tonic::Code::DeadlineExceeded,
            Error::NoEndpoint { failures } => failures.iter().any(Error::outcome_unknown),
            _ => false,
        }
    }

    /// An error answer from the HTTP API: raftkv's error JSON if the body is that, else the text.
    pub(crate) fn api(endpoint: &str, status: u16, body: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => {
                let current_revision = b.current_revision();
                Error::Api {
                    endpoint: endpoint.to_string(),
                    status,
                    code: b.error.code,
                    message: b.error.message,
                    current_revision,
                }
            }
            Err(_) => Error::Api {
                endpoint: endpoint.to_string(),
                status,
                code: String::new(),
                message: String::from_utf8_lossy(body).trim().to_string(),
                current_revision: None,
            },
        }
    }

    /// Sorts a reqwest failure by what it tells about the request's fate.
    pub(crate) fn from_http(endpoint: &str, timeout: Duration, e: reqwest::Error) -> Error {
        let endpoint = endpoint.to_string();
        if e.is_connect() {
            Error::NotSent {
                endpoint,
                reason: root_cause(&e),
            }
        } else if e.is_timeout() {
            Error::Timeout { endpoint, timeout }
        } else if e.is_builder() {
            Error::BadEndpoint {
                endpoint,
                reason: root_cause(&e),
            }
        } else if e.is_decode() {
            Error::Decode {
                endpoint,
                reason: root_cause(&e),
            }
        } else {
            Error::Lost {
                endpoint,
                reason: root_cause(&e),
            }
        }
    }

    /// Sorts a gRPC status: one the server sent is its answer; one made on this side from a
    /// transport failure says whether the call got out.
    pub(crate) fn from_rpc(endpoint: &str, s: tonic::Status) -> Error {
        let endpoint = endpoint.to_string();
        if s.source().is_some() {
            let reason = root_cause(&s);
            if connect_failed(&s) {
                return Error::NotSent { endpoint, reason };
            }
            return Error::Lost { endpoint, reason };
        }
        if s.code() == tonic::Code::Unavailable && s.message().contains("transport") {
            return Error::Lost {
                endpoint,
                reason: s.message().to_string(),
            };
        }
        Error::Rpc {
            endpoint,
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// Whether trying another endpoint makes sense: this one could not be reached or its
    /// connection broke (not: it answered).
    pub(crate) fn unreachable(&self) -> bool {
        matches!(self, Error::NotSent { .. } | Error::Lost { .. })
    }
}

/// The innermost cause of an error chain: "Connection refused (os error 111)" rather than
/// "error sending request for url (...)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Whether a transport failure happened while connecting (nothing was sent).
fn connect_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            ) {
                return true;
            }
        }
        let text = err.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") || text.contains("dns error")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_becomes_an_api_error_with_its_fields() {
        let e = Error::api(
            "http://n1:8080",
            412,
            br#"{"error":{"code":"precondition_failed","message":"precondition failed: the key is at revision 7","current_revision":7}}"#,
        );
        assert_eq!(e.status(), Some(412));
        assert_eq!(e.code(), Some("precondition_failed"));
        assert_eq!(e.current_revision(), Some(7));
        assert_eq!(
            e.to_string(),
            "http://n1:8080: 412 precondition failed: the key is at revision 7"
        );
        assert!(!e.outcome_unknown());
    }

    #[test]
    fn a_body_that_is_not_json_is_still_an_api_error_with_its_text() {
        let e = Error::api("http://n1:8080", 502, b"Bad Gateway\n");
        assert_eq!(e.code(), Some(""));
        assert_eq!(e.message(), "Bad Gateway");
        assert_eq!(e.to_string(), "http://n1:8080: 502 Bad Gateway");
        assert!(e.outcome_unknown(), "a 502 leaves a write's outcome unknown");
    }

    #[test]
    fn server_statuses_are_answers_and_name_the_endpoint() {
        let e = Error::from_rpc("n1:9090", tonic::Status::failed_precondition("refused: last voter"));
        assert_eq!(e.rpc_code(), Some(tonic::Code::FailedPrecondition));
        assert_eq!(e.to_string(), "n1:9090: refused: last voter");
        assert!(!e.unreachable());
        let e = Error::from_rpc("n1:9090", tonic::Status::unavailable("no leader"));
        assert_eq!(e.to_string(), "n1:9090: unavailable: no leader");
        let e = Error::from_rpc("n1:9090", tonic::Status::unknown(""));
        assert_eq!(e.to_string(), "n1:9090: Unknown error");
    }

    #[test]
    fn a_refused_connection_is_not_sent() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let s = tonic::Status::from_error(Box::new(io));
        let e = Error::from_rpc("n1:9090", s);
        assert!(e.not_sent(), "{e:?}");
        assert!(e.unreachable());
        let all = Error::NoEndpoint { failures: vec![e] };
        assert!(all.not_sent());
        assert!(
            all.to_string()
                .starts_with("no endpoint answered: n1:9090: cannot connect: "),
            "{all}"
        );
    }
}
