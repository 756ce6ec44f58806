//! What the RaftCluster's status says: phase, conditions a human can act on, members. Pure,
//! so every case is tested; a condition's `lastTransitionTime` changes only when it flips
//! (otherwise each status write would wake the controller again).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{LastAction, MemberStatus, RaftClusterStatus};
use crate::planner::{Action, Observed, Plan, RemoveReason};

pub struct StatusInput<'a> {
    pub observed: &'a Observed,
    pub plan: &'a Plan,
    pub paused: bool,
    pub generation: Option<i64>,
    pub selector: String,
    pub members: Vec<MemberStatus>,
    pub leader_pod: Option<String>,
    pub cluster_id: Option<String>,
    pub last_action: Option<LastAction>,
    /// An action that failed this time (reported in Degraded).
    pub action_error: Option<String>,
    pub previous: Option<&'a RaftClusterStatus>,
    pub now: Time,
    pub certificates_not_after: Option<Time>,
    pub auth_enabled: Option<bool>,
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, input: &StatusInput) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    let prev = input
        .previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => input.now.clone(),
    };
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: input.generation,
        last_transition_time,
    }
}

fn progress_reason(action: &Action, voters: usize, desired: usize) -> &'static str {
    match action {
        Action::Initialize { .. } => "Bootstrapping",
        Action::AddLearner { .. } => "AddingLearner",
        Action::Promote { .. } => "PromotingLearner",
        Action::RemoveMember {
            reason: RemoveReason::Replaced,
            ..
        } => "ReplacingMember",
        Action::RemoveMember { .. } => "RemovingMember",
        Action::TransferLeadership { .. } => "TransferringLeadership",
        Action::ResetPod { .. } => "ResettingStaleVolume",
        Action::DeletePvc { .. } => "DeletingVolume",
        Action::Wait(_) if voters < desired => "ScalingUp",
        Action::Wait(_) if voters > desired => "ScalingDown",
        Action::Wait(_) => "Waiting",
        Action::Blocked(_) => "Blocked",
        Action::Steady => "Reconciled",
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Steady => "membership matches the spec".into(),
        Action::Wait(m) | Action::Blocked(m) => m.clone(),
        Action::Initialize { ordinal } => format!("bootstrapping the cluster on pod {ordinal}"),
        Action::AddLearner { ordinal, id } => format!("adding node {id} (pod {ordinal}) as a learner"),
        Action::Promote { ordinal, id } => format!("promoting learner {id} (pod {ordinal}) to voter"),
        Action::TransferLeadership { from } => format!("moving leadership off node {from} before removing it"),
        Action::RemoveMember { id, reason, .. } => match reason {
            RemoveReason::ScaleDown => format!("removing member {id} (scale-down)"),
            RemoveReason::Replaced => format!("removing member {id}: its pod came back with an empty disk"),
        },
        Action::ResetPod { ordinal } => {
            format!("pod {ordinal} holds the data of a removed member: recreating it empty")
        }
        Action::DeletePvc { ordinal } => format!("deleting the volume of removed ordinal {ordinal}"),
    }
}

/// Members whose pod is ready.
pub fn ready_members(members: &[MemberStatus], o: &Observed) -> usize {
    members
        .iter()
        .filter(|m| {
            m.pod
                .as_ref()
                .is_some_and(|p| o.pods.values().any(|s| &s.name == p && s.ready))
        })
        .count()
}

pub fn build(input: &StatusInput) -> RaftClusterStatus {
    let o = input.observed;
    let desired = o.desired as usize;
    let voters = input.members.iter().filter(|m| m.role != "learner").count();
    let healthy_voters = input
        .members
        .iter()
        .filter(|m| m.role != "learner" && m.healthy)
        .count();
    let ready = ready_members(&input.members, o);

    let available = o.cluster.is_some() && healthy_voters > voters / 2;
    let available_cond = if available {
        condition(
            "Available",
            true,
            "QuorumAvailable",
            format!(
                "{healthy_voters} of {voters} voters healthy; leader {}",
                input.leader_pod.as_deref().unwrap_or("?")
            ),
            input,
        )
    } else if !o.initialized {
        condition(
            "Available",
            false,
            "NotInitialized",
            "the cluster has not been bootstrapped yet".into(),
            input,
        )
    } else {
        condition(
            "Available",
            false,
            "NoLeader",
            "no leader can be reached. If most members are down the cluster has lost quorum: writes fail until \
             they return, and recovery from a minority is a manual, lossy decision (see the operator docs)"
                .into(),
            input,
        )
    };

    let reason = progress_reason(&input.plan.action, voters, desired);
    let progressing = !matches!(input.plan.action, Action::Steady | Action::Blocked(_)) && !input.paused;
    let progressing_cond = if input.paused {
        condition(
            "Progressing",
            false,
            "Paused",
            "spec.paused is set: no membership actions".into(),
            input,
        )
    } else {
        condition("Progressing", progressing, reason, describe(&input.plan.action), input)
    };

    let unhealthy: Vec<String> = input
        .members
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| format!("{} ({})", m.id, m.pod.as_deref().unwrap_or("no pod")))
        .collect();
    let degraded = if let Some(e) = &input.action_error {
        Some(("ActionFailed", format!("the last action failed: {e}")))
    } else if let Action::Blocked(m) = &input.plan.action {
        Some((
            "ActionBlocked",
            format!("{m}; the operator will not act until this changes"),
        ))
    } else if o.initialized && o.cluster.is_none() {
        Some(("QuorumLost", "no leader can be reached".to_string()))
    } else if !unhealthy.is_empty() {
        Some((
            "MembersUnhealthy",
            format!("unhealthy members: {}", unhealthy.join(", ")),
        ))
    } else if desired.is_multiple_of(2) {
        Some((
            "EvenReplicas",
            format!(
                "{desired} voters tolerate no more failures than {}; prefer an odd number",
                desired - 1
            ),
        ))
    } else {
        None
    };
    let degraded_cond = match &degraded {
        Some((reason, msg)) => condition("Degraded", true, reason, msg.clone(), input),
        None => condition("Degraded", false, "Healthy", "all members healthy".into(), input),
    };

    let phase = if input.paused {
        "Paused"
    } else if o.pods.is_empty() && !o.initialized {
        "Pending"
    } else if !o.initialized {
        "Bootstrapping"
    } else if o.cluster.is_none() {
        "QuorumLost"
    } else if matches!(degraded, Some((r, _)) if r != "EvenReplicas") {
        "Degraded"
    } else if voters != desired || progressing && input.plan.action.is_membership_change() {
        "Scaling"
    } else {
        "Running"
    };

    RaftClusterStatus {
        phase: Some(phase.into()),
        observed_generation: input.generation,
        replicas: voters as i32,
        ready_replicas: ready as i32,
        selector: Some(input.selector.clone()),
        leader: input.leader_pod.clone(),
        cluster_id: input.cluster_id.clone(),
        members: input.members.clone(),
        conditions: vec![available_cond, progressing_cond, degraded_cond],
        last_action: input
            .last_action
            .clone()
            .or_else(|| input.previous.and_then(|p| p.last_action.clone())),
        certificates_not_after: input.certificates_not_after.clone(),
        auth_enabled: input.auth_enabled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{ClusterView, Member};

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn member(id: u64, healthy: bool) -> MemberStatus {
        MemberStatus {
            id,
            pod: Some(format!("rc-{id}")),
            role: "voter".into(),
            raft_address: String::new(),
            http_address: String::new(),
            healthy,
            lag: Some(0),
        }
    }

    fn observed(desired: u32) -> Observed {
        Observed {
            desired,
            initialized: true,
            cluster: Some(ClusterView {
                leader: 1,
                joint: false,
                members: vec![Member {
                    id: 1,
                    ordinal: Some(0),
                    voter: true,
                    healthy: true,
                    lag: Some(0),
                }],
            }),
            ..Default::default()
        }
    }

    fn input<'a>(
        o: &'a Observed,
        plan: &'a Plan,
        members: Vec<MemberStatus>,
        prev: Option<&'a RaftClusterStatus>,
        now: i64,
    ) -> StatusInput<'a> {
        StatusInput {
            observed: o,
            plan,
            paused: false,
            generation: Some(1),
            selector: "a=b".into(),
            members,
            leader_pod: Some("rc-0".into()),
            cluster_id: None,
            last_action: None,
            action_error: None,
            previous: prev,
            now: t(now),
            certificates_not_after: None,
            auth_enabled: None,
        }
    }

    fn cond<'a>(s: &'a RaftClusterStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_healthy_steady_cluster_is_running_and_available() {
        let o = observed(3);
        let plan = Plan {
            sts_replicas: 3,
            action: Action::Steady,
        };
        let s = build(&input(
            &o,
            &plan,
            vec![member(1, true), member(2, true), member(3, true)],
            None,
            10,
        ));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Available").status, "True");
        assert_eq!(cond(&s, "Progressing").reason, "Reconciled");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(s.replicas, 3);
    }

    #[test]
    fn transition_time_changes_only_when_a_condition_flips() {
        let o = observed(3);
        let steady = Plan {
            sts_replicas: 3,
            action: Action::Steady,
        };
        let all = vec![member(1, true), member(2, true), member(3, true)];
        let first = build(&input(&o, &steady, all.clone(), None, 10));
        let again = build(&input(&o, &steady, all.clone(), Some(&first), 20));
        assert_eq!(cond(&again, "Available").last_transition_time, t(10));
        let sick = vec![member(1, true), member(2, false), member(3, true)];
        let degraded = build(&input(&o, &steady, sick, Some(&again), 30));
        assert_eq!(cond(&degraded, "Degraded").status, "True");
        assert_eq!(cond(&degraded, "Degraded").reason, "MembersUnhealthy");
        assert_eq!(cond(&degraded, "Degraded").last_transition_time, t(30));
        assert_eq!(cond(&degraded, "Available").last_transition_time, t(10));
        assert_eq!(degraded.phase.as_deref(), Some("Degraded"));
    }

    #[test]
    fn scaling_and_quorum_loss_are_reported() {
        let o = observed(5);
        let plan = Plan {
            sts_replicas: 4,
            action: Action::AddLearner { ordinal: 3, id: 9 },
        };
        let s = build(&input(
            &o,
            &plan,
            vec![member(1, true), member(2, true), member(3, true)],
            None,
            1,
        ));
        assert_eq!(s.phase.as_deref(), Some("Scaling"));
        assert_eq!(cond(&s, "Progressing").reason, "AddingLearner");

        let mut lost = observed(3);
        lost.cluster = None;
        let wait = Plan {
            sts_replicas: 3,
            action: Action::Wait("no leader".into()),
        };
        let s = build(&input(&lost, &wait, vec![], None, 1));
        assert_eq!(s.phase.as_deref(), Some("QuorumLost"));
        assert_eq!(cond(&s, "Available").reason, "NoLeader");
        assert_eq!(cond(&s, "Degraded").reason, "QuorumLost");
    }

    #[test]
    fn even_replicas_warn() {
        let o = observed(4);
        let plan = Plan {
            sts_replicas: 4,
            action: Action::Steady,
        };
        let all = (1..=4).map(|i| member(i, true)).collect();
        let s = build(&input(&o, &plan, all, None, 1));
        assert_eq!(cond(&s, "Degraded").reason, "EvenReplicas");
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }
}
