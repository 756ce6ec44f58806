//! The container's process: started in the pod's network namespace, in a mount namespace of
//! its own where each volume is bind-mounted at its path, and restarted after it exits with a
//! backoff that grows by 2 s a restart, up to 10 s.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::pod::PodRuntime;
use super::{now, State};
use crate::process::Proc;

impl State {
    /// Notes an exit, and starts the container process if it is due (first start, or a
    /// restart after backoff).
    pub(super) fn run(&self, uid: &str) {
        let mut rts = self.pods();
        let Some(rt) = rts.get_mut(uid) else { return };
        if rt.terminating.is_some() {
            return;
        }
        if let Some(p) = rt.proc.as_mut() {
            if let Some(code) = p.exited() {
                rt.proc = None;
                rt.last_exit = Some(code);
                rt.ready = false;
                let backoff = Duration::from_secs(u64::from(rt.restarts.min(5)) * 2);
                rt.restart_at = Some(Instant::now() + backoff);
                tracing::info!(pod = %rt.name, code, "container exited");
            }
        }
        if rt.proc.is_none() && rt.restart_at.is_some_and(|t| Instant::now() >= t) {
            match spawn(rt) {
                Ok(p) => {
                    if rt.last_exit.is_some() {
                        rt.restarts += 1;
                    }
                    rt.proc = Some(p);
                    rt.restart_at = None;
                    rt.started_at = now();
                    for probe in [&mut rt.readiness, &mut rt.liveness].into_iter().flatten() {
                        probe.failures = 0;
                    }
                }
                Err(e) => tracing::warn!(pod = %rt.name, error = %e, "cannot start container"),
            }
        }
    }
}

/// Runs the container's process in the pod's network namespace, in a mount namespace of its
/// own where each volume is bind-mounted at its path and, with `readOnlyRootFilesystem`, the
/// root remounted read-only after them; then as the user and with the privileges its
/// securityContext gives it (`setpriv`). The mounts' sources travel in the environment, so
/// that no path is quoted into the shell script.
fn spawn(rt: &PodRuntime) -> anyhow::Result<Proc> {
    let mut script = String::from("set -e\n");
    // A mount over a directory that holds volume sources (an emptyDir at /tmp, where the
    // test bed's directory is) would hide the sources mounted after it: those go last.
    let mut order: Vec<usize> = (0..rt.mounts.len()).collect();
    order.sort_by_key(|&i| {
        let target = Path::new(&rt.mounts[i].path);
        rt.mounts.iter().any(|m| m.src.starts_with(target))
    });
    for i in order {
        let path = &rt.mounts[i].path;
        script.push_str(&format!(
            "mkdir -p \"{path}\"\nmount --bind \"$MOUNT_SRC_{i}\" \"{path}\"\n"
        ));
        // A bind mount takes `ro` only when remounted.
        if rt.mounts[i].read_only {
            script.push_str(&format!("mount -o remount,bind,ro \"{path}\"\n"));
        }
    }
    if rt.run_as.read_only_root {
        // This namespace's view of `/` only; the volumes are mounts of their own and stay
        // writable.
        script.push_str("mount -o remount,bind,ro /\n");
    }
    script.push_str("exec \"$@\"\n");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &rt.net.netns,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
    ])
    .arg(&script)
    .arg("sh")
    .args(rt.run_as.setpriv())
    .args(&rt.argv)
    .env_clear()
    .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    .env("RUST_BACKTRACE", "1");
    for (i, m) in rt.mounts.iter().enumerate() {
        cmd.env(format!("MOUNT_SRC_{i}"), &m.src);
    }
    for (k, v) in &rt.env {
        cmd.env(k, v);
    }
    Proc::spawn(&rt.name, &mut cmd, &rt.log)
}
