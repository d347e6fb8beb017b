//! What the work costs where it happens: the kernel's own accounting of
//! each program attached at the agent's hooks (`run_time_ns` and `run_cnt`,
//! kept while BPF run-time statistics are on), and the whole machine's busy
//! CPU time from /proc/stat, to divide by the work a run did.

use std::{
    fmt::Write as _,
    fs::File,
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
    time::Duration,
};

use aya::programs::loaded_programs;
use aya_obj::generated::{bpf_attach_type, bpf_cmd};
use observer::ebpf::{Hook, PROGRAMS};

use crate::bench::{
    ab::{Mode, Row, Traffic, exercised},
    kernel::median,
};

/// The hooks measured: the agent's, in [`PROGRAMS`] order.
pub const HOOKS: usize = PROGRAMS.len();

/// The no-op program of the kernel object at each of the agent's hooks, in
/// [`PROGRAMS`] order: the floor of any program there.
pub const FLOOR: [&str; HOOKS] = ["noop", "noop", "noop_connect4", "noop_connect6"];

/// The name of hook `i` (that of the agent's program there).
pub const fn hook_name(i: usize) -> &'static str {
    PROGRAMS[i].0
}

/// Whether hook `i` sees packets (rather than `connect()` calls).
pub const fn is_packet_hook(i: usize) -> bool {
    matches!(PROGRAMS[i].1, Hook::Skb(_))
}

/// BPF run-time statistics, on while this value lives (`BPF_ENABLE_STATS`:
/// the kernel turns them off when the last such descriptor closes, so a
/// crash cannot leave them on).
pub struct StatsOn(#[allow(dead_code, reason = "held, not read")] OwnedFd);

impl StatsOn {
    /// Turns the statistics on. Panics if the kernel refuses (before 5.8).
    pub fn enable() -> Self {
        Self(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .unwrap_or_else(|e| panic!("cannot turn BPF run-time statistics on: {e}")),
        )
    }
}

/// One program's counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counters {
    id: u32,
    name: String,
    run_ns: u64,
    runs: u64,
}

/// What is attached at each of the agent's hooks of a cgroup, with its
/// counters.
#[derive(Clone, Debug)]
pub struct Snapshot([Option<Counters>; HOOKS]);

/// What one program did between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Runs.
    pub runs: u64,
    /// Nanoseconds in all of them.
    pub ns: u64,
}

impl Cost {
    /// Nanoseconds per run (NaN without runs).
    pub fn per_run(self) -> f64 {
        self.ns as f64 / self.runs as f64
    }
}

impl Snapshot {
    /// The programs attached directly to `cgroup` at each hook, and their
    /// counters. Panics if one hook holds more than one program,
    /// `expected[i]` is not the name of what hook `i` holds (`None`:
    /// nothing must be there: another program there would be measured
    /// instead of, or with, the one meant), or one program is at two hooks.
    pub fn take(cgroup: &File, expected: [Option<&str>; HOOKS], what: &str) -> Self {
        let taken = Self(std::array::from_fn(|i| {
            let (hook, attach) = (hook_name(i), PROGRAMS[i].1.attach_type());
            let ids = attached(cgroup, attach)
                .unwrap_or_else(|e| panic!("{what}: cannot query the programs at {hook}: {e}"));
            let found: Vec<Counters> = ids.iter().map(|&id| counters(id, what)).collect();
            let names: Vec<&str> = found.iter().map(|c| c.name.as_str()).collect();
            let want: Vec<&str> = expected[i].into_iter().collect();
            assert!(
                names == want,
                "{what}: at the cgroup's {hook} hook, expected {want:?} and found {names:?} \
                 (ids {ids:?})"
            );
            found.into_iter().next()
        }));
        // One program at two hooks has one `run_cnt` for both.
        let ids: Vec<u32> = taken.0.iter().flatten().map(|c| c.id).collect();
        for (i, id) in ids.iter().enumerate() {
            assert!(
                !ids[..i].contains(id),
                "{what}: program {id} is attached at two hooks: its counters cannot tell them apart"
            );
        }
        taken
    }

    /// What each hook's program did since `before` (taken with the same
    /// programs attached).
    pub fn since(&self, before: &Self, what: &str) -> [Option<Cost>; HOOKS] {
        std::array::from_fn(|i| match (&before.0[i], &self.0[i]) {
            (Some(b), Some(a)) => {
                assert!(
                    a.id == b.id,
                    "{what}: the program at {} changed during the run ({} id {} → {} id {})",
                    hook_name(i),
                    b.name,
                    b.id,
                    a.name,
                    a.id
                );
                Some(Cost {
                    runs: a.runs - b.runs,
                    ns: a.run_ns - b.run_ns,
                })
            }
            _ => None,
        })
    }
}

/// The ids of the programs attached directly to `cgroup` at `attach`
/// (`BPF_PROG_QUERY`).
fn attached(cgroup: &File, attach: bpf_attach_type) -> io::Result<Vec<u32>> {
    // Program ids are never 0: the ones the kernel wrote are the leading
    // non-zero ones. More than fit is an error (ENOSPC).
    let mut ids = [0u32; 8];
    observer::sys::bpf(bpf_cmd::BPF_PROG_QUERY, |attr| {
        attr.query.__bindgen_anon_1.target_fd = cgroup.as_raw_fd() as u32;
        attr.query.attach_type = attach as u32;
        attr.query.prog_ids = ids.as_mut_ptr() as u64;
        attr.query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
    })?;
    Ok(ids.into_iter().take_while(|&id| id != 0).collect())
}

/// The counters of loaded program `id`.
fn counters(id: u32, what: &str) -> Counters {
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .unwrap_or_else(|| panic!("{what}: program {id} is not loaded any more"));
    Counters {
        id,
        name: info.name_as_str().unwrap_or("?").to_owned(),
        run_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        runs: info.run_count(),
    }
}

/// The hooks' ns per run, for a log line.
pub fn describe(hooks: &[Option<Cost>; HOOKS]) -> String {
    hooks
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            c.filter(|c| c.runs > 0)
                .map(|c| format!("{} {:.0} ({} runs)", hook_name(i), c.per_run(), c.runs))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The target for the agent's program over the no-op's at a packet hook,
/// ns per run (README, "Benchmarks").
pub const fn target_ns(traffic: Traffic) -> f64 {
    match traffic {
        Traffic::Tracked => 60.0,
        Traffic::Untracked => 15.0,
    }
}

/// The table of the programs' in-place cost: per workload, traffic and
/// hook the workload runs, the median ns per run of the no-op and the
/// agent's program over the statistics rounds, the agent's spread, their
/// difference against the target, how often each ran per unit of work (not
/// the same for both: the agent's cost changes how the stack batches) and
/// what the programs' time comes to per unit of work.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | traffic | hook | noop, ns per run | agent, ns per run | spread of agent \
         | agent − noop | target | met | runs per unit of work, noop / agent \
         | program time per unit of work, noop / agent |\n\
         |---|---|---|---:|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for r in rows {
        let (_, unit) = r.workload.work_unit();
        for hook in (0..HOOKS).filter(|&h| exercised(h)) {
            let ns = |m| median(&r.ns_per_run(m, hook));
            let runs = |m| median(&r.runs_per_unit(m, hook));
            let (noop, agent) = (ns(Mode::Noop), ns(Mode::Agent));
            let diff = agent - noop;
            let (target, met) = if is_packet_hook(hook) {
                let t = target_ns(r.traffic);
                (format!("≤ {t}"), if diff <= t { "yes" } else { "no" })
            } else {
                ("—".to_owned(), "—")
            };
            let _ = writeln!(
                out,
                "| {} | {:?} | {} | {noop:.0} | {agent:.0} | {:.0} % | {diff:+.0} | {target} \
                 | {met} | {} / {} | {} / {} |",
                r.workload.short(),
                r.traffic,
                hook_name(hook),
                100.0 * spread(&r.ns_per_run(Mode::Agent, hook)),
                significant(runs(Mode::Noop)),
                significant(runs(Mode::Agent)),
                per_unit(noop * runs(Mode::Noop), unit),
                per_unit(agent * runs(Mode::Agent), unit),
            );
        }
    }
    out
}

/// (max − min) / median.
fn spread(v: &[f64]) -> f64 {
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    (max - min) / median(v)
}

/// A count with three significant digits and no more decimals than that.
fn significant(x: f64) -> String {
    let digits = if x.abs() >= 100.0 || x == 0.0 {
        0
    } else {
        (2.0 - x.abs().log10().floor()).max(0.0) as usize
    };
    format!("{x:.digits$}")
}

/// Nanoseconds per unit of work, in a readable unit.
fn per_unit(ns: f64, unit: &str) -> String {
    if ns.abs() >= 1e6 {
        format!("{:.2} ms per {unit}", ns / 1e6)
    } else {
        format!("{:.1} µs per {unit}", ns / 1e3)
    }
}

/// Opens a cgroup directory (to attach to or query).
pub fn open_cgroup(cgroup: &Path) -> File {
    File::open(cgroup).unwrap_or_else(|e| panic!("cannot open cgroup {}: {e}", cgroup.display()))
}

/// The whole machine's busy CPU time so far: user + nice + system + irq +
/// softirq + steal of /proc/stat's `cpu` line (everything but idle and
/// iowait), at its resolution (`USER_HZ`, 10 ms).
pub fn busy_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat")
        .unwrap_or_else(|e| panic!("cannot read /proc/stat: {e}"));
    busy_of(&stat).unwrap_or_else(|| panic!("no `cpu` line in /proc/stat:\n{stat}"))
}

/// [`busy_cpu`] of a /proc/stat text.
fn busy_of(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied())
        .sum::<Option<u64>>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(Duration::from_nanos(busy * (1_000_000_000 / hz)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_idle_and_iowait_out() {
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
        let busy = busy_of("cpu  1 2 3 1000 1000 4 5 6 0 0\ncpu0 1 2 3 1000 1000 4 5 6 0 0\n");
        assert_eq!(
            busy,
            Some(Duration::from_secs(21) / u32::try_from(hz).unwrap())
        );
        assert_eq!(busy_of("cpu0 1 2 3\n"), None);
    }
}
