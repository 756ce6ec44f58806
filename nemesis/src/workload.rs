//! Clients: each picks an operation and a key from a small set at random (seeded), sends it over
//! HTTP, and records the invocation, the answer and how sure we are of it. Values are unique
//! (`c<client>-<n>`), so that every read names the one write it observed. Like a real client
//! with an endpoint list, each stays with one node and moves to another when a request fails
//! (and now and then anyway, to spread over the cluster).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftkv_client::{Client, Condition, Error};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{Consistency, Op, Outcome, Recorder, Request};

/// What every client shares.
pub struct Shared {
    /// One client per node slot, in slot order.
    pub clients: Vec<Client>,
    pub incarnations: Vec<Arc<AtomicU32>>,
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

/// One client per HTTP address, all without a connection pool: a fresh connection per
/// request, because a pooled connection to a killed or paused node would turn certain failures
/// (connection refused) into unknown outcomes.
pub fn clients(http_addrs: &[String]) -> anyhow::Result<Vec<Client>> {
    let http = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()?;
    let mut out = Vec::new();
    for addr in http_addrs {
        out.push(
            Client::builder(addr)
                .http_client(http.clone())
                .timeout(TIMEOUT)
                .build()?,
        );
    }
    Ok(out)
}

/// Runs one client until `shared.stop`.
pub async fn client(id: u32, seed: u64, shared: Arc<Shared>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(id) << 32));
    // What this client last saw of each key: the value and its revision, for CAS.
    let mut seen: HashMap<usize, Option<(String, u64)>> = HashMap::new();
    let mut n = 0u64;
    let nodes = shared.clients.len();
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
        let op = execute(&shared, id, node, k, request, revision).await;
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
    shared: &Shared,
    client: u32,
    node: usize,
    k: usize,
    request: Request,
    cas_revision: Option<u64>,
) -> Op {
    let key = key_name(k);
    let http = &shared.clients[node];
    let incarnation = shared.incarnations[node].load(Ordering::SeqCst);
    let id = shared.recorder.next_id();
    let call = shared.recorder.now();
    let outcome = match &request {
        Request::Get(c) => match http.get(key.as_bytes(), consistency(*c)).await {
            Ok(found) => Outcome::Read(found.map(|v| (String::from_utf8_lossy(&v.value).into_owned(), v.revision))),
            Err(e) => failure(&request, e),
        },
        Request::Put { value } => match http.put(key.as_bytes(), value.clone(), Condition::None).await {
            Ok(w) => Outcome::Written { revision: w.revision },
            Err(e) => failure(&request, e),
        },
        Request::Delete => match http.delete(key.as_bytes(), Condition::None).await {
            Ok(d) => Outcome::Deleted { existed: d.deleted },
            Err(e) => failure(&request, e),
        },
        Request::Cas { value, .. } => {
            let condition = match cas_revision {
                Some(rev) => Condition::IfMatch(rev),
                None => Condition::IfAbsent,
            };
            match http.put(key.as_bytes(), value.clone(), condition).await {
                Ok(w) => Outcome::Written { revision: w.revision },
                Err(e) => failure(&request, e),
            }
        }
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

fn consistency(c: Consistency) -> raftkv_client::Consistency {
    match c {
        Consistency::Linearizable => raftkv_client::Consistency::Linearizable,
        Consistency::Lease => raftkv_client::Consistency::Lease,
        Consistency::Stale => raftkv_client::Consistency::Stale,
    }
}

/// What a failed request tells about its fate: certainly not executed, refused by its
/// precondition, or unknown.
fn failure(request: &Request, e: Error) -> Outcome {
    match e {
        Error::NotSent { reason, .. } => Outcome::Failed(format!("connect: {reason}")),
        Error::Timeout { .. } => Outcome::Unknown("timeout".into()),
        Error::Api { status: 412, .. } if matches!(request, Request::Cas { .. }) => Outcome::Refused,
        // The API promises these were refused before any leader saw them.
        Error::Api { status: 503, code, .. } if matches!(code.as_str(), "no_leader" | "not_leader" | "removed") => {
            Outcome::Failed(code)
        }
        Error::Api { status, code, .. } if (400..500).contains(&status) => Outcome::Failed(format!("{status}: {code}")),
        Error::Api { status, code, .. } => Outcome::Unknown(format!("{status}: {code}")),
        // An answer that is not what the API sends (a read without a revision, a write
        // without one): it may have been executed.
        Error::Decode { reason, .. } => Outcome::Unknown(format!("answer: {reason}")),
        e => Outcome::Unknown(format!("transport: {e}")),
    }
}

/// Measures availability as a client that tries every node would see it: one writer per node,
/// each putting its own key (outside the checked key set) every 50 ms with a short timeout.
/// Returns when `shared.stop` is set, with the times of all successful writes.
pub async fn probe(shared: Arc<Shared>) -> Vec<std::time::Duration> {
    let tasks: Vec<_> = (0..shared.clients.len())
        .map(|i| {
            let shared = shared.clone();
            let http = shared.clients[i].with_timeout(Duration::from_secs(1));
            tokio::spawn(async move {
                let key = format!("probe-n{i}");
                let mut ok = Vec::new();
                while !shared.stop.load(Ordering::Relaxed) {
                    if http.put(key.as_bytes(), "p", Condition::None).await.is_ok() {
                        ok.push(shared.recorder.now());
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
