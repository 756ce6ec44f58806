//! Checks of a recorded history that the linearizability checker does not make: stale reads
//! (not linearizable by design, but never invented and never going backwards on one process),
//! acknowledged writes surviving to the end, and how long each kind of fault kept writes from
//! succeeding.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::history::{Consistency, Op, Outcome, Request};
use crate::nemesis::{Fault, FaultKind};

/// Stale reads must return a value some write may have produced before the read answered, and
/// one process must never answer an older revision of a key after a newer one.
pub fn stale_reads(ops: &[Op]) -> Vec<String> {
    let writers = writers(ops);
    let mut problems = Vec::new();
    let mut by_process: HashMap<(usize, u32, &str), Vec<&Op>> = HashMap::new();
    for op in ops {
        let (Request::Get(Consistency::Stale), Outcome::Read(Some((value, _)))) = (&op.request, &op.outcome) else {
            continue;
        };
        let plausible = writers
            .get(value.as_str())
            .is_some_and(|w| Some(w.call) <= op.ret && w.key == op.key);
        if !plausible {
            problems.push(format!(
                "stale read #{} of {} on n{} returned {value:?}, which no write of that key had been invoked to produce",
                op.id, op.key, op.node
            ));
        }
        by_process
            .entry((op.node, op.incarnation, &op.key))
            .or_default()
            .push(op);
    }
    for ((node, incarnation, key), reads) in by_process {
        for a in &reads {
            for b in &reads {
                let (Some(a_ret), Outcome::Read(Some((_, ra))), Outcome::Read(Some((_, rb)))) =
                    (a.ret, &a.outcome, &b.outcome)
                else {
                    continue;
                };
                if a_ret < b.call && rb < ra {
                    problems.push(format!(
                        "stale reads of {key} on n{node} (process run {incarnation}) went backwards: #{} saw revision {ra}, the later #{} saw {rb}",
                        a.id, b.id
                    ));
                }
            }
        }
    }
    problems.sort();
    problems
}

/// Every acknowledged write, or one that may have come after it, is what the final reads see.
/// `finals` holds one successful linearizable read per key, taken after all faults and clients
/// stopped.
pub fn lost_writes(ops: &[Op], finals: &BTreeMap<String, Option<String>>) -> Vec<String> {
    let writers = writers(ops);
    let mut problems = Vec::new();
    for (key, last) in finals {
        let acked: Vec<&Op> = ops.iter().filter(|o| &o.key == key && o.acked_write()).collect();
        // The writes that may have produced what the final read saw.
        let sources: Vec<&Op> = match last {
            Some(v) => match writers.get(v.as_str()) {
                Some(w) if &w.key == key => vec![*w],
                _ => {
                    problems.push(format!("final read of {key} returned {v:?}, which no write produced"));
                    continue;
                }
            },
            None => ops
                .iter()
                .filter(|o| &o.key == key && o.request == Request::Delete && o.may_have_written())
                .collect(),
        };
        let survives = |src: &&Op| {
            acked
                .iter()
                .all(|w| w.id == src.id || src.ret.is_none_or(|r| r >= w.call))
        };
        if sources.iter().any(survives) {
            continue;
        }
        // Name the acknowledged write that every possible source precedes.
        let lost = acked.iter().find(|w| {
            sources
                .iter()
                .all(|s| s.id != w.id && s.ret.is_some_and(|r| r < w.call))
        });
        let seen = last
            .as_deref()
            .map_or("nothing (deleted)".to_string(), |v| format!("{v:?}"));
        match lost {
            Some(w) => problems.push(format!(
                "acknowledged write #{} to {key} ({}) was lost: at the end the key holds {seen}, written before it",
                w.id,
                w.request.written().unwrap_or("delete")
            )),
            None => problems.push(format!(
                "{key} ends holding {seen}, but acknowledged writes came after every write that could have produced it"
            )),
        }
    }
    problems
}

/// For each fault kind, the longest stretch without a successful write (`done`: the times of
/// successful writes, sorted) during a fault of that kind (from its injection until the cluster
/// was whole again).
pub fn unavailability(done: &[Duration], faults: &[Fault], end: Duration) -> BTreeMap<FaultKind, Duration> {
    let mut worst: BTreeMap<FaultKind, Duration> = BTreeMap::new();
    for f in faults {
        let (from, to) = (f.start, f.recovered.unwrap_or(end));
        // Gaps between consecutive successes, with the window's edges as sentinels when no
        // success falls before or after it.
        let mut points = vec![from.min(done.first().copied().unwrap_or(from))];
        points.extend(done.iter().copied());
        points.push(to.max(done.last().copied().unwrap_or(to)));
        // A stretch that began before this fault (under the previous one) counts from this
        // fault's start only.
        let longest = points
            .windows(2)
            .filter(|w| w[1] >= from && w[0] <= to)
            .map(|w| w[1].saturating_sub(w[0].max(from)))
            .max()
            .unwrap_or_default();
        let e = worst.entry(f.kind).or_default();
        *e = (*e).max(longest);
    }
    worst
}

/// Each written value's write (values are unique).
fn writers(ops: &[Op]) -> HashMap<&str, &Op> {
    ops.iter()
        .filter(|o| o.may_have_written())
        .filter_map(|o| o.request.written().map(|v| (v, o)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, key: &str, request: Request, call: u64, ret: Option<u64>, outcome: Outcome) -> Op {
        Op {
            id,
            client: 1,
            node: 0,
            incarnation: 1,
            key: key.into(),
            request,
            call: Duration::from_millis(call),
            ret: ret.map(Duration::from_millis),
            outcome,
        }
    }

    fn put(id: u64, v: &str, call: u64, ret: Option<u64>) -> Op {
        let outcome = match ret {
            Some(_) => Outcome::Written { revision: id },
            None => Outcome::Unknown("timeout".into()),
        };
        op(id, "k", Request::Put { value: v.into() }, call, ret, outcome)
    }

    fn stale(id: u64, call: u64, ret: u64, seen: Option<(&str, u64)>) -> Op {
        op(
            id,
            "k",
            Request::Get(Consistency::Stale),
            call,
            Some(ret),
            Outcome::Read(seen.map(|(v, r)| (v.to_string(), r))),
        )
    }

    fn finals(v: Option<&str>) -> BTreeMap<String, Option<String>> {
        BTreeMap::from([("k".to_string(), v.map(String::from))])
    }

    #[test]
    fn the_last_acked_write_survives() {
        let ops = vec![put(1, "a", 0, Some(10)), put(2, "b", 20, Some(30))];
        assert!(lost_writes(&ops, &finals(Some("b"))).is_empty());
    }

    #[test]
    fn an_overwritten_final_value_means_a_lost_write() {
        let ops = vec![put(1, "a", 0, Some(10)), put(2, "b", 20, Some(30))];
        let p = lost_writes(&ops, &finals(Some("a")));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("#2"), "{p:?}");
    }

    #[test]
    fn an_unknown_write_may_come_last() {
        let ops = vec![put(1, "a", 0, None), put(2, "b", 20, Some(30))];
        assert!(lost_writes(&ops, &finals(Some("a"))).is_empty());
    }

    #[test]
    fn a_missing_key_needs_a_delete() {
        let ops = vec![put(1, "a", 0, Some(10))];
        assert_eq!(lost_writes(&ops, &finals(None)).len(), 1);
        let mut with_delete = ops.clone();
        with_delete.push(op(
            2,
            "k",
            Request::Delete,
            20,
            Some(25),
            Outcome::Deleted { existed: true },
        ));
        assert!(lost_writes(&with_delete, &finals(None)).is_empty());
    }

    #[test]
    fn a_value_nobody_wrote_is_reported() {
        let ops = vec![put(1, "a", 0, Some(10))];
        assert_eq!(lost_writes(&ops, &finals(Some("zzz"))).len(), 1);
    }

    #[test]
    fn stale_reads_may_lag_but_not_invent_or_go_back() {
        let ok = vec![
            put(1, "a", 0, Some(10)),
            put(2, "b", 20, Some(30)),
            stale(3, 40, 41, Some(("a", 1))),
            stale(4, 50, 51, Some(("b", 2))),
        ];
        assert!(stale_reads(&ok).is_empty());

        let invented = vec![put(1, "a", 0, Some(10)), stale(2, 40, 41, Some(("x", 9)))];
        assert_eq!(stale_reads(&invented).len(), 1);

        let from_the_future = vec![stale(1, 0, 5, Some(("a", 2))), put(2, "a", 10, Some(20))];
        assert_eq!(stale_reads(&from_the_future).len(), 1);

        let backwards = vec![
            put(1, "a", 0, Some(10)),
            put(2, "b", 20, Some(30)),
            stale(3, 40, 41, Some(("b", 2))),
            stale(4, 50, 51, Some(("a", 1))),
        ];
        assert_eq!(stale_reads(&backwards).len(), 1);

        // A restarted process may start from an older state.
        let mut restarted = backwards.clone();
        restarted[3].incarnation = 2;
        assert!(stale_reads(&restarted).is_empty());
    }

    #[test]
    fn unavailability_is_the_longest_gap_overlapping_a_fault() {
        let done: Vec<Duration> = [10u64, 20, 30, 900, 910].map(Duration::from_millis).to_vec();
        let fault = Fault {
            kind: FaultKind::KillLeader,
            detail: String::new(),
            start: Duration::from_millis(100),
            healed: Duration::from_millis(500),
            recovered: Some(Duration::from_millis(600)),
        };
        let u = unavailability(&done, &[fault], Duration::from_secs(1));
        assert_eq!(u[&FaultKind::KillLeader], Duration::from_millis(800));
    }
}
