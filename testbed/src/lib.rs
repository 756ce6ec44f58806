//! A local Kubernetes test bed made of real parts, for end-to-end tests of raftkv on
//! Kubernetes without Docker: etcd, kube-apiserver and kube-controller-manager built from their
//! Go modules (`scripts/k8s-tools.sh`), and a "process kubelet" that runs each pod's container
//! as a local process of our own binaries, in a network namespace of its own.
//!
//! Pods get real addresses (10.244.0.0/16 on a bridge this test bed creates) so that
//! EndpointSlices, probes and Prometheus' pod discovery work as in a cluster; nothing in that
//! range is routed anywhere else. Everything the test bed starts is stopped when it is dropped.
//!
//! The crate exports what its users drive: the [`ControlPlane`], the [`Kubelet`], and the
//! pod [`network`] and [`process`] handles that the nemesis suite builds its own clusters from.

mod control_plane;
mod kubelet;
pub mod network;
mod pki;
pub mod process;

pub use control_plane::ControlPlane;
pub use kubelet::{Kubelet, KubeletConfig};
