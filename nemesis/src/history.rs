//! The record of what clients asked and what they were told: one [`Op`] per request, with the
//! times it was invoked and answered, written as JSON Lines for the linearizability checker
//! (`nemesis/lincheck`, whose README describes the format).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A read's consistency level, as the HTTP API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Linearizable,
    Lease,
    Stale,
}

impl Consistency {
    pub const ALL: [Consistency; 3] = [Consistency::Linearizable, Consistency::Lease, Consistency::Stale];

    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Stale => "stale",
        }
    }
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get(Consistency),
    Put {
        value: String,
    },
    Delete,
    /// Write `value` if the key holds `expect` (`None`: if the key is absent).
    Cas {
        expect: Option<String>,
        value: String,
    },
}

impl Request {
    pub fn is_write(&self) -> bool {
        !matches!(self, Request::Get(_))
    }

    /// The value this request writes, if any.
    pub fn written(&self) -> Option<&str> {
        match self {
            Request::Put { value } | Request::Cas { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// What it was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read: the value and its revision, or `None` for "not found".
    Read(Option<(String, u64)>),
    Written {
        revision: u64,
    },
    Deleted {
        existed: bool,
    },
    /// A compare-and-swap whose precondition did not hold: nothing changed.
    Refused,
    /// Certainly not executed (refused before reaching a leader, connection refused...).
    Failed(String),
    /// May or may not have taken effect (timeout, connection lost after sending, 5xx...).
    Unknown(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        !matches!(self, Outcome::Failed(_) | Outcome::Unknown(_))
    }
}

#[derive(Debug, Clone)]
pub struct Op {
    pub id: u64,
    pub client: u32,
    /// The node slot the request went to, and which run of that slot's process it was.
    pub node: usize,
    pub incarnation: u32,
    pub key: String,
    pub request: Request,
    pub call: Duration,
    /// `None` when the outcome is unknown: the operation may take effect at any later time.
    pub ret: Option<Duration>,
    pub outcome: Outcome,
}

impl Op {
    /// Whether this write may have changed the key (acknowledged or not).
    pub fn may_have_written(&self) -> bool {
        !matches!(
            (&self.request, &self.outcome),
            (Request::Get(_), _) | (_, Outcome::Failed(_) | Outcome::Refused)
        )
    }

    /// Whether this write was acknowledged as having changed the key.
    pub fn acked_write(&self) -> bool {
        self.request.is_write() && self.outcome.is_ok() && self.may_have_written()
    }

    /// One line of the checker's input.
    pub fn to_json(&self) -> Value {
        let (status, error) = match &self.outcome {
            Outcome::Failed(e) => ("fail", Some(e.as_str())),
            Outcome::Unknown(e) => ("unknown", Some(e.as_str())),
            _ => ("ok", None),
        };
        let mut v = json!({
            "id": self.id,
            "client": self.client,
            "node": self.node,
            "incarnation": self.incarnation,
            "key": self.key,
            "call_ns": self.call.as_nanos() as u64,
            "return_ns": self.ret.map(|r| r.as_nanos() as u64),
            "status": status,
        });
        if let Some(e) = error {
            v["error"] = json!(e);
        }
        match &self.request {
            Request::Get(c) => {
                v["kind"] = json!("get");
                v["consistency"] = json!(c.as_str());
            }
            Request::Put { value } => {
                v["kind"] = json!("put");
                v["value"] = json!(value);
            }
            Request::Delete => v["kind"] = json!("delete"),
            Request::Cas { expect, value } => {
                v["kind"] = json!("cas");
                v["expect"] = json!(expect);
                v["value"] = json!(value);
            }
        }
        match &self.outcome {
            Outcome::Read(found) => {
                v["found"] = json!(found.is_some());
                if let Some((value, revision)) = found {
                    v["value"] = json!(value);
                    v["revision"] = json!(revision);
                }
            }
            Outcome::Written { revision } => {
                v["revision"] = json!(revision);
                if matches!(self.request, Request::Cas { .. }) {
                    v["swapped"] = json!(true);
                }
            }
            Outcome::Deleted { existed } => v["existed"] = json!(existed),
            Outcome::Refused => v["swapped"] = json!(false),
            Outcome::Failed(_) | Outcome::Unknown(_) => {}
        }
        v
    }
}

/// Collects operations from all clients; times are relative to the recorder's start.
pub struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            next_id: AtomicU64::new(1),
            ops: Mutex::default(),
        }
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// All operations so far, ordered by invocation.
    pub fn ops(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ops.sort_by_key(|o| (o.call, o.id));
        ops
    }
}

/// Writes `ops` as JSON Lines.
pub fn write_jsonl(path: &std::path::Path, ops: &[Op]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut out, &op.to_json())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
