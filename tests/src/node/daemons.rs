//! The node's long-running processes: started detached (they outlive
//! `cluster up`), each with its log and pid file in the state folder, and
//! stopped by those pid files (`cluster down`, or a test's guard).

use std::{
    ffi::OsStr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Where the daemons' pid files and logs are.
#[derive(Clone, Debug)]
pub struct Daemons {
    dir: PathBuf,
}

impl Daemons {
    /// Pid files and logs in `dir` (created).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The log of daemon `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The end of daemon `name`'s log (for error messages).
    pub fn tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log(name)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts `program args` as daemon `name`, in network namespace `netns`
    /// if given, in a session of its own, stdout and stderr to its log.
    pub fn start<I, S>(
        &self,
        name: &str,
        netns: Option<&str>,
        program: &Path,
        args: I,
    ) -> Result<u32>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        if let Some(pid) = self.running(name) {
            bail!("{name} is already running (pid {pid})");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(name))
            .with_context(|| format!("cannot open {}", self.log(name).display()))?;
        // `ip netns exec` execs the program: the pid is the daemon's own.
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; the child gets its own
        // session, so a Ctrl-C of `cluster up` does not reach it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let pid = child.id();
        // Not waited on here: the daemon outlives this process. Reaped by
        // the tests' process, or by init once `cluster up` exits.
        std::mem::forget(child);
        std::fs::write(self.pid_file(name), pid.to_string())
            .with_context(|| format!("cannot write {}", self.pid_file(name).display()))?;
        Ok(pid)
    }

    /// The pid of daemon `name` if it is alive.
    pub fn running(&self, name: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A zombie (a test's own child that died) is not running.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state != 'Z').then_some(pid)
    }

    /// Fails, with the end of its log, if daemon `name` is not running.
    pub fn check(&self, name: &str) -> Result<()> {
        if self.running(name).is_none() {
            bail!(
                "{name} is not running; the end of its log:\n{}",
                self.tail(name, 30)
            );
        }
        Ok(())
    }

    /// Stops daemon `name`: SIGTERM, then SIGKILL after `grace`. Quiet when
    /// it is not running.
    pub fn stop(&self, name: &str, grace: Duration) {
        if let Some(pid) = self.running(name) {
            let pid = pid as libc::pid_t;
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let end = Instant::now() + grace;
            while self.running(name).is_some() && Instant::now() < end {
                reap(pid);
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.running(name).is_some() {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let end = Instant::now() + Duration::from_secs(5);
                while self.running(name).is_some() && Instant::now() < end {
                    reap(pid);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            reap(pid);
        }
        let _ = std::fs::remove_file(self.pid_file(name));
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }
}

/// Reaps `pid` if it is this process's child that has exited.
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid on a pid with WNOHANG; fails harmlessly for a
    // process that is not our child.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}
