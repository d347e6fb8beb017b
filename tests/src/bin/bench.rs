//! `cargo xtask bench`: the kernel programs' cost per packet
//! (BPF_PROG_TEST_RUN) and as their tables grow, the A/B network workloads
//! with and without the agent and the programs' cost in place, the agent
//! under load and under a storm of violations, and against a large
//! cluster; printed and written to BENCHMARKS.md with the machine it ran
//! on, the curves' plots in `benchmarks/` beside it. Needs root and
//! `CP_OBSERVER_BIN` (the release agent, which `cargo xtask bench` builds
//! and sets).

use std::time::Instant;

use lab::bench::{ab, discovery, inplace, load, scale, storm, workload};

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
    // `--cluster`: the large-cluster rows only, printed, nothing written.
    if args.iter().any(|a| a == "--cluster") {
        println!(
            "{}",
            discovery::markdown(&discovery::run(&discovery::Plan::FULL), PLOT_DIR)
        );
        return;
    }

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
    let inplace_table = inplace::markdown(&ab_rows);
    println!("{inplace_table}");

    let load_plan = load::Plan::FULL;
    let report = load::run(&load_plan);
    let load_table = load::markdown(&report);
    println!("{load_table}");

    let storm_plan = storm::Plan::FULL;
    let storm_table = storm::markdown(&storm::run(&storm_plan));
    println!("{storm_table}");

    let cluster_plan = discovery::Plan::FULL;
    let cluster = discovery::run(&cluster_plan);
    discovery::plots(&cluster, &plot_dir)
        .unwrap_or_else(|e| panic!("cannot draw the large cluster's charts: {e:#}"));
    let cluster_table = discovery::markdown(&cluster, PLOT_DIR);
    println!("{cluster_table}");

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
         ## A/B workloads: none, no-op programs, agent\n\n\
         A Rust client in the lab's node namespace and server in its control-plane namespace (veth \
         between them, both ends pinned to the same CPU), each workload run for {:.1} s with nothing \
         attached (`none`), with the kernel object's no-op programs at the agent's four hooks of the \
         cgroup v2 root (`noop`: `cgroup_skb` at ingress and egress, `cgroup_sock_addr` at connect4 \
         and connect6) and with the release agent (`agent`, policy `{}`: the tracked traffic is \
         tracked, decided and counted but prints no event), the three alternating in {} rounds with \
         their order rotated each round. Each run gives two figures: its rate (its median 100 ms \
         slice, so a moment's stall of the machine does not move it) and the whole machine's busy \
         CPU time per unit of work (user + nice + system + irq + softirq + steal of /proc/stat over \
         the run, over the bytes, transactions or connections it did). The tables give both per \
         mode (medians), the spread of `none` ((max − min) / median), the ratios of the medians to \
         `none` (for CPU as work per CPU second, so that higher is better for both) and the agent's \
         overhead (1 − ratio) over the no-op programs'. The targets are judged on the ratio of \
         `agent` to `none` taken round by round (the two ran seconds apart, so what drifts slowly \
         cancels): its median, and the order statistics of the rounds that hold the median with a \
         probability of at least 90 %, whatever the distribution; a target is met or missed when \
         that whole interval is on its side, else the verdict says it is within noise. {} Bulk: one \
         connection, {} KiB writes; request/response: one connection, 1-byte messages each way; new \
         connections: {} client threads each connecting, sending 1 byte, reading 1 byte and closing \
         first.\n\n{ab_tables}\
         ## In place: the programs' cost under real traffic\n\n\
         {} more rounds of the same workloads, `noop` and `agent` only, with BPF run-time statistics \
         on (`BPF_ENABLE_STATS`, on only while the benchmark holds its descriptor; these rounds are \
         not in the tables above, since the statistics' clock reads add to every program run): \
         before and after each run, the kernel's `run_time_ns` and `run_cnt` of each program \
         attached at the agent's hooks of the cgroup v2 root (found with BPF_PROG_QUERY; a run \
         fails if a hook holds anything but its mode's program). The table gives the median ns per \
         run over the rounds (the statistics' two clock reads included, which the no-op program \
         pays too), the agent's spread, their difference against the target (at most 15 ns per \
         untracked and 60 ns per tracked packet over the no-op program), how often each program ran \
         per unit of work, and what the program's time comes to per unit of work. In the bulk and \
         request/response runs, `connect4` ran once: its figure there is one cold `connect()`.\n\n\
         {inplace_table}\n\
         ## The agent under load\n\n\
         {} client threads in the node namespace (on one CPU with the server, as above) made {:.0} \
         short tracked connections a second, paced, for {:.0} s (connect to the apiserver endpoint, \
         1-byte request and answer, close), with the policy `{}` so that each is one JSON event; the \
         agent's CPU is utime + stime from /proc/PID/stat from the first connection until its last \
         event was printed, over the length of the load, its peak RSS is VmHWM from \
         /proc/PID/status, and the events are the lines on its stdout.\n\n{load_table}\n\
         ## The agent under a storm of violations\n\n\
         More violations than real connections can make here: {} threads of the bench drove {:.0} \
         fresh flows a second for {:.0} s (SYN, an HTTP request line, RST; node to the apiserver \
         endpoint, policy `{}`) through the running agent's own `egress` program with \
         BPF_PROG_TEST_RUN, so each is one event through its real ring buffer, reader and JSON \
         output (without the `process` field: a test run has no socket nor process). Made is the \
         kernel's count (`cp_observer_policy_violations_total`), printed the JSON lines on the \
         agent's stdout, lost `cp_observer_events_lost_total` (ring buffer full; it also counts \
         connections left untracked by a full flow table, shown apart); CPU and RSS as above, and \
         the time to drain is from the storm's end until the last event was printed.\n\n{storm_table}\n\
         ## The agent against a large cluster\n\n\
         The tests' kube-apiserver (v1.20.2, on etcd, in the lab's control-plane namespace) holding \
         Nodes and Pods created through its API (no kubelets: each object created, then its status \
         set, as a kubelet would: addresses, pod IPs, container statuses), {} pods on every node but \
         the agent's, which has {}, one konnectivity agent pod in `kube-system` per {} nodes, the \
         tenants' pods in {} namespaces. At each size the control plane starts on a copy of the \
         populated etcd data (cached under `~/.cache/cp-observer/bench-cluster/`) and serves from \
         its watch cache before the release agent starts in the node namespace with only \
         `--kubeconfig` and `--node-name`. Complete view: `cp_observer_discovered` shows the \
         apiserver endpoint, the VIP, the node's address and pod CIDR, every konnectivity agent and \
         every pod address of its node; time and CPU are counted from the agent's start. Received \
         bytes are the node namespace's interface counter towards the control plane (only the agent \
         talks there; TCP/IP, TLS and HTTP included), until the complete view and during {:.0} s of \
         quiet after, and while {} pods are created (and their status set) on the other nodes. \
         The apiserver's audit log lists the agent's requests (from the node's address); \
         the run fails if one lists or watches the pods or nodes of the whole cluster.\n\n{cluster_table}",
        kernel.trim(),
        scale_plan.packets,
        ab_plan.duration.as_secs_f64(),
        ab::AB_POLICY,
        ab_plan.rounds,
        ab::JUDGED,
        workload::BULK_WRITE / 1024,
        ab_plan.connection_threads,
        ab_plan.stats_rounds,
        load_plan.threads,
        load_plan.rate,
        load_plan.duration.as_secs_f64(),
        load::LOAD_POLICY,
        storm_plan.threads,
        storm_plan.rate,
        storm_plan.duration.as_secs_f64(),
        storm::LOAD_POLICY,
        discovery::PODS_PER_NODE,
        discovery::NODE_PODS,
        discovery::NODES_PER_KONNECTIVITY_AGENT,
        discovery::TEAMS,
        cluster_plan.quiet.as_secs_f64(),
        discovery::CHURN_PODS,
    );
    std::fs::write(&out, doc).unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
    eprintln!("wrote {out} in {:.0} s", started.elapsed().as_secs_f64());
}
