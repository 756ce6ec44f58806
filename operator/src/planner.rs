//! The membership planner: from what is observed (pods, the StatefulSet, the Raft membership
//! as the leader reports it) to the one next action. A pure function: the operator keeps no
//! memory between reconciles, so an interrupted step is simply planned again.
//!
//! Rules, in order: bootstrap pod 0 only; never act during a joint (in-progress) change;
//! replace a member whose pod came back with an empty disk (remove the stale id, then add the
//! new one); promote caught-up learners; scale down from the highest ordinal (hand leadership
//! away first); scale up one pod at a time; delete the volumes of members removed by a
//! scale-down. Every removal first checks that the healthy voters left still form a quorum.

use std::collections::{BTreeMap, BTreeSet};

/// A learner is promoted once it is at most this many entries behind the leader.
pub const PROMOTE_LAG: u64 = 64;

/// What a pod's node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub id: u64,
    /// The node knows a cluster membership (it has been initialized or added).
    pub has_membership: bool,
    /// The node's own membership includes itself.
    pub member_of_own_view: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub running: bool,
    pub ready: bool,
    pub terminating: bool,
    /// `None` while the node's admin service cannot be reached.
    pub node: Option<NodeState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// The StatefulSet ordinal from the member's advertised address, if it is one of ours.
    pub ordinal: Option<u32>,
    pub voter: bool,
    pub healthy: bool,
    pub lag: Option<u64>,
}

/// The membership as the leader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub leader: u64,
    pub joint: bool,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub desired: u32,
    /// The StatefulSet's current spec.replicas (None if it does not exist yet).
    pub sts_replicas: Option<u32>,
    pub pods: BTreeMap<u32, PodState>,
    /// Ordinals that have a PVC.
    pub pvcs: BTreeSet<u32>,
    /// Some node reports cluster state.
    pub initialized: bool,
    /// `None` if no leader could be reached.
    pub cluster: Option<ClusterView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// Scale-down of the highest ordinal.
    ScaleDown,
    /// The member's pod came back with an empty disk: the old id is gone for good.
    Replaced,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing is needed.
    Steady,
    /// Nothing can be done until something changes (a pod starts, a learner catches up).
    Wait(String),
    /// Needs a human: the operator will not act (e.g. quorum lost).
    Blocked(String),
    Initialize {
        ordinal: u32,
    },
    AddLearner {
        ordinal: u32,
        id: u64,
    },
    Promote {
        ordinal: u32,
        id: u64,
    },
    TransferLeadership {
        from: u64,
    },
    RemoveMember {
        id: u64,
        ordinal: Option<u32>,
        reason: RemoveReason,
    },
    /// Delete a pod and its volume: its data belongs to a member that was removed.
    ResetPod {
        ordinal: u32,
    },
    /// Delete the volume of an ordinal that a scale-down removed.
    DeletePvc {
        ordinal: u32,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Steady => "Steady",
            Action::Wait(_) => "Wait",
            Action::Blocked(_) => "Blocked",
            Action::Initialize { .. } => "Initialize",
            Action::AddLearner { .. } => "AddLearner",
            Action::Promote { .. } => "PromoteLearner",
            Action::TransferLeadership { .. } => "TransferLeadership",
            Action::RemoveMember { .. } => "RemoveMember",
            Action::ResetPod { .. } => "ResetPod",
            Action::DeletePvc { .. } => "DeletePVC",
        }
    }

    /// Whether this changes the Raft membership (recorded in status and as an Event).
    pub fn is_membership_change(&self) -> bool {
        matches!(
            self,
            Action::Initialize { .. }
                | Action::AddLearner { .. }
                | Action::Promote { .. }
                | Action::RemoveMember { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What the StatefulSet's replicas should be now.
    pub sts_replicas: u32,
    pub action: Action,
}

/// Whether removing `id` leaves healthy voters that are still a quorum of the voters left.
pub fn safe_to_remove(c: &ClusterView, id: u64) -> bool {
    let rest: Vec<&Member> = c.members.iter().filter(|m| m.voter && m.id != id).collect();
    if rest.is_empty() {
        return false;
    }
    let healthy = rest.iter().filter(|m| m.healthy).count();
    healthy > rest.len() / 2
}

/// The one next step for the cluster `o` describes. The steps are tried in the order of the
/// module's rules; the first that has something to do decides.
pub fn plan(o: &Observed) -> Plan {
    if !o.initialized {
        return bootstrap(o);
    }
    let Some(c) = &o.cluster else {
        return Plan {
            sts_replicas: o.sts_replicas.unwrap_or(0).max(1),
            action: Action::Wait("no leader can be reached; waiting for an election".into()),
        };
    };
    let s = Sizes::of(o, c);
    if c.joint {
        return Plan {
            sts_replicas: s.keep(s.current.min(s.desired.max(s.highest))),
            action: Action::Wait("a membership change is in progress".into()),
        };
    }
    newcomers(o, c, &s)
        .or_else(|| learners(c, &s))
        .or_else(|| scale_down(o, c, &s))
        .or_else(|| scale_up(o, &s))
        .unwrap_or_else(|| settle(o, &s))
}

/// No node knows a cluster yet: pod 0 alone, initialized as soon as it answers.
fn bootstrap(o: &Observed) -> Plan {
    Plan {
        sts_replicas: 1,
        action: match o.pods.get(&0) {
            Some(p) if p.running && p.node.is_some() => Action::Initialize { ordinal: 0 },
            Some(p) if p.running => Action::Wait(format!("waiting for {} to answer on its admin port", p.name)),
            _ => Action::Wait("waiting for pod 0 to run".into()),
        },
    }
}

/// The sizes every step works from.
struct Sizes<'a> {
    /// The StatefulSet's replicas now (0 if it does not exist).
    current: u32,
    /// The replicas the spec asks for (at least 1).
    desired: u32,
    /// The members that live in one of our pods, by ordinal.
    by_ordinal: BTreeMap<u32, &'a Member>,
    member_ids: BTreeSet<u64>,
    /// One past the highest ordinal that holds a member.
    highest: u32,
}

impl<'a> Sizes<'a> {
    fn of(o: &Observed, c: &'a ClusterView) -> Sizes<'a> {
        let by_ordinal: BTreeMap<u32, &Member> = c.members.iter().filter_map(|m| Some((m.ordinal?, m))).collect();
        Sizes {
            current: o.sts_replicas.unwrap_or(0),
            desired: o.desired.max(1),
            highest: by_ordinal.keys().next_back().map_or(0, |o| o + 1),
            member_ids: c.members.iter().map(|m| m.id).collect(),
            by_ordinal,
        }
    }

    /// The StatefulSet never shrinks below a pod that still holds a member.
    fn keep(&self, n: u32) -> u32 {
        n.max(self.highest).max(1)
    }

    /// `action`, with the StatefulSet left as it is.
    fn hold(&self, action: Action) -> Plan {
        Plan {
            sts_replicas: self.keep(self.current),
            action,
        }
    }
}

/// Pods whose node is not a member: a replacement of the member the pod held before, a
/// leftover volume to reset, or a new node to add as a learner.
fn newcomers(o: &Observed, c: &ClusterView, s: &Sizes) -> Option<Plan> {
    for (&ord, pod) in &o.pods {
        let Some(node) = &pod.node else { continue };
        if ord >= s.desired || !pod.running || pod.terminating || s.member_ids.contains(&node.id) {
            continue;
        }
        if let Some(stale) = s.by_ordinal.get(&ord).filter(|m| m.id != node.id) {
            return Some(replace(c, s, pod, ord, stale));
        }
        if node.has_membership && !node.member_of_own_view {
            // A volume left over from a member that was removed: it can never rejoin as is.
            return Some(s.hold(Action::ResetPod { ordinal: ord }));
        }
        if !node.has_membership {
            return Some(Plan {
                sts_replicas: s.keep(s.current.max(ord + 1)),
                action: Action::AddLearner {
                    ordinal: ord,
                    id: node.id,
                },
            });
        }
    }
    None
}

/// The pod at `ord` lost its disk and came back as a new node: the old member is gone for
/// good and is removed, if the healthy voters left keep a quorum.
fn replace(c: &ClusterView, s: &Sizes, pod: &PodState, ord: u32, stale: &Member) -> Plan {
    if !safe_to_remove(c, stale.id) && stale.voter {
        return s.hold(Action::Blocked(format!(
            "{} came back with an empty disk, but removing its old member {} would leave no quorum of healthy voters",
            pod.name, stale.id
        )));
    }
    s.hold(Action::RemoveMember {
        id: stale.id,
        ordinal: Some(ord),
        reason: RemoveReason::Replaced,
    })
}

/// Learners: promote the caught-up ones that belong, wait for the others, remove the ones
/// beyond the desired size.
fn learners(c: &ClusterView, s: &Sizes) -> Option<Plan> {
    c.members.iter().filter(|m| !m.voter).find_map(|m| match m.ordinal {
        Some(ord) if ord < s.desired => Some(if m.lag.is_some_and(|l| l <= PROMOTE_LAG) && m.healthy {
            s.hold(Action::Promote { ordinal: ord, id: m.id })
        } else {
            s.hold(Action::Wait(format!("learner {} is catching up", m.id)))
        }),
        Some(ord) => Some(s.hold(Action::RemoveMember {
            id: m.id,
            ordinal: Some(ord),
            reason: RemoveReason::ScaleDown,
        })),
        None => None,
    })
}

/// Scale down: the highest ordinal first, leadership handed away before its member goes.
fn scale_down(o: &Observed, c: &ClusterView, s: &Sizes) -> Option<Plan> {
    let (&ord, victim) = s.by_ordinal.iter().rev().find(|(o, _)| **o >= s.desired)?;
    if victim.id == c.leader {
        return Some(s.hold(Action::TransferLeadership { from: victim.id }));
    }
    if victim.voter && !safe_to_remove(c, victim.id) {
        return Some(s.hold(Action::Wait(format!(
            "not removing member {} ({}): the healthy voters left would not be a quorum",
            victim.id,
            o.pods.get(&ord).map_or("no pod", |p| p.name.as_str())
        ))));
    }
    Some(s.hold(Action::RemoveMember {
        id: victim.id,
        ordinal: Some(ord),
        reason: RemoveReason::ScaleDown,
    }))
}

/// Scale up: one pod at a time, the lowest missing ordinal; its node is added once it
/// answers (see [`newcomers`]).
fn scale_up(o: &Observed, s: &Sizes) -> Option<Plan> {
    let next = (0..s.desired).find(|o| !s.by_ordinal.contains_key(o))?;
    Some(Plan {
        sts_replicas: s.keep(next + 1),
        action: match o.pods.get(&next) {
            None => Action::Wait(format!("waiting for pod {next} to be created")),
            Some(p) if !p.running || p.terminating => Action::Wait(format!("waiting for {} to run", p.name)),
            Some(p) => Action::Wait(format!("waiting for {} to answer on its admin port", p.name)),
        },
    })
}

/// Every member in place: the StatefulSet at the desired size, and the volumes of ordinals a
/// scale-down removed deleted (their data can never rejoin).
fn settle(o: &Observed, s: &Sizes) -> Plan {
    let target = s.keep(s.desired);
    let action = match o.pvcs.iter().find(|ord| **ord >= target && !o.pods.contains_key(ord)) {
        Some(&ord) => Action::DeletePvc { ordinal: ord },
        None => Action::Steady,
    };
    Plan {
        sts_replicas: target,
        action,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ord: u32, id: Option<u64>, member: bool) -> (u32, PodState) {
        (
            ord,
            PodState {
                name: format!("rc-{ord}"),
                running: true,
                ready: member,
                terminating: false,
                node: id.map(|id| NodeState {
                    id,
                    has_membership: member,
                    member_of_own_view: member,
                }),
            },
        )
    }

    fn voter(id: u64, ord: u32) -> Member {
        Member {
            id,
            ordinal: Some(ord),
            voter: true,
            healthy: true,
            lag: Some(0),
        }
    }

    fn cluster(leader: u64, members: Vec<Member>) -> Option<ClusterView> {
        Some(ClusterView {
            leader,
            joint: false,
            members,
        })
    }

    /// A healthy cluster of `n` voters with ids 100+ordinal, pods 0..n, wanting `desired`.
    fn healthy(n: u32, desired: u32) -> Observed {
        Observed {
            desired,
            sts_replicas: Some(n),
            pods: (0..n).map(|o| pod(o, Some(100 + o as u64), true)).collect(),
            pvcs: (0..n).collect(),
            initialized: true,
            cluster: cluster(100, (0..n).map(|o| voter(100 + o as u64, o)).collect()),
        }
    }

    #[test]
    fn a_new_cluster_starts_with_pod_zero_only() {
        let o = Observed {
            desired: 3,
            ..Default::default()
        };
        let p = plan(&o);
        assert_eq!(p.sts_replicas, 1);
        assert!(matches!(p.action, Action::Wait(_)));
    }

    #[test]
    fn pod_zero_running_is_initialized() {
        let o = Observed {
            desired: 3,
            sts_replicas: Some(1),
            pods: [pod(0, Some(7), false)].into(),
            ..Default::default()
        };
        assert_eq!(
            plan(&o),
            Plan {
                sts_replicas: 1,
                action: Action::Initialize { ordinal: 0 }
            }
        );
    }

    #[test]
    fn pod_zero_not_answering_yet_waits() {
        let o = Observed {
            desired: 3,
            sts_replicas: Some(1),
            pods: [pod(0, None, false)].into(),
            ..Default::default()
        };
        assert!(matches!(plan(&o).action, Action::Wait(_)));
    }

    #[test]
    fn scale_up_raises_the_statefulset_by_one() {
        let p = plan(&healthy(1, 3));
        assert_eq!(p.sts_replicas, 2);
        assert!(matches!(p.action, Action::Wait(ref m) if m.contains("pod 1")));
    }

    #[test]
    fn a_new_pod_is_added_as_learner() {
        let mut o = healthy(1, 3);
        o.sts_replicas = Some(2);
        o.pods.extend([pod(1, Some(555), false)]);
        assert_eq!(
            plan(&o),
            Plan {
                sts_replicas: 2,
                action: Action::AddLearner { ordinal: 1, id: 555 }
            }
        );
    }

    #[test]
    fn a_caught_up_learner_is_promoted_and_a_lagging_one_waited_for() {
        let mut o = healthy(2, 3);
        o.cluster.as_mut().unwrap().members[1].voter = false;
        o.cluster.as_mut().unwrap().members[1].lag = Some(3);
        assert_eq!(plan(&o).action, Action::Promote { ordinal: 1, id: 101 });
        o.cluster.as_mut().unwrap().members[1].lag = Some(10_000);
        assert!(matches!(plan(&o).action, Action::Wait(ref m) if m.contains("catching up")));
    }

    #[test]
    fn a_complete_cluster_is_steady() {
        assert_eq!(
            plan(&healthy(3, 3)),
            Plan {
                sts_replicas: 3,
                action: Action::Steady
            }
        );
    }

    #[test]
    fn nothing_happens_during_a_joint_change() {
        let mut o = healthy(3, 5);
        o.cluster.as_mut().unwrap().joint = true;
        assert!(matches!(plan(&o).action, Action::Wait(ref m) if m.contains("in progress")));
    }

    #[test]
    fn no_leader_means_wait_and_keep_the_statefulset() {
        let mut o = healthy(3, 5);
        o.cluster = None;
        let p = plan(&o);
        assert_eq!(p.sts_replicas, 3);
        assert!(matches!(p.action, Action::Wait(_)));
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_and_keeps_its_pod_until_then() {
        let p = plan(&healthy(5, 3));
        assert_eq!(p.sts_replicas, 5);
        assert_eq!(
            p.action,
            Action::RemoveMember {
                id: 104,
                ordinal: Some(4),
                reason: RemoveReason::ScaleDown
            }
        );
    }

    #[test]
    fn scale_down_moves_leadership_off_the_victim_first() {
        let mut o = healthy(5, 3);
        o.cluster.as_mut().unwrap().leader = 104;
        assert_eq!(plan(&o).action, Action::TransferLeadership { from: 104 });
    }

    #[test]
    fn scale_down_refuses_to_break_quorum_of_healthy_voters() {
        let mut o = healthy(3, 2);
        o.cluster.as_mut().unwrap().members[1].healthy = false;
        assert!(matches!(plan(&o).action, Action::Wait(ref m) if m.contains("quorum")));
    }

    #[test]
    fn after_removal_the_statefulset_shrinks_and_the_volume_goes() {
        let mut o = healthy(4, 3);
        o.cluster.as_mut().unwrap().members.pop();
        o.pvcs.insert(3);
        let p = plan(&o);
        assert_eq!(p.sts_replicas, 3);
        // The pod still exists (the StatefulSet is just being lowered): keep its volume.
        assert_eq!(p.action, Action::Steady);
        o.pods.remove(&3);
        assert_eq!(plan(&o).action, Action::DeletePvc { ordinal: 3 });
    }

    #[test]
    fn a_pod_back_with_an_empty_disk_replaces_its_stale_member() {
        let mut o = healthy(3, 3);
        o.pods.insert(2, pod(2, Some(999), false).1);
        o.cluster.as_mut().unwrap().members[2].healthy = false;
        assert_eq!(
            plan(&o).action,
            Action::RemoveMember {
                id: 102,
                ordinal: Some(2),
                reason: RemoveReason::Replaced
            }
        );
        // Once the stale member is gone, the new node is added.
        o.cluster.as_mut().unwrap().members.pop();
        assert_eq!(plan(&o).action, Action::AddLearner { ordinal: 2, id: 999 });
    }

    #[test]
    fn replacement_is_refused_when_it_would_lose_quorum() {
        let mut o = healthy(3, 3);
        o.pods.insert(2, pod(2, Some(999), false).1);
        let m = &mut o.cluster.as_mut().unwrap().members;
        m[1].healthy = false;
        m[2].healthy = false;
        assert!(matches!(plan(&o).action, Action::Blocked(_)));
    }

    #[test]
    fn a_missing_pod_of_a_member_is_not_a_scale_in() {
        let mut o = healthy(3, 3);
        o.pods.remove(&1);
        o.cluster.as_mut().unwrap().members[1].healthy = false;
        assert_eq!(
            plan(&o),
            Plan {
                sts_replicas: 3,
                action: Action::Steady
            }
        );
    }

    #[test]
    fn a_leftover_volume_of_a_removed_member_is_reset() {
        let mut o = healthy(3, 4);
        o.sts_replicas = Some(4);
        let (_, mut p) = pod(3, Some(777), true);
        p.node.as_mut().unwrap().member_of_own_view = false;
        o.pods.insert(3, p);
        assert_eq!(plan(&o).action, Action::ResetPod { ordinal: 3 });
    }

    #[test]
    fn learners_beyond_the_desired_size_are_removed() {
        let mut o = healthy(3, 2);
        let m = &mut o.cluster.as_mut().unwrap().members[2];
        m.voter = false;
        assert_eq!(
            plan(&o).action,
            Action::RemoveMember {
                id: 102,
                ordinal: Some(2),
                reason: RemoveReason::ScaleDown
            }
        );
    }

    #[test]
    fn removal_safety() {
        let c = ClusterView {
            leader: 1,
            joint: false,
            members: vec![
                voter(1, 0),
                voter(2, 1),
                Member {
                    healthy: false,
                    ..voter(3, 2)
                },
            ],
        };
        assert!(safe_to_remove(&c, 3));
        assert!(!safe_to_remove(&c, 2), "would leave 1 healthy of 2");
        let single = ClusterView {
            leader: 1,
            joint: false,
            members: vec![voter(1, 0)],
        };
        assert!(!safe_to_remove(&single, 1));
    }
}
