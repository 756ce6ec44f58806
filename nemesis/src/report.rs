//! What a nemesis run did and found, for people: operations by kind and outcome, faults by kind
//! with the longest unavailability and recovery, the checkers' verdicts, and every problem.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::history::{Op, Outcome, Request};
use crate::lincheck::Verdict;
use crate::nemesis::{Fault, FaultKind};

pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub out: PathBuf,
    pub ops: Vec<Op>,
    pub faults: Vec<Fault>,
    pub unavailable: BTreeMap<FaultKind, Duration>,
    pub verdicts: BTreeMap<&'static str, Verdict>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// Operations by kind, then counts of ok / failed / unknown.
    fn op_counts(&self) -> BTreeMap<String, [usize; 3]> {
        let mut m: BTreeMap<String, [usize; 3]> = BTreeMap::new();
        for op in &self.ops {
            let kind = match &op.request {
                Request::Get(c) => format!("get ({})", c.as_str()),
                Request::Put { .. } => "put".into(),
                Request::Delete => "delete".into(),
                Request::Cas { .. } => "cas".into(),
            };
            let slot = match op.outcome {
                Outcome::Failed(_) => 1,
                Outcome::Unknown(_) => 2,
                _ => 0,
            };
            m.entry(kind).or_default()[slot] += 1;
        }
        m
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "nemesis run: seed {} ({} nodes), {} operations, {} faults; output in {}",
            self.seed,
            self.nodes,
            self.ops.len(),
            self.faults.len(),
            self.out.display()
        )?;
        writeln!(f, "\n| operation | ok | failed | unknown |\n|---|---|---|---|")?;
        for (kind, [ok, failed, unknown]) in self.op_counts() {
            writeln!(f, "| {kind} | {ok} | {failed} | {unknown} |")?;
        }
        writeln!(
            f,
            "\n| fault | injected | longest time no node accepted a write | longest heal-to-whole |\n|---|---|---|---|"
        )?;
        for kind in FaultKind::ALL {
            let of_kind: Vec<&Fault> = self.faults.iter().filter(|x| x.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let recovery = of_kind
                .iter()
                .map(|x| x.recovered.map(|r| r.saturating_sub(x.healed)))
                .try_fold(Duration::ZERO, |acc, r| r.map(|r| acc.max(r)));
            writeln!(
                f,
                "| {} | {} | {:.2}s | {} |",
                kind.name(),
                of_kind.len(),
                self.unavailable.get(&kind).copied().unwrap_or_default().as_secs_f64(),
                recovery.map_or("never".into(), |r| format!("{:.2}s", r.as_secs_f64()))
            )?;
        }
        writeln!(f)?;
        for (reads, v) in &self.verdicts {
            match v {
                Verdict::Linearizable(summary) => writeln!(f, "{reads} reads + all writes: linearizable ({summary})")?,
                Verdict::Violation(_) => writeln!(f, "{reads} reads + all writes: NOT LINEARIZABLE")?,
                Verdict::Unknown(_) => writeln!(f, "{reads} reads + all writes: checker gave up")?,
            }
        }
        if self.passed() {
            writeln!(f, "no acknowledged write lost; stale reads sane; nodes converged")?;
        } else {
            writeln!(f, "\n{} PROBLEM(S):", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "- {p}")?;
            }
            writeln!(
                f,
                "replay with: raftkv-nemesis --seed {} --nodes {}",
                self.seed, self.nodes
            )?;
        }
        Ok(())
    }
}
