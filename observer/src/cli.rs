//! Command-line flags (SPEC §4). Every flag has a twin in the TOML config
//! file (see [`crate::config`]); a flag given on the command line wins.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::net::Cidr;

/// The cp-observer node agent.
#[derive(Debug, Parser)]
#[command(name = "cp-observer", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start-up")]
pub enum Command {
    /// Load and attach the kernel programs, serve metrics, until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Detach pinned programs and remove every pin (uninstall).
    Cleanup(CleanupArgs),
}

/// Flags of `cp-observer cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The directory `run` pinned to.
    #[arg(long, value_name = "PATH", default_value = crate::pin::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Flags of `cp-observer run`.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// TOML config file with the same keys as the flags (`control_plane = [...]`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control-plane hosts (apiservers, and konnectivity agents carrying apiserver traffic).
    #[arg(long = "control-plane", value_name = "CIDR")]
    pub control_plane: Vec<Cidr>,
    /// This node's own addresses.
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ip: Vec<IpAddr>,
    /// Pod address ranges of this node.
    #[arg(long = "pod-cidr", value_name = "CIDR")]
    pub pod_cidr: Vec<Cidr>,
    /// Apiserver endpoints.
    #[arg(long = "apiserver", value_name = "IP:PORT")]
    pub apiserver: Vec<SocketAddr>,
    /// The `kubernetes` service VIP (repeatable: one per family on dual-stack clusters).
    #[arg(long = "apiserver-vip", value_name = "IP:PORT")]
    pub apiserver_vip: Vec<SocketAddr>,
    /// Kubelet API port [default: 10250].
    #[arg(long, value_name = "PORT")]
    pub kubelet_port: Option<u16>,
    /// Kubelet read-only port [default: 10255; 0 disables the path].
    #[arg(long, value_name = "PORT")]
    pub kubelet_read_only_port: Option<u16>,
    /// SSH port of SSH tunnels [default: 22].
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// Konnectivity server port [default: 8132].
    #[arg(long, value_name = "PORT")]
    pub konnectivity_port: Option<u16>,
    /// Policy rule PATH:PROTOCOL=ACTION (repeatable; `*` for any path or protocol).
    #[arg(long = "policy", value_name = "PATH:PROTOCOL=ACTION")]
    pub policy: Vec<crate::policy::Rule>,
    /// Report what `block` rules would block, without blocking.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to serve /metrics and /healthz [default: 0.0.0.0:9090].
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// cgroup v2 mount to attach to [default: auto-detected].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Maximum number of connections tracked at once [default: 65536].
    #[arg(long, value_name = "N")]
    pub flow_table_capacity: Option<u32>,
    /// Pin links and state maps here, and adopt them on restart [default: /sys/fs/bpf/cp-observer].
    #[arg(long, value_name = "PATH", conflicts_with = "no_pin")]
    pub pin_dir: Option<PathBuf>,
    /// Pin nothing: programs detach when the agent exits.
    #[arg(long)]
    pub no_pin: bool,
    /// kubeconfig for discovery (default: in-cluster config when run in a pod).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not learn the cluster from the apiserver; use the flags only.
    #[arg(long)]
    pub no_discovery: bool,
    /// This node's name, for discovery.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Label selector of the konnectivity agent pods [default: k8s-app=konnectivity-agent].
    #[arg(long, value_name = "SELECTOR")]
    pub konnectivity_selector: Option<String>,
    /// Cluster CA to verify the kubelet's serving certificate with [default: the service-account ca.crt when present].
    #[arg(long, value_name = "FILE")]
    pub kubelet_ca: Option<PathBuf>,
    /// Seconds between kubelet certificate checks [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub kubelet_check_interval: Option<u64>,
    /// Forget a tracked connection after this many seconds without a segment [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    pub flow_idle_timeout: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flag_names_flag_and_value() {
        let err = Cli::try_parse_from(["cp-observer", "run", "--pod-cidr", "banana"]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("--pod-cidr") && msg.contains("banana"),
            "{msg}"
        );
    }
}
