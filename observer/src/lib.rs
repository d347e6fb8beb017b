//! The cp-observer agent as a library: everything `main.rs` runs, and what
//! the integration tests and the lab reuse (loading the kernel programs,
//! reading their maps).
//!
//! One module per concern:
//! - [`cli`]: the command line; [`config`]: the flags of `run`, which are
//!   also the TOML file's keys, merged and validated into [`config::Settings`];
//! - [`net`]: address prefixes ([`net::Cidr`]);
//! - [`roles`]: turning CIDRs and addresses into the kernel's role trie;
//! - [`discovery`]: learning endpoints, VIPs, node addresses, pod CIDRs and
//!   konnectivity agents from the cluster;
//! - [`cgroup`]: finding and checking the cgroup v2 mount;
//! - [`features`]: the kernel features the agent needs, probed at start;
//! - [`ebpf`]: loading, configuring and attaching the kernel programs;
//! - [`mapped`]: kernel arrays mapped into the agent's memory;
//! - [`kernel_log`]: the kernel programs' opt-in trace of decisions;
//! - [`pin`]: pinning under bpffs, so counting and enforcement outlive the agent;
//! - [`flows`]: the flow table seen from userspace, and idle expiry;
//! - [`violation`]: the JSON form of a violation event;
//! - [`events`]: violation events from the kernel to stdout as JSON;
//! - [`heads`]: the request heads of violating plaintext requests, put
//!   back in order and summarised (who asked the apiserver to proxy);
//! - [`kube_events`]: violations on the apiserver proxy to this node's pods as Kubernetes Events;
//! - [`enforce`]: resetting both ends of blocked connections;
//! - [`local_apiserver`]: recognising an apiserver that runs on this node by the listener its process holds;
//! - [`sock_diag`]: the sock_diag netlink requests (destroy a socket, list listeners);
//! - [`kubelet`]: checking the kubelet's serving certificate against the cluster CA;
//! - [`policy`]: `--policy` rules resolved into the kernel's table;
//! - [`agent_counters`]: what the agent itself counts;
//! - [`metrics`]: the OpenMetrics view of the kernel's and the agent's counters;
//! - [`server`]: `/metrics` and `/healthz`, with limits, on a thread of its own;
//! - [`supervise`]: watching every task and thread; a dead one fails `/healthz`;
//! - [`agent`]: `cp-observer run` from start to clean shutdown.

pub mod agent;
pub mod agent_counters;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod ebpf;
pub mod enforce;
pub mod events;
pub mod features;
pub mod flows;
pub mod heads;
pub mod kernel_log;
pub mod kube_events;
pub mod kubelet;
pub mod local_apiserver;
pub mod mapped;
pub mod metrics;
pub mod net;
pub mod pin;
pub mod policy;
pub mod roles;
pub mod server;
pub mod sock_diag;
pub mod supervise;
pub mod sys;
pub mod violation;
