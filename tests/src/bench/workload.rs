//! The network workloads of the benchmarks, on the lab's servers
//! ([`Kind::Sink`](crate::traffic::Kind::Sink) and
//! [`Kind::Echo`](crate::traffic::Kind::Echo) of
//! [`Server::pinned`](crate::traffic::Server::pinned)): bulk
//! throughput on one connection, 1-byte request/response on one connection,
//! and short connections (connect, 1-byte request, 1-byte response, close,
//! the client first), as fast as they go or paced.
//!
//! Both ends of a workload run on one CPU
//! ([`pin_to_one_cpu`]), so that runs do
//! not differ in where their threads landed; the agent and the rest of the
//! machine get the others. Every client loop ends at a deadline and every
//! socket has a timeout, so no workload can hang a run.

use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, SocketAddr},
    time::{Duration, Instant},
};

pub use crate::traffic::server::{BULK_WRITE, MESSAGE};
use crate::{
    cluster::netns::NetNs,
    traffic::{connect, pin_to_one_cpu, server::FAILURES_KEPT},
};

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

/// Runs `step` again and again for `duration`, adding what each did (its
/// result) to the [`SLICE`] it started in. Returns the slices, the total
/// and when the run started.
fn repeat_for(
    duration: Duration,
    mut step: impl FnMut() -> io::Result<u64>,
) -> io::Result<(Slices, u64, Instant)> {
    let mut slices = Slices::default();
    let start = Instant::now();
    let mut total = 0;
    loop {
        let now = Instant::now();
        if now >= start + duration {
            return Ok((slices, total, start));
        }
        let n = step()?;
        slices.add(start, now, n);
        total += n;
    }
}

/// What a run of [`bulk`] or [`request_response`] did.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// Its rate (see each).
    pub rate: f64,
    /// All it did: bytes sent, or transactions.
    pub total: u64,
}

/// Bulk throughput: from `ns`, one connection to a [`Kind::Sink`](crate::traffic::Kind::Sink) at
/// `to`, [`BULK_WRITE`]-byte writes for `duration`, then the end of stream
/// and the server's answer. Its rate is Gbit/s: the median [`SLICE`]'s, or
/// for a run shorter than a slice, all bytes until the answer (every byte
/// was received by then).
pub fn bulk(ns: &NetNs, to: SocketAddr, duration: Duration) -> io::Result<Done> {
    ns.run(move || {
        pin_to_one_cpu();
        let mut s = connect(to)?;
        let buf = vec![MESSAGE; BULK_WRITE];
        let (slices, sent, start) = repeat_for(duration, || {
            s.write_all(&buf)?;
            Ok(BULK_WRITE as u64)
        })?;
        s.shutdown(Shutdown::Write)?;
        s.read_exact(&mut [0u8; 1])?;
        let bytes_per_s = slices
            .median_rate(duration)
            .unwrap_or_else(|| sent as f64 / start.elapsed().as_secs_f64());
        Ok(Done {
            rate: bytes_per_s * 8.0 / 1e9,
            total: sent,
        })
    })
}

/// Request/response: from `ns`, one connection to a [`Kind::Echo`](crate::traffic::Kind::Echo) at
/// `to` (Nagle off), one byte out and one back, again and again for
/// `duration`. Its rate is transactions per second: the median [`SLICE`]'s,
/// or for a run shorter than a slice, the whole run's.
pub fn request_response(ns: &NetNs, to: SocketAddr, duration: Duration) -> io::Result<Done> {
    ns.run(move || {
        pin_to_one_cpu();
        let mut s = connect(to)?;
        s.set_nodelay(true)?;
        let mut answer = [0u8; 1];
        let (slices, done, start) = repeat_for(duration, || {
            s.write_all(&[MESSAGE])?;
            s.read_exact(&mut answer)?;
            Ok(1)
        })?;
        let rate = slices
            .median_rate(duration)
            .unwrap_or_else(|| done as f64 / start.elapsed().as_secs_f64());
        s.shutdown(Shutdown::Write)?;
        Ok(Done { rate, total: done })
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

/// Short connections from `ns` to a [`Kind::Echo`](crate::traffic::Kind::Echo) at `to`, on `threads`
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
    pin_to_one_cpu();
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
