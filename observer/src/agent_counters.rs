//! What the agent itself counts (the kernel's counters are maps, read at
//! each scrape: `ebpf::Counters`), shared by the threads that do the
//! counting and the metrics endpoint.

use std::sync::atomic::AtomicU64;

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
}
