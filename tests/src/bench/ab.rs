//! A/B benchmarks: each [`crate::bench::workload`] measured with no cp-observer
//! program attached (`none`), with the kernel object's no-op `cgroup_skb`
//! program on the cgroup v2 root at both hooks (`noop`, the floor of any
//! program there), and with the real agent (`agent`), on a tracked path and
//! on untracked traffic. The three modes alternate, their order rotated each
//! round; medians are compared with `none`.

use std::{fmt::Write as _, fs::File, net::SocketAddr, path::Path, time::Duration};

use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use observer::{
    cli::RunArgs,
    config::Settings,
    ebpf::{Datapath, Loaded},
};

use crate::{
    bench::{kernel::median, workload},
    cluster::{
        agent::Agent,
        metrics::Metrics,
        topology::{Topology, addrs},
    },
    traffic::{Kind, Server},
};

/// What is attached while a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No cp-observer program.
    None,
    /// The no-op program at ingress and egress of the cgroup v2 root.
    Noop,
    /// The real agent (`CP_OBSERVER_BIN`), configured for the lab.
    Agent,
}

impl Mode {
    /// Every mode, in the order of the first round.
    pub const ALL: [Self; 3] = [Self::None, Self::Noop, Self::Agent];

    /// The column name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Noop => "noop",
            Self::Agent => "agent",
        }
    }
}

/// Which connections the workload makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Node → apiserver endpoint: `node-to-apiserver`, tracked.
    Tracked,
    /// Node → control plane on a port no path covers: untracked (checked
    /// against the agent's counters on every run).
    Untracked,
}

impl Traffic {
    /// Both kinds.
    pub const ALL: [Self; 2] = [Self::Tracked, Self::Untracked];

    /// Where the server listens (in the control-plane namespace).
    pub fn server(self) -> SocketAddr {
        match self {
            Self::Tracked => (addrs::CP4, addrs::APISERVER_PORT).into(),
            Self::Untracked => (addrs::CP4, UNTRACKED_PORT).into(),
        }
    }

    /// The row name.
    pub fn describe(self) -> String {
        match self {
            Self::Tracked => format!(
                "tracked: node {} → apiserver {} (`{}`)",
                addrs::NODE4,
                self.server(),
                TRACKED_PATH
            ),
            Self::Untracked => format!(
                "untracked: node {} → {} (no path)",
                addrs::NODE4,
                self.server()
            ),
        }
    }
}

/// A control-plane port that is neither the apiserver's nor konnectivity's:
/// a node client there is on no path.
pub const UNTRACKED_PORT: u16 = 9000;
/// The path of [`Traffic::Tracked`].
pub const TRACKED_PATH: &str = "node-to-apiserver";
/// The agent's policy in the A/B runs: the tracked traffic (detected
/// `other`, being made of [`workload::MESSAGE`]) is allowed, as real
/// node-to-apiserver traffic (TLS) is: every connection is tracked, decided
/// and counted, and no event is printed (events are the load benchmark's).
pub const AB_POLICY: &str = "node-to-apiserver:other=allow";

/// One workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Bulk throughput on one connection.
    Throughput,
    /// 1-byte request/response on one connection.
    RequestResponse,
    /// New connections, each with a 1-byte request and response.
    ConnectionRate,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Self; 3] = [
        Self::Throughput,
        Self::RequestResponse,
        Self::ConnectionRate,
    ];

    /// The table's title.
    pub const fn title(self) -> &'static str {
        match self {
            Self::Throughput => "Bulk throughput (Gbit/s)",
            Self::RequestResponse => "Request/response, 1-byte messages (transactions/s)",
            Self::ConnectionRate => "New connections (connections/s)",
        }
    }

    /// The unit of a measurement.
    pub const fn unit(self) -> &'static str {
        match self {
            Self::Throughput => "Gbit/s",
            Self::RequestResponse => "transactions/s",
            Self::ConnectionRate => "connections/s",
        }
    }

    /// The target for the ratio agent/none (medians; README, "Benchmarks").
    pub const fn target(self, traffic: Traffic) -> f64 {
        match (self, traffic) {
            (Self::Throughput, Traffic::Tracked) => 0.98,
            (Self::Throughput, Traffic::Untracked) => 0.99,
            (Self::RequestResponse, _) => 0.97,
            (Self::ConnectionRate, _) => 0.95,
        }
    }

    fn service(self) -> Kind {
        match self {
            Self::Throughput => Kind::Sink,
            Self::RequestResponse | Self::ConnectionRate => Kind::Echo,
        }
    }
}

/// The agent's overhead may be at most this multiple of the no-op
/// program's (overhead = 1 − ratio to `none`).
pub const MAX_OVERHEAD_VS_NOOP: f64 = 1.5;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Rounds; each measures every workload in every mode once.
    pub rounds: usize,
    /// Length of one measurement.
    pub duration: Duration,
    /// Client threads (and server workers) of the connection-rate workload.
    pub connection_threads: usize,
    /// Namespace tag (see [`Topology::new`]).
    pub tag: &'static str,
}

impl Plan {
    /// What `cargo xtask bench` runs: 7 rounds of 2 s (about 4.5 minutes).
    pub const FULL: Self = Self {
        rounds: 7,
        duration: Duration::from_secs(2),
        connection_threads: 2,
        tag: "bench",
    };
}

/// The measurements of one workload on one kind of traffic.
#[derive(Clone, Debug)]
pub struct Row {
    /// The workload.
    pub workload: Workload,
    /// The traffic.
    pub traffic: Traffic,
    /// One measurement per round, per mode (in [`Mode::ALL`] order).
    pub samples: [Vec<f64>; 3],
}

impl Row {
    /// Median of `mode`'s measurements.
    pub fn median(&self, mode: Mode) -> f64 {
        median(&self.samples[mode as usize])
    }

    /// Median of `mode` over the median of `none`.
    pub fn ratio(&self, mode: Mode) -> f64 {
        self.median(mode) / self.median(Mode::None)
    }

    /// Spread of `mode`'s measurements: (max − min) / median. Differences
    /// between the modes' medians well inside the spread of `none` are
    /// noise.
    pub fn spread(&self, mode: Mode) -> f64 {
        let v = &self.samples[mode as usize];
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        (max - min) / self.median(mode)
    }

    /// Whether the agent's ratio meets its target.
    pub fn meets_target(&self) -> bool {
        self.ratio(Mode::Agent) >= self.workload.target(self.traffic)
    }

    /// The agent's overhead over the no-op program's, `None` when the no-op
    /// program's overhead is not above 0 (within noise).
    pub fn overhead_vs_noop(&self) -> Option<f64> {
        let noop = 1.0 - self.ratio(Mode::Noop);
        (noop > 0.0).then(|| (1.0 - self.ratio(Mode::Agent)) / noop)
    }
}

/// The no-op program attached at both hooks of a cgroup; detached on drop.
struct Floor {
    /// Owns the two links: dropping it detaches them.
    _program: CgroupSkb,
}

impl Floor {
    fn attach(datapath: &Datapath, cgroup: &Path) -> Self {
        let loaded = datapath
            .program("noop")
            .expect("the no-op program is loaded");
        let info = loaded.info().expect("the no-op program's info");
        // A second handle on the loaded program (its own fd), which this
        // value owns: its links go when it is dropped.
        let mut prog = CgroupSkb::from_program_info(info, "noop".into(), None)
            .expect("a handle on the no-op program");
        let file = File::open(cgroup)
            .unwrap_or_else(|e| panic!("cannot open cgroup {}: {e}", cgroup.display()));
        for hook in [CgroupSkbAttachType::Ingress, CgroupSkbAttachType::Egress] {
            prog.attach(&file, hook, CgroupAttachMode::Single)
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot attach the no-op program at {hook:?} of {}: {e}",
                        cgroup.display()
                    )
                });
        }
        Self { _program: prog }
    }
}

/// Runs the plan: builds the lab's namespaces, then for every round, every
/// workload and every kind of traffic, measures the three modes in this
/// round's order. Panics, naming the workload and mode, if a measurement
/// fails or the agent counts the traffic other than planned.
pub fn run(plan: &Plan) -> Vec<Row> {
    let topo = Topology::new(plan.tag);
    workload::prepare_client_namespace(&topo.node);
    let cgroup = observer::cgroup::resolve(None).expect("a cgroup v2 mount");
    let args = RunArgs {
        no_pin: true,
        ..RunArgs::default()
    };
    let Loaded {
        datapath: mut floor_datapath,
        ..
    } = Datapath::load(&Settings::from_args(&args).expect("settings"))
        .expect("the kernel object loads (root)");
    floor_datapath
        .load_extra("noop")
        .expect("the no-op program loads");
    let mut agent_args = Topology::agent_args();
    agent_args.extend(["--policy".to_owned(), AB_POLICY.to_owned()]);

    let mut rows: Vec<Row> = Workload::ALL
        .into_iter()
        .flat_map(|workload| {
            Traffic::ALL.into_iter().map(move |traffic| Row {
                workload,
                traffic,
                samples: Default::default(),
            })
        })
        .collect();
    for round in 0..plan.rounds {
        let mut order = Mode::ALL;
        order.rotate_left(round % Mode::ALL.len());
        for row in &mut rows {
            for mode in order {
                let (workload, traffic) = (row.workload, row.traffic);
                let what = format!(
                    "{workload:?} on {traffic:?} traffic with mode {}",
                    mode.name()
                );
                let value = match mode {
                    Mode::None => measure(&topo, plan, workload, traffic, &what),
                    Mode::Noop => {
                        let _floor = Floor::attach(&floor_datapath, &cgroup);
                        measure(&topo, plan, workload, traffic, &what)
                    }
                    Mode::Agent => {
                        let agent = Agent::start(&agent_args);
                        let before = agent.scrape();
                        let value = measure(&topo, plan, workload, traffic, &what);
                        check_counted(&before, &agent.scrape(), traffic, &what);
                        value
                    }
                };
                eprintln!(
                    "ab: round {}/{}: {what}: {value:.2} {}",
                    round + 1,
                    plan.rounds,
                    workload.unit()
                );
                row.samples[mode as usize].push(value);
            }
        }
    }
    rows
}

/// One measurement: a fresh server, the workload, the server's verdict.
fn measure(topo: &Topology, plan: &Plan, workload: Workload, traffic: Traffic, what: &str) -> f64 {
    let to = traffic.server();
    let threads = plan.connection_threads;
    let server = Server::pinned(&topo.cp, to, workload.service(), threads);
    let value = match workload {
        Workload::Throughput => {
            workload::bulk(&topo.node, to, plan.duration).unwrap_or_else(|e| panic!("{what}: {e}"))
        }
        Workload::RequestResponse => workload::request_response(&topo.node, to, plan.duration)
            .unwrap_or_else(|e| panic!("{what}: {e}")),
        Workload::ConnectionRate => {
            let c = workload::connections(&topo.node, to, plan.duration, threads, None);
            assert!(
                c.failed == 0,
                "{what}: {} of {} connections failed: {:?}",
                c.failed,
                c.failed + c.completed,
                c.failures
            );
            c.median_rate(plan.duration)
        }
    };
    let failures = server.stop();
    assert!(failures.is_empty(), "{what}: the server saw {failures:?}");
    value
}

/// The agent must have counted tracked traffic on its path, and none of the
/// untracked traffic.
fn check_counted(before: &Metrics, after: &Metrics, traffic: Traffic, what: &str) {
    let c = "cp_observer_connections_total";
    let tracked =
        after.sum(c, &[("path", TRACKED_PATH)]) - before.sum(c, &[("path", TRACKED_PATH)]);
    let all = after.sum(c, &[]) - before.sum(c, &[]);
    match traffic {
        Traffic::Tracked => assert!(
            tracked >= 1.0 && all == tracked,
            "{what}: the agent counted {tracked} connections on {TRACKED_PATH} and {all} in all: \
             the tracked traffic is not on its path"
        ),
        Traffic::Untracked => assert!(
            all == 0.0,
            "{what}: the agent counted {all} connections: the untracked traffic to {} is on a path",
            traffic.server()
        ),
    }
}

/// One Markdown table per workload.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    for workload in Workload::ALL {
        let _ = write!(
            out,
            "### {}\n\n| traffic | none | noop | agent | spread of none | noop/none | agent/none \
             | target | met | agent overhead ÷ noop overhead | ≤ {MAX_OVERHEAD_VS_NOOP} |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|\n",
            workload.title()
        );
        for r in rows.iter().filter(|r| r.workload == workload) {
            let value = |m| match workload {
                Workload::Throughput => format!("{:.2}", r.median(m)),
                _ => format!("{:.0}", r.median(m)),
            };
            let (times, within) = match r.overhead_vs_noop() {
                Some(x) => (
                    format!("{x:.2}"),
                    if x <= MAX_OVERHEAD_VS_NOOP {
                        "yes"
                    } else {
                        "no"
                    },
                ),
                None if r.ratio(Mode::Agent) >= 1.0 => ("— (both within noise)".to_owned(), "yes"),
                None => ("— (noop overhead ≤ 0: within noise)".to_owned(), "—"),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} % | {:.3} | {:.3} | ≥ {} | {} | {times} | {within} |",
                r.traffic.describe(),
                value(Mode::None),
                value(Mode::Noop),
                value(Mode::Agent),
                100.0 * r.spread(Mode::None),
                r.ratio(Mode::Noop),
                r.ratio(Mode::Agent),
                workload.target(r.traffic),
                if r.meets_target() { "yes" } else { "no" },
            );
        }
        out.push('\n');
    }
    out
}
