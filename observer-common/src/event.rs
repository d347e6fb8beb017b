//! Violation events, from the kernel to the agent through a ring buffer.

use crate::{config::Addr, flow::Caller};

/// One `alert` or `block` (or dry-run block): what the agent prints as a
/// JSON line. No payload is carried beyond the detected protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The client (sent the SYN).
    pub client: Addr,
    /// The server.
    pub server: Addr,
    /// Client port, host byte order.
    pub client_port: u16,
    /// Server port, host byte order.
    pub server_port: u16,
    /// [`crate::path::Path`] discriminant.
    pub path: u8,
    /// [`crate::protocol::Protocol`] discriminant.
    pub protocol: u8,
    /// [`crate::policy::Action`] as configured (`alert` or `block`).
    pub action: u8,
    /// [`crate::policy::Verdict`]: what was done.
    pub verdict: u8,
    /// [`DRY_RUN`], [`HAS_PROCESS`].
    pub flags: u32,
    /// The client's process, when [`HAS_PROCESS`].
    pub caller: Caller,
    /// Socket cookie of the local socket whose segment decided (the
    /// client's at egress, the server's at ingress), 0 when there is none
    /// to name (a listener, a test run). The agent destroys exactly this
    /// socket, never a newer one on the same ends. After the fields of
    /// the 64-byte events of earlier agents, which read as ones without a
    /// cookie.
    pub cookie: u64,
    /// Sequence number of the client's first stream byte: with the ends,
    /// names the connection whose request-head chunks
    /// (`crate::head::HeadChunk::stream_start`) belong to this event; 0
    /// in the 72-byte events of earlier agents.
    pub stream_start: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
}

const _: () = assert!(size_of::<Event>() == 80);

/// Size of the events of earlier agents (no [`Event::cookie`]), which a
/// pinned ring buffer may still hold after an upgrade.
pub const EVENT_V1_SIZE: usize = 64;

/// [`Event::flags`] bit: the action was `block` under `--dry-run`.
pub const DRY_RUN: u32 = 1;
/// [`Event::flags`] bit: the client is a process on this node, named by
/// [`Event::caller`].
pub const HAS_PROCESS: u32 = 2;

/// Byte size of the `EVENTS` ring buffer.
pub const EVENTS_BYTES: u32 = 256 * 1024;
