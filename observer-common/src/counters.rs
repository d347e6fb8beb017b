//! Indexes of the kernel's per-CPU counter arrays. Userspace sums the CPUs.

use crate::{path::Path, policy::Verdict, protocol::Protocol};

/// Entries of `CONNECTIONS`: one per (path, protocol, verdict).
pub const CONNECTION_ENTRIES: usize = Path::COUNT * Protocol::COUNT * Verdict::COUNT;

/// Index in `CONNECTIONS`.
#[inline(always)]
pub const fn connection_index(path: u8, protocol: u8, verdict: u8) -> u32 {
    (path as u32 * Protocol::COUNT as u32 + protocol as u32) * Verdict::COUNT as u32
        + verdict as u32
}

indexed_enum! {
    /// Byte direction as seen by the node.
    pub enum Direction: u8, label "direction" {
        /// Received by the node (or one of its pods).
        Rx = 0 => "rx",
        /// Sent by the node (or one of its pods).
        Tx = 1 => "tx",
    }
}

/// Entries of `BYTES`: one per (path, direction).
pub const BYTE_ENTRIES: usize = Path::COUNT * Direction::COUNT;

/// Index in `BYTES`.
#[inline(always)]
pub const fn byte_index(path: u8, direction: Direction) -> u32 {
    path as u32 * Direction::COUNT as u32 + direction as u32
}

indexed_enum! {
    /// Entries of the `STATS` per-CPU array (datapath health counters).
    pub enum Stat: u32 {
        /// Flow entries created (handshakes completed on a path).
        FlowsCreated = 0,
        /// Flow entries removed by the kernel programs (connection closed).
        FlowsClosed = 1,
        /// Connections on a path without a block rule left untracked because
        /// the flow table was full.
        FlowTableFull = 2,
        /// Packets the programs could not read (helper errors); passed untouched.
        ReadErrors = 3,
        /// Violation events dropped because the ring buffer was full.
        EventsLost = 4,
        /// Payload segments of blocked connections dropped.
        SegmentsDropped = 5,
        /// SYNs that opened a half-open entry (`HALF_OPEN`). A spoofed-SYN
        /// flood shows here; its entries never reach the flow table.
        HalfOpen = 6,
        /// Request-head copies (`HEADS`) not made: the ring buffer was
        /// full, the connection had spent its `HEAD_BUDGET`, or another run
        /// on the CPU held the scratch chunk. Their violations are reported
        /// with the request as far as it was seen (see
        /// `observer_common::head`).
        HeadsLost = 7,
    }
}

indexed_enum! {
    /// Why the kernel dropped a segment that belongs to no blocked connection:
    /// the datapath's hardening, on paths with a `block` rule (see README,
    /// "Threat model"). Each reason is a `STATS` entry after the [`Stat`]s.
    pub enum DropReason: u32, label "reason" {
        /// Client bytes beyond a gap while the protocol is undecided.
        OutOfOrder = 0 => "out-of-order",
        /// Data in a SYN (TCP Fast Open).
        SynData = 1 => "syn-data",
        /// Headers the programs cannot walk (IPv6 extension header chains
        /// longer than they follow, fragments without the TCP header).
        UnreadableHeaders = 2 => "unreadable-headers",
        /// A SYN not sent by a TCP socket (a raw socket's), or data for a
        /// half-open connection no TCP socket has accepted.
        Crafted = 3 => "crafted",
        /// A new connection while the flow table is full (fail closed).
        TableFull = 4 => "table-full",
        /// Client bytes that would change what was judged: bytes that differ
        /// from those already seen at the same place, bytes before the
        /// stream's start, after the client's FIN or after a RST.
        Rewritten = 5 => "rewritten",
    }
}

indexed_enum! {
    /// Why the agent could not reset a connection it had to (its
    /// `cp_observer_reset_errors` counter; the agent's, not the kernel's).
    pub enum ResetFailure: u8, label "reason" {
        /// No socket of the connection in any network namespace the agent
        /// can enter, while the connection was live.
        NotFound = 0 => "not-found",
        /// A namespace or sock_diag error.
        Failed = 1 => "failed",
        /// The enforcer's queue was full: the reset was dropped.
        QueueFull = 2 => "queue-full",
    }
}

impl DropReason {
    /// Its index in `STATS`.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        Stat::COUNT as u32 + self as u32
    }
}

/// Entries of the `STATS` array: the [`Stat`]s, then the [`DropReason`]s.
pub const STAT_ENTRIES: usize = Stat::COUNT + DropReason::COUNT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense_and_distinct() {
        let mut seen = [false; CONNECTION_ENTRIES];
        for p in Path::ALL {
            for q in Protocol::ALL {
                for v in Verdict::ALL {
                    let i = connection_index(p as u8, q as u8, v as u8) as usize;
                    assert!(!seen[i]);
                    seen[i] = true;
                }
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(
            byte_index(Path::COUNT as u8 - 1, Direction::Tx) as usize,
            BYTE_ENTRIES - 1
        );
        assert_eq!(
            DropReason::ALL[0].index() as usize,
            Stat::ALL[Stat::COUNT - 1] as usize + 1
        );
        assert_eq!(
            DropReason::ALL[DropReason::COUNT - 1].index() as usize,
            STAT_ENTRIES - 1
        );
    }
}
