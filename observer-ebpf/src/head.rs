//! Copies of violating requests' heads for the agent's attribution (see
//! `observer_common::head`): the prefix detection kept, at the decision,
//! and every later client segment up to `HEAD_BYTES` into the stream,
//! passed or dropped. Nothing else is ever copied.

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::SkBuffContext};
use observer_common::{
    counters::Stat,
    flow::{C2S, Flow, FlowKey},
    head::{HEAD_BYTES, HeadChunk},
    path::Path,
    policy::Verdict,
    protocol::{PREFIX_LEN, Prefix, Protocol},
};

use crate::{
    maps::{self, HEAD_SCRATCH, HEADS},
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

/// Copies what detection kept of the stream's start (the bytes of
/// segments before the deciding one, which were not copied then).
#[inline(never)]
pub fn copy_prefix(flow: &Flow, key: &FlowKey) {
    let Some(chunk) = start(flow, key, 0) else {
        return;
    };
    // SAFETY: this CPU's scratch value (see `start`); `bytes` is at an
    // 8-aligned offset with room for a `Prefix`.
    unsafe {
        (*chunk).len = flow.prefix_len;
        (&raw mut (*chunk).bytes)
            .cast::<Prefix>()
            .write(flow.prefix);
    }
    output(chunk, PREFIX_LEN as u32);
}

/// Copies the part of client segment `seg` that lies in the first
/// `HEAD_BYTES` of the stream, if any.
#[inline(never)]
pub fn copy_segment(ctx: &SkBuffContext, flow: &Flow, key: &FlowKey, seg: &Segment) {
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
    let Some(chunk) = start(flow, key, off) else {
        return;
    };
    // SAFETY: this CPU's scratch value, `bytes` has room for `n` bytes.
    let loaded = unsafe {
        (*chunk).len = n;
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            seg.payload_off,
            (&raw mut (*chunk).bytes).cast(),
            n,
        )
    };
    if loaded != 0 {
        maps::count_stat(Stat::ReadErrors);
        return;
    }
    output(chunk, n);
}

/// This CPU's scratch chunk with the connection's ends and the stream
/// offset `off` filled in.
#[inline(always)]
fn start(flow: &Flow, key: &FlowKey, off: u32) -> Option<*mut HeadChunk> {
    let chunk = HEAD_SCRATCH.get_ptr_mut(0)?;
    let (client, client_port, server, server_port) = key.ends(flow);
    // SAFETY: this CPU's value, valid for the run; programs do not migrate
    // CPUs mid-run, so nothing else writes it meanwhile.
    unsafe {
        (*chunk).client = client;
        (*chunk).server = server;
        (*chunk).client_port = client_port;
        (*chunk).server_port = server_port;
        (*chunk).stream_start = flow.start_seq[C2S];
        (*chunk).offset = off;
    }
    Some(chunk)
}

/// Puts the chunk's header and its first `n` bytes (`n` in
/// 1..=HEAD_BYTES) on the `HEADS` ring, or counts it lost.
#[inline(always)]
fn output(chunk: *mut HeadChunk, n: u32) {
    // SAFETY: the scratch value holds `HEADER + HEAD_BYTES` bytes.
    let record =
        unsafe { core::slice::from_raw_parts(chunk.cast::<u8>(), HeadChunk::HEADER + n as usize) };
    if HEADS.output::<[u8]>(record, 0).is_err() {
        maps::count_stat(Stat::HeadsLost);
    }
}
