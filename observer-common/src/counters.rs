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

/// Byte direction as seen by the node.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received by the node (or one of its pods).
    Rx = 0,
    /// Sent by the node (or one of its pods).
    Tx = 1,
}

impl Direction {
    /// Both directions, in table order.
    pub const ALL: [Self; 2] = [Self::Rx, Self::Tx];

    /// The `direction` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rx => "rx",
            Self::Tx => "tx",
        }
    }
}

/// Entries of `BYTES`: one per (path, direction).
pub const BYTE_ENTRIES: usize = Path::COUNT * 2;

/// Index in `BYTES`.
#[inline(always)]
pub const fn byte_index(path: u8, direction: Direction) -> u32 {
    path as u32 * 2 + direction as u32
}

/// Entries of the `STATS` per-CPU array (datapath health counters).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
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
}

/// Why the kernel dropped a segment that belongs to no blocked connection:
/// the datapath's hardening, on paths with a `block` rule (see README,
/// "Threat model"). Each reason is a `STATS` entry after the [`Stat`]s.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Client bytes beyond a gap while the protocol is undecided.
    OutOfOrder = 0,
    /// Data in a SYN (TCP Fast Open).
    SynData = 1,
    /// Headers the programs cannot walk (IPv6 extension header chains
    /// longer than they follow, fragments without the TCP header).
    UnreadableHeaders = 2,
    /// A SYN not sent by a TCP socket (a raw socket's), or data for a
    /// half-open connection no TCP socket has accepted.
    Crafted = 3,
    /// A new connection while the flow table is full (fail closed).
    TableFull = 4,
    /// Client bytes that would change what was judged: bytes that differ
    /// from those already seen at the same place, bytes before the
    /// stream's start, after the client's FIN or after a RST.
    Rewritten = 5,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 6;
    /// All reasons, in table order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::OutOfOrder,
        Self::SynData,
        Self::UnreadableHeaders,
        Self::Crafted,
        Self::TableFull,
        Self::Rewritten,
    ];

    /// The `reason` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::OutOfOrder => "out-of-order",
            Self::SynData => "syn-data",
            Self::UnreadableHeaders => "unreadable-headers",
            Self::Crafted => "crafted",
            Self::TableFull => "table-full",
            Self::Rewritten => "rewritten",
        }
    }

    /// Its index in `STATS`.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        STATS_BEFORE_DROPS + self as u32
    }
}

/// Number of [`Stat`] entries; the [`DropReason`] ones follow.
const STATS_BEFORE_DROPS: u32 = 7;

/// Entries of the `STATS` array.
pub const STAT_ENTRIES: usize = STATS_BEFORE_DROPS as usize + DropReason::COUNT;

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
            byte_index(Path::PodToApiserver as u8, Direction::Tx) as usize,
            BYTE_ENTRIES - 1
        );
        assert_eq!(Stat::HalfOpen as u32 + 1, STATS_BEFORE_DROPS);
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
        }
        assert_eq!(DropReason::Rewritten.index() as usize, STAT_ENTRIES - 1);
    }
}
