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
    /// Flow entries created.
    FlowsCreated = 0,
    /// Flow entries removed by the kernel programs (connection closed).
    FlowsClosed = 1,
    /// Tracked connections that found the flow table full (not tracked).
    FlowTableFull = 2,
    /// Packets the programs could not read (helper errors); passed untouched.
    ReadErrors = 3,
    /// Violation events dropped because the ring buffer was full.
    EventsLost = 4,
    /// Payload segments of blocked connections dropped.
    SegmentsDropped = 5,
}

/// Number of [`Stat`] entries.
pub const STAT_ENTRIES: usize = 6;

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
    }
}
