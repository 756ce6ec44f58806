//! Child processes that are killed (process group and all) when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A child process in a process group of its own, named for error messages.
pub struct Proc {
    pub(crate) name: String,
    child: Child,
}

impl Proc {
    /// Starts `cmd` in a process group of its own, output appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The process id (the container's process itself: every wrapper before it execs).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process's group and to the process itself; errors (it is gone) are moot.
    pub fn signal(&self, sig: Signal) {
        let _ = killpg(self.pid(), sig);
        let _ = kill(self.pid(), sig);
    }

    /// `Some(exit code or -signal)` once it has exited.
    pub fn exited(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.code().unwrap_or_else(|| -s.signal().unwrap_or(0))),
            Ok(None) => None,
            Err(_) => Some(-1),
        }
    }

    /// SIGKILLs the process group and waits for the process.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}
