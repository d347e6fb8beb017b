//! `cargo xtask bench`: kernel cost per packet (BPF_PROG_TEST_RUN), printed
//! and written to BENCHMARKS.md with the machine it ran on.

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "BENCHMARKS.md".to_owned());
    let rows = lab::bench::kernel(200_000, 7, 2000);
    let table = lab::bench::markdown(&rows);
    println!("{table}");
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
         these hooks.\n\n{table}\n\
         Not measured yet: the A/B workloads with and without the agent attached (throughput, \
         request/response, connection rate), and the agent's CPU and memory under load.\n",
        kernel.trim()
    );
    std::fs::write(&out, doc).unwrap_or_else(|e| panic!("cannot write {out}: {e}"));
    eprintln!("wrote {out}");
}
