//! `cargo xtask bench`: the kernel programs' cost per packet
//! (BPF_PROG_TEST_RUN) and as their tables grow, the A/B network workloads
//! with and without the agent, and the agent under load; printed and
//! written to BENCHMARKS.md with the machine it ran on, the curves' plots
//! in `benchmarks/` beside it. Needs root and `CP_OBSERVER_BIN` (the
//! release agent, which `cargo xtask bench` builds and sets).

use std::time::Instant;

use lab::bench::{ab, load, scale, workload};

/// Where the plots go, next to the document.
const PLOT_DIR: &str = "benchmarks";

fn main() {
    lab::cluster::signals::cleanup_on_signals("bench");
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--kernel`: the per-packet rows only, printed, nothing written (a
    // minute; for comparing two builds of the kernel programs).
    let kernel_only = args.iter().any(|a| a == "--kernel");
    let out = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "BENCHMARKS.md".to_owned());
    let started = Instant::now();

    let rows = lab::bench::kernel::kernel(200_000, 7, 2000);
    let kernel_table = lab::bench::kernel::markdown(&rows);
    println!("{kernel_table}");
    if kernel_only {
        return;
    }

    let scale_plan = scale::Plan::FULL;
    let curves = scale::run(&scale_plan);
    let plot_dir = std::path::Path::new(&out)
        .parent()
        .unwrap_or(std::path::Path::new(""))
        .join(PLOT_DIR);
    std::fs::create_dir_all(&plot_dir)
        .unwrap_or_else(|e| panic!("cannot make {}: {e}", plot_dir.display()));
    scale::plots(&curves, &plot_dir).unwrap_or_else(|e| panic!("cannot draw the curves: {e:#}"));
    let scale_tables = scale::markdown(&curves, PLOT_DIR);
    println!("{scale_tables}");

    let ab_plan = ab::Plan::FULL;
    let ab_rows = ab::run(&ab_plan);
    let ab_tables = ab::markdown(&ab_rows);
    println!("{ab_tables}");

    let load_plan = load::Plan::FULL;
    let report = load::run(&load_plan);
    let load_table = load::markdown(&report);
    println!("{load_table}");

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let doc = format!(
        "# Benchmarks\n\nMade by `sudo -E cargo xtask bench` on {cores} cores ({cpu}), kernel {}.\n\n\
         ## Kernel programs, per packet\n\nBPF_PROG_TEST_RUN of the release object: median of 7 batches of \
         200,000 runs (the kernel's mean per run), and for the first payload of a new flow the median of \
         2,000 fresh flows run once each. The no-op `cgroup_skb` program is the floor of any program at \
         these hooks.\n\n{kernel_table}\n\
         ## Kernel programs as their tables grow\n\n\
         BPF_PROG_TEST_RUN as above, but each point runs {} different packets once each, the no-op \
         program just before the agent's on each (a big table is cold: its lookups miss the caches, \
         which one packet repeated would hide); medians of one run, and their difference, the \
         programs' own cost, which should stay within 2× of the smallest size's; the last column \
         is that cost with warm caches (one connection's packet repeated, SYNs between one pair of \
         addresses), to tell the caches from the size itself. Flow table: \
         connections from pods to the apiserver (IPv4 and IPv6 in turn) opened by their handshakes \
         and decided by a TLS first payload through the programs, with `--flow-table-capacity` the \
         larger of 65,536 and their number; the packet is a random connection's first payload again. \
         Role trie: the lab's prefixes, then pod ranges (/24, /64) and konnectivity agents (/32, \
         /128) in turn, with `--role-trie-capacity` the larger of 4,096 and their number; the \
         packet is the SYN of a new connection from a random control-plane address to a random \
         address of a random pod range (two trie lookups, a half-open entry). Memory is the maps' \
         `memlock` (fdinfo).\n\n{scale_tables}\
         ## A/B workloads: none, no-op program, agent\n\n\
         A Rust client in the lab's node namespace and server in its control-plane namespace (veth \
         between them, both ends pinned to the same CPU), each workload measured for {:.0} s (the \
         run's figure is its median 100 ms slice, so a moment's stall of the machine does not move \
         it) with nothing attached (`none`), with the no-op `cgroup_skb` program at ingress and egress of the \
         cgroup v2 root (`noop`) and with the release agent (`agent`, policy `{}`: the tracked traffic \
         is tracked, decided and counted but prints no event), the three alternating in {} rounds \
         with their order rotated each round; the tables give the medians, the spread of `none` \
         ((max − min) / median, the noise to read the ratios against), the ratios to `none`, and the \
         agent's overhead (1 − ratio) over the no-op program's (not computed when the no-op \
         program's overhead is ≤ 0, i.e. within noise). Bulk: one connection, {} KiB writes; \
         request/response: one connection, 1-byte messages each way; new connections: {} client \
         threads each connecting, sending 1 byte, reading 1 byte and closing first.\n\n{ab_tables}\
         ## The agent under load\n\n\
         {} client threads in the node namespace (on one CPU with the server, as above) made {:.0} \
         short tracked connections a second, paced, for {:.0} s (connect to the apiserver endpoint, \
         1-byte request and answer, close), with the policy `{}` so that each is one JSON event; the \
         agent's CPU is utime + stime from /proc/PID/stat from the first connection until its last \
         event was printed, over the length of the load, its peak RSS is VmHWM from \
         /proc/PID/status, and the events are the lines on its stdout.\n\n{load_table}",
        kernel.trim(),
        scale_plan.packets,
        ab_plan.duration.as_secs_f64(),
        ab::AB_POLICY,
        ab_plan.rounds,
        workload::BULK_WRITE / 1024,
        ab_plan.connection_threads,
        load_plan.threads,
        load_plan.rate,
        load_plan.duration.as_secs_f64(),
        load::LOAD_POLICY,
    );
    std::fs::write(&out, doc).unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
    eprintln!("wrote {out} in {:.0} s", started.elapsed().as_secs_f64());
}
