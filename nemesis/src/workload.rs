//! Clients: each picks an operation and a key from a small set at random (seeded), sends it over
//! HTTP, and records the invocation, the answer and how sure we are of it. Values are unique
//! (`c<client>-<n>`), so that every read names the one write it observed. Like a real client
//! with an endpoint list, each stays with one node and moves to another when a request fails
//! (and now and then anyway, to spread over the cluster).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::history::{Consistency, Op, Outcome, Recorder, Request};

/// What every client shares.
pub struct Shared {
    pub endpoints: Vec<String>,
    pub incarnations: Arc<Vec<AtomicU32>>,
    pub recorder: Arc<Recorder>,
    pub keys: usize,
    pub stop: AtomicBool,
}

/// A client's answer timeout: above the node's own 5 s request timeout, so that the node's
/// answer (often a definite one) normally arrives first.
const TIMEOUT: Duration = Duration::from_secs(7);

pub fn key_name(k: usize) -> String {
    format!("k{k}")
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        // A fresh connection per request: a pooled connection to a killed or paused node would
        // turn certain failures (connection refused) into unknown outcomes.
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default()
}

/// Runs one client until `shared.stop`.
pub async fn client(id: u32, seed: u64, shared: Arc<Shared>) {
    let http = http_client();
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(id) << 32));
    // What this client last saw of each key: the value and its revision, for CAS.
    let mut seen: HashMap<usize, Option<(String, u64)>> = HashMap::new();
    let mut n = 0u64;
    let nodes = shared.endpoints.len();
    let mut node = id as usize % nodes;
    while !shared.stop.load(Ordering::Relaxed) {
        let k = rng.random_range(0..shared.keys);
        n += 1;
        let value = format!("c{id}-{n}");
        let roll = rng.random_range(0..100);
        let (request, revision) = match roll {
            0..20 => (Request::Get(Consistency::Linearizable), None),
            20..32 => (Request::Get(Consistency::Lease), None),
            32..44 => (Request::Get(Consistency::Stale), None),
            44..70 => (Request::Put { value }, None),
            70..80 => (Request::Delete, None),
            _ => match seen.get(&k) {
                Some(Some((v, rev))) => (
                    Request::Cas {
                        expect: Some(v.clone()),
                        value,
                    },
                    Some(*rev),
                ),
                _ => (Request::Cas { expect: None, value }, None),
            },
        };
        let op = execute(&http, &shared, id, node, k, request, revision).await;
        match (&op.request, &op.outcome) {
            (_, Outcome::Read(found)) => {
                seen.insert(k, found.clone());
            }
            (Request::Put { value } | Request::Cas { value, .. }, Outcome::Written { revision }) => {
                seen.insert(k, Some((value.clone(), *revision)));
            }
            (_, Outcome::Deleted { .. }) => {
                seen.insert(k, None);
            }
            _ => {}
        }
        if !op.outcome.is_ok() || rng.random_bool(0.05) {
            node = (node + rng.random_range(1..nodes)) % nodes;
        }
        shared.recorder.record(op);
        let pause = rng.random_range(2..12);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Sends one request and classifies the answer.
pub async fn execute(
    http: &reqwest::Client,
    shared: &Shared,
    client: u32,
    node: usize,
    k: usize,
    request: Request,
    cas_revision: Option<u64>,
) -> Op {
    let key = key_name(k);
    let base = format!("http://{}/v1/kv/{key}", shared.endpoints[node]);
    let builder = match &request {
        Request::Get(c) => http.get(format!("{base}?consistency={}", c.as_str())),
        Request::Put { value } => http.request(Method::PUT, &base).body(value.clone()),
        Request::Delete => http.delete(&base),
        Request::Cas { value, .. } => {
            let b = http.request(Method::PUT, &base).body(value.clone());
            match cas_revision {
                Some(rev) => b.header("if-match", format!("\"{rev}\"")),
                None => b.header("if-none-match", "*"),
            }
        }
    };
    let incarnation = shared.incarnations[node].load(Ordering::SeqCst);
    let id = shared.recorder.next_id();
    let call = shared.recorder.now();
    let outcome = match builder.send().await {
        Ok(resp) => classify(&request, resp).await,
        Err(e) if e.is_connect() => Outcome::Failed(format!("connect: {e}")),
        Err(e) if e.is_timeout() => Outcome::Unknown("timeout".into()),
        Err(e) => Outcome::Unknown(format!("transport: {e}")),
    };
    // An unknown outcome has no return: the operation may take effect at any later time.
    let ret = match &outcome {
        Outcome::Unknown(_) => None,
        _ => Some(shared.recorder.now()),
    };
    Op {
        id,
        client,
        node,
        incarnation,
        key,
        request,
        call,
        ret,
        outcome,
    }
}

async fn classify(request: &Request, resp: reqwest::Response) -> Outcome {
    let status = resp.status();
    let revision = resp
        .headers()
        .get("x-raftkv-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Ok(body) = resp.bytes().await else {
        return Outcome::Unknown(format!("{status}: body lost"));
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = json["error"]["code"].as_str().unwrap_or("").to_string();
    match (request, status) {
        (Request::Get(_), StatusCode::OK) => match revision {
            Some(rev) => Outcome::Read(Some((String::from_utf8_lossy(&body).into_owned(), rev))),
            None => Outcome::Unknown("read answered without a revision".into()),
        },
        (Request::Get(_), StatusCode::NOT_FOUND) if code == "key_not_found" => Outcome::Read(None),
        (Request::Delete, StatusCode::OK) => Outcome::Deleted {
            existed: json["deleted"] == true,
        },
        (Request::Put { .. }, StatusCode::OK) => match json["revision"].as_u64() {
            Some(revision) => Outcome::Written { revision },
            None => Outcome::Unknown(format!("write answered without a revision: {json}")),
        },
        (Request::Cas { .. }, StatusCode::OK) => match json["revision"].as_u64() {
            Some(revision) => Outcome::Written { revision },
            None => Outcome::Unknown(format!("write answered without a revision: {json}")),
        },
        (Request::Cas { .. }, StatusCode::PRECONDITION_FAILED) => Outcome::Refused,
        // The API promises these were refused before any leader saw them.
        (_, StatusCode::SERVICE_UNAVAILABLE) if matches!(code.as_str(), "no_leader" | "not_leader" | "removed") => {
            Outcome::Failed(code)
        }
        (_, s) if s.is_client_error() => Outcome::Failed(format!("{s}: {code}")),
        (_, s) => Outcome::Unknown(format!("{s}: {code}")),
    }
}

/// Measures availability as a client that tries every node would see it: one writer per node,
/// each putting its own key (outside the checked key set) every 50 ms with a short timeout.
/// Returns when `shared.stop` is set, with the times of all successful writes.
pub async fn probe(shared: Arc<Shared>) -> Vec<std::time::Duration> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default();
    let tasks: Vec<_> = (0..shared.endpoints.len())
        .map(|i| {
            let (http, shared) = (http.clone(), shared.clone());
            tokio::spawn(async move {
                let url = format!("http://{}/v1/kv/probe-n{i}", shared.endpoints[i]);
                let mut ok = Vec::new();
                while !shared.stop.load(Ordering::Relaxed) {
                    if let Ok(r) = http.put(&url).body("p").send().await {
                        if r.status().is_success() {
                            ok.push(shared.recorder.now());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ok
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_unstable();
    all
}
