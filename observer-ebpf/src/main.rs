//! cp-observer's kernel programs.
//!
//! Two `cgroup_skb` programs, attached to the cgroup v2 root, see every TCP
//! packet a socket on this node sends (`egress`) or receives (`ingress`), in
//! every network namespace. They share one flow table, so a connection seen
//! at both of its ends is one entry. See `track.rs` for what happens to a
//! packet.
#![no_std]
#![no_main]
// `atomic_xadd` (see `maps::atomic_add`): the BPF target has no atomic types
// with read-modify-write methods. The build enables unstable features.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// Map keys go by reference on purpose: by value, LLVM copies them into the
// caller's frame, which then outgrows the verifier's 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod connect;
mod head;
mod maps;
mod origin;
mod packet;
mod trace;
mod track;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};
use observer_common::counters::Stat;

/// `cgroup_skb` return value that lets the packet through.
const PASS: i32 = 1;
/// `cgroup_skb` return value that drops the packet.
const DROP: i32 = 0;

/// Packets delivered to a socket on this node.
#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    handle(&ctx, track::Hook::Ingress)
}

/// Packets sent by a socket on this node.
#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    handle(&ctx, track::Hook::Egress)
}

/// IPv4 `connect()` on this node.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    connect::on_connect(&ctx, false)
}

/// IPv6 `connect()` on this node (IPv4-mapped destinations included).
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    connect::on_connect(&ctx, true)
}

/// Does nothing: the floor no program at these hooks can beat, for the
/// benchmarks (`cargo xtask bench`). Never attached by the agent.
#[cgroup_skb]
pub fn noop(_ctx: SkBuffContext) -> i32 {
    PASS
}

/// [`noop`] at the IPv4 `connect()` hook: the floor of `connect4`.
#[cgroup_sock_addr(connect4)]
pub fn noop_connect4(_ctx: SockAddrContext) -> i32 {
    PASS
}

/// [`noop`] at the IPv6 `connect()` hook: the floor of `connect6`.
#[cgroup_sock_addr(connect6)]
pub fn noop_connect6(_ctx: SockAddrContext) -> i32 {
    PASS
}

/// Both hooks do the same: the flow table tells the directions apart, and
/// the hook only says which socket a packet's socket is (see `origin.rs`).
#[inline(always)]
fn handle(ctx: &SkBuffContext, hook: track::Hook) -> i32 {
    match track::on_packet(ctx, hook) {
        Ok(ret) => ret,
        Err(()) => {
            maps::count_stat(Stat::ReadErrors);
            PASS
        }
    }
}

// Host builds (clippy) link std, which has its own.
#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as the kernel requires for the helpers used.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
