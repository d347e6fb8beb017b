//! Resetting blocked connections.
//!
//! The kernel programs already drop every payload segment of a blocked
//! connection, so no request reaches the server. To make both ends fail at
//! once instead of retransmitting into the void until a timeout, the agent
//! destroys the connection's local socket with the kernel's `SOCK_DESTROY`
//! (sock_diag netlink, CONFIG_INET_DIAG_DESTROY): the kernel aborts the
//! socket, its application gets ECONNABORTED, and its peer gets a RST (if
//! that RST's sequence number is beyond what the peer received, because
//! the programs dropped the bytes in between, the peer answers with a
//! challenge ACK, which the aborted end's kernel answers with a RST at the
//! exact number). This needs no extra kernel program and no kfunc, only a
//! netlink request — in the network namespace of the socket.
//!
//! **Which socket.** A block event carries the cookie of the local socket
//! whose segment decided (`Event::cookie`); the destroy request names it,
//! so the kernel destroys exactly that socket and never a newer connection
//! that reuses the same four-tuple later. Connections judged again from the
//! pinned flow table at a restart, and those the expiry forgets, have only
//! their client's cookie, and only when the client is a process on this
//! node (`Flow::client_cookie`); otherwise the socket with those ends is
//! destroyed (the tuple fallback: a reuse of the tuple within that window
//! is possible but needs the old connection gone first).
//!
//! **Which namespace.** Without `hostPID` the agent's `/proc` shows only its
//! own processes, so the namespaces come from the host's procfs
//! (`--host-proc`, a read-only hostPath mount), plus the bind mounts under
//! `/run/netns` and `/var/run/netns`. The enforcer thread enters each
//! namespace once, opens a sock_diag socket there and goes back home: a
//! netlink socket stays bound to the namespace it was created in, so later
//! requests need no `setns`. It remembers which namespace held which local
//! address, asks there first, then every namespace it knows, and reads the
//! list again only on a miss (at most every [`REFRESH_INTERVAL`]) or every
//! [`SWEEP_INTERVAL`] (a cached socket keeps its namespace alive: those of
//! deleted pods are let go then). If it cannot return to its own namespace
//! the thread stops with an error rather than go on in a pod's.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::Ordering,
        mpsc::{self, RecvTimeoutError, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use observer_common::{
    counters::ResetFailure,
    flow::{Flow, FlowKey},
};

use crate::{
    agent_counters::AgentCounters,
    sock_diag::{Diag, Found},
};

/// How many resets may wait for the enforcer; more are dropped, each
/// counted as a reset error (`queue-full`).
pub const QUEUE_CAPACITY: usize = 4096;
/// A miss reads the namespace list again, but at most this often: a flood
/// of connections whose sockets are gone cannot keep the enforcer busy
/// scanning `/proc`.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);
/// The namespace list is read again at least this often, to let go of the
/// namespaces that went away (each cached socket holds its namespace).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A connection to reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The client's end.
    pub client: SocketAddr,
    /// The server's end.
    pub server: SocketAddr,
    /// Socket cookie of the local socket to destroy, or 0: then whichever
    /// socket has these ends (see the module's documentation).
    pub cookie: u64,
    /// Whether a socket must still be there (a connection blocked just
    /// now, or one the flow table says is open): finding none is then a
    /// reset error.
    pub live: bool,
    /// Why it is reset, for the log.
    pub why: &'static str,
}

impl Target {
    /// The connection of a flow entry, named by its client's cookie if
    /// the client is a local process. Not `live`: an entry outlives its
    /// sockets when they went without a FIN or RST the programs counted
    /// (a client that gave up after its bytes were dropped), so finding
    /// no socket is no error.
    pub fn of_flow(key: &FlowKey, flow: &Flow, why: &'static str) -> Self {
        let (client, server) = ends(key, flow);
        Self {
            client,
            server,
            cookie: flow.client_cookie,
            live: false,
            why,
        }
    }
}

/// (client, server) of the connection a flow entry describes.
pub fn ends(key: &FlowKey, flow: &Flow) -> (SocketAddr, SocketAddr) {
    let (c, cport, s, sport) = key.ends(flow);
    (
        SocketAddr::new(c.into(), cport),
        SocketAddr::new(s.into(), sport),
    )
}

/// Checks `--host-proc` before anything is loaded: it must be a procfs.
pub fn check_host_proc(path: &Path) -> anyhow::Result<()> {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    match crate::sys::fs_type(path) {
        Ok(PROC_SUPER_MAGIC) => Ok(()),
        Ok(_) => anyhow::bail!("--host-proc {} is not a procfs", path.display()),
        Err(e) => anyhow::bail!("--host-proc {} cannot be read: {e}", path.display()),
    }
}

/// The enforcer's queue. Sending never waits: the event reader must not.
#[derive(Clone, Debug)]
pub struct Queue {
    tx: mpsc::SyncSender<Target>,
    counters: Arc<AgentCounters>,
}

impl Queue {
    /// Hands `target` to the enforcer; when its queue is full the reset is
    /// dropped and counted (`queue-full`), when it is gone, counted too.
    pub fn push(&self, target: Target) {
        let (reason, what) = match self.tx.try_send(target) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => (ResetFailure::QueueFull, "the enforcer's queue is full"),
            Err(TrySendError::Disconnected(_)) => (ResetFailure::Failed, "the enforcer stopped"),
        };
        let n = self.counters.reset_errors[reason as usize].fetch_add(1, Ordering::Relaxed) + 1;
        // A flood would log every drop: log the 1st, 2nd, 4th, 8th...
        if n.is_power_of_two() {
            tracing::warn!(
                client = %target.client,
                server = %target.server,
                dropped = n,
                "cannot reset connection: {what}"
            );
        }
    }
}

/// Starts the enforcer thread: it resets every [`Target`] pushed on the
/// queue until every [`Queue`] is dropped. It ends with an error only if
/// it cannot return to its own network namespace.
pub fn spawn(
    counters: Arc<AgentCounters>,
    host_proc: PathBuf,
) -> io::Result<(Queue, JoinHandle<io::Result<()>>)> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
    let c = counters.clone();
    let thread = std::thread::Builder::new()
        .name("enforcer".into())
        .spawn(move || {
            let result = serve(&rx, &c, host_proc);
            if let Err(e) = &result {
                tracing::error!("the enforcer stopped: {e}");
            }
            result
        })?;
    Ok((Queue { tx, counters }, thread))
}

fn serve(
    rx: &mpsc::Receiver<Target>,
    counters: &AgentCounters,
    host_proc: PathBuf,
) -> io::Result<()> {
    let mut enforcer = Enforcer::new(host_proc)?;
    loop {
        match rx.recv_timeout(SWEEP_INTERVAL) {
            Ok(target) => enforcer.reset_counted(&target, counters)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if enforcer
            .refreshed
            .is_some_and(|at| at.elapsed() >= SWEEP_INTERVAL)
        {
            enforcer.refresh()?;
        }
    }
}

/// What became of a [`Target`].
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its socket was destroyed.
    Reset,
    /// Its socket is gone: closed (time-wait), or replaced by another
    /// socket on the same ends, which was left alone.
    Gone,
    /// No socket on its ends in any namespace the enforcer can enter.
    NotFound,
}

/// A network namespace's identity: the device and inode of its nsfs file,
/// the same through every path to it, and never reused while the cached
/// socket holds the namespace.
type NsId = (u64, u64);

/// A namespace the enforcer has a sock_diag socket in.
struct Namespace {
    diag: Diag,
    /// Where it was found (for the log).
    path: PathBuf,
    /// Its cookie (SO_NETNS_COOKIE, Linux 5.14+), for the log.
    cookie: Option<u64>,
}

/// The enforcer's state; it lives on one thread, which it moves between
/// network namespaces.
pub struct Enforcer {
    host_proc: PathBuf,
    /// This thread's own namespace, where it returns after each `setns`.
    home: File,
    namespaces: HashMap<NsId, Namespace>,
    /// Which namespace held a socket with this local address.
    by_addr: HashMap<IpAddr, NsId>,
    /// When the list was last read; `None` before the first reset (an
    /// agent that never resets never looks).
    refreshed: Option<Instant>,
    /// How many namespaces were out of reach at the last look (logged
    /// when it changes).
    out_of_reach: usize,
}

/// A failure to reset one connection, or (`Home`) of the enforcer.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// sock_diag, or entering a namespace, failed.
    #[error("{0}")]
    Failed(io::Error),
    /// The thread cannot return to its own namespace: it must stop.
    #[error("cannot return to the agent's network namespace: {0}")]
    Home(io::Error),
}

impl Enforcer {
    /// An enforcer that finds namespaces under `host_proc` (and
    /// `/run/netns`, `/var/run/netns`), from its first reset on.
    pub fn new(host_proc: PathBuf) -> io::Result<Self> {
        Ok(Self {
            host_proc,
            home: File::open("/proc/thread-self/ns/net")?,
            namespaces: HashMap::new(),
            by_addr: HashMap::new(),
            refreshed: None,
            out_of_reach: 0,
        })
    }

    /// [`Self::reset`], its outcome counted in `counters` and logged; `Err`
    /// only when the thread must stop.
    pub fn reset_counted(&mut self, t: &Target, counters: &AgentCounters) -> io::Result<()> {
        let (client, server, why) = (t.client, t.server, t.why);
        let failure = match self.reset(t) {
            Ok(Outcome::Reset) => {
                counters.sockets_reset.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%client, %server, cookie = t.cookie, why, "reset connection");
                return Ok(());
            }
            Ok(Outcome::Gone) => {
                tracing::debug!(%client, %server, cookie = t.cookie, why,
                    "connection to reset already gone (another socket on its ends left alone)");
                return Ok(());
            }
            Ok(Outcome::NotFound) if !t.live => {
                tracing::debug!(%client, %server, why, "connection to reset already gone");
                return Ok(());
            }
            Ok(Outcome::NotFound) => {
                tracing::warn!(%client, %server, cookie = t.cookie, why,
                    namespaces = self.namespaces.len(),
                    "cannot reset connection: no socket in any network namespace the agent can enter");
                ResetFailure::NotFound
            }
            Err(ResetError::Failed(e)) => {
                tracing::warn!(%client, %server, why, "cannot reset connection: {e}");
                ResetFailure::Failed
            }
            Err(ResetError::Home(e)) => {
                counters.reset_errors[ResetFailure::Failed as usize]
                    .fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot return to the agent's network namespace: {e}"),
                ));
            }
        };
        counters.reset_errors[failure as usize].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Destroys `t`'s local socket: where its addresses were found before
    /// first, then in every namespace known, then in those a fresh look
    /// finds.
    pub fn reset(&mut self, t: &Target) -> Result<Outcome, ResetError> {
        let mut seen = Seen::default();
        let mut tried = HashSet::new();
        let hinted: Vec<NsId> = [t.server.ip(), t.client.ip()]
            .iter()
            .filter_map(|ip| self.by_addr.get(&ip.to_canonical()).copied())
            .collect();
        let known: Vec<NsId> = self.namespaces.keys().copied().collect();
        for id in hinted.into_iter().chain(known) {
            if tried.insert(id) && self.try_in(id, t, &mut seen) {
                return Ok(Outcome::Reset);
            }
        }
        if !seen.stale
            && !seen.closed
            && self
                .refreshed
                .is_none_or(|at| at.elapsed() >= REFRESH_INTERVAL)
        {
            self.refresh().map_err(ResetError::Home)?;
            let fresh: Vec<NsId> = self
                .namespaces
                .keys()
                .filter(|id| !tried.contains(*id))
                .copied()
                .collect();
            for id in fresh {
                if self.try_in(id, t, &mut seen) {
                    return Ok(Outcome::Reset);
                }
            }
        }
        // An error first: the socket may be where the request failed.
        match seen {
            Seen { error: Some(e), .. } => Err(ResetError::Failed(e)),
            Seen { stale: true, .. } | Seen { closed: true, .. } => Ok(Outcome::Gone),
            _ => Ok(Outcome::NotFound),
        }
    }

    /// Tries both orientations of `t` in namespace `id`; true once one
    /// socket is destroyed.
    fn try_in(&mut self, id: NsId, t: &Target, seen: &mut Seen) -> bool {
        let Some(ns) = self.namespaces.get_mut(&id) else {
            return false;
        };
        // The server's socket sees (local=server, remote=client); a local
        // client's socket sees the reverse.
        for (local, remote) in [(t.server, t.client), (t.client, t.server)] {
            match ns.diag.destroy(local, remote, t.cookie) {
                Ok(Found::Destroyed) => {
                    let ip = local.ip().to_canonical();
                    // Loopback addresses are in every namespace.
                    if !ip.is_loopback() && !ip.is_unspecified() {
                        self.by_addr.insert(ip, id);
                    }
                    return true;
                }
                Ok(Found::Absent) => {}
                Ok(Found::Stale) => seen.stale = true,
                Ok(Found::Closed) => seen.closed = true,
                Err(e) => {
                    tracing::debug!(ns = %ns.path.display(), netns_cookie = ns.cookie,
                        "sock_diag failed: {e}");
                    seen.error = Some(e);
                }
            }
        }
        false
    }

    /// Reads the namespace list again: opens a socket in each new one,
    /// lets go of those that went away. `Err` only when the thread cannot
    /// return home.
    pub fn refresh(&mut self) -> io::Result<()> {
        self.refreshed = Some(Instant::now());
        let (found, unreadable) = self.scan();
        self.namespaces.retain(|id, _| found.contains_key(id));
        self.by_addr.retain(|_, id| found.contains_key(id));
        let mut failed = 0;
        for (id, path) in found {
            if self.namespaces.contains_key(&id) {
                continue;
            }
            match self.open_in(&path) {
                Ok(Some(diag)) => {
                    let cookie = diag.netns_cookie();
                    self.namespaces.insert(id, Namespace { diag, path, cookie });
                }
                Ok(None) => failed += 1,
                Err(e) => return Err(e),
            }
        }
        if failed + unreadable != self.out_of_reach {
            self.out_of_reach = failed + unreadable;
            tracing::warn!(
                unreadable,
                cannot_enter = failed,
                known = self.namespaces.len(),
                host_proc = %self.host_proc.display(),
                "network namespaces out of the enforcer's reach: it needs CAP_SYS_ADMIN to enter \
                 them, CAP_SYS_PTRACE to see those of other users' or more capable processes"
            );
        } else {
            tracing::debug!(known = self.namespaces.len(), "network namespaces read");
        }
        Ok(())
    }

    /// Every namespace visible now, once each, ours first; and how many
    /// could not be read (permission).
    fn scan(&self) -> (HashMap<NsId, PathBuf>, usize) {
        let mut candidates = vec![PathBuf::from("/proc/thread-self/ns/net")];
        for dir in ["/run/netns", "/var/run/netns"] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                candidates.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        }
        match std::fs::read_dir(&self.host_proc) {
            Ok(entries) => candidates.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .as_encoded_bytes()
                            .iter()
                            .all(u8::is_ascii_digit)
                    })
                    .map(|e| e.path().join("ns/net")),
            ),
            Err(e) => tracing::warn!(host_proc = %self.host_proc.display(), "cannot list: {e}"),
        }
        let mut found = HashMap::new();
        let mut unreadable = 0;
        for path in candidates {
            match std::fs::metadata(&path) {
                Ok(m) => {
                    found.entry((m.dev(), m.ino())).or_insert(path);
                }
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => unreadable += 1,
                // A process that exited meanwhile; not a namespace file.
                Err(_) => {}
            }
        }
        (found, unreadable)
    }

    /// A sock_diag socket in the namespace at `path`; `Ok(None)` if it
    /// cannot be entered (logged), `Err` if the thread cannot return.
    fn open_in(&self, path: &Path) -> io::Result<Option<Diag>> {
        let ns = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(ns = %path.display(), "cannot open network namespace: {e}");
                return Ok(None);
            }
        };
        let same = |a: &File, b: &File| -> bool {
            matches!((a.metadata(), b.metadata()), (Ok(x), Ok(y)) if (x.dev(), x.ino()) == (y.dev(), y.ino()))
        };
        if same(&ns, &self.home) {
            return Ok(Diag::new()
                .map_err(|e| tracing::warn!("cannot open sock_diag: {e}"))
                .ok());
        }
        if let Err(e) = setns(&ns) {
            tracing::debug!(ns = %path.display(), "cannot enter network namespace: {e}");
            return Ok(None);
        }
        let diag = Diag::new();
        setns(&self.home)?;
        match diag {
            Ok(d) => Ok(Some(d)),
            Err(e) => {
                tracing::warn!(ns = %path.display(), "cannot open sock_diag: {e}");
                Ok(None)
            }
        }
    }
}

/// What the attempts at one target met besides its socket.
#[derive(Default)]
struct Seen {
    /// Another socket on its ends (a newer connection, or its peer).
    stale: bool,
    /// Its socket in time-wait, or a listener on its ends.
    closed: bool,
    error: Option<io::Error>,
}

fn setns(ns: &File) -> io::Result<()> {
    // SAFETY: a namespace fd; only this thread changes namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
