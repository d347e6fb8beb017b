//! What the agent itself counts (the kernel's counters are maps, read at
//! each scrape: `ebpf::Counters`), shared by the threads that do the
//! counting and the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

use observer_common::counters::ResetFailure;

/// The agent's own counters.
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// Flow entries removed by the agent's expiry.
    pub flows_expired: AtomicU64,
    /// Sockets of connections destroyed (blocked ones, and ones forgotten
    /// on an enforced path).
    pub sockets_reset: AtomicU64,
    /// Connections the agent could not reset, by [`ResetFailure`].
    pub reset_errors: [AtomicU64; ResetFailure::COUNT],
    /// Errors by [`Component`] (`cp_observer_agent_errors_total`).
    errors: [AtomicU64; Component::COUNT],
    /// Violation events read from the ring buffer but not printed: a record
    /// this build cannot decode, or lines standard output refused
    /// (`cp_observer_events_unprinted_total`; each also logged).
    pub events_unprinted: AtomicU64,
    /// Connections to the metrics server closed at once because
    /// `server::MAX_CONNECTIONS` were open.
    pub metrics_connections_rejected: AtomicU64,
    /// Processes the kernel programs take for the apiserver running on
    /// this node (`APISERVER_TASKS`), a gauge
    /// (`cp_observer_local_apiserver_processes`).
    pub local_apiserver_processes: AtomicU64,
}

impl AgentCounters {
    /// Counts one error of `component`. Every caller logs it too.
    pub fn error(&self, component: Component) {
        self.errors[component as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` errors of `component` (each logged by the caller).
    pub fn errors_add(&self, component: Component, n: u64) {
        self.errors[component as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Errors of `component` so far.
    pub fn errors(&self, component: Component) -> u64 {
        self.errors[component as usize].load(Ordering::Relaxed)
    }
}

/// The parts of the agent that run on their own (a task or a thread) and
/// can fail: the `component` label of `cp_observer_agent_errors_total`,
/// and the names `/healthz` and the log give a dead one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// Reads the kernel's violation events, prints them, hands blocked
    /// connections to the enforcer.
    EventReader,
    /// Forwards the kernel programs' trace (`--kernel-log`).
    KernelLog,
    /// Watches the cluster and rewrites the address maps.
    Discovery,
    /// Resets blocked connections.
    Enforcer,
    /// Advances the kernel's clock and forgets idle flows.
    FlowExpiry,
    /// Checks the kubelet's serving certificate.
    KubeletCheck,
    /// Serves `/metrics` and `/healthz`.
    MetricsServer,
    /// Reads the kernel maps for a scrape.
    Metrics,
    /// Finds the processes of an apiserver running on this node.
    LocalApiserver,
}

impl Component {
    /// Number of components.
    pub const COUNT: usize = Self::ALL.len();

    /// Every component, in label order.
    pub const ALL: [Self; 9] = [
        Self::EventReader,
        Self::KernelLog,
        Self::Discovery,
        Self::Enforcer,
        Self::FlowExpiry,
        Self::KubeletCheck,
        Self::MetricsServer,
        Self::Metrics,
        Self::LocalApiserver,
    ];

    /// The label value and the name in logs and `/healthz`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::EventReader => "event-reader",
            Self::KernelLog => "kernel-log",
            Self::Discovery => "discovery",
            Self::Enforcer => "enforcer",
            Self::FlowExpiry => "flow-expiry",
            Self::KubeletCheck => "kubelet-check",
            Self::MetricsServer => "metrics-server",
            Self::Metrics => "metrics",
            Self::LocalApiserver => "local-apiserver",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// `ALL` lists each variant at its own index.
const _: () = {
    let mut i = 0;
    while i < Component::COUNT {
        assert!(Component::ALL[i] as usize == i);
        i += 1;
    }
};
