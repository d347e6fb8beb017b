//! The agent under load: short tracked connections at a steady pace (10,000
//! a second for `cargo xtask bench`), each one a policy violation and so one
//! JSON event, while the agent's CPU time and peak memory are read from
//! /proc and its events and counters are compared with the connections made.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    bench::{
        ab::TRACKED_PATH,
        workload::{self, Connections},
    },
    cluster::{
        agent::Agent,
        topology::{Topology, addrs},
    },
    traffic::{Kind, Server},
};

/// Makes every tracked connection of the load a violation event.
pub const LOAD_POLICY: &str = "node-to-apiserver:*=alert";
/// At most this share of one core, in percent.
pub const MAX_CPU_PERCENT: f64 = 5.0;
/// At most this peak resident memory (VmHWM), in MiB.
pub const MAX_RSS_MIB: f64 = 64.0;
/// The achieved connection rate must be at least this share of the pace
/// for the other figures to describe the load asked for.
pub const MIN_RATE_SHARE: f64 = 0.98;
/// How long the agent may take to print the last events once the load ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How much load.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Connections per second, all client threads together.
    pub rate: f64,
    /// How long the load lasts.
    pub duration: Duration,
    /// Client threads (and server workers).
    pub threads: usize,
    /// Namespace tag (see [`Topology::new`]).
    pub tag: &'static str,
}

impl Plan {
    /// What `cargo xtask bench` runs: 10,000 connections a second for 10 s.
    pub const FULL: Self = Self {
        rate: 10_000.0,
        duration: Duration::from_secs(10),
        threads: 4,
        tag: "load",
    };
}

/// What the load did and what it cost the agent.
#[derive(Clone, Debug)]
pub struct Report {
    /// The plan it ran.
    pub plan: Plan,
    /// The connections made.
    pub connections: Connections,
    /// The agent's CPU time (user + system) from the first connection until
    /// its last event was printed.
    pub cpu: Duration,
    /// The agent's peak resident memory (VmHWM), KiB, at the end.
    pub peak_rss_kib: u64,
    /// JSON violation events on the agent's stdout naming the tracked path.
    pub events: u64,
    /// Lines on the agent's stdout that are not such events.
    pub other_lines: u64,
    /// Connections the agent counted on the tracked path.
    pub counted: f64,
    /// `cp_observer_events_lost_total` at the end.
    pub lost: f64,
}

impl Report {
    /// The agent's CPU time over the length of the load, in percent of one
    /// core.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.connections.elapsed.as_secs_f64()
    }

    /// Peak resident memory in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// Runs the load: the lab's namespaces, an echo server on the apiserver
/// endpoint, the agent with [`LOAD_POLICY`], then [`Plan::rate`] short
/// connections a second from the node for [`Plan::duration`]. Waits for the
/// agent to print the last events (at most 10 s) before reading its figures.
pub fn run(plan: &Plan) -> Report {
    let topo = Topology::new(plan.tag);
    workload::prepare_client_namespace(&topo.node);
    let to: SocketAddr = (addrs::CP4, addrs::APISERVER_PORT).into();
    let server = Server::pinned(&topo.cp, to, Kind::Echo, plan.threads);
    let mut args = Topology::agent_args();
    args.extend(["--policy".to_owned(), LOAD_POLICY.to_owned()]);
    let agent = Agent::start(&args);
    let before = agent.scrape();
    let path = [("path", TRACKED_PATH)];
    let c = "cp_observer_connections_total";

    let (_, cpu_before) = agent.usage();
    let connections =
        workload::connections(&topo.node, to, plan.duration, plan.threads, Some(plan.rate));
    wait_for_lines(&agent, connections.requests);
    let (peak_rss_kib, cpu_after) = agent.usage();

    let after = agent.scrape();
    let lines = agent.stdout_lines();
    let events = lines
        .iter()
        .filter(|l| {
            l.contains(r#""kind":"violation""#)
                && l.contains(&format!(r#""path":"{TRACKED_PATH}""#))
        })
        .count() as u64;
    let failures = server.stop();
    assert!(failures.is_empty(), "load: the server saw {failures:?}");
    Report {
        plan: plan.clone(),
        connections,
        cpu: cpu_after.saturating_sub(cpu_before),
        peak_rss_kib,
        events,
        other_lines: lines.len() as u64 - events,
        counted: after.sum(c, &path) - before.sum(c, &path),
        lost: after.sum("cp_observer_events_lost_total", &[]),
    }
}

/// Waits until the agent printed `n` lines, or printed nothing new for a
/// second, or [`DRAIN_TIMEOUT`] passed.
fn wait_for_lines(agent: &Agent, n: u64) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut last = (agent.stdout_len(), Instant::now());
    while (agent.stdout_len() as u64) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let len = agent.stdout_len();
        if len != last.0 {
            last = (len, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            return;
        }
    }
}

/// The report as a Markdown table.
pub fn markdown(r: &Report) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let rate = r.connections.rate();
    let mut out = String::from("| measure | value | target | met |\n|---|---:|---:|---|\n");
    let mut row = |what: &str, value: String, target: String, met: &str| {
        let _ = writeln!(out, "| {what} | {value} | {target} | {met} |");
    };
    row(
        "tracked connections per second (paced)",
        format!("{rate:.0}"),
        format!("{:.0}", r.plan.rate),
        yes(rate >= MIN_RATE_SHARE * r.plan.rate),
    );
    row(
        "failed connections",
        r.connections.failed.to_string(),
        "0".to_owned(),
        yes(r.connections.failed == 0),
    );
    row(
        "agent CPU, % of one core",
        format!("{:.2}", r.cpu_percent()),
        format!("≤ {MAX_CPU_PERCENT}"),
        yes(r.cpu_percent() <= MAX_CPU_PERCENT),
    );
    row(
        "agent peak RSS (VmHWM), MiB",
        format!("{:.1}", r.peak_rss_mib()),
        format!("≤ {MAX_RSS_MIB}"),
        yes(r.peak_rss_mib() <= MAX_RSS_MIB),
    );
    row(
        "events printed / connections made / connections counted",
        format!("{} / {} / {}", r.events, r.connections.requests, r.counted),
        "equal".to_owned(),
        yes(r.events == r.connections.requests
            && r.counted == r.connections.requests as f64
            && r.other_lines == 0),
    );
    row(
        "events lost (`cp_observer_events_lost_total`)",
        format!("{}", r.lost),
        "0".to_owned(),
        yes(r.lost == 0.0),
    );
    out
}
