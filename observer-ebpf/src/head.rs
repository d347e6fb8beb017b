//! Copies of violating requests' heads for the agent's attribution (see
//! `observer_common::head`): the prefix detection kept, at the decision,
//! and every later client segment up to `HEAD_BYTES` into the stream,
//! passed or dropped, while the connection's `HEAD_BUDGET` lasts. Nothing
//! else is ever copied.

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, helpers::bpf_skb_load_bytes, programs::SkBuffContext};
use observer_common::{
    counters::Stat,
    flow::{C2S, Flow, FlowKey},
    head::{HEAD_BUDGET, HEAD_BYTES, HeadChunk, copy_cost},
    path::Path,
    policy::Verdict,
    protocol::{PREFIX_LEN, Prefix, Protocol},
};

use crate::{
    maps::{self, HEAD_SCRATCH, HEADS, HeadScratch},
    packet::Segment,
};

/// True when `flow`'s request head is copied: a plaintext HTTP violation
/// on a summarised path.
#[inline(always)]
pub fn wanted(flow: &Flow) -> bool {
    let (protocol, verdict) = flow.decision();
    protocol == Protocol::Http as u8
        && verdict != Verdict::Allowed as u8
        && Path::from_u8(flow.path).is_some_and(Path::summarised)
}

/// Gives a violating connection its copy budget, then copies what
/// detection kept of the stream's start (the bytes of segments before the
/// deciding one, which were not copied then).
#[inline(never)]
pub fn copy_prefix(flow: &mut Flow, key: &FlowKey) {
    flow.head_budget = HEAD_BUDGET;
    if !spend(flow, PREFIX_LEN as u32) {
        return;
    }
    let Some(scratch) = start(flow, key, 0) else {
        return;
    };
    // SAFETY: this CPU's scratch value, ours until `output` (see `start`);
    // `bytes` is at an 8-aligned offset with room for a `Prefix`.
    unsafe {
        let chunk = &raw mut (*scratch).chunk;
        (*chunk).len = flow.prefix_len;
        (&raw mut (*chunk).bytes)
            .cast::<Prefix>()
            .write(flow.prefix);
    }
    output(scratch, PREFIX_LEN as u32);
}

/// Copies the part of client segment `seg` that lies in the first
/// `HEAD_BYTES` of the stream, if any.
#[inline(never)]
pub fn copy_segment(ctx: &SkBuffContext, flow: &mut Flow, key: &FlowKey, seg: &Segment) {
    let off = seg.seq.wrapping_sub(flow.start_seq[C2S]);
    // Past the head, or before the stream (a wrapped, huge offset).
    if off >= HEAD_BYTES as u32 {
        return;
    }
    let n = seg.payload_len.min(HEAD_BYTES as u32 - off);
    if n == 0 {
        return;
    }
    // Verifier-only, as in `packet::load_prefix`: `((n - 1) & (HEAD_BYTES
    // - 1)) + 1` is `n` for `n` in 1..=HEAD_BYTES, and provably so.
    let n = (core::hint::black_box(n - 1) & (HEAD_BYTES as u32 - 1)) + 1;
    if !spend(flow, n) {
        return;
    }
    let Some(scratch) = start(flow, key, off) else {
        return;
    };
    // SAFETY: this CPU's scratch value, ours until `output`; `bytes` has
    // room for `n` bytes.
    let loaded = unsafe {
        let chunk = &raw mut (*scratch).chunk;
        (*chunk).len = n;
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            seg.payload_off,
            (&raw mut (*chunk).bytes).cast(),
            n,
        )
    };
    if loaded != 0 {
        release(scratch);
        maps::count_stat(Stat::ReadErrors);
        return;
    }
    output(scratch, n);
}

/// Takes the cost of copying `n` bytes from the connection's budget;
/// false (counted lost) when it is spent. (Two CPUs copying for one
/// connection at once may overspend it by a copy: still bounded.)
#[inline(always)]
fn spend(flow: &mut Flow, n: u32) -> bool {
    let cost = copy_cost(n);
    let budget = u32::from(flow.head_budget);
    if budget < cost {
        maps::count_stat(Stat::HeadsLost);
        return false;
    }
    flow.head_budget = (budget - cost) as u16;
    true
}

/// This CPU's scratch chunk, taken, with the connection's ends and the
/// stream offset `off` filled in; `None` (counted lost) when a run this one
/// interrupted on this CPU holds it (a softirq's ingress run during a
/// process's egress run, or a preempted run: these programs run with
/// migration, not preemption, disabled).
#[inline(always)]
fn start(flow: &Flow, key: &FlowKey, off: u32) -> Option<*mut HeadScratch> {
    let scratch = HEAD_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's value, valid for the run. Runs on one CPU nest
    // (an interrupting run ends before the one it interrupted goes on), so
    // a run that finds it free and marks it busy has it until it frees it.
    unsafe {
        if (*scratch).busy != 0 {
            maps::count_stat(Stat::HeadsLost);
            return None;
        }
        (*scratch).busy = 1;
    }
    let (client, client_port, server, server_port) = key.ends(flow);
    // SAFETY: as above, ours now.
    unsafe {
        let chunk = &raw mut (*scratch).chunk;
        (*chunk).client = client;
        (*chunk).server = server;
        (*chunk).client_port = client_port;
        (*chunk).server_port = server_port;
        (*chunk).stream_start = flow.start_seq[C2S];
        (*chunk).offset = off;
    }
    Some(scratch)
}

/// Frees the scratch chunk.
#[inline(always)]
fn release(scratch: *mut HeadScratch) {
    // SAFETY: this CPU's value, which this run took in `start`.
    unsafe { (*scratch).busy = 0 };
}

/// Puts the chunk's header and its first `n` bytes (`n` in
/// 1..=HEAD_BYTES) on the `HEADS` ring, or counts it lost; frees it.
#[inline(always)]
fn output(scratch: *mut HeadScratch, n: u32) {
    // SAFETY: the scratch chunk holds `HEADER + HEAD_BYTES` bytes.
    let record = unsafe {
        core::slice::from_raw_parts(
            (&raw const (*scratch).chunk).cast::<u8>(),
            HeadChunk::HEADER + n as usize,
        )
    };
    // No wake-up: the agent reads `HEADS` whenever `EVENTS` wakes it and
    // every 10 ms while it holds a violation. A wake-up (an irq_work and
    // the reader's) would cost the first copy after a quiet spell about
    // 10 µs here (`cargo xtask bench`).
    if HEADS
        .output::<[u8]>(record, u64::from(BPF_RB_NO_WAKEUP))
        .is_err()
    {
        maps::count_stat(Stat::HeadsLost);
    }
    release(scratch);
}
