//! `connect()` hooks (cgroup/connect4, cgroup/connect6): remember, per
//! socket, the destination the process asked for and who the process is.
//! The SYN that follows may carry another destination (kube-proxy or a
//! replacement translated the `kubernetes` VIP to an endpoint); the flow
//! looks the socket up so `pod-to-apiserver` through the VIP is still
//! recognised, and violation events can name the process.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use observer_common::{
    config::Addr,
    flow::{Caller, Connect},
};

use crate::maps::CONNECTS;

/// `cgroup_sock_addr` return value that lets the `connect()` go on.
const ALLOW: i32 = 1;

/// Records the connect; never refuses it.
#[inline(always)]
pub fn on_connect(ctx: &SockAddrContext, v6: bool) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    // Only TCP sockets: the table is small, and every UDP `connect()` (a
    // resolver's, for each DNS query) would push TCP clients out of it.
    const SOCK_STREAM: u32 = 1;
    if sa.type_ != SOCK_STREAM {
        return ALLOW;
    }
    // The words hold the address's bytes in memory order, as a packet does.
    let orig = if v6 {
        Addr::from_words(sa.user_ip6)
    } else {
        Addr::from_v4_word(sa.user_ip4)
    };
    // user_port holds the port in network byte order in its low 16 bits.
    let orig_port = u16::from_be(sa.user_port as u16);
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let entry = Connect {
        orig,
        orig_port,
        _pad: 0,
        caller: Caller {
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            comm,
        },
    };
    // SAFETY: a plain helper call on the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // A full LRU evicts; an error here only loses attribution.
    let _ = CONNECTS.insert(&cookie, &entry, 0);
    ALLOW
}
