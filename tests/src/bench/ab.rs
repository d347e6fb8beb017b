//! A/B benchmarks: each [`crate::bench::workload`] measured with no cp-observer
//! program attached (`none`), with the kernel object's no-op programs on the
//! cgroup v2 root at the agent's four hooks (`noop`, the floor of any
//! program there), and with the real agent (`agent`), on a tracked path and
//! on untracked traffic. The three modes alternate, their order rotated each
//! round; each run gives a rate and the machine's busy CPU time per unit of
//! work, compared with `none` round by round. Rounds with BPF run-time
//! statistics on give the programs' in-place cost ([`inplace`]); they are
//! left out of the ratios, which the statistics' own cost would bias.

use std::{
    fmt::Write as _,
    fs::File,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use aya_obj::generated::bpf_cmd;
use observer::{
    cli::RunArgs,
    config::Settings,
    ebpf::{Datapath, Loaded, PROGRAMS},
};

use crate::{
    bench::{
        inplace::{self, Cost, FLOOR, HOOKS, Snapshot, StatsOn},
        kernel::median,
        workload,
    },
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

    /// Its name in a row.
    pub const fn short(self) -> &'static str {
        match self {
            Self::Throughput => "bulk",
            Self::RequestResponse => "request/response",
            Self::ConnectionRate => "new connections",
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

    /// The work CPU time is given per: (units of the run's total, name).
    /// A run's total is bytes (bulk), transactions or connections.
    pub const fn work_unit(self) -> (f64, &'static str) {
        match self {
            Self::Throughput => (1e9, "GB"),
            Self::RequestResponse => (1e5, "100k transactions"),
            Self::ConnectionRate => (1e4, "10k connections"),
        }
    }

    fn service(self) -> Kind {
        match self {
            Self::Throughput => Kind::Sink,
            Self::RequestResponse | Self::ConnectionRate => Kind::Echo,
        }
    }
}

/// What the ratios to `none` are taken of: both are "higher is better", so
/// the targets of [`Workload::target`] read the same on either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// The run's rate ([`Workload::unit`]): its median slice's.
    Rate,
    /// Work per busy CPU second of the whole machine: the inverse of the
    /// CPU time per [`Workload::work_unit`].
    WorkPerCpu,
}

impl Figure {
    /// Both figures.
    pub const ALL: [Self; 2] = [Self::Rate, Self::WorkPerCpu];

    /// The figure of a run.
    pub fn of(self, s: &Sample) -> f64 {
        match self {
            Self::Rate => s.rate,
            Self::WorkPerCpu => 1.0 / s.cpu,
        }
    }

    /// How the tables name it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::WorkPerCpu => "work per CPU second",
        }
    }
}

/// The figure the targets are judged on (why: [`JUDGED`]); the other is
/// shown next to it.
pub const JUDGED_ON: Figure = Figure::Rate;

/// Why the targets are judged on [`JUDGED_ON`] (for the generated
/// document).
pub const JUDGED: &str = "The targets are judged on the rate. Both ends of a workload share one \
    CPU and keep it busy, so the rate measures the CPU time a unit of work takes there, and its \
    median slice shrugs off a moment's stall. The whole machine's busy CPU time per unit of work \
    also counts the agent's user space on the other CPU, but everything else running there too, \
    in 10 ms ticks: on the shared development machine (16 rounds of 0.5 s), its intervals came \
    out as wide as the rate's or wider (request/response: 3.7–8.5 % against 1.4–3.0 %). It is shown next to the \
    judged figure; where it is clearly below the rate's ratio, the agent costs CPU away from the \
    workload's CPU.";

/// The agent's overhead may be at most this multiple of the no-op
/// program's (overhead = 1 − ratio to `none`).
pub const MAX_OVERHEAD_VS_NOOP: f64 = 1.5;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Rounds of rates and CPU time, statistics off; each measures every
    /// workload in every mode once.
    pub rounds: usize,
    /// Rounds with BPF run-time statistics on, for the programs' in-place
    /// cost: `noop` and `agent` only.
    pub stats_rounds: usize,
    /// Length of one measurement.
    pub duration: Duration,
    /// Client threads (and server workers) of the connection-rate workload.
    pub connection_threads: usize,
    /// Namespace tag (see [`Topology::new`]).
    pub tag: &'static str,
}

impl Plan {
    /// What `cargo xtask bench` runs: many short rounds, since the targets
    /// are judged on ratios taken round by round (about 5 minutes).
    pub const FULL: Self = Self {
        rounds: 24,
        stats_rounds: 3,
        duration: Duration::from_millis(500),
        connection_threads: 2,
        tag: "bench",
    };
}

/// One run of a workload in one mode.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Its rate, in [`Workload::unit`].
    pub rate: f64,
    /// The work it did, in [`Workload::work_unit`]s.
    pub work: f64,
    /// The machine's busy CPU seconds per [`Workload::work_unit`].
    pub cpu: f64,
}

/// One run with run-time statistics on.
#[derive(Clone, Copy, Debug)]
pub struct InPlace {
    /// What each hook's program did ([`inplace::HOOKS`] order).
    pub hooks: [Option<Cost>; HOOKS],
    /// The work the run did, in [`Workload::work_unit`]s.
    pub work: f64,
}

/// The measurements of one workload on one kind of traffic.
#[derive(Clone, Debug)]
pub struct Row {
    /// The workload.
    pub workload: Workload,
    /// The traffic.
    pub traffic: Traffic,
    /// Per mode ([`Mode::ALL`] order), one run per round, statistics off:
    /// the i-th of each mode are of the same round.
    pub samples: [Vec<Sample>; 3],
    /// Per mode, one run per statistics round (none for `none`).
    pub inplace: [Vec<InPlace>; 3],
}

/// A median with a distribution-free confidence interval: order
/// statistics of the values that hold the median with a probability of at
/// least 90 % (the whole range for fewer than 5 values, where none does).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The median.
    pub median: f64,
    /// The interval's low end.
    pub low: f64,
    /// The interval's high end.
    pub high: f64,
}

impl Estimate {
    /// The estimate of `values`' median (NaN for none).
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self {
                median: f64::NAN,
                low: f64::NAN,
                high: f64::NAN,
            };
        }
        // [v[k], v[n-1-k]] misses the median with probability
        // 2 P(Binomial(n, ½) ≤ k): the widest that keeps it ≤ 10 %.
        let mut term = 0.5_f64.powi(i32::try_from(n).unwrap_or(i32::MAX)); // P(B = k)
        let (mut k, mut below) = (0, term); // P(B ≤ k)
        while 2 * k + 3 <= n {
            term *= (n - k) as f64 / (k + 1) as f64;
            if 2.0 * (below + term) > 0.1 {
                break;
            }
            below += term;
            k += 1;
        }
        Self {
            median: median(&v),
            low: v[k],
            high: v[n - 1 - k],
        }
    }
}

impl Row {
    /// `mode`'s `figure`, one per round.
    pub fn values(&self, mode: Mode, figure: Figure) -> Vec<f64> {
        self.samples[mode as usize]
            .iter()
            .map(|s| figure.of(s))
            .collect()
    }

    /// Median of `mode`'s `figure`.
    pub fn median(&self, mode: Mode, figure: Figure) -> f64 {
        median(&self.values(mode, figure))
    }

    /// Median of `mode` over the median of `none`.
    pub fn ratio(&self, mode: Mode, figure: Figure) -> f64 {
        self.median(mode, figure) / self.median(Mode::None, figure)
    }

    /// `mode`'s ratio to `none` round by round (the two ran one after the
    /// other, so what drifts slowly cancels), estimated.
    pub fn paired(&self, mode: Mode, figure: Figure) -> Estimate {
        let ratios: Vec<f64> = self
            .values(mode, figure)
            .iter()
            .zip(self.values(Mode::None, figure))
            .map(|(m, none)| m / none)
            .collect();
        Estimate::of(&ratios)
    }

    /// Spread of `mode`'s `figure`: (max − min) / median. Differences
    /// between the modes' medians well inside the spread of `none` are
    /// noise.
    pub fn spread(&self, mode: Mode, figure: Figure) -> f64 {
        let v = self.values(mode, figure);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        (max - min) / median(&v)
    }

    /// The agent's overhead (1 − ratio) over the no-op program's, from the
    /// paired ratios' medians, with the widest quotient of their intervals;
    /// `None` when the no-op program's overhead is not above 0 (its
    /// interval's low end, for the interval) or the agent's is not either.
    pub fn overhead_vs_noop(&self, figure: Figure) -> Option<Estimate> {
        let (agent, noop) = (
            self.paired(Mode::Agent, figure),
            self.paired(Mode::Noop, figure),
        );
        let over = |r: f64| 1.0 - r;
        (over(noop.median) > 0.0 && over(agent.median) > 0.0).then(|| Estimate {
            median: over(agent.median) / over(noop.median),
            low: over(agent.high) / over(noop.low),
            high: if over(noop.high) > 0.0 {
                over(agent.low) / over(noop.high)
            } else {
                f64::INFINITY
            },
        })
    }

    /// The in-place cost of `mode`'s program at hook `hook`, ns per run,
    /// one per statistics round where it ran.
    pub fn ns_per_run(&self, mode: Mode, hook: usize) -> Vec<f64> {
        self.inplace[mode as usize]
            .iter()
            .filter_map(|r| r.hooks[hook].filter(|c| c.runs > 0).map(Cost::per_run))
            .collect()
    }

    /// Runs of `mode`'s program at hook `hook` per unit of work, one per
    /// statistics round.
    pub fn runs_per_unit(&self, mode: Mode, hook: usize) -> Vec<f64> {
        self.inplace[mode as usize]
            .iter()
            .map(|r| r.hooks[hook].map_or(0.0, |c| c.runs as f64) / r.work)
            .collect()
    }
}

/// How a target fares given an estimate: met or missed when its whole
/// interval is on one side, else undecided.
pub fn verdict(e: &Estimate, at_least: bool, target: f64) -> &'static str {
    let (good, bad) = if at_least {
        (e.low >= target, e.high < target)
    } else {
        (e.high <= target, e.low > target)
    };
    match (good, bad) {
        (true, _) => "met",
        (_, true) => "missed",
        _ if (e.median >= target) == at_least => "met by the median, within noise",
        _ => "missed by the median, within noise",
    }
}

impl Mode {
    /// The names of the programs this mode attaches at each of the
    /// agent's hooks.
    pub fn programs(self) -> [Option<&'static str>; HOOKS] {
        match self {
            Self::None => [None; HOOKS],
            Self::Noop => FLOOR.map(Some),
            Self::Agent => PROGRAMS.map(|(name, _)| Some(name)),
        }
    }
}

/// The hooks every workload runs: both packet hooks and the IPv4
/// `connect()` (the lab's traffic is IPv4).
pub fn exercised(hook: usize) -> bool {
    inplace::hook_name(hook) != "connect6"
}

/// The no-op programs, one kernel object per hook so that the kernel
/// accounts each hook's runs apart (one program attached at two hooks has
/// one `run_cnt` for both): [`FLOOR`]`[i]` loaded in the i-th.
struct Floors(Vec<Datapath>);

impl Floors {
    fn load() -> Self {
        let args = RunArgs {
            no_pin: true,
            // Never used: the smallest table keeps the four copies small.
            flow_table_capacity: Some(1),
            ..RunArgs::default()
        };
        let settings = Settings::from_args(&args).expect("settings");
        Self(
            FLOOR
                .into_iter()
                .map(|name| {
                    let Loaded { mut datapath, .. } =
                        Datapath::load(&settings).expect("the kernel object loads (root)");
                    datapath
                        .load_extra(name)
                        .unwrap_or_else(|e| panic!("the no-op program {name} loads: {e}"));
                    datapath
                })
                .collect(),
        )
    }
}

/// The no-op programs attached at the agent's hooks of a cgroup; detached
/// on drop.
struct Floor {
    /// This process's links, pinned nowhere: closing one detaches it.
    _links: Vec<OwnedFd>,
}

impl Floor {
    fn attach(floors: &Floors, cgroup: &File) -> Self {
        let links = PROGRAMS
            .iter()
            .zip(FLOOR)
            .zip(&floors.0)
            .map(|(((hook, at), name), datapath)| {
                let prog = datapath
                    .program_fd(name)
                    .unwrap_or_else(|e| panic!("the no-op program {name}: {e}"));
                // BPF_LINK_CREATE: aya 0.14 cannot make a second handle on a
                // `cgroup_sock_addr` program, whose links would then go with it.
                let fd = observer::sys::bpf(bpf_cmd::BPF_LINK_CREATE, |attr| {
                    attr.link_create.__bindgen_anon_1.prog_fd = prog.as_fd().as_raw_fd() as u32;
                    attr.link_create.__bindgen_anon_2.target_fd = cgroup.as_raw_fd() as u32;
                    attr.link_create.attach_type = at.attach_type() as u32;
                })
                .unwrap_or_else(|e| {
                    panic!("cannot attach the no-op program {name} at {hook}: {e}")
                });
                // SAFETY: BPF_LINK_CREATE returned a new descriptor, which
                // nothing else owns.
                unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("a descriptor")) }
            })
            .collect();
        Self { _links: links }
    }
}

/// What every run of a plan shares.
struct Bench<'a> {
    plan: &'a Plan,
    topo: Topology,
    cgroup: File,
    floor: Floors,
    agent_args: Vec<String>,
}

/// Runs the plan: builds the lab's namespaces, then for every round, every
/// workload and every kind of traffic, measures the three modes in this
/// round's order; the first [`Plan::stats_rounds`] with run-time statistics
/// on and without `none`. Panics, naming the workload and mode, if a
/// measurement fails, the agent counts the traffic other than planned, or
/// a hook holds other programs than the mode's.
pub fn run(plan: &Plan) -> Vec<Row> {
    let topo = Topology::new(plan.tag);
    workload::prepare_client_namespace(&topo.node);
    let cgroup = observer::cgroup::resolve(None).expect("a cgroup v2 mount");
    let floor = Floors::load();
    let mut agent_args = Topology::agent_args();
    agent_args.extend(["--policy".to_owned(), AB_POLICY.to_owned()]);
    let bench = Bench {
        plan,
        topo,
        cgroup: inplace::open_cgroup(&cgroup),
        floor,
        agent_args,
    };

    let mut rows: Vec<Row> = Workload::ALL
        .into_iter()
        .flat_map(|workload| {
            Traffic::ALL.into_iter().map(move |traffic| Row {
                workload,
                traffic,
                samples: Default::default(),
                inplace: Default::default(),
            })
        })
        .collect();
    let rounds = plan.stats_rounds + plan.rounds;
    for round in 0..rounds {
        let stats = (round < plan.stats_rounds).then(StatsOn::enable);
        let mut order = Mode::ALL;
        order.rotate_left(round % Mode::ALL.len());
        for row in &mut rows {
            for mode in order {
                if stats.is_some() && mode == Mode::None {
                    continue;
                }
                let (workload, traffic) = (row.workload, row.traffic);
                let what = format!(
                    "{workload:?} on {traffic:?} traffic with mode {}",
                    mode.name()
                );
                let (sample, hooks) = bench.in_mode(mode, workload, traffic, &what);
                eprintln!(
                    "ab: round {}/{rounds}{}: {what}: {:.2} {}, {:.4} CPU s per {}{}",
                    round + 1,
                    if stats.is_some() {
                        " (statistics on)"
                    } else {
                        ""
                    },
                    sample.rate,
                    workload.unit(),
                    sample.cpu,
                    workload.work_unit().1,
                    if stats.is_some() {
                        format!(", ns per run: {}", inplace::describe(&hooks))
                    } else {
                        String::new()
                    },
                );
                if stats.is_some() {
                    row.inplace[mode as usize].push(InPlace {
                        hooks,
                        work: sample.work,
                    });
                } else {
                    row.samples[mode as usize].push(sample);
                }
            }
        }
    }
    rows
}

impl Bench<'_> {
    /// One run in `mode`, and what the programs at the hooks did in it
    /// (their counters only move while statistics are on).
    fn in_mode(
        &self,
        mode: Mode,
        workload: Workload,
        traffic: Traffic,
        what: &str,
    ) -> (Sample, [Option<Cost>; HOOKS]) {
        let _floor = (mode == Mode::Noop).then(|| Floor::attach(&self.floor, &self.cgroup));
        let agent = (mode == Mode::Agent).then(|| Agent::start(&self.agent_args));
        let counted = agent.as_ref().map(Agent::scrape);
        let before = Snapshot::take(&self.cgroup, mode.programs(), what);
        let sample = self.measure(workload, traffic, what);
        let hooks = Snapshot::take(&self.cgroup, mode.programs(), what).since(&before, what);
        if let (Some(agent), Some(counted)) = (&agent, &counted) {
            check_counted(counted, &agent.scrape(), traffic, what);
        }
        (sample, hooks)
    }

    /// One measurement: a fresh server, the workload with the machine's
    /// busy CPU time around it, the server's verdict.
    fn measure(&self, workload: Workload, traffic: Traffic, what: &str) -> Sample {
        let (node, duration) = (&self.topo.node, self.plan.duration);
        let to = traffic.server();
        let threads = self.plan.connection_threads;
        let server = Server::pinned(&self.topo.cp, to, workload.service(), threads);
        let busy = inplace::busy_cpu();
        let (rate, total) = match workload {
            Workload::Throughput => workload::bulk(node, to, duration)
                .map(|d| (d.rate, d.total))
                .unwrap_or_else(|e| panic!("{what}: {e}")),
            Workload::RequestResponse => workload::request_response(node, to, duration)
                .map(|d| (d.rate, d.total))
                .unwrap_or_else(|e| panic!("{what}: {e}")),
            Workload::ConnectionRate => {
                let c = workload::connections(node, to, duration, threads, None);
                assert!(
                    c.failed == 0,
                    "{what}: {} of {} connections failed: {:?}",
                    c.failed,
                    c.failed + c.completed,
                    c.failures
                );
                (c.median_rate(duration), c.completed)
            }
        };
        let cpu = inplace::busy_cpu().saturating_sub(busy).as_secs_f64();
        let failures = server.stop();
        assert!(failures.is_empty(), "{what}: the server saw {failures:?}");
        let work = total as f64 / workload.work_unit().0;
        Sample {
            rate,
            work,
            cpu: cpu / work,
        }
    }
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

/// The tables: per workload the rates and the CPU time per unit of work of
/// each mode, then the targets, judged on [`JUDGED_ON`].
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    for workload in Workload::ALL {
        let (_, unit) = workload.work_unit();
        let _ = write!(
            out,
            "### {}\n\n| traffic | figure | none | noop | agent | spread of none | noop/none \
             | agent/none | agent overhead ÷ noop overhead |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
            workload.title()
        );
        for r in rows.iter().filter(|r| r.workload == workload) {
            for figure in Figure::ALL {
                let value = |m: Mode| match figure {
                    Figure::Rate if workload == Workload::Throughput => {
                        format!("{:.2}", r.median(m, figure))
                    }
                    Figure::Rate => format!("{:.0}", r.median(m, figure)),
                    Figure::WorkPerCpu => format!("{:.1} ms", 1e3 / r.median(m, figure)),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {:.1} % | {:.3} | {:.3} | {} |",
                    r.traffic.describe(),
                    match figure {
                        Figure::Rate => workload.unit().to_owned(),
                        Figure::WorkPerCpu => format!("CPU per {unit}"),
                    },
                    value(Mode::None),
                    value(Mode::Noop),
                    value(Mode::Agent),
                    100.0 * r.spread(Mode::None, figure),
                    r.ratio(Mode::Noop, figure),
                    r.ratio(Mode::Agent, figure),
                    r.overhead_vs_noop(figure).map_or_else(
                        || "— (within noise)".to_owned(),
                        |e| format!("{:.2}", e.median)
                    ),
                );
            }
        }
        out.push('\n');
    }
    let other = Figure::ALL.into_iter().find(|f| *f != JUDGED_ON);
    let _ = write!(
        out,
        "### Targets\n\n| workload | traffic | target | agent/none by {} (90 % interval) \
         | interval width | margin | verdict | agent overhead ÷ noop overhead (interval) \
         | ≤ {MAX_OVERHEAD_VS_NOOP} |{}\n|---|---|---:|---|---:|---:|---|---|---|{}\n",
        JUDGED_ON.name(),
        other.map_or_else(String::new, |f| format!(
            " agent/none by {} (90 % interval) |",
            f.name()
        )),
        if other.is_some() { "---|" } else { "" },
    );
    for r in rows {
        let target = r.workload.target(r.traffic);
        let e = r.paired(Mode::Agent, JUDGED_ON);
        let (times, within) = match r.overhead_vs_noop(JUDGED_ON) {
            Some(o) => (
                format!("{:.2} ({})", o.median, interval(&o)),
                verdict(&o, false, MAX_OVERHEAD_VS_NOOP),
            ),
            None if e.median >= 1.0 => ("— (both within noise)".to_owned(), "met"),
            None => ("— (noop overhead ≤ 0: within noise)".to_owned(), "—"),
        };
        let _ = writeln!(
            out,
            "| {} | {:?} | ≥ {target} | {:.3} ({}) | {:.1} % | {:.1} % | {} | {times} | {within} |{}",
            r.workload.short(),
            r.traffic,
            e.median,
            interval(&e),
            100.0 * (e.high - e.low),
            100.0 * (1.0 - target),
            verdict(&e, true, target),
            other.map_or_else(String::new, |f| {
                let o = r.paired(Mode::Agent, f);
                format!(" {:.3} ({}) |", o.median, interval(&o))
            }),
        );
    }
    out.push('\n');
    out
}

/// An estimate's interval, "low–high" (∞ for an unbounded end).
fn interval(e: &Estimate) -> String {
    let end = |x: f64| {
        if x.is_finite() {
            format!("{x:.3}")
        } else {
            "∞".to_owned()
        }
    };
    format!("{}–{}", end(e.low), end(e.high))
}
