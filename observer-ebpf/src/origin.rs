//! Who sent a segment (egress) or is about to receive it (ingress): a TCP
//! socket, and in which state, or something else. Spoofed and hand-made
//! segments come from raw sockets, or reach no socket at all; only what a
//! TCP socket sends or accepts may create, complete or end a connection's
//! state (see `track.rs`).

use aya_ebpf::{helpers::bpf_sk_fullsock, programs::SkBuffContext};

/// TCP states (`include/net/tcp_states.h`), as `bpf_sock::state` gives them.
pub mod state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
}

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

/// The socket at this end of a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A TCP socket (a full one, or a request or time-wait mini-socket) in
    /// this state.
    Tcp(u32),
    /// Any other socket: a raw socket that crafted the segment (egress) or
    /// receives a copy of it (ingress).
    Other,
    /// No socket information: only `BPF_PROG_TEST_RUN`'s placeholder socket
    /// (no type, no protocol) looks like this, so test runs exercise the
    /// state machine as if every segment came from a TCP socket.
    Unknown,
}

impl Origin {
    /// True for a TCP socket whose handshake is complete (or, TCP Fast
    /// Open, accepted by the server): proof that the connection is real.
    #[inline(always)]
    pub fn synchronized(self) -> bool {
        use state::*;
        match self {
            Self::Tcp(s) => matches!(
                s,
                ESTABLISHED | SYN_RECV | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | LAST_ACK | CLOSING
            ),
            Self::Unknown => true,
            Self::Other => false,
        }
    }

    /// True unless a non-TCP socket is at this end.
    #[inline(always)]
    pub fn is_tcp(self) -> bool {
        self != Self::Other
    }

    /// True for a TCP socket in `s` (or no socket information).
    #[inline(always)]
    pub fn in_state(self, s: u32) -> bool {
        match self {
            Self::Tcp(t) => t == s,
            Self::Unknown => true,
            Self::Other => false,
        }
    }
}

/// The origin of the packet in `ctx`.
#[inline(always)]
pub fn origin(ctx: &SkBuffContext) -> Origin {
    // SAFETY: a read of the program's context.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Origin::Unknown;
    }
    // SAFETY: a non-null socket pointer from the context; `state` is a
    // field every socket has.
    let state = unsafe { (*sk).state };
    // SAFETY: a plain helper call on that socket.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        // Request and time-wait sockets: TCP's own.
        return Origin::Tcp(state);
    }
    // SAFETY: a full socket pointer from the helper.
    let (ty, protocol) = unsafe { ((*full).type_, (*full).protocol) };
    if ty == SOCK_STREAM && protocol == IPPROTO_TCP {
        Origin::Tcp(state)
    } else if ty == 0 {
        Origin::Unknown
    } else {
        Origin::Other
    }
}
