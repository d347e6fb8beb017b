//! The agent under a storm of violations: more events a second than real
//! connections can make on this machine (100,000 a second for 10 s for
//! `cargo xtask bench`; real short connections top out near 30,000 a
//! second), driven through the running agent's own `egress` program with
//! `BPF_PROG_TEST_RUN`. Each event is a fresh flow from the node to the
//! apiserver endpoint, a violation under [`LOAD_POLICY`]: its SYN, its
//! first payload (an HTTP request line, which decides) and a RST that
//! removes the flow again, so the table never fills. The events go through
//! the agent's real ring buffer, reader and JSON output; the report
//! compares what the bench asked for, what the kernel counted, what the
//! agent printed and what was counted as lost.
//!
//! What a test run's event lacks: test runs have no socket and no process,
//! so the connect hooks never saw these flows and the events carry no
//! `process` (a real node-to-apiserver event names the client's pid and
//! command) and no socket cookie; everything else (path, protocol, action,
//! verdict, ends) is what a real connection's event carries.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use aya::programs::{CgroupSkb, CgroupSkbAttachType, ProgramInfo, TestRun as _, TestRunOptions};

pub use crate::bench::load::LOAD_POLICY;
use crate::{
    bench::{ab::TRACKED_PATH, load::MAX_RSS_MIB},
    cluster::{
        agent::Agent,
        metrics::Metrics,
        topology::{
            Topology,
            addrs::{APISERVER_PORT, CP4, NODE_GW4, NODE4},
        },
    },
    kernel::packets::{ETH_LEN, Tcp},
};

/// The achieved event rate must be at least this share of the pace for
/// the other figures to describe the storm asked for.
pub const MIN_RATE_SHARE: f64 = 0.98;
/// How long the agent may take to print the last events once the storm ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The first client bytes of each flow: HTTP, decided at once.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n";
/// Where the TCP header starts in a crafted IPv4 packet (no options).
const TCP_AT: usize = ETH_LEN + 20;
/// Client addresses (both the node's) times client ports: the flows that
/// are fresh before one repeats (each is gone, reset, long before).
const CLIENTS: [Ipv4Addr; 2] = [NODE4, NODE_GW4];
/// Client ports used, from 1024 up.
const PORTS: u32 = 64_000;

/// How big a storm.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Events asked for per second, all driver threads together.
    pub rate: f64,
    /// How long the storm lasts.
    pub duration: Duration,
    /// Threads driving the programs (each runs three test runs an event).
    pub threads: usize,
    /// Stop the agent (SIGSTOP) for the storm and continue it after: a
    /// stalled reader, so that a storm larger than the ring buffer must be
    /// counted as lost.
    pub stall_reader: bool,
}

impl Plan {
    /// What `cargo xtask bench` runs: 100,000 events a second for 10 s.
    pub const FULL: Self = Self {
        rate: 100_000.0,
        duration: Duration::from_secs(10),
        threads: 2,
        stall_reader: false,
    };

    /// Events the plan asks for.
    pub fn events(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }
}

/// What the storm did and what it cost the agent.
#[derive(Clone, Debug)]
pub struct Report {
    /// The plan it ran.
    pub plan: Plan,
    /// Events asked for: fresh violating flows driven through the program.
    pub asked: u64,
    /// How long driving them took.
    pub elapsed: Duration,
    /// Violations the kernel counted on the path
    /// (`cp_observer_policy_violations_total`).
    pub made: f64,
    /// Connections the kernel counted on the path
    /// (`cp_observer_connections_total`).
    pub counted: f64,
    /// JSON violation events on the agent's stdout naming the path.
    pub printed: u64,
    /// Lines on the agent's stdout that are not such events.
    pub other_lines: u64,
    /// The first event printed.
    pub sample: Option<String>,
    /// `cp_observer_events_lost_total`: events the kernel could not put on
    /// the ring buffer plus connections left untracked (table full).
    pub lost: f64,
    /// `cp_observer_flow_table_full_total`, the untracked part of
    /// [`Self::lost`].
    pub table_full: f64,
    /// `cp_observer_events_unprinted_total`: events the agent read but
    /// could not print.
    pub unprinted: f64,
    /// `cp_observer_agent_errors_total{component="event-reader"}`: batches
    /// the reader could not write out.
    pub reader_errors: f64,
    /// The agent's CPU time (user + system) from the storm's start until its
    /// last event was printed.
    pub cpu: Duration,
    /// The agent's peak resident memory (VmHWM), KiB, at the end.
    pub peak_rss_kib: u64,
    /// From the storm's end until the agent printed its last event.
    pub drain: Duration,
}

impl Report {
    /// Events per second achieved.
    pub fn rate(&self) -> f64 {
        self.asked as f64 / self.elapsed.as_secs_f64()
    }

    /// Events the ring buffer had no room for.
    pub fn ring_lost(&self) -> f64 {
        self.lost - self.table_full
    }

    /// Every event made is printed or counted as lost or unprinted.
    pub fn accounted(&self) -> bool {
        self.printed as f64 + self.ring_lost() + self.unprinted == self.made
            && self.other_lines == 0
    }

    /// The agent's CPU time over the length of the storm, in percent of one
    /// core.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.elapsed.as_secs_f64()
    }

    /// Peak resident memory in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// Runs the storm: the agent with [`LOAD_POLICY`] (no namespaces needed:
/// no packet travels), then [`Plan::events`] fresh violating flows through
/// its `egress` program, paced at [`Plan::rate`]. Waits for the agent to
/// print every event it can (at most 30 s) before reading its figures.
pub fn run(plan: &Plan) -> Report {
    let mut args = Topology::agent_args();
    args.extend(["--policy".to_owned(), LOAD_POLICY.to_owned()]);
    let agent = Agent::start(&args);
    let egress = agent_program(agent.pid(), "egress");
    let before = agent.scrape();
    let lines_before = agent.stdout_len();
    let (_, cpu_before) = agent.usage();

    let stopped = plan.stall_reader.then(|| Stopped::new(agent.pid()));
    let started = Instant::now();
    let asked = drive(&egress, plan, started);
    let elapsed = started.elapsed();
    drop(stopped);

    let mid = agent.scrape();
    let grew = |now: &Metrics, c: Counter| now.sum(c.0, c.1) - before.sum(c.0, c.1);
    let want = grew(&mid, VIOLATIONS)
        - (grew(&mid, LOST) - grew(&mid, TABLE_FULL))
        - grew(&mid, UNPRINTED);
    let drained = wait_for_lines(&agent, lines_before + want as usize);
    let (peak_rss_kib, cpu_after) = agent.usage();
    let after = agent.scrape();
    let lines = agent.stdout_lines();
    let lines = &lines[lines_before..];
    let printed = lines
        .iter()
        .filter(|l| {
            l.contains(r#""kind":"violation""#)
                && l.contains(&format!(r#""path":"{TRACKED_PATH}""#))
        })
        .count() as u64;
    Report {
        plan: plan.clone(),
        asked,
        elapsed,
        made: grew(&after, VIOLATIONS),
        counted: grew(&after, CONNECTIONS),
        printed,
        other_lines: lines.len() as u64 - printed,
        sample: lines.first().cloned(),
        lost: grew(&after, LOST),
        table_full: grew(&after, TABLE_FULL),
        unprinted: grew(&after, UNPRINTED),
        reader_errors: grew(&after, READER_ERRORS),
        cpu: cpu_after.saturating_sub(cpu_before),
        peak_rss_kib,
        drain: drained.saturating_duration_since(started + elapsed),
    }
}

/// A counter the report reads: its name, and the labels its samples are
/// summed over.
type Counter = (&'static str, &'static [(&'static str, &'static str)]);
const PATH: &[(&str, &str)] = &[("path", TRACKED_PATH)];
const VIOLATIONS: Counter = ("cp_observer_policy_violations_total", PATH);
const CONNECTIONS: Counter = ("cp_observer_connections_total", PATH);
const LOST: Counter = ("cp_observer_events_lost_total", &[]);
const TABLE_FULL: Counter = ("cp_observer_flow_table_full_total", &[]);
const UNPRINTED: Counter = ("cp_observer_events_unprinted_total", &[]);
const READER_ERRORS: Counter = (
    "cp_observer_agent_errors_total",
    &[("component", "event-reader")],
);

/// The running agent's own program `name`: among the programs its process
/// holds open (their ids are in its /proc/PID/fdinfo), the one so named.
/// Other agents on the machine have programs of the same names.
fn agent_program(pid: u32, name: &str) -> CgroupSkb {
    let dir = format!("/proc/{pid}/fdinfo");
    let ids: Vec<u32> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    let info: ProgramInfo = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| ids.contains(&p.id()) && p.name_as_str() == Some(name))
        .unwrap_or_else(|| panic!("agent {pid} holds no program {name} (its programs: {ids:?})"));
    CgroupSkb::from_program_info(
        info,
        name.to_owned().into(),
        Some(CgroupSkbAttachType::Egress),
    )
    .unwrap_or_else(|e| panic!("program {name} of agent {pid}: {e}"))
}

/// The three segments of one event's flow (SYN, first payload, RST), as
/// templates whose client end [`Flow::set_client`] rewrites.
struct Flow([Vec<u8>; 3]);

impl Flow {
    fn new() -> Self {
        let (c, s) = (
            SocketAddr::from((NODE4, 1024)),
            SocketAddr::from((CP4, APISERVER_PORT)),
        );
        Self([
            Tcp::new(c, s).syn(1000).build(),
            Tcp::new(c, s).seq(1001).payload(REQUEST).build(),
            Tcp::new(c, s)
                .seq(1001 + REQUEST.len() as u32)
                .rst()
                .build(),
        ])
    }

    /// Makes the segments those of the `i`th flow. Checksums are left
    /// stale: neither the test run nor the programs check them.
    fn set_client(&mut self, i: u64) {
        let port = 1024 + (i % u64::from(PORTS)) as u16;
        let ip = CLIENTS[(i / u64::from(PORTS)) as usize % CLIENTS.len()];
        for p in &mut self.0 {
            p[ETH_LEN + 12..ETH_LEN + 16].copy_from_slice(&ip.octets());
            p[TCP_AT..TCP_AT + 2].copy_from_slice(&port.to_be_bytes());
        }
    }
}

/// Drives [`Plan::events`] flows through `egress` from [`Plan::threads`]
/// threads, event `i` due at `i / rate` after `start` (a thread that falls
/// behind goes as fast as it can); returns the events driven.
fn drive(egress: &CgroupSkb, plan: &Plan, start: Instant) -> u64 {
    let total = plan.events();
    let threads = plan.threads.max(1) as u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut flow = Flow::new();
                for i in (t..total).step_by(threads as usize) {
                    let due = start + Duration::from_secs_f64(i as f64 / plan.rate);
                    // Ahead by more than a millisecond: sleep, so that the
                    // events come in bursts of at most a millisecond's.
                    if let Some(ahead) = due.checked_duration_since(Instant::now())
                        && ahead > Duration::from_millis(1)
                    {
                        std::thread::sleep(ahead);
                    }
                    flow.set_client(i);
                    for p in &flow.0 {
                        let r = egress
                            .test_run(TestRunOptions {
                                data_in: Some(p),
                                repeat: 1,
                                ..TestRunOptions::default()
                            })
                            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of egress: {e}"));
                        assert_eq!(r.return_value, 1, "egress passes the storm's segments");
                    }
                }
            });
        }
    });
    total
}

/// A process stopped (SIGSTOP) until this is dropped (SIGCONT).
struct Stopped(libc::pid_t);

impl Stopped {
    fn new(pid: u32) -> Self {
        let pid = libc::pid_t::try_from(pid).expect("a pid");
        // SAFETY: a plain syscall on a child process of ours.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {pid}"
        );
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Waits until the agent printed `n` lines in all, or printed nothing new
/// for two seconds, or [`DRAIN_TIMEOUT`] passed; returns when the last
/// line it waited for came (to within a millisecond).
fn wait_for_lines(agent: &Agent, n: usize) -> Instant {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last = (agent.stdout_len(), Instant::now());
    while last.0 < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        let len = agent.stdout_len();
        if len != last.0 {
            last = (len, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    last.1
}

/// The report as a Markdown table.
pub fn markdown(r: &Report) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut out = String::from("| measure | value | target | met |\n|---|---:|---:|---|\n");
    let mut row = |what: &str, value: String, target: String, met: &str| {
        let _ = writeln!(out, "| {what} | {value} | {target} | {met} |");
    };
    row(
        "events asked per second (paced)",
        format!("{:.0}", r.rate()),
        format!("{:.0}", r.plan.rate),
        yes(r.rate() >= MIN_RATE_SHARE * r.plan.rate),
    );
    row(
        "events asked / made by the kernel (violations / connections counted)",
        format!("{} / {} / {}", r.asked, r.made, r.counted),
        "equal".to_owned(),
        yes(r.made == r.asked as f64 && r.counted == r.made),
    );
    row(
        "events printed + lost + read but unprinted = made",
        format!(
            "{} + {} + {} = {}",
            r.printed,
            r.ring_lost(),
            r.unprinted,
            r.printed as f64 + r.ring_lost() + r.unprinted
        ),
        format!("{}", r.made),
        yes(r.accounted()),
    );
    row(
        "events lost (`cp_observer_events_lost_total`) / unprinted (`cp_observer_events_unprinted_total`)",
        format!("{} / {}", r.lost, r.unprinted),
        "0 / 0".to_owned(),
        yes(r.lost == 0.0 && r.unprinted == 0.0),
    );
    row(
        "flow table full (in lost) / event reader errors",
        format!("{} / {}", r.table_full, r.reader_errors),
        "0 / 0".to_owned(),
        yes(r.table_full == 0.0 && r.reader_errors == 0.0),
    );
    row(
        "agent CPU, % of one core",
        format!("{:.1}", r.cpu_percent()),
        "–".to_owned(),
        "–",
    );
    row(
        "agent peak RSS (VmHWM), MiB",
        format!("{:.1}", r.peak_rss_mib()),
        format!("≤ {MAX_RSS_MIB}"),
        yes(r.peak_rss_mib() <= MAX_RSS_MIB),
    );
    row(
        "time to drain (storm's end to last event printed), ms",
        format!("{:.0}", r.drain.as_secs_f64() * 1000.0),
        "–".to_owned(),
        "–",
    );
    out
}
