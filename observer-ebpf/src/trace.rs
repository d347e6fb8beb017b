//! The opt-in trace of decisions (`cp-observer run --kernel-log debug`): why
//! a connection got its path, and which protocol and verdict it got, as
//! aya-log records the agent logs.
//!
//! Off unless asked for: the agent loads the programs with aya-log's level
//! (a read-only global) off, so the verifier knows every `enabled()` below
//! is false and removes the trace from the programs it loads, all but the
//! load of the level at the few places that check it: on a SYN, a decision
//! and the end of a tracked connection's segment, never on untracked
//! traffic (`cargo xtask bench --kernel` measures it). The records say `key=value` with numbers for the shared enums; the
//! agent puts their names back (one table: observer-common).
//!
//! A record is not written where the decision is made: aya-log writes it
//! byte by byte, and the verifier would walk that for every state in which
//! a packet reaches the decision (past its limit). The decision is noted in
//! a per-CPU slot instead, and [`flush`] writes the records once, when the
//! segment's work is done and nothing else is live.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
};
use observer_common::{
    config::Addr,
    flow::{Flow, FlowKey},
    path::{End, Path},
};

use crate::packet::Segment;

/// What this packet decided, until [`flush`] writes it.
#[repr(C)]
struct Pending {
    /// 1 when a new connection was put on a path.
    classified: u8,
    /// 1 when a connection's protocol and verdict were decided.
    decided: u8,
    path: u8,
    protocol: u8,
    verdict: u8,
    apiserver: u8,
    client_port: u16,
    server_port: u16,
    _pad: u16,
    client_roles: u32,
    server_roles: u32,
    client: Addr,
    server: Addr,
}

#[map]
static TRACE: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// True when the agent asked for the trace.
#[inline(always)]
fn enabled() -> bool {
    level_enabled(Level::Debug)
}

/// A SYN from `client` to `server` put a new connection on `path`.
#[inline(always)]
pub fn classified(seg: &Segment, client: &End, server: &End, path: Path) {
    if !enabled() {
        return;
    }
    if let Some(p) = TRACE.get_ptr_mut(0) {
        // SAFETY: a map value pointer, valid for this run. The slot is per
        // CPU, but an ingress run in a softirq can interrupt an egress run
        // on the same CPU: the two may then mix or lose a record. Only the
        // trace suffers; no verdict reads the slot.
        let p = unsafe { &mut *p };
        p.classified = 1;
        p.path = path as u8;
        p.apiserver = u8::from(server.apiserver);
        p.client_port = seg.sport;
        p.server_port = seg.dport;
        p.client_roles = client.roles.0;
        p.server_roles = server.roles.0;
        p.client = seg.src;
        p.server = seg.dst;
    }
}

/// The first client bytes of a connection decided its protocol; the policy
/// gave the verdict.
#[inline(always)]
pub fn decided(flow: &Flow, key: &FlowKey) {
    if !enabled() {
        return;
    }
    if let Some(p) = TRACE.get_ptr_mut(0) {
        // SAFETY: as in `classified`.
        let p = unsafe { &mut *p };
        let (client, client_port, server, server_port) = key.ends(flow);
        p.decided = 1;
        p.path = flow.path;
        p.protocol = flow.protocol;
        p.verdict = flow.verdict;
        p.client_port = client_port;
        p.server_port = server_port;
        p.client = client;
        p.server = server;
    }
}

/// Writes what this packet decided. Called when a SYN's or a tracked
/// connection's segment is done.
#[inline(always)]
pub fn flush() {
    if enabled() {
        write_records();
    }
}

#[inline(never)]
fn write_records() {
    let Some(p) = TRACE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `classified`.
    let p = unsafe { &mut *p };
    if p.classified != 0 {
        p.classified = 0;
        debug!(
            &(),
            "classified path={} client={:i} client_port={} client_roles={} server={:i} server_port={} server_roles={} apiserver={}",
            p.path,
            p.client.0,
            p.client_port,
            p.client_roles,
            p.server.0,
            p.server_port,
            p.server_roles,
            p.apiserver
        );
    }
    if p.decided != 0 {
        p.decided = 0;
        debug!(
            &(),
            "decided path={} protocol={} verdict={} client={:i} client_port={} server={:i} server_port={}",
            p.path,
            p.protocol,
            p.verdict,
            p.client.0,
            p.client_port,
            p.server.0,
            p.server_port
        );
    }
}
