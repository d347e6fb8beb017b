//! Developer commands: `cargo xtask <command>`.
//!
//! - `build-ebpf`: make sure the eBPF toolchain is here (installing it if
//!   not), then build the agent with its kernel programs.
//! - `lab`: build, then run the lab: a simulated node and control plane in
//!   network namespaces, with the real agent watching real traffic.
//! - `bench`: measure the kernel programs per packet, the network workloads
//!   with and without the agent, and the agent under load; write
//!   BENCHMARKS.md.
//! - `test`: build, then run every test, privileged ones included (root),
//!   the end-to-end ones against a real kube-apiserver (built once, cached).

mod cargo;
mod kube;
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "cp-observer developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain if missing and build the kernel programs.
    BuildEbpf,
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
    Bench,
    /// Run every test (root): unit, kernel (BPF_PROG_TEST_RUN) and integration.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
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
        Command::BuildEbpf => {
            toolchain::ensure()?;
            cargo::build_agent(false)?;
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
                cmd.env("CP_OBSERVER_KUBE_APISERVER", &kube.apiserver)
                    .env("CP_OBSERVER_ETCD", &kube.etcd)
                    .env("CP_OBSERVER_KUBECTL", &kube.kubectl);
            }
            cargo::run_checked(cmd.arg("--agent").arg(agent).args(args))?;
        }
        Command::Bench => {
            require_root("the benchmarks (BPF and network namespaces)")?;
            toolchain::ensure()?;
            toolchain::ensure_lab_tools()?;
            // The A/B and load benchmarks measure the agent as shipped.
            let agent = cargo::build_agent(true)?;
            let bench = cargo::build_release_bin("cp-observer-tests", "cp-observer-bench")?;
            cargo::run_checked(
                std::process::Command::new(bench)
                    .env("CP_OBSERVER_BIN", agent)
                    .arg(cargo::workspace_root().join("BENCHMARKS.md")),
            )?;
        }
        Command::Test { args } => {
            require_root("the tests (BPF and network namespaces)")?;
            toolchain::ensure()?;
            toolchain::ensure_lab_tools()?;
            let agent = cargo::build_agent(false)?;
            let kube = kube::ensure()?;
            // iptables: the tests translate the `kubernetes` VIP as kube-proxy does.
            toolchain::ensure_debian_packages(&["iptables"])?;
            // A real Prometheus (and promtool) for the monitoring tests.
            toolchain::ensure_debian_packages(&["prometheus"])?;
            cargo::test(&agent, &kube, &args)?;
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
