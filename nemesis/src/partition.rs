//! Network partitions between node namespaces, without netfilter (which machines like ours may
//! lack): a blocked direction is either a *drop* — a permanent neighbour entry that points the
//! peer's address at a MAC address nobody has, so frames vanish on the bridge and TCP waits for
//! timeouts, as on a real broken network — or a *reject* — a blackhole route, so sends fail at
//! once. Clients reach every node from the host through the bridge, so a partition splits the
//! nodes from each other, never from the clients (as in Jepsen).

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, Context};
use raftkv_testbed::network::PodNet;

/// A locally administered unicast address that no interface on the bridge has.
const NOWHERE: &str = "02:00:5e:00:de:ad";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Drop,
    Reject,
}

impl Cut {
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::Drop => "drop",
            Cut::Reject => "reject",
        }
    }
}

/// A set of node pairs (slot indexes) that cannot talk to each other, in either direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partition {
    pub pairs: BTreeSet<(usize, usize)>,
}

impl Partition {
    /// No traffic between any node of `a` and any node of `b`.
    pub fn split(a: &[usize], b: &[usize]) -> Partition {
        let mut pairs = BTreeSet::new();
        for &x in a {
            for &y in b {
                if x != y {
                    pairs.insert((x.min(y), x.max(y)));
                }
            }
        }
        Partition { pairs }
    }

    /// Whether `x` and `y` can still talk.
    pub fn connected(&self, x: usize, y: usize) -> bool {
        !self.pairs.contains(&(x.min(y), x.max(y)))
    }

    /// Blocks every pair, both directions.
    pub fn apply(&self, nets: &[PodNet], cut: Cut) -> anyhow::Result<()> {
        for &(x, y) in &self.pairs {
            block(&nets[x], &nets[y], cut)?;
            block(&nets[y], &nets[x], cut)?;
        }
        Ok(())
    }

    /// Unblocks every pair (whichever way it was blocked).
    pub fn heal(&self, nets: &[PodNet]) {
        for &(x, y) in &self.pairs {
            unblock(&nets[x], &nets[y]);
            unblock(&nets[y], &nets[x]);
        }
    }
}

fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Stops traffic from `from` to `to`.
fn block(from: &PodNet, to: &PodNet, cut: Cut) -> anyhow::Result<()> {
    match cut {
        Cut::Drop => ip_in(
            &from.netns,
            &[
                "neigh",
                "replace",
                &to.ip,
                "lladdr",
                NOWHERE,
                "nud",
                "permanent",
                "dev",
                &from.device,
            ],
        ),
        Cut::Reject => ip_in(
            &from.netns,
            &["route", "replace", "blackhole", &format!("{}/32", to.ip)],
        ),
    }
}

fn unblock(from: &PodNet, to: &PodNet) {
    let _ = ip_in(&from.netns, &["neigh", "del", &to.ip, "dev", &from.device]);
    let _ = ip_in(&from.netns, &["route", "del", "blackhole", &format!("{}/32", to.ip)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_blocks_exactly_the_cross_pairs() {
        let p = Partition::split(&[0, 1], &[2, 3, 4]);
        assert_eq!(p.pairs.len(), 6);
        assert!(!p.connected(0, 2) && !p.connected(4, 1));
        assert!(p.connected(0, 1) && p.connected(2, 4));
    }

    #[test]
    fn a_bridge_node_sees_both_sides() {
        let p = Partition::split(&[0, 1], &[3, 4]);
        assert!(p.connected(2, 0) && p.connected(2, 4));
        assert!(!p.connected(1, 3));
    }
}
