//! Request heads: the first bytes of a plaintext HTTP request that violates
//! the policy on a path the apiserver proxies, copied by the kernel so that
//! the agent can say who asked for what (README, "Request attribution").
//!
//! Only a connection whose decision was a violation (`alert`, `block`, or a
//! dry-run `block`) on a path of [`Path::summarised`] with protocol `http`
//! is copied, and only its client's bytes at stream offsets below
//! [`HEAD_BYTES`]: the copy is bounded per connection, and other
//! connections never pay for it. Each copied piece is one [`HeadChunk`]
//! record in the `HEADS` ring buffer, apart from the violation events, so
//! that a flood of copies can cost attribution but never an event.

use crate::{config::Addr, path::Path};

/// How many leading bytes of a request's stream are copied, at most: a
/// proxied request's head (request line, `User-Agent`, `Kubectl-Command`,
/// `X-Forwarded-For`, `X-Forwarded-Uri` and the rest) is 300-600 bytes.
/// A power of two: the kernel bounds lengths with a mask.
pub const HEAD_BYTES: usize = 1024;

/// Byte size of the `HEADS` ring buffer: room for 256 whole chunks, or
/// about 500 violating requests' heads between two reads.
pub const HEADS_BYTES: u32 = 512 * 1024;

/// Bytes of the `HEADS` ring one connection may use, records' headers
/// (the chunk's and the ring's 8) included: a whole head copied 30 times
/// (retransmissions of a blocked request), or about 500 one-byte segments.
/// One connection can take at most 1/16 of the ring.
pub const HEAD_BUDGET: u16 = 32 * 1024;

/// What a copy of `n` bytes costs against [`HEAD_BUDGET`].
#[inline(always)]
pub const fn copy_cost(n: u32) -> u32 {
    (HeadChunk::HEADER as u32 + n + 8 + 7) & !7
}

/// One piece of a request's stream, as the kernel copied it: `len` bytes
/// that start at stream offset `offset`. A record in the ring is the
/// header and its `len` bytes only ([`HeadChunk::HEADER`] + `len`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadChunk {
    /// The client (sent the SYN).
    pub client: Addr,
    /// The server.
    pub server: Addr,
    /// Client port, host byte order.
    pub client_port: u16,
    /// Server port, host byte order.
    pub server_port: u16,
    /// Sequence number of the client's first stream byte: tells apart
    /// connections that reuse the same ends.
    pub stream_start: u32,
    /// Stream offset of `bytes[0]` (0 is the request's first byte).
    pub offset: u32,
    /// How many of `bytes` are valid.
    pub len: u32,
    /// The bytes.
    pub bytes: [u8; HEAD_BYTES],
}

const _: () = assert!(size_of::<HeadChunk>() == HeadChunk::HEADER + HEAD_BYTES);

impl HeadChunk {
    /// Bytes before [`HeadChunk::bytes`].
    pub const HEADER: usize = core::mem::offset_of!(HeadChunk, bytes);
}

impl Path {
    /// True for the paths whose plaintext requests are summarised: the
    /// apiserver proxy to pods and nodes (who asked the apiserver to
    /// proxy), and the read-only kubelet (which endpoint is scraped).
    #[inline(always)]
    pub const fn summarised(self) -> bool {
        matches!(
            self,
            Self::ApiserverProxyToPod | Self::ApiserverProxyToNode | Self::KubeletReadOnly
        )
    }
}
