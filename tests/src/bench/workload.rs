//! The network workloads of the benchmarks: a server in one network
//! namespace, clients in another, and three ways to load them — bulk
//! throughput on one connection, 1-byte request/response on one connection,
//! and short connections (connect, 1-byte request, 1-byte response, close,
//! the client first), as fast as they go or paced.
//!
//! Both ends of a workload run on one CPU (the highest this process may
//! use), so that runs do not differ in where their threads landed; the
//! agent and the rest of the machine get the others. Every client loop
//! ends at a deadline and every socket has a timeout, so no workload can
//! hang a run.

use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, SockRef, Socket, Type};

use crate::cluster::netns::NetNs;

/// Read, write and connect timeout of every socket here.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per write of the bulk workload.
pub const BULK_WRITE: usize = 128 * 1024;
/// The byte every message is made of. It starts no protocol signature, so
/// the agent decides `other` on the first one.
pub const MESSAGE: u8 = b'x';
/// Listen backlog: deep enough that a burst of connections is never refused.
const BACKLOG: i32 = 4096;

/// What a [`Server`] does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Reads until the client's end of stream, then answers one byte (bulk).
    Sink,
    /// Sends back whatever it reads, until the client's end of stream.
    Echo,
}

/// A server of one [`Service`] in a namespace: `workers` threads, each
/// accepting and serving one connection at a time. Stop it with
/// [`Server::stop`] to learn whether a connection failed; dropping it stops
/// it too.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` inside `ns` and starts the workers. Panics, naming
    /// the address and namespace, if it cannot listen.
    pub fn start(ns: &NetNs, addr: SocketAddr, service: Service, workers: usize) -> Self {
        let name = ns.name().to_owned();
        let listener = ns
            .run(move || listen(addr))
            .unwrap_or_else(|e| panic!("cannot listen on {addr} in namespace {name}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..workers.max(1))
            .map(|_| {
                let listener = listener.try_clone().expect("a listener fd to clone");
                let (stop, failures) = (stop.clone(), failures.clone());
                std::thread::spawn(move || {
                    pin();
                    loop {
                        let result = listener.accept().and_then(|(s, _)| serve(s, service));
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if let Err(e) = result {
                            let mut failures = failures.lock().expect("lock");
                            if failures.len() < FAILURES_KEPT {
                                failures.push(format!("server {addr}: {e}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            addr,
            listener,
            stop,
            failures,
            workers,
        }
    }

    /// Stops accepting, waits for the workers (each ends within
    /// [`IO_TIMEOUT`]) and returns the first few failures, e.g. a
    /// connection reset.
    pub fn stop(mut self) -> Vec<String> {
        self.shut_down();
        std::mem::take(&mut *self.failures.lock().expect("lock"))
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Shutting a listening socket down wakes every thread blocked in
        // accept(2) on it (with EINVAL).
        let _ = SockRef::from(&self.listener).shutdown(Shutdown::Read);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

fn serve(mut s: TcpStream, service: Service) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    match service {
        Service::Sink => {
            let mut buf = vec![0u8; 2 * BULK_WRITE];
            while s.read(&mut buf)? != 0 {}
            s.write_all(&[MESSAGE])
        }
        Service::Echo => {
            s.set_nodelay(true)?;
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(&buf[..n])?;
            }
        }
    }
}

/// Pins the calling thread to the highest CPU it may run on. Both ends of
/// every workload run there: each measurement is bound by that one CPU's
/// work (the programs under test are part of it), and runs do not differ in
/// where their threads and softirq work landed, which was the largest noise
/// with the ends floating. The agent and the rest of the machine get the
/// other CPUs. Best effort: if the mask cannot be read or set, the thread
/// floats.
fn pin() {
    // SAFETY: a zeroed cpu_set_t is an empty set; these calls only read and
    // write it and the calling thread's mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut set) != 0 {
            return;
        }
        let Some(cpu) = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &set))
        else {
            return;
        };
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size, &set);
    }
}

fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// The length of a slice of a run (see [`Slices`]).
pub const SLICE: Duration = Duration::from_millis(100);

/// What a run did in each [`SLICE`] from its start. A run's rate is the
/// median slice's: a hiccup of the machine (another VM, a host interrupt)
/// that stalls the run for a moment moves a few slices, not the figure.
#[derive(Clone, Debug, Default)]
pub struct Slices(Vec<u64>);

impl Slices {
    /// Counts `n` done at `now`, in a run started at `start`.
    fn add(&mut self, start: Instant, now: Instant, n: u64) {
        let i = usize::try_from(now.duration_since(start).as_nanos() / SLICE.as_nanos())
            .unwrap_or(usize::MAX);
        if i >= self.0.len() {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += n;
    }

    fn merge(&mut self, other: &Self) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    /// The median per-second rate of the slices wholly inside a run of
    /// `duration`; `None` when the run is shorter than one slice.
    pub fn median_rate(&self, duration: Duration) -> Option<f64> {
        let whole = usize::try_from(duration.as_nanos() / SLICE.as_nanos()).unwrap_or(0);
        let v: Vec<f64> = (0..whole)
            .map(|i| self.0.get(i).copied().unwrap_or(0) as f64)
            .collect();
        if v.is_empty() {
            return None;
        }
        Some(crate::bench::kernel::median(&v) / SLICE.as_secs_f64())
    }
}

/// Bulk throughput: from `ns`, one connection to a [`Service::Sink`] at
/// `to`, [`BULK_WRITE`]-byte writes for `duration`, then the end of stream
/// and the server's answer. Returns Gbit/s: the median [`SLICE`]'s, or for
/// a run shorter than a slice, all bytes until the answer (every byte was
/// received by then).
pub fn bulk(ns: &NetNs, to: SocketAddr, duration: Duration) -> io::Result<f64> {
    ns.run(move || {
        pin();
        let mut s = connect(to)?;
        let buf = vec![MESSAGE; BULK_WRITE];
        let mut slices = Slices::default();
        let start = Instant::now();
        let mut sent = 0u64;
        loop {
            let now = Instant::now();
            if now >= start + duration {
                break;
            }
            s.write_all(&buf)?;
            slices.add(start, now, BULK_WRITE as u64);
            sent += BULK_WRITE as u64;
        }
        s.shutdown(Shutdown::Write)?;
        s.read_exact(&mut [0u8; 1])?;
        let bytes_per_s = slices
            .median_rate(duration)
            .unwrap_or_else(|| sent as f64 / start.elapsed().as_secs_f64());
        Ok(bytes_per_s * 8.0 / 1e9)
    })
}

/// Request/response: from `ns`, one connection to a [`Service::Echo`] at
/// `to` (Nagle off), one byte out and one back, again and again for
/// `duration`. Returns transactions per second: the median [`SLICE`]'s, or
/// for a run shorter than a slice, the whole run's.
pub fn request_response(ns: &NetNs, to: SocketAddr, duration: Duration) -> io::Result<f64> {
    ns.run(move || {
        pin();
        let mut s = connect(to)?;
        s.set_nodelay(true)?;
        let mut answer = [0u8; 1];
        let mut slices = Slices::default();
        let start = Instant::now();
        let mut done = 0u64;
        loop {
            let now = Instant::now();
            if now >= start + duration {
                break;
            }
            s.write_all(&[MESSAGE])?;
            s.read_exact(&mut answer)?;
            slices.add(start, now, 1);
            done += 1;
        }
        let rate = slices
            .median_rate(duration)
            .unwrap_or_else(|| done as f64 / start.elapsed().as_secs_f64());
        s.shutdown(Shutdown::Write)?;
        Ok(rate)
    })
}

/// What a run of [`connections`] did.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    /// Connections whose request byte was sent: each is one connection the
    /// agent sees decided.
    pub requests: u64,
    /// Connections that got their answer and were closed.
    pub completed: u64,
    /// Connections that failed, to connect or mid-way.
    pub failed: u64,
    /// The first few failures.
    pub failures: Vec<String>,
    /// From the first connection until the last client thread finished.
    pub elapsed: Duration,
    /// Completed connections per [`SLICE`].
    pub slices: Slices,
}

/// How many failures [`Connections`] and [`Server`] keep the text of.
const FAILURES_KEPT: usize = 5;

impl Connections {
    /// Completed connections per second, over the whole run.
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }

    /// Completed connections per second in the median [`SLICE`] of a run
    /// of `duration`, or over the whole run if it is shorter than a slice.
    pub fn median_rate(&self, duration: Duration) -> f64 {
        self.slices
            .median_rate(duration)
            .unwrap_or_else(|| self.rate())
    }

    fn failure(&mut self, to: SocketAddr, e: &io::Error) {
        self.failed += 1;
        if self.failures.len() < FAILURES_KEPT {
            self.failures.push(format!("connection to {to}: {e}"));
        }
    }

    fn merge(&mut self, other: Self) {
        self.requests += other.requests;
        self.completed += other.completed;
        self.failed += other.failed;
        self.slices.merge(&other.slices);
        for f in other.failures {
            if self.failures.len() < FAILURES_KEPT {
                self.failures.push(f);
            }
        }
    }
}

/// Lets the clients' namespace `ns` reuse its TIME_WAIT ports for new
/// connections and use the widest port range, so that [`connections`] never
/// runs out of ephemeral ports.
pub fn prepare_client_namespace(ns: &NetNs) {
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
}

/// Short connections from `ns` to a [`Service::Echo`] at `to`, on `threads`
/// client threads for `duration`: connect, send one byte, read one byte,
/// close (the client first, so the TIME_WAIT is the client's: see
/// [`prepare_client_namespace`]). With `pace`, the threads together start
/// at most that many connections per second, evenly spaced (a thread that
/// falls behind catches up at once); without, each goes as fast as it can.
pub fn connections(
    ns: &NetNs,
    to: SocketAddr,
    duration: Duration,
    threads: usize,
    pace: Option<f64>,
) -> Connections {
    let threads = threads.max(1);
    ns.run(move || {
        let start = Instant::now();
        let deadline = start + duration;
        // Threads spawned here are in `ns` too: they inherit this thread's
        // network namespace.
        let mut total = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..threads)
                .map(|i| {
                    // Thread i's k-th connection is due at start + (k + i/threads) * every.
                    let schedule = pace.map(|rate| {
                        let every = Duration::from_secs_f64(threads as f64 / rate);
                        (every, every.mul_f64(i as f64 / threads as f64))
                    });
                    scope.spawn(move || client(to, start, deadline, schedule))
                })
                .collect();
            let mut total = Connections::default();
            for c in clients {
                total.merge(c.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            }
            total
        });
        total.elapsed = start.elapsed();
        total
    })
}

/// One client thread of [`connections`]; `schedule` is (interval, offset).
fn client(
    to: SocketAddr,
    start: Instant,
    deadline: Instant,
    schedule: Option<(Duration, Duration)>,
) -> Connections {
    pin();
    let mut tally = Connections::default();
    let mut answer = [0u8; 1];
    for k in 0u32.. {
        if let Some((every, offset)) = schedule {
            let due = start + offset + every * k;
            if due >= deadline {
                break;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        } else if Instant::now() >= deadline {
            break;
        }
        let mut s = match connect(to) {
            Ok(s) => s,
            Err(e) => {
                tally.failure(to, &e);
                continue;
            }
        };
        if let Err(e) = s.write_all(&[MESSAGE]) {
            tally.failure(to, &e);
            continue;
        }
        tally.requests += 1;
        match s.read_exact(&mut answer) {
            Ok(()) => {
                tally.completed += 1;
                tally.slices.add(start, Instant::now(), 1);
            }
            Err(e) => tally.failure(to, &e),
        }
        // Dropping `s` closes it: the client closes first.
    }
    tally
}
