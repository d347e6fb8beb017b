//! An apiserver that runs on this node, as a process of the host (a
//! control-plane node, a single-node cluster). Its connections to pods
//! (the apiserver proxy), to the kubelet and to the node come from the
//! node's own addresses (to a bridge CNI's pods, from the bridge's), so
//! the roles of addresses make them node traffic. The process tells them
//! apart: **a connection is the apiserver's when the process that
//! `connect()`s it holds a listening socket, in the host network
//! namespace, on an apiserver endpoint that is one of this node's
//! addresses** (`--apiserver`, or discovery's `kubernetes` endpoints; not
//! the VIPs).
//!
//! Why the listener: a process's name (`comm`) is anyone's to set
//! (`prctl(PR_SET_NAME)`), and cgroups differ by runtime (and are flat on
//! hybrid or v1 hosts); but only one process can listen on the apiserver's
//! address and port, as long as it does not set `SO_REUSEPORT`.
//! kube-apiserver sets it only with `--permit-port-sharing`: then any
//! process of the same user can bind the same port as well, and counts as
//! the apiserver too. An endpoint that is not an address of this
//! namespace's interfaces is never looked at: any process may bind a
//! foreign address (`IP_FREEBIND`).
//!
//! Every [`REFRESH_INTERVAL`], and when discovery's endpoints change, the
//! agent lists the listening TCP sockets of its own network namespace (the
//! host's: the DaemonSet has `hostNetwork`) with sock_diag, keeps those
//! that take connections to a local endpoint, and finds the processes that
//! hold them through the `<proc>/<pid>/fd` links (`--host-proc`: the
//! host's process ids, which are the tgids the kernel programs record at
//! `connect()`). Their tgids are what `APISERVER_TASKS` holds
//! ([`crate::ebpf::ApiserverTasks`]); a process that exited leaves it at
//! the next look. Reading every process's descriptors is the expensive
//! part: between changes the agent only checks that the holders it knows
//! still hold their sockets, and reads everything again every
//! [`RESCAN_INTERVAL`] or when anything changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::Ordering,
        mpsc::{Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    agent_counters::{AgentCounters, Component},
    ebpf::ApiserverTasks,
    sock_diag::{Diag, Listener},
};

/// How often the agent looks: after an apiserver restart, its new process
/// is recognised within this (and its connections until then are node
/// traffic).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// How often every process's descriptors are read even when nothing
/// seems to have changed (a process that got a listener's descriptor from
/// its holder, by `fork` or `SCM_RIGHTS`).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(60);

/// Whether `l` takes the connections made to `endpoint`: the same port,
/// and its address or a wildcard of the family (an IPv6 wildcard without
/// `IPV6_V6ONLY` takes IPv4 too, as Go's listeners on `:6443` are).
pub(crate) fn serves(l: &Listener, endpoint: SocketAddr) -> bool {
    if l.addr.port() != endpoint.port() {
        return false;
    }
    let to = endpoint.ip().to_canonical();
    match l.addr.ip() {
        IpAddr::V4(a) => to.is_ipv4() && (a.is_unspecified() || IpAddr::V4(a) == to),
        IpAddr::V6(a) if a.is_unspecified() => to.is_ipv6() || !l.v6only,
        // `::ffff:a.b.c.d` takes IPv4 connections to a.b.c.d.
        IpAddr::V6(a) => IpAddr::V6(a).to_canonical() == to,
    }
}

/// The inodes of the `listeners` that take connections to one of the
/// `endpoints` whose address is `local` (this network namespace's): an
/// endpoint elsewhere is never looked at, since any process may bind a
/// foreign address (`IP_FREEBIND`) and listen there.
pub(crate) fn served_inodes(
    listeners: &[Listener],
    endpoints: &[SocketAddr],
    local: &HashSet<IpAddr>,
) -> BTreeSet<u32> {
    let endpoints: Vec<SocketAddr> = endpoints
        .iter()
        .copied()
        .filter(|ep| local.contains(&ep.ip().to_canonical()))
        .collect();
    listeners
        .iter()
        .filter(|l| endpoints.iter().any(|ep| serves(l, *ep)))
        .map(|l| l.inode)
        .collect()
}

/// The addresses of this network namespace's interfaces (`getifaddrs`).
pub fn interface_addresses() -> io::Result<HashSet<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = HashSet::new();
    let mut next = list;
    while !next.is_null() {
        // SAFETY: a node of the list getifaddrs made, valid until freed;
        // each address is the sockaddr type its family says.
        unsafe {
            let ifa = &*next;
            next = ifa.ifa_next;
            let Some(sa) = ifa.ifa_addr.as_ref() else {
                continue;
            };
            match i32::from(sa.sa_family) {
                libc::AF_INET => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    out.insert(IpAddr::V4(Ipv4Addr::from(
                        sin.sin_addr.s_addr.to_ne_bytes(),
                    )));
                }
                libc::AF_INET6 => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    out.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
    }
    // SAFETY: the list getifaddrs made, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// Who holds some sockets: each process (tgid) with its descriptors of
/// them, as (fd, inode).
pub type Held = BTreeMap<u32, Vec<(u32, u32)>>;

/// What [`holders`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Holders {
    /// The processes holding one of the sockets.
    pub held: Held,
    /// Processes whose descriptors could not be read (permission: the
    /// agent needs `CAP_SYS_PTRACE` for other users' processes and for
    /// those with capabilities it lacks; an LSM, or a process of a more
    /// privileged user namespace, may refuse even so).
    pub unreadable: Vec<u32>,
}

/// The socket inode a `/proc/<pid>/fd/<n>` link names (`socket:[N]`).
fn socket_inode(link: &Path) -> Option<u32> {
    let link = link.as_os_str().to_str()?;
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The processes under `proc` (a procfs) that hold one of the sockets
/// `inodes`. Processes that exit meanwhile are skipped; `Err` only if
/// `proc` itself cannot be listed.
pub fn holders(proc: &Path, inodes: &BTreeSet<u32>) -> io::Result<Holders> {
    let mut out = Holders::default();
    for entry in std::fs::read_dir(proc)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match sockets_of(&entry.path(), inodes) {
            Ok(fds) if !fds.is_empty() => {
                out.held.insert(pid, fds);
            }
            Ok(_) => {}
            Err(()) => out.unreadable.push(pid),
        }
    }
    Ok(out)
}

/// The descriptors of the process at `dir` (`<proc>/<pid>`) that are one
/// of the sockets `inodes`, as (fd, inode); `Err` when the process's
/// descriptors may not be read (permission). A process that is gone, or a
/// descriptor closed meanwhile, has none.
fn sockets_of(dir: &Path, inodes: &BTreeSet<u32>) -> Result<Vec<(u32, u32)>, ()> {
    let denied = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied;
    let fds = match std::fs::read_dir(dir.join("fd")) {
        Ok(fds) => fds,
        Err(e) if denied(&e) => return Err(()),
        Err(_) => return Ok(Vec::new()), // exited
    };
    let mut found = Vec::new();
    for fd in fds.flatten() {
        let Some(n) = fd.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match std::fs::read_link(fd.path()) {
            Ok(link) => {
                if let Some(inode) = socket_inode(&link).filter(|i| inodes.contains(i)) {
                    found.push((n, inode));
                }
            }
            Err(e) if denied(&e) => return Err(()),
            Err(_) => {} // closed meanwhile
        }
    }
    Ok(found)
}

/// Whether every process in `held` still holds those descriptors.
fn still_held(proc: &Path, held: &Held) -> bool {
    held.iter().all(|(pid, fds)| {
        fds.iter().all(|(fd, inode)| {
            std::fs::read_link(proc.join(pid.to_string()).join("fd").join(fd.to_string()))
                .is_ok_and(|link| socket_inode(&link) == Some(*inode))
        })
    })
}

/// A process for the log: `PID (COMM)`.
fn describe(proc: &Path, pid: u32) -> String {
    let comm = std::fs::read_to_string(proc.join(pid.to_string()).join("comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_default();
    format!("{pid} ({comm})")
}

/// The agent's view of the local apiserver and its writer of
/// `APISERVER_TASKS`. Lives on one thread ([`spawn`]) once the programs
/// are attached; [`Self::refresh`] before, so that they start knowing it.
pub struct LocalApiserver {
    tasks: ApiserverTasks,
    proc: PathBuf,
    /// A sock_diag socket in the agent's (the host's) network namespace.
    diag: Diag,
    counters: Arc<AgentCounters>,
    /// The apiserver endpoints; `None` until they are known (discovery's
    /// first view): until then the map keeps what it has (the previous
    /// programs' processes, carried over at a restart).
    endpoints: Option<Vec<SocketAddr>>,
    /// The listeners' inodes and their holders at the last look.
    inodes: BTreeSet<u32>,
    held: Held,
    /// When every process was last read, and which could not be.
    scanned: Option<Instant>,
    unreadable: Vec<u32>,
    /// The processes last written, for the log.
    recognised: BTreeSet<u32>,
    /// The last failure logged: logged again only when it changes.
    failure: Option<String>,
}

impl std::fmt::Debug for LocalApiserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApiserver")
            .field("endpoints", &self.endpoints)
            .field("recognised", &self.recognised)
            .finish_non_exhaustive()
    }
}

impl LocalApiserver {
    /// Starts with `endpoints` (`None`: not known yet), reading processes
    /// under `proc`; looks in the calling thread's network namespace.
    pub fn new(
        tasks: ApiserverTasks,
        proc: PathBuf,
        endpoints: Option<Vec<SocketAddr>>,
        counters: Arc<AgentCounters>,
    ) -> io::Result<Self> {
        Ok(Self {
            tasks,
            proc,
            diag: Diag::new()?,
            counters,
            endpoints,
            inodes: BTreeSet::new(),
            held: Held::new(),
            scanned: None,
            unreadable: Vec::new(),
            recognised: BTreeSet::new(),
            failure: None,
        })
    }

    /// The map, for [`crate::ebpf::Datapath::attach`]'s carry-over.
    pub fn tasks_mut(&mut self) -> &mut ApiserverTasks {
        &mut self.tasks
    }

    /// One look, written to the map; failures are logged (when they
    /// change) and each counted in `cp_observer_agent_errors_total`.
    pub fn refresh(&mut self) {
        let Some(endpoints) = self.endpoints.clone() else {
            self.publish();
            return;
        };
        let (tgids, failure) = match self.look(&endpoints) {
            Ok(found) => found,
            // What the map says stays: nothing better is known.
            Err(e) => {
                self.failed(e);
                self.publish();
                return;
            }
        };
        let shortfall = self.tasks.sync(&tgids);
        let failure = failure.or_else(|| {
            shortfall.error.as_ref().map(|e| {
                format!(
                    "{} of {} processes cannot be written to map APISERVER_TASKS: {e}",
                    shortfall.unwritten + shortfall.stale,
                    tgids.len()
                )
            })
        });
        match failure {
            Some(f) => self.failed(f),
            None => {
                if self.failure.take().is_some() {
                    tracing::info!("local apiserver: looking works again");
                }
            }
        }
        if tgids != self.recognised {
            if tgids.is_empty() {
                tracing::info!(
                    "local apiserver: no process holds the apiserver's listener on this node"
                );
            } else {
                let processes: Vec<String> =
                    tgids.iter().map(|p| describe(&self.proc, *p)).collect();
                tracing::info!(
                    ?processes,
                    endpoints = ?endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "local apiserver: the processes holding the apiserver's listener are the control plane"
                );
            }
            self.recognised = tgids;
        }
        self.publish();
    }

    /// Exports how many processes the map holds.
    fn publish(&self) {
        self.counters
            .local_apiserver_processes
            .store(self.tasks.len() as u64, Ordering::Relaxed);
    }

    /// Counts a failure, and logs it unless it is the one logged last.
    fn failed(&mut self, what: String) {
        self.counters.error(Component::LocalApiserver);
        if self.failure.as_ref() != Some(&what) {
            tracing::warn!("local apiserver: {what}");
            self.failure = Some(what);
        }
    }

    /// The processes holding a listener of a local endpoint, and what
    /// kept the answer from being complete; `Err` when there is no answer.
    fn look(
        &mut self,
        endpoints: &[SocketAddr],
    ) -> Result<(BTreeSet<u32>, Option<String>), String> {
        let mine = interface_addresses()
            .map_err(|e| format!("cannot list this node's addresses (getifaddrs): {e}"))?;
        let local: Vec<SocketAddr> = endpoints
            .iter()
            .copied()
            .filter(|ep| mine.contains(&ep.ip().to_canonical()))
            .collect();
        // No local endpoint (a worker node): nothing to list or read.
        let inodes = if local.is_empty() {
            BTreeSet::new()
        } else {
            let listeners = self
                .diag
                .listeners()
                .map_err(|e| format!("cannot list listening sockets (sock_diag): {e}"))?;
            served_inodes(&listeners, &local, &mine)
        };
        if inodes.is_empty() {
            self.inodes.clear();
            self.held.clear();
            self.unreadable.clear();
            return Ok((BTreeSet::new(), None));
        }
        let fresh = inodes == self.inodes
            && !self.held.is_empty()
            && self
                .scanned
                .is_some_and(|at| at.elapsed() < RESCAN_INTERVAL)
            && still_held(&self.proc, &self.held);
        if !fresh {
            let h = holders(&self.proc, &inodes)
                .map_err(|e| format!("cannot list processes in {}: {e}", self.proc.display()))?;
            self.held = h.held;
            self.unreadable = h.unreadable;
            self.scanned = Some(Instant::now());
        }
        self.inodes = inodes;
        let tgids: BTreeSet<u32> = self.held.keys().copied().collect();
        let endpoints = local
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let proc = self.proc.display();
        let unreadable = match self.unreadable.as_slice() {
            [] => "none".to_owned(),
            [pid] => format!("process {pid}"),
            [pid, more @ ..] => format!("process {pid} and {} more", more.len()),
        };
        let failure = if tgids.is_empty() {
            Some(format!(
                "a socket listens on the apiserver endpoint {endpoints} of this node, but no \
                 process in {proc} that the agent can read holds it (unreadable: {unreadable}; \
                 the agent needs CAP_SYS_PTRACE, and --host-proc without hostPID)"
            ))
        } else if !self.unreadable.is_empty() {
            Some(format!(
                "the descriptors of {unreadable} in {proc} cannot be read (the agent needs \
                 CAP_SYS_PTRACE): other processes than those found may hold the apiserver's \
                 listener on {endpoints}"
            ))
        } else {
            None
        };
        Ok((tgids, failure))
    }
}

/// Runs `watch` on a thread of its own: a look every [`REFRESH_INTERVAL`],
/// and at once when `endpoints` brings new apiserver endpoints
/// (discovery's). Returns when every sender of `endpoints` is gone.
pub fn spawn(
    mut watch: LocalApiserver,
    endpoints: Receiver<Vec<SocketAddr>>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("local-apiserver".into())
        .spawn(move || {
            // A first look at once: the programs were attached since the
            // last (and may have carried processes over).
            let mut next = Instant::now();
            loop {
                match endpoints.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(new) => {
                        if watch.endpoints.as_ref() == Some(&new) {
                            continue;
                        }
                        watch.endpoints = Some(new);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                watch.refresh();
                next = Instant::now() + REFRESH_INTERVAL;
            }
        })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn listener(addr: &str, v6only: bool) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            v6only,
            inode: 1,
        }
    }

    #[test]
    fn which_listeners_take_an_endpoints_connections() {
        let v4: SocketAddr = "10.0.0.5:6443".parse().unwrap();
        let v6: SocketAddr = "[fd00::5]:6443".parse().unwrap();
        for (l, v6only, to, takes) in [
            ("10.0.0.5:6443", false, v4, true),
            ("0.0.0.0:6443", false, v4, true),
            ("10.0.0.6:6443", false, v4, false),
            ("127.0.0.1:6443", false, v4, false),
            ("10.0.0.5:6444", false, v4, false),
            ("0.0.0.0:6443", false, v6, false),
            // Go's `:6443`: one IPv6 socket for both families.
            ("[::]:6443", false, v4, true),
            ("[::]:6443", false, v6, true),
            ("[::]:6443", true, v4, false),
            ("[::]:6443", true, v6, true),
            ("[::ffff:10.0.0.5]:6443", false, v4, true),
            ("[fd00::5]:6443", true, v6, true),
            ("[fd00::6]:6443", true, v6, false),
            ("[::1]:6443", true, v6, false),
        ] {
            assert_eq!(
                serves(&listener(l, v6only), to),
                takes,
                "{l} v6only={v6only} → {to}"
            );
        }
        // An IPv4-mapped endpoint is its IPv4 address.
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:6443".parse().unwrap();
        assert!(serves(&listener("0.0.0.0:6443", false), mapped));
    }

    /// A fake procfs: `pid/fd/n` links as the kernel makes them.
    fn fake_proc(processes: &[(&str, &[(&str, &str)])]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cpo-fake-proc-{}-{}",
            std::process::id(),
            processes.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (pid, fds) in processes {
            let fd = dir.join(pid).join("fd");
            std::fs::create_dir_all(&fd).unwrap();
            for (n, target) in *fds {
                std::os::unix::fs::symlink(target, fd.join(n)).unwrap();
            }
        }
        dir
    }

    #[test]
    fn the_holders_of_a_socket_are_found_by_its_inode() {
        let proc = fake_proc(&[
            ("1", &[("0", "/dev/null"), ("3", "socket:[777]")]),
            (
                "42",
                &[
                    ("0", "/dev/null"),
                    ("7", "socket:[778]"),
                    ("9", "socket:[777]"),
                ],
            ),
            (
                "43",
                &[
                    ("3", "socket:[7777]"),
                    ("4", "pipe:[777]"),
                    ("5", "anon_inode:[eventfd]"),
                ],
            ),
            ("self", &[("3", "socket:[777]")]),
            ("acpi", &[]),
        ]);
        let found = holders(&proc, &BTreeSet::from([777])).unwrap();
        assert_eq!(
            found,
            Holders {
                held: Held::from([(1, vec![(3, 777)]), (42, vec![(9, 777)])]),
                unreadable: Vec::new(),
            }
        );
        assert!(still_held(&proc, &found.held));
        // The holder closes it: no longer held.
        std::fs::remove_file(proc.join("42/fd/9")).unwrap();
        assert!(!still_held(&proc, &found.held));
        let two = holders(&proc, &BTreeSet::from([777, 778])).unwrap();
        assert_eq!(
            two.held,
            Held::from([(1, vec![(3, 777)]), (42, vec![(7, 778)])])
        );
        assert!(holders(&proc.join("nothing"), &BTreeSet::from([777])).is_err());
        std::fs::remove_dir_all(&proc).unwrap();
    }

    /// The whole resolution against this process: a listener on a local
    /// endpoint names it; one bound to a foreign endpoint's address (which
    /// any process may do: IP_FREEBIND) is never looked at.
    #[test]
    fn a_real_listener_on_a_local_endpoint_names_this_process() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap();
        // TEST-NET-3: no interface of this machine has it.
        let foreign: SocketAddr = "203.0.113.7:6443".parse().unwrap();
        let squatter =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        squatter.set_freebind_v4(true).unwrap();
        squatter.bind(&foreign.into()).unwrap();
        squatter.listen(1).unwrap();

        let local = interface_addresses().unwrap();
        assert!(local.contains(&endpoint.ip()) && !local.contains(&foreign.ip()));
        let listeners = Diag::new().unwrap().listeners().unwrap();
        assert!(
            listeners.iter().any(|l| serves(l, foreign)),
            "the squatter listens: {listeners:?}"
        );
        let inodes = served_inodes(&listeners, &[endpoint, foreign], &local);
        assert_eq!(
            inodes.len(),
            1,
            "only the local endpoint's listener: {inodes:?}"
        );
        let found = holders(Path::new("/proc"), &inodes).unwrap();
        assert_eq!(
            found.held.keys().copied().collect::<Vec<_>>(),
            vec![std::process::id()],
            "{found:?}"
        );
        let fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&listener)).unwrap();
        assert_eq!(
            found.held[&std::process::id()],
            vec![(fd, *inodes.first().unwrap())]
        );
    }
}
