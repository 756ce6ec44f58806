//! Local raftkv clusters of real processes, for `raftkv dev`, the integration tests and the
//! nemesis: one way to start nodes, wait for them, break them and read what they logged.
//!
//! - [`Cluster`]: N `raftkv serve` processes formed as an operator forms them (the first
//!   bootstraps, the others join), waited on through the nodes' own API ([`raftkv_client`]):
//!   ready, voters, leader. Nodes can be killed, stopped, terminated, restarted over their data,
//!   wiped, and added; every process dies with the `Cluster`, and a panicking test prints the
//!   end of each node's log.
//! - [`Node`]: one node's place (addresses, data directory, log) across its processes. It
//!   listens on loopback sockets the harness bound itself and hands over at start
//!   ([`NodeSpec::loopback`], so tests never race for free ports), or on addresses it binds
//!   itself ([`NodeSpec::at`]: fixed ports, a network namespace's address), started through a
//!   [`Launcher`] (`ip netns exec NAME`).
//! - [`Writer`]: background writes that remember what was acknowledged.
//! - [`cli`]: the `raftkv` command-line tools, run as a user runs them.
//! - [`pki`]: a CA and certificates made for a test, as PEM files.
//! - [`prometheus`]: a real Prometheus scraping the nodes, and the dashboard's queries.

pub mod cli;
mod cluster;
mod error;
mod listeners;
pub mod logs;
mod node;
pub mod pki;
pub mod prometheus;
mod writer;

use std::net::SocketAddr;
use std::time::Duration;

pub use cluster::{Cluster, Options};
pub use error::{Error, Result};
pub use node::{Launcher, Node, NodeSpec};
pub use writer::{Writer, Written};

/// How long a key/value request through [`Node::client`] may take: longer than any request
/// timeout a test gives its nodes, so that the node's own answer arrives first.
const KV_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a status or readiness probe may take: a node that does not answer this fast is
/// not ready, and a wait asks again.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of the HTTP API at `addr`, with the cluster's client TLS and credentials.
fn client_for(addr: SocketAddr, program: &node::Program) -> Result<raftkv_client::Client> {
    let mut builder = raftkv_client::Client::builder(&addr.to_string()).timeout(KV_TIMEOUT);
    if let Some(tls) = &program.tls {
        builder = builder.tls(tls.clone());
    }
    if let Some(credentials) = &program.credentials {
        builder = builder.credentials(credentials.clone());
    }
    builder
        .build()
        .map_err(|e| Error::Usage(format!("a client for {addr}: {e}")))
}
