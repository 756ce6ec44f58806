//! The nemesis: one fault at a time, chosen by a seeded generator, each held for a few seconds,
//! healed, and followed by a wait until the cluster is whole again (every slot running, all of
//! them voters, a write accepted). The first round injects every kind once, in seeded order, so
//! that even a short run covers them all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use raftkv_client::Condition;

use crate::cluster::Cluster;
use crate::history::Recorder;
use crate::partition::{Cut, Partition};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL the leader, restart it over its data.
    KillLeader,
    /// SIGKILL a follower, restart it over its data.
    KillFollower,
    /// SIGSTOP the leader for longer than an election timeout, then SIGCONT.
    PauseLeader,
    /// Cut the leader off from every other node.
    IsolateLeader,
    /// Split the nodes into a minority and a majority at random.
    SplitMajority,
    /// Two groups that cannot talk, and one node that talks to both (needs 5 nodes).
    Bridge,
    /// Remove a voter through the admin API, then add it back as a new member with empty data.
    Membership,
    /// SIGKILL a node and delete its data directory; it joins as a new member and the old one
    /// is removed.
    Wipe,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::SplitMajority,
        FaultKind::Bridge,
        FaultKind::Membership,
        FaultKind::Wipe,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::SplitMajority => "split-majority",
            FaultKind::Bridge => "bridge",
            FaultKind::Membership => "membership",
            FaultKind::Wipe => "wipe",
        }
    }

    pub fn applies_to(self, nodes: usize) -> bool {
        self != FaultKind::Bridge || nodes >= 5
    }
}

/// One injected fault; times are since the run started.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub detail: String,
    pub start: Duration,
    pub healed: Duration,
    /// When the cluster was whole again, if it became so within the bound.
    pub recovered: Option<Duration>,
}

/// How long the cluster may take to become whole again after a fault is healed (and each wait
/// of the cluster's own: a node's readiness, a membership change).
pub const RECOVERY_BOUND: Duration = Duration::from_secs(30);

/// How long the probe write of [`Nemesis::wait_whole`] may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    rng: StdRng,
    recorder: Arc<Recorder>,
}

impl<'a> Nemesis<'a> {
    pub fn new(cluster: &'a mut Cluster, seed: u64, recorder: Arc<Recorder>) -> Nemesis<'a> {
        Nemesis {
            cluster,
            rng: StdRng::seed_from_u64(seed),
            recorder,
        }
    }

    /// Injects faults until `until` (run time), and at least one of each kind; stops early if
    /// the cluster does not recover.
    pub async fn run(&mut self, until: Duration) -> Vec<Fault> {
        let n = self.cluster.len();
        let mut first_round: Vec<FaultKind> = FaultKind::ALL.into_iter().filter(|k| k.applies_to(n)).collect();
        first_round.shuffle(&mut self.rng);
        first_round.reverse();
        let kinds: Vec<FaultKind> = first_round.clone();
        let mut faults = Vec::new();
        while self.recorder.now() < until || !first_round.is_empty() {
            let quiet = self.rng.random_range(1000..2500);
            tokio::time::sleep(Duration::from_millis(quiet)).await;
            let kind = match first_round.pop() {
                Some(k) => k,
                None => *kinds.choose(&mut self.rng).unwrap_or(&FaultKind::KillFollower),
            };
            let start = self.recorder.now();
            let detail = match self.inject(kind).await {
                Ok(d) => d,
                Err(e) => format!("failed: {e:#}"),
            };
            let healed = self.recorder.now();
            let recovered = self.wait_whole(RECOVERY_BOUND).await.then(|| self.recorder.now());
            eprintln!(
                "[{:>6.1}s] {:<15} {detail}; healed {:.1}s, whole again {}",
                start.as_secs_f64(),
                kind.name(),
                healed.as_secs_f64(),
                recovered.map_or("NEVER".to_string(), |r| format!("{:.1}s", r.as_secs_f64()))
            );
            let broken = recovered.is_none();
            faults.push(Fault {
                kind,
                detail,
                start,
                healed,
                recovered,
            });
            if broken {
                break;
            }
        }
        faults
    }

    fn hold(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(2500..5000))
    }

    async fn leader(&mut self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.cluster.nodes.leader().await {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                bail!("no leader to inject the fault on");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn describe(&self, i: usize) -> String {
        let s = self.cluster.nodes.node(i);
        format!("{} (id {})", s.name(), s.node_id().unwrap_or(0))
    }

    async fn inject(&mut self, kind: FaultKind) -> anyhow::Result<String> {
        let n = self.cluster.len();
        let leader = self.leader().await?;
        let hold = self.hold();
        match kind {
            FaultKind::KillLeader | FaultKind::KillFollower => {
                let target = if kind == FaultKind::KillLeader {
                    leader
                } else {
                    self.follower(leader)
                };
                let what = self.describe(target);
                self.cluster.nodes.node_mut(target).kill();
                tokio::time::sleep(hold).await;
                self.cluster.nodes.restart(target)?;
                Ok(format!("SIGKILL {what}, restarted after {hold:?}"))
            }
            FaultKind::PauseLeader => {
                let what = self.describe(leader);
                self.cluster.nodes.node_mut(leader).pause();
                tokio::time::sleep(hold).await;
                self.cluster.nodes.node_mut(leader).resume();
                Ok(format!("SIGSTOP {what} for {hold:?}"))
            }
            FaultKind::IsolateLeader | FaultKind::SplitMajority | FaultKind::Bridge => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                let (a, b): (Vec<usize>, Vec<usize>) = match kind {
                    FaultKind::IsolateLeader => (vec![leader], (0..n).filter(|&i| i != leader).collect()),
                    FaultKind::SplitMajority => {
                        let minority = (n - 1) / 2;
                        (order[..minority].to_vec(), order[minority..].to_vec())
                    }
                    _ => (order[..2].to_vec(), order[3..].to_vec()),
                };
                let cut = if self.rng.random_bool(0.7) {
                    Cut::Drop
                } else {
                    Cut::Reject
                };
                let partition = Partition::split(&a, &b);
                let nets = self.cluster.nets().to_vec();
                let applied = partition.apply(&nets, cut);
                if applied.is_ok() {
                    tokio::time::sleep(hold).await;
                }
                partition.heal(&nets);
                applied?;
                let bridge = if kind == FaultKind::Bridge {
                    format!(", {} bridges", self.cluster.nodes.node(order[2]).name())
                } else {
                    String::new()
                };
                Ok(format!(
                    "{} | {}{bridge} ({}, leader was {}) for {hold:?}",
                    self.names(&a),
                    self.names(&b),
                    cut.as_str(),
                    self.cluster.nodes.node(leader).name()
                ))
            }
            FaultKind::Membership => {
                let target = self.rng.random_range(0..n);
                let what = self.describe(target);
                let node = self.cluster.nodes.node(target);
                let old = node
                    .node_id()
                    .ok_or_else(|| anyhow!("{} has no node id", node.name()))?;
                // Below five voters, a removal leaves voters that tolerate no failure.
                self.cluster.remove(old, n < 5).await?;
                // A removed node notices and exits by itself.
                let deadline = Instant::now() + Duration::from_secs(20);
                while self.cluster.nodes.node_mut(target).is_running() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let exited = !self.cluster.nodes.node_mut(target).is_running();
                self.cluster.nodes.node_mut(target).wipe()?;
                tokio::time::sleep(hold / 2).await;
                self.cluster.nodes.join(target)?;
                self.cluster.nodes.wait_voters(n).await?;
                Ok(format!(
                    "removed {what} ({}), re-added as id {}",
                    if exited {
                        "it exited by itself"
                    } else {
                        "it did NOT exit; killed"
                    },
                    self.cluster.nodes.node(target).node_id().unwrap_or(0)
                ))
            }
            FaultKind::Wipe => {
                let target = self.rng.random_range(0..n);
                let what = self.describe(target);
                let old = self.cluster.nodes.node(target).node_id();
                self.cluster.nodes.node_mut(target).wipe()?;
                tokio::time::sleep(hold).await;
                self.cluster.nodes.join(target)?;
                // The new member joins beside the lost one, which is then removed.
                self.cluster.nodes.wait_voters(n + 1).await?;
                if let Some(old) = old {
                    self.cluster.remove(old, false).await?;
                }
                self.cluster.nodes.wait_voters(n).await?;
                Ok(format!(
                    "SIGKILL {what} and wiped its data; rejoined as id {}, old member removed",
                    self.cluster.nodes.node(target).node_id().unwrap_or(0)
                ))
            }
        }
    }

    fn follower(&mut self, leader: usize) -> usize {
        let others: Vec<usize> = (0..self.cluster.len()).filter(|&i| i != leader).collect();
        *others.choose(&mut self.rng).unwrap_or(&leader)
    }

    fn names(&self, slots: &[usize]) -> String {
        slots
            .iter()
            .map(|&i| self.cluster.nodes.node(i).name())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every slot runs, exactly the slots' nodes are voters, and a write succeeds.
    pub async fn wait_whole(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let n = self.cluster.len();
        loop {
            // A fault that failed half-way must not leave a node stopped or paused.
            for i in 0..n {
                let node = self.cluster.nodes.node_mut(i);
                if node.is_paused() {
                    node.resume();
                }
                if !node.is_running() {
                    let started = if node.node_id().is_some() {
                        self.cluster.nodes.restart(i)
                    } else {
                        self.cluster.nodes.join(i)
                    };
                    if let Err(e) = started {
                        eprintln!("cannot restart {}: {e:#}", self.cluster.nodes.node(i).name());
                    }
                }
            }
            if self.whole().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn whole(&mut self) -> bool {
        let Some((mut voters, false)) = self.cluster.nodes.voters().await else {
            return false;
        };
        let mut ids: Vec<u64> = self.cluster.nodes.nodes().iter().filter_map(|s| s.node_id()).collect();
        voters.sort_unstable();
        ids.sort_unstable();
        if voters != ids {
            return false;
        }
        let Some(l) = self.cluster.nodes.leader().await else {
            return false;
        };
        let probe = self.cluster.nodes.node(l).client().with_timeout(PROBE_TIMEOUT);
        probe.put(b"nemesis-probe", "ok", Condition::None).await.is_ok()
    }
}
