//! Builds and runs the porcupine-based checker in `nemesis/lincheck` (a small Go program).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// What the checker concluded about one class of reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable(String),
    /// Not linearizable: the output names the keys and a minimal failing subhistory.
    Violation(String),
    /// The checker gave up (timeout): neither pass nor fail.
    Unknown(String),
}

/// The checker's source directory.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lincheck")
}

/// `go build`s the checker into `out_dir` and returns the binary's path.
pub fn build(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let bin = out_dir.join("lincheck");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(source_dir())
        .output()
        .context("running `go build` for the linearizability checker (is Go installed?)")?;
    if !out.status.success() {
        bail!("go build of lincheck failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}

/// Checks `history` (JSON Lines) with the writes and the reads of `reads` consistency.
pub fn check(bin: &Path, history: &Path, reads: &str, viz: Option<&Path>) -> anyhow::Result<Verdict> {
    let mut cmd = Command::new(bin);
    cmd.args(["-reads", reads, "-timeout", "300s"]);
    if let Some(v) = viz {
        cmd.arg("-viz").arg(v);
    }
    let out = cmd.arg(history).output().context("running lincheck")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(Verdict::Linearizable(text.trim().to_string())),
        Some(1) => Ok(Verdict::Violation(text)),
        Some(3) => Ok(Verdict::Unknown(text)),
        _ => bail!("lincheck could not check {}: {text}", history.display()),
    }
}
