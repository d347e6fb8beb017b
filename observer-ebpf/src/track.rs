//! What happens to one TCP segment:
//!
//! 1. A SYN (without ACK) opens a connection: its ends are looked up in the
//!    role trie and endpoint set and the connection is put on a path
//!    (`observer_common::path::classify`). Untracked connections stop here and
//!    never enter the flow table.
//! 2. Any other segment reads its `FLOW_FILTER` counter: 0 (untracked
//!    traffic) ends the work there. Otherwise it looks up its flow.
//! 3. Payload of a tracked flow is counted once per byte (sequence numbers,
//!    so the two sightings of a segment whose both ends are local, and
//!    retransmissions, count once) and, until the protocol is decided, fed to
//!    detection, which reassembles the first speaker's first bytes across
//!    segments.
//! 4. The protocol decision counts the connection once, with the verdict the
//!    policy gives (path, protocol). A FIN/RST before any payload decides
//!    `none`. The entry goes away with the RST or the second FIN.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_socket_cookie, maps::lpm_trie::Key,
    programs::SkBuffContext,
};
use observer_common::{
    config::{Addr, Endpoint, Roles},
    counters::{Direction, Stat, byte_index, connection_index},
    event::{self, Event},
    flow::{C2S, Flow, FlowKey, UNDECIDED, filter_slot, flags},
    path::{End, Path, classify},
    policy::{self, Action, Verdict, policy_index, violation_index},
    protocol::{Detection, detect},
};

use crate::{
    DROP, PASS,
    maps::{
        self, APISERVERS, BYTES, CLOCK, CONNECTIONS, CONNECTS, EVENTS, FLOWS, POLICY, POLICY_SLOT,
        PORTS, ROLES, STATS, VIOLATIONS,
    },
    packet::{self, ACK, FIN, RST, SYN, Segment},
};

const EEXIST: i32 = 17;

/// Handles one packet; `Err` means a read failed mid-way (the packet still
/// passes, the failure is counted).
#[inline(always)]
pub fn on_packet(ctx: &SkBuffContext) -> Result<i32, ()> {
    let Some(seg) = packet::parse(ctx) else {
        return Ok(PASS);
    };
    if seg.flags & (SYN | ACK) == SYN {
        // Once a connection: laid out away from every other segment's path.
        #[expect(
            clippy::incompatible_msrv,
            reason = "only the BPF toolchain (rustc 1.96+) builds this crate; the \
                      workspace's 1.87 only steers the resolver to aya 0.14"
        )]
        core::hint::cold_path();
        open(ctx, &seg);
        return Ok(PASS);
    }
    // Untracked traffic ends here: one array read, no key, no hashing.
    if !maps::filter_maybe(filter_slot(&seg.src, seg.sport, &seg.dst, seg.dport)) {
        return Ok(PASS);
    }
    let (key, src_is_lo) = FlowKey::new(seg.src, seg.sport, seg.dst, seg.dport);
    let Some(flow) = FLOWS.get_ptr_mut(&key) else {
        return Ok(PASS);
    };
    // SAFETY: the entry stays valid for the whole program run (RCU); racing
    // updates from the connection's other end can at worst skew one counter.
    let flow = unsafe { &mut *flow };
    flow.last_ns = now();
    let dir = flow.direction(src_is_lo);
    if seg.flags & SYN != 0 {
        flow.start(dir, seg.seq); // SYN-ACK: the server's ISN
        return Ok(PASS);
    }
    let mut result = Ok(());
    if seg.payload_len > 0 {
        let new = flow.new_bytes(dir, seg.seq, seg.payload_len);
        if new > 0 {
            let rx = (dir == C2S) == Path::from_u8(flow.path).is_some_and(Path::server_is_local);
            let d = if rx { Direction::Rx } else { Direction::Tx };
            maps::add(&BYTES, byte_index(flow.path, d), u64::from(new));
        }
        if flow.protocol == UNDECIDED {
            result = feed_detection(ctx, flow, &key, dir, &seg);
        }
        // A blocked connection's payload goes no further, in either
        // direction and at either end; the agent resets both ends.
        if flow.verdict == Verdict::Blocked as u8 && flow.protocol != UNDECIDED {
            maps::count_stat(Stat::SegmentsDropped);
            return result.map(|()| DROP);
        }
    }
    if seg.flags & (FIN | RST) != 0 {
        close(flow, &key, dir, seg.flags & RST != 0);
    }
    result.map(|()| PASS)
}

/// A SYN: classify the new connection and, if it is on a path, track it.
///
/// Two subprograms called one after the other, not one: the verifier
/// limits the stack of a whole call chain to 512 bytes, and 5.10 and 6.1
/// round every frame up to 32 bytes when they add it up. Classifying
/// (trie keys, endpoints) and inserting (key, flow) each need a large
/// frame; side by side under the entry point, neither adds to the other.
#[inline(always)]
fn open(ctx: &SkBuffContext, seg: &Segment) {
    if let Some((path, cookie)) = classify_syn(ctx, seg) {
        insert(seg, path, cookie);
    }
}

/// The path of a new connection, and the socket cookie of its local client
/// (0 when the client is not a local `connect()`), or `None` when it is on
/// no path or is tracked already.
#[inline(never)]
fn classify_syn(ctx: &SkBuffContext, seg: &Segment) -> Option<(Path, u64)> {
    let (key, _) = FlowKey::new(seg.src, seg.sport, seg.dst, seg.dport);
    // The other end's sighting of the SYN (both ends on this node), or a
    // retransmission: already tracked, no need to classify again.
    if maps::filter_maybe(key.filter_slot()) && FLOWS.get_ptr(&key).is_some() {
        return None;
    }
    let ports = PORTS.get(0)?;
    let client = End {
        roles: roles_of(seg.src),
        port: seg.sport,
        apiserver: false,
    };
    // A SYN a local process sends follows its connect(): the destination it
    // asked for may be a VIP that was translated since.
    // SAFETY: a plain helper call on the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let asked = CONNECTS.get_ptr(&cookie).map(|c| {
        // SAFETY: a map value pointer, valid for this run.
        let c = unsafe { &*c };
        Endpoint {
            addr: c.orig,
            port: c.orig_port,
            _pad: 0,
        }
    });
    let endpoint = Endpoint {
        addr: seg.dst,
        port: seg.dport,
        _pad: 0,
    };
    let server = End {
        roles: roles_of(seg.dst),
        port: seg.dport,
        apiserver: APISERVERS.get_ptr(&endpoint).is_some()
            || asked.is_some_and(|a| APISERVERS.get_ptr(&a).is_some()),
    };
    let path = classify(&client, &server, ports)?;
    Some((path, if asked.is_some() { cookie } else { 0 }))
}

/// Puts a new connection on `path` into the flow table.
#[inline(never)]
fn insert(seg: &Segment, path: Path, client_cookie: u64) {
    let (key, src_is_lo) = FlowKey::new(seg.src, seg.sport, seg.dst, seg.dport);
    let slot = key.filter_slot();
    let mut flow = Flow::new(path as u8, src_is_lo, seg.seq, now());
    flow.client_cookie = client_cookie;
    // The filter counts the entry before it exists, so no other CPU can
    // find the entry with the filter saying there is none.
    maps::filter_add(slot, 1);
    match FLOWS.insert(&key, &flow, u64::from(BPF_NOEXIST)) {
        Ok(()) => maps::count_stat(Stat::FlowsCreated),
        Err(e) => {
            maps::filter_add(slot, u64::MAX);
            if e != -EEXIST {
                maps::count_stat(Stat::FlowTableFull);
            }
            // EEXIST: the other end's sighting of this SYN, or a retransmitted SYN.
        }
    }
}

/// The agent's CLOCK_MONOTONIC, at its tick resolution (see `maps::CLOCK`).
#[inline(always)]
fn now() -> u64 {
    CLOCK.get(0).map_or(0, |t| *t)
}

#[inline(always)]
fn roles_of(addr: Addr) -> Roles {
    ROLES
        .get(Key::new(128, addr))
        .map_or(Roles::EMPTY, |r| Roles(*r))
}

/// Adds this segment's leading bytes to the first speaker's prefix and
/// decides the protocol once the prefix is conclusive.
#[inline(never)]
fn feed_detection(
    ctx: &SkBuffContext,
    flow: &mut Flow,
    key: &FlowKey,
    dir: usize,
    seg: &Segment,
) -> Result<(), ()> {
    if flow.flags & flags::SPOKE == 0 {
        flow.flags |= flags::SPOKE | if dir == C2S { 0 } else { flags::SPEAKER_S2C };
    }
    let speaker = if flow.flags & flags::SPEAKER_S2C == 0 {
        C2S
    } else {
        1
    };
    if dir != speaker {
        return Ok(());
    }
    let Some(off) = flow.prefix_offset(dir, seg.seq) else {
        return Ok(());
    };
    let mut bytes = [0u64; 2];
    let n = packet::load_prefix(ctx, seg, &mut bytes)?;
    flow.merge_prefix(off, &bytes, n);
    if let Detection::Decided(protocol) = detect(&flow.prefix, flow.prefix_len as usize, false) {
        decide(flow, key, protocol as u8);
    }
    Ok(())
}

/// Records the protocol and verdict, counts the connection once, and
/// reports a violation.
#[inline(always)]
fn decide(flow: &mut Flow, key: &FlowKey, protocol: u8) {
    let slot = POLICY_SLOT.get(0).map_or(0, |s| *s);
    let entry = POLICY
        .get(policy_index(slot, flow.path, protocol))
        .map_or(0, |a| *a);
    let (action, dry_run) = policy::decode(entry);
    let verdict = policy::verdict(action, dry_run) as u8;
    flow.protocol = protocol;
    flow.verdict = verdict;
    maps::add(
        &CONNECTIONS,
        connection_index(flow.path, protocol, verdict),
        1,
    );
    if let Some(i) = violation_index(flow.path, protocol, action) {
        maps::add(&VIOLATIONS, i, 1);
        report(flow, key, action, dry_run);
    }
}

/// Puts a violation event on the ring buffer, or counts it as lost.
#[inline(never)]
fn report(flow: &Flow, key: &FlowKey, action: Action, dry_run: bool) {
    let (client, client_port, server, server_port) = key.ends(flow);
    let mut event = Event {
        client,
        server,
        client_port,
        server_port,
        path: flow.path,
        protocol: flow.protocol,
        action: action as u8,
        verdict: flow.verdict,
        flags: if dry_run && matches!(action, Action::Block) {
            event::DRY_RUN
        } else {
            0
        },
        pid: 0,
        comm: [0; 16],
    };
    if flow.client_cookie != 0
        && let Some(c) = CONNECTS.get_ptr(&flow.client_cookie)
    {
        // SAFETY: a map value pointer, valid for this run.
        let c = unsafe { &*c };
        event.pid = c.pid;
        event.comm = c.comm;
        event.flags |= event::HAS_PROCESS;
    }
    if EVENTS.output::<Event>(&event, 0).is_err() {
        maps::count_stat(Stat::EventsLost);
    }
}

/// A FIN or RST: decide `none`/`other` if nothing was decided yet, and drop
/// the entry when the connection is over.
#[inline(never)]
fn close(flow: &mut Flow, key: &FlowKey, dir: usize, reset: bool) {
    if flow.protocol == UNDECIDED {
        if let Detection::Decided(p) = detect(&flow.prefix, flow.prefix_len as usize, true) {
            decide(flow, key, p as u8);
        }
    }
    flow.flags |= if dir == C2S {
        flags::FIN_C2S
    } else {
        flags::FIN_S2C
    };
    let both = flags::FIN_C2S | flags::FIN_S2C;
    if (reset || flow.flags & both == both) && FLOWS.remove(key).is_ok() {
        maps::filter_add(key.filter_slot(), u64::MAX);
        maps::add(&STATS, Stat::FlowsClosed as u32, 1);
    }
}
