//! Developer commands: `cargo xtask <command>`.
//!
//! - `build-ebpf`: make sure the eBPF toolchain is here (installing it if
//!   not), then build the agent with its kernel programs.
//! - `lab`: build, then run the lab: a simulated node and control plane in
//!   network namespaces, with the real agent watching real traffic.
//! - `bench`: measure the kernel programs per packet, the network workloads
//!   with and without the agent, the agent under load, and the agent
//!   against a large cluster (a real apiserver); write BENCHMARKS.md.
//! - `test`: build, then run every test, privileged ones included (root),
//!   the end-to-end ones against a real kube-apiserver (built once, cached);
//!   with `--kernels`, then the kernel matrix too.
//! - `kernels`: only the kernel matrix: the kernel tests and the enforcing
//!   lab plan on the host's kernel and in VMs booted from Debian's kernels.
//! - `image`: build the agent's container image and the test images.
//! - `cluster up|down|status`: a real node on this machine (kubelet on
//!   containerd, bridge CNI, kube-proxy, a control plane) with the
//!   DaemonSet built from `deploy/` on it.

mod cargo;
mod cluster;
mod command;
mod crds;
mod image;
mod kernels;
mod kube;
mod toolchain;
mod vm;

use anyhow::Result;

/// The Debian package of the benchmark plots' font
/// (`tests/src/bench/plot.rs`: DejaVu Sans).
const PLOT_FONT_PACKAGE: &str = "fonts-dejavu-core";
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "cp-observer developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain if missing and build the agent with its
    /// kernel programs.
    BuildEbpf {
        /// Build the agent optimised (`target/release/cp-observer`), as the
        /// container image ships it.
        #[arg(long)]
        release: bool,
    },
    /// Run the lab (root): simulated node and control plane, real agent, real
    /// traffic. `--enforce` blocks plaintext proxy requests; `--kube` runs a
    /// real kube-apiserver and lets the agent learn everything from it.
    Lab {
        /// Arguments passed to the lab program (see `--help` there).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark the kernel programs, the network workloads with and without
    /// the agent, and the agent under load (root); write BENCHMARKS.md.
    /// `--kernel`: only the kernel programs' rows, printed; `--cluster`:
    /// only the agent against a large cluster, printed.
    Bench {
        /// Only the per-packet rows of the kernel programs, printed; nothing written.
        #[arg(long)]
        kernel: bool,
        /// Only the agent against a large cluster, printed; nothing written.
        #[arg(long, conflicts_with = "kernel")]
        cluster: bool,
    },
    /// Run every test (root): unit, kernel (BPF_PROG_TEST_RUN) and integration.
    Test {
        /// Then run the kernel matrix (see `kernels`): all of it, or the
        /// series listed (`--kernels 5.10,6.1`).
        #[arg(long, value_delimiter = ',', num_args = 0.., value_name = "SERIES")]
        kernels: Option<Vec<String>>,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the kernel tests and the enforcing lab plan on the host's kernel
    /// and in VMs booted from Debian's kernels (root): all of them, or the
    /// series named (5.10, 6.1, 6.12).
    Kernels {
        /// Kernel series to boot; all when none is named.
        series: Vec<String>,
    },
    /// Build the agent's container image (deploy/Dockerfile, buildah) and
    /// the test images as docker-archive tarballs (root).
    Image {
        /// The sandbox binary (default: the `pause` of the cached Kubernetes build).
        #[arg(long)]
        pause: Option<std::path::PathBuf>,
    },
    /// A real node on this machine with cp-observer on it (root): `up
    /// [--mode remote|local] [--overlay observe|enforce|none]`, `down`,
    /// `status`. Builds Kubernetes and the images first (cached).
    Cluster {
        /// Arguments for `cp-observer-cluster` (see `--help` there).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::BuildEbpf { release } => {
            toolchain::ensure()?;
            cargo::build_agent(release)?;
        }
        Command::Lab { args } => {
            require_root("the lab")?;
            toolchain::ensure()?;
            toolchain::ensure_lab_tools()?;
            let agent = cargo::build_agent(false)?;
            let lab = cargo::build_bin("cp-observer-tests", "cp-observer-lab")?;
            let mut cmd = std::process::Command::new(lab);
            if args.iter().any(|a| a == "--kube") {
                let kube = kube::ensure()?;
                cmd.envs(kube.env());
            }
            command::run_checked(cmd.arg("--agent").arg(agent).args(args))?;
        }
        Command::Bench { kernel, cluster } => {
            require_root("the benchmarks (BPF and network namespaces)")?;
            toolchain::ensure()?;
            toolchain::ensure_lab_tools()?;
            toolchain::ensure_debian_packages(&[PLOT_FONT_PACKAGE])?;
            // The A/B and load benchmarks measure the agent as shipped.
            let agent = cargo::build_agent(true)?;
            let bench = cargo::build_release_bin("cp-observer-tests", "cp-observer-bench")?;
            // The large-cluster benchmark runs the tests' apiserver and etcd.
            let kube = kube::ensure()?;
            command::run_checked(
                std::process::Command::new(bench)
                    .env("CP_OBSERVER_BIN", agent)
                    .envs(kube.env())
                    .arg(cargo::workspace_root().join("BENCHMARKS.md"))
                    .args(kernel.then_some("--kernel"))
                    .args(cluster.then_some("--cluster")),
            )?;
        }
        Command::Test { kernels, args } => {
            require_root("the tests (BPF and network namespaces)")?;
            toolchain::ensure()?;
            toolchain::ensure_lab_tools()?;
            let agent = cargo::build_test_agent()?;
            // The real node's binaries and images (the apiserver and etcd
            // of the end-to-end tests among them).
            let env = cluster::ensure()?;
            // iptables: the tests translate the `kubernetes` VIP as kube-proxy does.
            toolchain::ensure_debian_packages(&["iptables"])?;
            // The font of the benchmark plots, which the smoke test draws.
            toolchain::ensure_debian_packages(&[PLOT_FONT_PACKAGE])?;
            // A real Prometheus (and promtool) for the monitoring tests.
            toolchain::ensure_debian_packages(&["prometheus"])?;
            // The Prometheus Operator's CRDs for the monitoring tests.
            let crds = crds::ensure()?;
            let mut env = env;
            env.push((crds::ENV.to_owned(), crds.display().to_string()));
            cargo::test(&agent, env, &args)?;
            if let Some(series) = kernels {
                kernels::run(&series)?;
            }
        }
        Command::Cluster { args } => {
            require_root("the node (containerd, kubelet, network namespaces)")?;
            cluster::run(&args)?;
        }
        Command::Image { pause } => {
            require_root("buildah and mmdebstrap")?;
            let pause = match pause {
                Some(pause) => pause,
                None => kube::ensure()?.bin("pause"),
            };
            print!("{}", image::ensure(&pause)?);
        }
        Command::Kernels { series } => {
            require_root("the kernel matrix (BPF, network namespaces, VMs)")?;
            toolchain::ensure()?;
            toolchain::ensure_lab_tools()?;
            kernels::run(&series)?;
        }
    }
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        anyhow::bail!("{what} need root: run `sudo -E cargo xtask ...`");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
