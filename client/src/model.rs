//! The JSON the HTTP API speaks, as types: one definition that the server renders with and
//! every client (the CLI, the harnesses, the nemesis, the test bed) parses with, so the two
//! sides cannot drift apart field by field.
//!
//! Field names and optional fields are the wire format: a field that the server leaves out
//! when it has nothing to say is `Option` with `skip_serializing_if`, and a field it always
//! sends (even as `null`) is a plain `Option`.

use std::fmt;

use base64::Engine;
use bytes::Bytes;
use percent_encoding::{percent_decode_str, percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

/// A node's id in the cluster.
pub type NodeId = u64;

/// A position in the Raft log: the term of the entry and its index.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    pub term: u64,
    pub index: u64,
}

/// A node's Raft role, written in lower case on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    /// The wire name: `"leader"`, `"follower"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member of the cluster as a node's `/v1/status` lists it. The replication fields are
/// known only to the leader and are left out of the JSON elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub raft_addr: String,
    pub http_addr: String,
    pub voter: bool,
    /// Leader only: the last log index known to be replicated to this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
    /// Leader only: entries this member is behind the leader's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Leader only: milliseconds since this member last acknowledged the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact_ms: Option<u64>,
}

/// `GET /v1/status`: a node's view of itself and its cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub cluster_id: Option<String>,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed: Option<LogPosition>,
    pub applied: Option<LogPosition>,
    pub snapshot: Option<LogPosition>,
    pub purged: Option<LogPosition>,
    pub members: Vec<Member>,
    /// The membership's log index; a membership change in progress shows as `joint: true`.
    pub membership_log_index: Option<u64>,
    pub joint: bool,
    pub uptime_seconds: u64,
    /// The alarms this node has raised (none: left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<Alarm>,
}

/// An alarm a member has raised, as `etcdctl alarm list` shows one (`memberID:2
/// alarm:NOSPACE`), with what raised it. While a NOSPACE alarm is up the member refuses puts
/// (`507 no_space`); deletes and reads go on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alarm {
    pub member_id: NodeId,
    pub alarm: AlarmType,
    pub cause: AlarmCause,
    /// What was measured, in words.
    pub reason: String,
}

/// etcd's alarm types.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum AlarmType {
    /// Out of space: the backend is over its quota, or the disk is (nearly) full.
    #[serde(rename = "NOSPACE")]
    NoSpace,
}

/// What raised a NOSPACE alarm.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum AlarmCause {
    /// The state database is larger than `--quota-backend-bytes`; clears once it is not.
    Quota,
    /// The data directory's filesystem has less free space than `--disk-reserve-bytes`;
    /// clears once space is freed.
    DiskFull,
    /// The disk refused a write to a store; the node exits to be restarted.
    WriteFailed,
}

impl Status {
    /// Whether this node says it leads.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The voting members, in the order the node lists them.
    pub fn voters(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.voter)
    }

    /// The non-voting members (learners).
    pub fn learners(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.voter)
    }

    /// The ids of the voting members.
    pub fn voter_ids(&self) -> Vec<NodeId> {
        self.voters().map(|m| m.id).collect()
    }

    /// The member with this id, if it is one.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The leader's entry in the member list, if a leader is known and listed.
    pub fn leader_member(&self) -> Option<&Member> {
        self.leader.and_then(|id| self.member(id))
    }

    /// Whether this node is in its own cluster's membership.
    pub fn is_member(&self) -> bool {
        self.member(self.id).is_some()
    }

    /// The applied log index (0 before anything was applied).
    pub fn applied_index(&self) -> u64 {
        self.applied.map_or(0, |p| p.index)
    }
}

/// The answer to a `PUT`: the revision the key now has, and the leader that proposed it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Written {
    pub revision: u64,
    pub node: NodeId,
}

/// The answer to a `DELETE`: whether the key existed, and the leader that proposed it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deleted {
    pub deleted: bool,
    pub node: NodeId,
}

/// A key's value as `GET /v1/kv/{key}` answers it (raw bytes in the body, the revision and
/// the serving node in headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: Bytes,
    pub revision: u64,
    /// The node that served the read (`x-raftkv-node`), if it said.
    pub node: Option<NodeId>,
}

/// One key of a listing. On the wire `key`/`value` are strings when they are UTF-8, else
/// `key_base64`/`value_base64`, so that any byte string survives JSON; here they are bytes.
/// A keys-only listing sends no value: it is empty here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireItem", into = "WireItem")]
pub struct ListItem {
    pub key: Bytes,
    pub value: Bytes,
    pub revision: u64,
}

#[derive(Serialize, Deserialize)]
struct WireItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    revision: u64,
}

/// Bytes as JSON text: the string itself when it is UTF-8, else its base64 (standard alphabet).
fn text_or_base64(b: &Bytes) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(b))),
    }
}

fn from_text_or_base64(name: &str, text: Option<String>, b64: Option<String>) -> Result<Bytes, String> {
    match (text, b64) {
        (Some(t), None) => Ok(Bytes::from(t)),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Bytes::from)
            .map_err(|e| format!("{name}_base64 is not base64: {e}")),
        (Some(_), Some(_)) => Err(format!("both {name} and {name}_base64 are given")),
        (None, None) => Err(format!("neither {name} nor {name}_base64 is given")),
    }
}

impl TryFrom<WireItem> for ListItem {
    type Error = String;
    fn try_from(w: WireItem) -> Result<Self, String> {
        Ok(ListItem {
            key: from_text_or_base64("key", w.key, w.key_base64)?,
            value: match (w.value, w.value_base64) {
                (None, None) => Bytes::new(),
                (text, b64) => from_text_or_base64("value", text, b64)?,
            },
            revision: w.revision,
        })
    }
}

impl From<ListItem> for WireItem {
    fn from(i: ListItem) -> Self {
        let (key, key_base64) = text_or_base64(&i.key);
        let (value, value_base64) = text_or_base64(&i.value);
        WireItem {
            key,
            key_base64,
            value,
            value_base64,
            revision: i.revision,
        }
    }
}

/// `GET /v1/kv?prefix=&start=&limit=`: one page of keys in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub items: Vec<ListItem>,
    /// Where the next page starts, if there is one. Percent-encoded on the wire (any bytes).
    #[serde(with = "percent_encoded_key")]
    pub next_start: Option<Bytes>,
    /// The node that served the page.
    pub node: NodeId,
}

/// A key as a query-string value: percent-encoded, every byte but ASCII letters and digits.
pub fn query_encode(key: &[u8]) -> String {
    percent_encode(key, NON_ALPHANUMERIC).to_string()
}

mod percent_encoded_key {
    use bytes::Bytes;
    use percent_encoding::percent_decode_str;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match key {
            Some(k) => s.serialize_some(&super::query_encode(k)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        Ok(text.map(|t| Bytes::from(percent_decode_str(&t).collect::<Vec<u8>>())))
    }
}

/// Decodes a percent-encoded key (as in `next_start`) to its bytes.
pub fn query_decode(text: &str) -> Bytes {
    Bytes::from(percent_decode_str(text).collect::<Vec<u8>>())
}

/// Every failure the HTTP API reports: `{"error":{"code","message", ...}}`, with fields that
/// some errors add (a failed precondition adds `current_revision`, `null` when the key does
/// not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable, machine-readable name: `key_not_found`, `precondition_failed`, `no_leader`, ...
    pub code: String,
    /// What went wrong and what to do, for a person.
    pub message: String,
    /// The fields some errors add, as they are on the wire.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ErrorBody {
    /// An error body with no extra fields.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                details: serde_json::Map::new(),
            },
        }
    }

    /// Adds a field beside `code` and `message`.
    pub fn with(mut self, name: &str, value: serde_json::Value) -> ErrorBody {
        self.error.details.insert(name.to_string(), value);
        self
    }

    /// A failed precondition's current revision of the key (`None` if it does not exist).
    pub fn current_revision(&self) -> Option<u64> {
        self.error.details.get("current_revision").and_then(|v| v.as_u64())
    }
}

/// `GET /healthz` and `GET /readyz`: `{"status":"ok"}`, `{"status":"ready"}`, or
/// `{"status":"not_ready","reason":...}` (with 503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Probe {
    /// Alive (`ok`) or ready (`ready`).
    pub fn is_ok(&self) -> bool {
        self.status == "ok" || self.status == "ready"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value as Json};

    /// Parses `text` into `T`, and checks that `T` renders the same JSON back.
    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(text: &str) -> T {
        let parsed: T = serde_json::from_str(text).expect("parses into the model");
        let back = serde_json::to_value(&parsed).expect("renders");
        let original: Json = serde_json::from_str(text).expect("json");
        assert_eq!(back, original, "the model renders what the server sent");
        parsed
    }

    #[test]
    fn a_leaders_status_round_trips() {
        let s: Status = round_trip(
            r#"{"id":1,"cluster_id":"c-1","role":"leader","term":3,"leader":1,"last_log_index":12,
            "committed":{"term":3,"index":12},"applied":{"term":3,"index":12},"snapshot":null,
            "purged":null,"members":[
              {"id":1,"raft_addr":"a:1","http_addr":"a:2","voter":true,"matched_index":12,"lag":0},
              {"id":2,"raft_addr":"b:1","http_addr":"b:2","voter":true,"matched_index":11,"lag":1,
               "last_contact_ms":40},
              {"id":3,"raft_addr":"c:1","http_addr":"c:2","voter":false}],
            "membership_log_index":5,"joint":false,"uptime_seconds":9}"#,
        );
        assert!(s.is_leader());
        assert_eq!(s.voter_ids(), [1, 2]);
        assert_eq!(s.learners().map(|m| m.id).collect::<Vec<_>>(), [3]);
        assert_eq!(s.leader_member().map(|m| m.http_addr.as_str()), Some("a:2"));
        assert_eq!(s.applied_index(), 12);
        assert!(s.is_member());
    }

    #[test]
    fn a_fresh_nodes_status_round_trips() {
        let s: Status = round_trip(
            r#"{"id":7,"cluster_id":null,"role":"learner","term":0,"leader":null,"last_log_index":null,
            "committed":null,"applied":null,"snapshot":null,"purged":null,"members":[],
            "membership_log_index":null,"joint":false,"uptime_seconds":0}"#,
        );
        assert!(!s.is_leader());
        assert!(!s.is_member());
        assert_eq!(s.leader_member(), None);
        assert_eq!(s.role.to_string(), "learner");
    }

    #[test]
    fn alarms_round_trip_as_etcd_names_them() {
        let s: Status = round_trip(
            r#"{"id":2,"cluster_id":"c","role":"follower","term":1,"leader":1,"last_log_index":3,
            "committed":null,"applied":null,"snapshot":null,"purged":null,"members":[],
            "membership_log_index":null,"joint":false,"uptime_seconds":1,
            "alarms":[{"member_id":2,"alarm":"NOSPACE","cause":"disk_full","reason":"1.0 MiB free"}]}"#,
        );
        assert_eq!(s.alarms.len(), 1);
        assert_eq!(s.alarms[0].alarm, AlarmType::NoSpace);
        assert_eq!(s.alarms[0].cause, AlarmCause::DiskFull);
    }

    #[test]
    fn write_answers_round_trip() {
        let w: Written = round_trip(r#"{"revision":42,"node":2}"#);
        assert_eq!(w, Written { revision: 42, node: 2 });
        let d: Deleted = round_trip(r#"{"deleted":false,"node":1}"#);
        assert!(!d.deleted);
    }

    #[test]
    fn listed_keys_decode_to_bytes_whether_text_or_base64() {
        let p: Page = round_trip(
            r#"{"items":[{"key":"a/b","value":"x","revision":3},
                         {"key_base64":"/wA=","value_base64":"gA==","revision":4}],
                "next_start":"a%2Fc%FF","node":2}"#,
        );
        assert_eq!(p.items[0].key, Bytes::from_static(b"a/b"));
        assert_eq!(p.items[1].key, Bytes::from_static(b"\xff\x00"));
        assert_eq!(p.items[1].value, Bytes::from_static(b"\x80"));
        assert_eq!(p.next_start, Some(Bytes::from_static(b"a/c\xff")));
        let last: Page = round_trip(r#"{"items":[],"next_start":null,"node":1}"#);
        assert_eq!(last.next_start, None);
    }

    #[test]
    fn a_keys_only_item_has_an_empty_value() {
        let i: ListItem = serde_json::from_str(r#"{"key":"k","revision":2}"#).unwrap();
        assert_eq!(i.key, Bytes::from_static(b"k"));
        assert!(i.value.is_empty());
        assert!(
            serde_json::from_str::<ListItem>(r#"{"key":"k","value":"x","value_base64":"eA==","revision":1}"#).is_err()
        );
    }

    #[test]
    fn a_listed_key_without_a_key_is_refused() {
        assert!(serde_json::from_str::<ListItem>(r#"{"value":"x","revision":1}"#).is_err());
        assert!(
            serde_json::from_str::<ListItem>(r#"{"key":"k","key_base64":"aw==","value":"x","revision":1}"#).is_err()
        );
    }

    #[test]
    fn error_bodies_keep_their_extra_fields() {
        let e: ErrorBody = round_trip(
            r#"{"error":{"code":"precondition_failed","message":"precondition failed: the key is at revision 7","current_revision":7}}"#,
        );
        assert_eq!(e.error.code, "precondition_failed");
        assert_eq!(e.current_revision(), Some(7));
        let absent: ErrorBody = round_trip(
            r#"{"error":{"code":"precondition_failed","message":"precondition failed: the key does not exist","current_revision":null}}"#,
        );
        assert_eq!(absent.current_revision(), None);
        let built = ErrorBody::new("precondition_failed", "m").with("current_revision", json!(null));
        assert_eq!(
            serde_json::to_value(&built).unwrap(),
            json!({"error": {"code": "precondition_failed", "message": "m", "current_revision": null}})
        );
        let plain: ErrorBody = round_trip(r#"{"error":{"code":"key_not_found","message":"key not found"}}"#);
        assert_eq!(plain.current_revision(), None);
    }

    #[test]
    fn probes_round_trip() {
        assert!(round_trip::<Probe>(r#"{"status":"ok"}"#).is_ok());
        assert!(round_trip::<Probe>(r#"{"status":"ready"}"#).is_ok());
        let p: Probe = round_trip(r#"{"status":"not_ready","reason":"no leader known"}"#);
        assert!(!p.is_ok());
        assert_eq!(p.reason.as_deref(), Some("no leader known"));
    }

    #[test]
    fn query_keys_encode_every_byte_but_letters_and_digits() {
        assert_eq!(query_encode(b"a/b c\xff"), "a%2Fb%20c%FF");
        assert_eq!(query_decode("a%2Fb%20c%FF"), Bytes::from_static(b"a/b c\xff"));
    }
}
