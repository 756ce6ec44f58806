//! What the integration tests share on top of `raftkv-harness`: the binary under test, and
//! key/value calls that must succeed (a test fails at the call, with the node's answer).

#![allow(dead_code)]

use std::time::Duration;

use raftkv_client::{Condition, Consistency};
pub use raftkv_harness::cli::CliRun;
pub use raftkv_harness::{Cluster, Options};

pub const BIN: &str = env!("CARGO_BIN_EXE_raftkv");

/// A formed cluster of `n` nodes on loopback, every node given `args`.
pub async fn cluster(n: usize, args: &[&str]) -> Cluster {
    Cluster::start(Options::new(BIN).node_args(args), n)
        .await
        .expect("the cluster forms")
}

/// A cluster with no node yet.
pub fn empty_cluster() -> Cluster {
    Cluster::new(Options::new(BIN)).expect("an empty cluster")
}

/// Runs the `raftkv` binary with `args` (and `stdin`, if given).
pub async fn cli(args: &[&str], stdin: Option<&[u8]>) -> CliRun {
    raftkv_harness::cli::run(BIN.as_ref(), args, stdin)
        .await
        .expect("the raftkv CLI runs")
}

/// An HTTP client for the requests that a test writes by hand (headers, bad input).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Key/value calls on node `i` that a test expects to succeed.
pub trait Kv {
    /// PUT that must succeed; returns the revision.
    async fn put_ok(&self, i: usize, key: &str, value: &str) -> u64;
    /// GET at a consistency level: `Some(value)`, or `None` if the key does not exist; any
    /// other answer fails the test.
    async fn get(&self, i: usize, key: &str, consistency: Consistency) -> Option<String>;
}

impl Kv for Cluster {
    async fn put_ok(&self, i: usize, key: &str, value: &str) -> u64 {
        match self
            .node(i)
            .client()
            .put(key.as_bytes(), value.to_string(), Condition::None)
            .await
        {
            Ok(w) => w.revision,
            Err(e) => panic!("PUT {key} on node {i}: {e}"),
        }
    }

    async fn get(&self, i: usize, key: &str, consistency: Consistency) -> Option<String> {
        match self.node(i).client().get(key.as_bytes(), consistency).await {
            Ok(v) => v.map(|v| String::from_utf8_lossy(&v.value).into_owned()),
            Err(e) => panic!("GET {key} on node {i}: {e}"),
        }
    }
}
