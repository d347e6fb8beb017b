//! Who sent a segment (egress) or is about to receive it (ingress): a TCP
//! socket, and in which state, or something else. Spoofed and hand-made
//! segments come from raw sockets, or reach no socket at all; only what a
//! TCP socket sends or accepts may create, complete or end a connection's
//! state (see `track.rs`).

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as V4Tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as V6Tuple, bpf_tcp_sock,
    },
    helpers::{bpf_sk_fullsock, bpf_sk_lookup_tcp, bpf_sk_release, bpf_tcp_sock as tcp_sock_of},
    programs::SkBuffContext,
};
use observer_common::config::Addr;

use crate::packet::IPPROTO_TCP;

/// TCP states, as `bpf_sock::state` gives them (the uapi's `BPF_TCP_*`).
pub mod state {
    use aya_ebpf::bindings as b;
    pub const ESTABLISHED: u32 = b::BPF_TCP_ESTABLISHED;
    pub const SYN_SENT: u32 = b::BPF_TCP_SYN_SENT;
    pub const SYN_RECV: u32 = b::BPF_TCP_SYN_RECV;
    pub const FIN_WAIT1: u32 = b::BPF_TCP_FIN_WAIT1;
    pub const FIN_WAIT2: u32 = b::BPF_TCP_FIN_WAIT2;
    pub const CLOSE_WAIT: u32 = b::BPF_TCP_CLOSE_WAIT;
    pub const LISTEN: u32 = b::BPF_TCP_LISTEN;
}

const SOCK_STREAM: u32 = 1;

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
    /// Whether a connection can start being tracked at a segment of this
    /// socket, the connection's local end (the server when
    /// `local_is_server`): only a TCP socket past its handshake (or, TCP
    /// Fast Open, accepted by the server) proves the connection real. Then
    /// the FINs already gone each way ([`C2S`](observer_common::flow::C2S),
    /// [`S2C`](observer_common::flow::S2C)), as the socket's state says;
    /// `None` as well once no more client bytes can come (the client's FIN
    /// is in), as there is nothing left to judge.
    #[inline(always)]
    pub fn joinable(self, local_is_server: bool) -> Option<[u8; 2]> {
        use state::*;
        let state = match self {
            Self::Tcp(s) => s,
            Self::Unknown => return Some([0, 0]),
            Self::Other => return None,
        };
        match (state, local_is_server) {
            (ESTABLISHED | SYN_RECV, _) => Some([0, 0]),
            // The server closed first; the client may still send.
            (FIN_WAIT1 | FIN_WAIT2, true) | (CLOSE_WAIT, false) => Some([0, 1]),
            _ => None,
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

/// The socket of the packet in `ctx`, if any.
#[inline(always)]
fn socket(ctx: &SkBuffContext) -> Option<*mut bpf_sock> {
    // SAFETY: a read of the program's context.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    (!sk.is_null()).then_some(sk)
}

/// The TCP view of the packet's socket, if it is a TCP socket.
#[inline(always)]
fn tcp_socket(ctx: &SkBuffContext) -> Option<*mut bpf_tcp_sock> {
    // SAFETY: a plain helper call on a non-null socket from the context.
    let tp = unsafe { tcp_sock_of(socket(ctx)?) };
    (!tp.is_null()).then_some(tp)
}

/// The origin of the packet in `ctx`.
#[inline(always)]
pub fn origin(ctx: &SkBuffContext) -> Origin {
    let Some(sk) = socket(ctx) else {
        return Origin::Unknown;
    };
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
    if ty == SOCK_STREAM && protocol == u32::from(IPPROTO_TCP) {
        Origin::Tcp(state)
    } else if ty == 0 {
        Origin::Unknown
    } else {
        Origin::Other
    }
}

/// Where the client's stream starts (its ISN + 1), as the connection's
/// local socket knows it (its server's when `local_is_server`, else its
/// client's), and whether any of the stream went already; `None` without
/// a TCP socket. What the socket says beats any SYN we saw: a client can
/// send several SYNs with different ISNs. (`tests/tests/kernel.rs` checks
/// the two counters' meaning on each kernel of the matrix.)
#[inline(always)]
pub fn client_stream_start(ctx: &SkBuffContext, local_is_server: bool) -> Option<(u32, bool)> {
    let tp = tcp_socket(ctx)?;
    // SAFETY (both): a TCP socket pointer from the helper.
    if local_is_server {
        // `rcv_nxt` moved by exactly `bytes_received` since the SYN.
        let (rcv_nxt, received) = unsafe { ((*tp).rcv_nxt, (*tp).bytes_received) };
        Some((rcv_nxt.wrapping_sub(received as u32), received != 0))
    } else {
        // `snd_una` moved by exactly `bytes_acked` since the ISN: the SYN
        // counts one. (Data sent but not acknowledged, such as a TCP Fast
        // Open SYN's the programs dropped, has not reached the server.)
        let (una, acked) = unsafe { ((*tp).snd_una, (*tp).bytes_acked) };
        let start = una.wrapping_sub(acked as u32).wrapping_add(1);
        Some((start, una != start))
    }
}

/// True when a TCP socket listens at `to`:`port` (a local address), in the
/// network namespace of the segment in `ctx`: the local end of a
/// connection there is a server's, one a listener accepted. A socket that
/// `connect()`ed holds an ephemeral port, and the kernel gives no socket
/// an ephemeral port a listener is bound to. (Whether the socket sent data
/// first says nothing: a server-first protocol's server greets first.)
#[inline(always)]
pub fn listening(ctx: &SkBuffContext, to: &Addr, port: u16) -> bool {
    // The lookup's tuple as the segment's: from nowhere (port 0, which no
    // connection has) to `to`, so only a listener can match.
    // SAFETY: a plain old data union; all zeros is a valid value.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let ctx = ctx.skb.skb.cast();
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY (all): helper calls with a tuple on this stack frame, of the
    // size of the variant written; a found socket is released.
    let sk = unsafe {
        match to.as_v4() {
            Some(v4) => {
                tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes(v4);
                tuple.__bindgen_anon_1.ipv4.dport = port.to_be();
                bpf_sk_lookup_tcp(ctx, &mut tuple, size_of::<V4Tuple>() as u32, netns, 0)
            }
            None => {
                tuple.__bindgen_anon_1.ipv6.daddr = to.words();
                tuple.__bindgen_anon_1.ipv6.dport = port.to_be();
                bpf_sk_lookup_tcp(ctx, &mut tuple, size_of::<V6Tuple>() as u32, netns, 0)
            }
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the lookup returned, released once.
    unsafe {
        let listens = (*sk).state == state::LISTEN;
        bpf_sk_release(sk.cast());
        listens
    }
}
