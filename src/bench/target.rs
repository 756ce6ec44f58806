//! How one operation is sent to each kind of server.

use base64::Engine;
use bytes::Bytes;

use super::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Raftkv,
    /// etcd's v3 JSON gateway (`/v3/kv/put`, `/v3/kv/range`, `/v3/kv/deleterange`).
    Etcd,
}

fn kind_of(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

impl Target {
    /// Sends one operation; `Err` names the kind of failure (HTTP status, timeout, ...).
    pub async fn send(
        self,
        client: &reqwest::Client,
        endpoint: &str,
        op: Op,
        key: &str,
        value: &Bytes,
        consistency: &str,
    ) -> Result<(), String> {
        let req = match self {
            Target::Raftkv => match op {
                Op::Write => client.put(format!("{endpoint}/v1/kv/{key}")).body(value.clone()),
                Op::Read => client.get(format!("{endpoint}/v1/kv/{key}?consistency={consistency}")),
                Op::Delete => client.delete(format!("{endpoint}/v1/kv/{key}")),
            },
            Target::Etcd => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let k = b64.encode(key);
                match op {
                    Op::Write => client
                        .post(format!("{endpoint}/v3/kv/put"))
                        .body(format!(r#"{{"key":"{k}","value":"{}"}}"#, b64.encode(value))),
                    Op::Read => client
                        .post(format!("{endpoint}/v3/kv/range"))
                        .body(format!(r#"{{"key":"{k}","serializable":{}}}"#, consistency == "stale")),
                    Op::Delete => client
                        .post(format!("{endpoint}/v3/kv/deleterange"))
                        .body(format!(r#"{{"key":"{k}"}}"#)),
                }
            }
        };
        let resp = req.send().await.map_err(kind_of)?;
        let status = resp.status();
        // Drain the body so the connection is reused.
        let _ = resp.bytes().await.map_err(kind_of)?;
        // A read of a key that was never written is an answer, not an error.
        if status.is_success() || (op == Op::Read && status == reqwest::StatusCode::NOT_FOUND) {
            Ok(())
        } else {
            Err(format!("http {}", status.as_u16()))
        }
    }
}
