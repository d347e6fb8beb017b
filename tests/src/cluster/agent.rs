//! The real agent as a child process.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::cluster::metrics::Metrics;

/// How long the agent may take to load, verify and attach.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a clean shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `cp-observer` binary under test: `CP_OBSERVER_BIN`, which
/// `cargo xtask test` and `cargo xtask lab` set.
pub fn binary() -> PathBuf {
    std::env::var_os("CP_OBSERVER_BIN").map(PathBuf::from).unwrap_or_else(|| {
        panic!("CP_OBSERVER_BIN is not set: run the tests with `cargo xtask test` (it builds the agent and sets it)")
    })
}

/// A running agent. Stopped with SIGTERM on drop.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// Where it serves `/metrics`.
    pub metrics_addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// The network namespace it runs in (`None`: ours).
    ns: Option<String>,
    /// Runs as PID 1 of a PID namespace of its own under `unshare`
    /// (which blocks SIGTERM): signals go to `unshare`'s child.
    own_pid_ns: bool,
}

/// An agent that exited before serving `/healthz`.
#[derive(Debug)]
pub struct Exited {
    /// How it exited.
    pub status: ExitStatus,
    /// What it printed on stderr.
    pub stderr: String,
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the agent exited with {} before serving /healthz; stderr:\n{}",
            self.status, self.stderr
        )
    }
}

/// Process ids of agents alive in this process, for [`terminate_all`].
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Sends SIGTERM to every agent this process started and still holds. For
/// signal handling threads, where `Drop` will not run.
pub fn terminate_all() {
    for pid in std::mem::take(
        &mut *RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    ) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("loopback port")
        .port()
}

/// How to start the agent: all empty is [`Agent::start`]'s way.
#[derive(Clone, Copy, Default)]
struct Launch<'a> {
    /// The network namespace to run in (the host's if `None`).
    ns: Option<&'a str>,
    /// The only capabilities left in its bounding set.
    caps: Option<&'a [String]>,
    /// A command line the agent's is appended to (`unshare ...`, which
    /// must make the agent its only child).
    wrapper: Option<&'a [&'a str]>,
    /// Added to its environment.
    env: &'a [(&'a str, &'a str)],
    /// Its soft limit of open descriptors.
    nofile: Option<u64>,
}

impl Agent {
    /// Starts `cp-observer run ARGS --metrics-addr 127.0.0.1:<free>` and waits
    /// for `/healthz`. Panics with the agent's stderr if it does not come up.
    pub fn start(args: &[String]) -> Self {
        Self::start_in(None, args)
    }

    /// [`Self::start`], returning how the agent exited if it did before
    /// serving `/healthz` (it still panics if the agent neither exits nor
    /// serves in time).
    pub fn try_start(args: &[String]) -> Result<Self, Exited> {
        Self::spawn(None, None, args)
    }

    /// Panics with what [`Self::spawn`] says if the agent exited.
    fn started(spawned: Result<Self, Exited>) -> Self {
        spawned.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Self::start`], with the agent in network namespace `ns` (as
    /// on a node: it reaches the apiserver from there). Its metrics
    /// endpoint is on that namespace's loopback.
    pub fn start_in(ns: Option<&str>, args: &[String]) -> Self {
        Self::started(Self::spawn(ns, None, args))
    }

    /// Like [`Self::start`], with only `caps` (e.g. `["BPF", "NET_ADMIN"]`)
    /// in the agent's capability bounding set: root in a container that
    /// drops ALL and adds these.
    pub fn start_with_caps(caps: &[String], args: &[String]) -> Self {
        Self::started(Self::try_start_with_caps(caps, args))
    }

    /// [`Self::start_with_caps`], returning how the agent exited if it
    /// did before serving `/healthz` (it still panics if the agent neither
    /// exits nor serves in time).
    pub fn try_start_with_caps(caps: &[String], args: &[String]) -> Result<Self, Exited> {
        Self::spawn(None, Some(caps), args)
    }

    /// Like [`Self::start`], with `env` added to the agent's environment
    /// (e.g. `FAILPOINTS`, the fault injection of the test build) and,
    /// with `nofile`, that soft limit of open descriptors (the hard one
    /// stays ours), as container runtimes that start processes with a soft
    /// limit of 1024 do.
    pub fn start_with(env: &[(&str, &str)], nofile: Option<u64>, args: &[String]) -> Self {
        Self::started(Self::launch(
            &Launch {
                env,
                nofile,
                ..Launch::default()
            },
            args,
        ))
    }

    /// Like [`Self::start`], with the agent as a DaemonSet without
    /// `hostPID` runs it: PID 1 of a PID namespace of its own, its `/proc`
    /// showing only itself, and (in a mount namespace of its own) nothing
    /// under `/run/netns`: the host's processes and their namespaces are
    /// only visible through what `args` point it at (`--host-proc`).
    pub fn start_without_host_pid(args: &[String]) -> Self {
        Self::started(Self::try_start_without_host_pid(None, args))
    }

    /// [`Self::start_without_host_pid`], with only `caps` if given (as
    /// [`Self::start_with_caps`]), returning how the agent exited if it
    /// did before serving `/healthz`.
    pub fn try_start_without_host_pid(
        caps: Option<&[String]>,
        args: &[String],
    ) -> Result<Self, Exited> {
        Self::launch(
            &Launch {
                caps,
                wrapper: Some(&[
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--",
                    "sh",
                    "-c",
                    "mount -t tmpfs none /run/netns && exec \"$0\" \"$@\"",
                ]),
                ..Launch::default()
            },
            args,
        )
    }

    /// Starts the agent and waits for `/healthz`.
    fn spawn(ns: Option<&str>, caps: Option<&[String]>, args: &[String]) -> Result<Self, Exited> {
        Self::launch(
            &Launch {
                ns,
                caps,
                ..Launch::default()
            },
            args,
        )
    }

    /// Starts the agent as `how` says and waits for `/healthz`.
    fn launch(how: &Launch<'_>, args: &[String]) -> Result<Self, Exited> {
        let Launch {
            ns,
            caps,
            wrapper,
            env,
            nofile,
        } = *how;
        let metrics_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        // The wrapper (which may need every capability) runs setpriv,
        // which drops them for the agent.
        let mut line: Vec<std::ffi::OsString> =
            wrapper.unwrap_or_default().iter().map(Into::into).collect();
        if let Some(caps) = caps {
            let set: String = caps
                .iter()
                .map(|c| format!(",+{}", c.to_lowercase()))
                .collect();
            line.extend(
                [
                    "setpriv",
                    "--bounding-set",
                    &format!("-all{set}"),
                    "--inh-caps",
                    "-all",
                    "--",
                ]
                .map(Into::into),
            );
        }
        line.push(binary().into());
        let mut cmd = Command::new(&line[0]);
        cmd.args(&line[1..]);
        // Enter `ns` for the network only (not `ip netns exec`, which also
        // remounts /sys and would hide the cgroup v2 mount).
        let netns = ns.map(|n| {
            let path = format!("/run/netns/{n}");
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"))
        });
        let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // The lab blocks SIGINT/SIGTERM to take them on one thread; the agent
        // must start with them unblocked, as under a real init.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(soft) = nofile {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        // Pins are opt-in for the lab: each test gets a clean kernel unless
        // it names a --pin-dir of its own.
        let no_pin = if args.iter().any(|a| a == "--pin-dir") {
            None
        } else {
            Some("--no-pin")
        };
        let mut child = cmd
            .arg("run")
            .args(args)
            .args(no_pin)
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the agent binary starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (stdout.clone(), stderr.clone());
        let child_out = child.stdout.take().expect("piped stdout");
        let mut child_err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(child_out).lines().map_while(Result::ok) {
                out.lock().expect("lock").push(line);
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = child_err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        RUNNING.lock().expect("lock").push(child.id());
        let mut agent = Self {
            child,
            metrics_addr,
            stdout,
            stderr,
            ns: ns.map(str::to_owned),
            own_pid_ns: wrapper.is_some(),
        };
        let stderr = agent.stderr.clone();
        let serving = crate::eventually(
            START_TIMEOUT,
            crate::later(|| {
                format!(
                    "the agent serves /healthz; stderr:\n{}",
                    stderr.lock().expect("lock")
                )
            }),
            || {
                if let Some(status) = agent.child.try_wait().expect("wait on the agent") {
                    std::thread::sleep(Duration::from_millis(100)); // let stderr drain
                    return Some(Err(Exited {
                        status,
                        stderr: agent.stderr(),
                    }));
                }
                agent
                    .get("/healthz")
                    .is_some_and(|(code, _)| code == 200)
                    .then_some(Ok(()))
            },
        );
        serving.map(|()| agent)
    }

    /// `GET path` on the metrics address: status code and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.metrics_addr;
        let connect = move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok();
        let mut s = match &self.ns {
            Some(ns) => crate::cluster::netns::NetNs::existing(ns).run(connect),
            None => connect(),
        }?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics_addr
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, dechunk(&body)))
    }

    /// Scrapes and parses `/metrics`.
    pub fn scrape(&self) -> Metrics {
        let (code, body) = self.get("/metrics").expect("the agent answers /metrics");
        assert_eq!(code, 200, "/metrics answered {code}: {body}");
        Metrics::parse(&body)
    }

    /// Waits until discovery has found every kind of thing the lab cluster
    /// has (endpoint, VIP, node address, pod CIDR, konnectivity agent).
    pub fn wait_for_complete_discovery(&self) {
        let what = crate::later(|| {
            format!(
                "discovery complete: {:?}; stderr:\n{}",
                self.scrape().nonzero("cp_observer_discovered"),
                self.stderr()
            )
        });
        crate::eventually(Duration::from_secs(30), what, || {
            let m = self.scrape();
            observer::discovery::Cluster::KINDS
                .iter()
                .all(|k| m.sum("cp_observer_discovered", &[("kind", k)]) >= 1.0)
        });
    }

    /// Lines the agent printed on stdout (events) so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("lock").clone()
    }

    /// How many lines the agent printed on stdout so far.
    pub fn stdout_len(&self) -> usize {
        self.stdout.lock().expect("lock").len()
    }

    /// What the agent printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Peak resident memory (VmHWM, KiB) and CPU time (user + system) so far.
    pub fn usage(&self) -> (u64, Duration) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        (hwm, cpu_time(pid))
    }

    /// Waits up to `timeout` for the agent to exit by itself; `None` if it
    /// still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on the agent") {
                std::thread::sleep(Duration::from_millis(100)); // let stderr drain
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after a timeout).
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill(mut self) -> ExitStatus {
        RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|p| *p != self.child.id());
        let _ = self.child.kill();
        self.child.wait().expect("wait on the agent")
    }

    fn terminate(&mut self) -> ExitStatus {
        RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|p| *p != self.child.id());
        if let Some(status) = self.child.try_wait().expect("wait on the agent") {
            return status;
        }
        let pid = if self.own_pid_ns {
            // `unshare` blocks SIGTERM: signal the agent, its only child.
            let id = self.child.id();
            std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok())
                .unwrap_or(id)
        } else {
            self.child.id()
        };
        // SAFETY: signalling our own child (or its only child).
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait on the agent") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the wrapper's child would outlive it.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = self.child.kill();
        self.child.wait().expect("wait on the agent")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Undoes `Transfer-Encoding: chunked` if the body looks chunked.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_owned();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// A procfs of the host's PID namespace mounted at a path of its own, as
/// the DaemonSet's hostPath volume of `/proc` gives it (pass
/// [`HostProc::flag`]); unmounted on drop.
#[derive(Debug)]
pub struct HostProc(PathBuf);

impl HostProc {
    /// Mounts it (read-only) under the temporary directory.
    pub fn mount() -> Self {
        let dir = std::env::temp_dir().join(format!("cpo-host-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a mount point");
        let ok = Command::new("mount")
            .args(["-t", "proc", "-o", "ro", "proc"])
            .arg(&dir)
            .status()
            .expect("mount runs")
            .success();
        assert!(ok, "cannot mount procfs at {}", dir.display());
        Self(dir)
    }

    /// `--host-proc PATH`.
    pub fn flag(&self) -> [String; 2] {
        [
            "--host-proc".to_owned(),
            self.0.to_string_lossy().into_owned(),
        ]
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A process that holds a network namespace as a pod's pause container
/// does, and like it runs as user 65535 without capabilities: the host's
/// procfs shows the namespace only through it. Killed on drop.
#[derive(Debug)]
pub struct Pause(Child);

impl Pause {
    /// Starts one in the lab namespace `ns`.
    pub fn start(ns: &crate::cluster::netns::NetNs) -> Self {
        Self(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", ns.name()))
                .args([
                    "setpriv",
                    "--reuid=65535",
                    "--regid=65535",
                    "--clear-groups",
                    "--inh-caps=-all",
                    "--bounding-set=-all",
                    "sleep",
                    "600",
                ])
                .spawn()
                .expect("nsenter runs"),
        )
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Programs each agent loads (and attaches): ingress, egress, connect4, connect6.
pub const PROGRAMS_PER_AGENT: usize = 4;

/// How many cp-observer programs (`cgroup_skb` named `ingress`/`egress`,
/// `cgroup_sock_addr` named `connect4`/`connect6`) are loaded now.
pub fn loaded_observer_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            let ty = format!("{:?}", p.program_type());
            match p.name_as_str() {
                Some("ingress" | "egress") => ty.ends_with("CGROUP_SKB"),
                Some("connect4" | "connect6") => ty.ends_with("CGROUP_SOCK_ADDR"),
                _ => false,
            }
        })
        .count()
}

/// Waits until [`loaded_observer_programs`] is `n`: the kernel frees the
/// programs of an agent that exited, or replaced ones, asynchronously.
pub fn programs_settle_at(n: usize) {
    let what = crate::later(|| {
        format!(
            "{} cp-observer programs loaded, want {n}",
            loaded_observer_programs()
        )
    });
    crate::eventually(Duration::from_secs(5), what, || {
        loaded_observer_programs() == n
    });
}

/// Runs `cp-observer cleanup --pin-dir dir`: detaches pinned programs and
/// removes the pins a test (or a killed earlier run of it) left.
pub fn cleanup_pins(dir: &std::path::Path) -> std::process::Output {
    Command::new(binary())
        .arg("cleanup")
        .arg("--pin-dir")
        .arg(dir)
        .output()
        .expect("cleanup runs")
}

/// A process's CPU time so far (user + system, from /proc/PID/stat; zero
/// when it cannot be read).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    Duration::from_millis(ticks * 1000 / hz)
}
