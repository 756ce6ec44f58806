//! raftkv-operator: runs `RaftCluster` resources as correctly-membered raftkv clusters.
//!
//! [`reconcile`] observes the cluster (API server and the nodes' admin service), asks the pure
//! planner for the one next action, applies the owned objects it builds from the spec, acts
//! through [`nodes`], and writes the status. It talks to the nodes only through
//! `raftkv-client`, so it builds without the server.

mod auth;
mod children;
pub use children::OperatorPods;
pub mod crd;
mod http_server;
mod leader;
pub mod metrics;
mod names;
pub mod nodes;
mod planner;
pub mod reconcile;
pub mod run;
mod status;
mod tls;
