//! Runs the `raftkv` command-line tools (`admin`, `kv`, `restore`, `bench`) as a user would,
//! and keeps what they printed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// How long one command may run: a backup or a benchmark of a test's size takes seconds.
const CLI_TIMEOUT: Duration = Duration::from_secs(180);

/// What a `raftkv` invocation printed and how it exited.
#[derive(Debug, Clone)]
pub struct CliRun {
    /// The exit code; -1 when a signal ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bin args` with `stdin` (if given) as its input and `RUST_LOG=warn`.
pub async fn run(bin: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<CliRun> {
    let what = || format!("{} {}", bin.display(), args.join(" "));
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", what()), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .await
            .map_err(|e| Error::io(format!("writing the input of {}", what()), e))?;
    }
    let out = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| Error::Timeout {
            what: format!("{} did not finish", what()),
            timeout: CLI_TIMEOUT,
        })?
        .map_err(|e| Error::io(format!("reading the output of {}", what()), e))?;
    Ok(CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_run_keeps_the_output_the_input_and_the_exit_code() {
        let r = run(Path::new("sh"), &["-c", "cat; echo err >&2; exit 3"], Some(b"in"))
            .await
            .expect("sh runs");
        assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (3, "in", "err\n"));
    }
}
