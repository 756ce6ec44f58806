//! raftkv-operator: runs `RaftCluster` resources as correctly-membered raftkv clusters.
//!
//! [`reconcile`] observes the cluster (API server and the nodes' admin service), asks the pure
//! [`planner`] for the one next action, applies the owned objects built by [`children`], acts
//! through [`nodes`], and writes the status built by [`status`].

pub mod children;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod nodes;
pub mod planner;
pub mod reconcile;
pub mod run;
pub mod status;
