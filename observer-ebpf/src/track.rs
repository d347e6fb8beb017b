//! What happens to one TCP segment. The model is an inline IPS's stream
//! engine (Linux conntrack's TCP tracking, Suricata's inline mode), cut
//! down to what a verdict on the first bytes needs; README, "Threat model",
//! lists the attacks each rule answers.
//!
//! 1. A SYN classifies the new connection (`observer_common::path::classify`)
//!    from the roles of its ends' addresses and, for a local client, from
//!    the process that `connect()`ed: the apiserver running on this node
//!    (`APISERVER_TASKS`) is the control plane whatever its source address.
//!    Untracked connections stop here. A connection on a path opens a
//!    *half-open* entry in `HALF_OPEN`, a least-recently-used table: SYNs
//!    nobody completes (a spoofed flood) push out only each other and never
//!    reach `FLOWS`. Only a TCP socket's SYN counts: one a `connect()`ing
//!    socket sends, or one that reaches a listening socket. On a path with
//!    a `block` rule ("enforced") a SYN carrying data (TCP Fast Open), a SYN
//!    a raw socket made, and any new connection while `FLOWS` is full are
//!    dropped: the client falls back to, or retries, a plain handshake.
//! 2. Any other segment reads its `FLOW_FILTER` slot: all zeros (no
//!    tracked and no half-open connection hashes there) ends the work.
//! 3. A half-open connection moves to `FLOWS` at the first segment a TCP
//!    socket sends or accepts after its handshake (or the handshake's last
//!    ACK, when it acknowledges the server's ISN): proof that both ends
//!    exist, which a spoofer cannot give.
//! 4. Payload of a tracked connection is counted once per byte (sequence
//!    numbers, so the two sightings of a segment whose both ends are local,
//!    and retransmissions, count once). Until the protocol is decided, the
//!    client's bytes are fed to detection in stream order, as the server's
//!    TCP will deliver them: on an enforced path a segment beyond a gap is
//!    dropped until the gap is filled, and urgent data (which a server
//!    takes out of the stream) decides `other`.
//! 5. The decision counts the connection once, with the verdict the policy
//!    gives (path, protocol). A blocked connection's payload is dropped in
//!    both directions; the agent resets both ends. A plaintext HTTP
//!    violation on a proxied path also has its request's head copied for
//!    the agent (`head.rs`), from the dropped segments too.
//! 6. A FIN or RST counts only if the receiving TCP would accept it (its
//!    sequence number is where the stream is, and a TCP socket sent or
//!    receives it): a client FIN or any RST before a decision decides from
//!    what was seen; the entry goes with the RST or the second FIN.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_get_socket_cookie,
    maps::lpm_trie::Key,
    programs::SkBuffContext,
};
use observer_common::{
    config::{Addr, Endpoint, Roles},
    counters::{Direction, DropReason, Stat, byte_index, connection_index},
    event::{self, Event},
    flow::{C2S, Connect, Flow, FlowKey, Place, S2C, UNDECIDED, filter_slot},
    path::{End, Path, classify},
    policy::{self, Action, SLOT_ANY_ENFORCED, Verdict, policy_index, violation_index},
    protocol::{Detection, Prefix, Protocol, detect},
};

use crate::{
    DROP, PASS, head,
    maps::{
        self, APISERVER_TASKS, APISERVERS, BYTES, CLOCK, CONNECTIONS, CONNECTS, EVENTS, FLOWS,
        HALF_OPEN, POLICY, POLICY_SLOT, PORTS, ROLES, STATS, VIOLATIONS,
    },
    origin::{self, Origin, client_stream_start, origin, state},
    packet::{self, ACK, FIN, Parsed, RST, SYN, Segment, URG},
    trace,
};

const EEXIST: i32 = 17;

/// Which program runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A packet about to be delivered to a local socket.
    Ingress,
    /// A packet a local socket sends.
    Egress,
}

/// Handles one packet; `Err` means a read failed mid-way (the packet still
/// passes, the failure is counted).
#[inline(always)]
pub fn on_packet(ctx: &SkBuffContext, hook: Hook) -> Result<i32, ()> {
    let seg = match packet::parse(ctx) {
        Parsed::Segment(seg) => seg,
        Parsed::NotTcp => return Ok(PASS),
        Parsed::Unreadable => {
            cold();
            return Ok(unreadable());
        }
    };
    if seg.flags & SYN != 0 {
        // Once a connection: laid out away from every other segment's path.
        cold();
        let ret = handshake(ctx, hook, &seg);
        trace::flush();
        return Ok(ret);
    }
    // Untracked traffic ends here: one array read, no key, no hashing.
    let (flows, syn_ns) = maps::filter(filter_slot(&seg.src, seg.sport, &seg.dst, seg.dport));
    if flows | syn_ns == 0 {
        return Ok(PASS);
    }
    let ret = on_tracked(ctx, hook, &seg, syn_ns);
    // Only a SYN or a tracked connection's segment can decide anything.
    trace::flush();
    ret
}

/// A segment of a tracked or half-open connection (its filter slot is
/// marked).
#[inline(always)]
fn on_tracked(ctx: &SkBuffContext, hook: Hook, seg: &Segment, syn_ns: u64) -> Result<i32, ()> {
    let (key, src_is_lo) = FlowKey::new(seg.src, seg.sport, seg.dst, seg.dport);
    let flow = match FLOWS.get_ptr_mut(&key) {
        Some(flow) => flow,
        None if syn_ns != 0 => {
            let promotion = match promote(ctx, hook, &key, src_is_lo, seg) {
                Promotion::Missing => pick_up(ctx, hook, seg),
                p => p,
            };
            match promotion {
                Promotion::Tracked(missed) => {
                    if missed {
                        decide_missed(ctx, &key);
                    }
                    match FLOWS.get_ptr_mut(&key) {
                        Some(flow) => flow,
                        None => return Ok(PASS),
                    }
                }
                Promotion::Drop(reason) => {
                    maps::count_drop(reason);
                    return Ok(DROP);
                }
                Promotion::Pass | Promotion::Missing => return Ok(PASS),
            }
        }
        None => return Ok(PASS),
    };
    // SAFETY: the entry stays valid for the whole program run (RCU); racing
    // updates from the connection's other end can at worst skew one counter
    // (flags and the decision are single stores, see `Flow`).
    let flow = unsafe { &mut *flow };
    flow.last_ns = now();
    let dir = flow.direction(src_is_lo);
    let mut result = Ok(());
    if seg.payload_len > 0 || seg.flags & URG != 0 {
        match on_payload(ctx, flow, &key, dir, seg) {
            Ok(Outcome::Drop) => return Ok(DROP),
            Ok(Outcome::Pass) => {}
            Err(()) => result = Err(()),
        }
    }
    if seg.flags & (FIN | RST) != 0 {
        close(ctx, flow, &key, dir, seg);
    }
    result.map(|()| PASS)
}

/// What [`on_payload`] does with a segment.
enum Outcome {
    Pass,
    Drop,
}

/// A tracked connection's segment with payload (or URG): judged, counted,
/// passed or dropped. A subprogram of its own, so its frame is not the
/// entry point's, which a SYN's subprograms stack on.
#[inline(never)]
fn on_payload(
    ctx: &SkBuffContext,
    flow: &mut Flow,
    key: &FlowKey,
    dir: usize,
    seg: &Segment,
) -> Result<Outcome, ()> {
    let mut result = Ok(());
    if path_enforced(flow.path) {
        match guard(ctx, flow, key, dir, seg) {
            Ok(Some(reason)) => {
                maps::count_drop(reason);
                return Ok(Outcome::Drop);
            }
            Ok(None) => {}
            // Bytes we could not read must not pass unjudged.
            Err(()) => {
                maps::count_stat(Stat::ReadErrors);
                return Ok(Outcome::Drop);
            }
        }
    } else if dir == C2S && flow.decision().0 == UNDECIDED {
        // Visibility only: what can be assembled in order.
        result = feed_detection(ctx, flow, key, seg);
    }
    // A violating request's head is copied for the agent, whether this
    // segment passes or is dropped next; once per sighting of new bytes
    // (not again at the other end of a connection whose both ends are
    // local, nor for a retransmission of bytes let through).
    let end = seg.seq.wrapping_add(seg.payload_len);
    if dir == C2S
        && seg.payload_len > 0
        && (end.wrapping_sub(flow.next_seq[C2S]) as i32) > 0
        && head::wanted(flow)
    {
        head::copy_segment(ctx, flow, key, seg);
    }
    // A blocked connection's payload goes no further, in either direction
    // and at either end; the agent resets both ends. It is not counted as
    // let through, so a RST must match what was.
    let (protocol, verdict) = flow.decision();
    if seg.payload_len > 0 && verdict == Verdict::Blocked as u8 && protocol != UNDECIDED {
        maps::count_stat(Stat::SegmentsDropped);
        return result.map(|()| Outcome::Drop);
    }
    let new = flow.new_bytes(dir, seg.seq, seg.payload_len);
    if new > 0 {
        let rx = (dir == C2S) == Path::from_u8(flow.path).is_some_and(Path::server_is_local);
        let d = if rx { Direction::Rx } else { Direction::Tx };
        maps::add(&BYTES, byte_index(flow.path, d), u64::from(new));
    }
    result.map(|()| Outcome::Pass)
}

/// Marks the branch it is in as rarely taken.
#[inline(always)]
fn cold() {
    #[expect(
        clippy::incompatible_msrv,
        reason = "only the BPF toolchain (rustc 1.96+) builds this crate; the \
                  workspace's 1.87 only steers the resolver to aya 0.14"
    )]
    core::hint::cold_path();
}

/// A packet whose TCP header, if any, we cannot see. The receiving stack
/// may see further, so while any path is enforced it does not pass.
#[inline(never)]
fn unreadable() -> i32 {
    if POLICY_SLOT
        .get(0)
        .is_some_and(|s| s & SLOT_ANY_ENFORCED != 0)
    {
        maps::count_drop(DropReason::UnreadableHeaders);
        DROP
    } else {
        PASS
    }
}

/// True when `path` has a `block` rule in force (see `DropReason`).
#[inline(always)]
fn path_enforced(path: u8) -> bool {
    let slot = POLICY_SLOT.get(0).map_or(0, |s| *s);
    POLICY
        .get(policy_index(slot, path, Protocol::None as u8))
        .is_some_and(|e| policy::path_enforced(*e))
}

/// A SYN or a SYN-ACK.
#[inline(always)]
fn handshake(ctx: &SkBuffContext, hook: Hook, seg: &Segment) -> i32 {
    if seg.flags & ACK != 0 {
        answer(ctx, hook, seg);
        return PASS;
    }
    match classify_syn(ctx, seg) {
        Some((path, cookie)) => open(ctx, hook, seg, path, cookie),
        None => PASS,
    }
}

/// True when `seg` was sent by (egress) or reaches (ingress) the
/// connection's server.
#[inline(always)]
fn local_is_server(hook: Hook, dir: usize) -> bool {
    (hook == Hook::Ingress) == (dir == C2S)
}

/// The path of a new connection, and the socket cookie of its local client
/// (0 when the client is not a local `connect()`), or `None` when it is on
/// no path or is known already.
#[inline(never)]
fn classify_syn(ctx: &SkBuffContext, seg: &Segment) -> Option<(Path, u64)> {
    let (key, _) = FlowKey::new(seg.src, seg.sport, seg.dst, seg.dport);
    // The other end's sighting of the SYN (both ends on this node), or a
    // retransmission: known already, no need to classify again. The same
    // key with another ISN is a new connection.
    // The filter spares untracked SYNs both lookups.
    // A SYN carrying data is always judged (see `open`): a first SYN
    // without data must not let a second one with data through.
    let start = seg.seq.wrapping_add(1);
    let (flows, syn_ns) = if seg.payload_len == 0 {
        maps::filter(key.filter_slot())
    } else {
        (0, 0)
    };
    // SAFETY (all three): map value pointers, valid for this run.
    let tracked = if flows != 0 {
        FLOWS.get_ptr(&key).map(|f| unsafe { (*f).start_seq[C2S] })
    } else {
        None
    };
    if tracked == Some(start) {
        return None;
    }
    // Known as half-open, and no older connection on these ends to forget.
    if tracked.is_none()
        && syn_ns != 0
        && HALF_OPEN
            .get_ptr(&key)
            .is_some_and(|h| unsafe { (*h).start_seq[C2S] } == start)
    {
        return None;
    }
    let ports = PORTS.get(0)?;
    // A SYN a local process sends follows its connect(): the destination it
    // asked for may be a VIP that was translated since, and the process may
    // be the apiserver.
    // SAFETY: a plain helper call on the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let connect = CONNECTS.get_ptr(&cookie);
    let client = End {
        roles: client_roles(seg.src, connect),
        port: seg.sport,
        apiserver: false,
    };
    let asked = connect.map(|c| {
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
        apiserver: is_apiserver(&endpoint) || asked.is_some_and(|a| is_apiserver(&a)),
    };
    let path = classify(&client, &server, ports)?;
    trace::classified(seg, &client, &server, path);
    Some((path, if asked.is_some() { cookie } else { 0 }))
}

/// Admits a new connection on `path`: opens its half-open entry, or
/// refuses it (see the module's step 1).
#[inline(never)]
fn open(ctx: &SkBuffContext, hook: Hook, seg: &Segment, path: Path, cookie: u64) -> i32 {
    let enforced = path_enforced(path as u8);
    if enforced && seg.payload_len > 0 {
        // TCP Fast Open: a server would hand these bytes to its application
        // before any other segment. Dropped, the client retries the SYN
        // without them and sends them after the handshake, where they are
        // inspected.
        maps::count_drop(DropReason::SynData);
        return DROP;
    }
    let from_tcp = origin(ctx).in_state(match hook {
        Hook::Egress => state::SYN_SENT,
        Hook::Ingress => state::LISTEN,
    });
    if !from_tcp {
        // A raw socket's SYN is dropped; a TCP socket's that opens nothing
        // (one reaching an established socket, which answers with a
        // challenge ACK) passes.
        if enforced && !origin(ctx).is_tcp() {
            maps::count_drop(DropReason::Crafted);
            return DROP;
        }
        return PASS;
    }
    if enforced && maps::flows_full() {
        // Fail closed: a connection that could not be tracked could not be
        // blocked. Its client retries the SYN.
        maps::count_drop(DropReason::TableFull);
        return DROP;
    }
    let (key, src_is_lo) = FlowKey::new(seg.src, seg.sport, seg.dst, seg.dport);
    let slot = key.filter_slot();
    // The filter says which of the lookups below can find anything: a
    // tracked entry is counted in its slot before it exists, and a slot's
    // half-open mark stays while a half-open entry hashes to it.
    let (flows, syn_ns) = maps::filter(slot);
    // Data in a SYN on a path without a block rule is counted out: the
    // prefix starts after it.
    let Some(flow) = maps::scratch(Flow {
        client_cookie: cookie,
        ..Flow::new(
            path as u8,
            src_is_lo,
            seg.seq.wrapping_add(seg.payload_len),
            now(),
        )
    }) else {
        return PASS;
    };
    // A tracked connection on the same ends with another ISN is over at
    // this end when a listener gets the SYN (a live socket would have), or
    // when a new local socket connects and the old one was closed or its
    // client was local too (not a socket bound to a remote client's
    // address, IP_TRANSPARENT): forget it, so the new one is judged afresh.
    let forget = if flows != 0 {
        FLOWS
            .get_ptr(&key)
            // SAFETY: a map value pointer, valid for this run.
            .map(|f| unsafe { (*f).client_cookie != 0 || (*f).closed() })
    } else {
        None
    };
    if forget.is_some_and(|over| hook == Hook::Ingress || over) && FLOWS.remove(&key).is_ok() {
        maps::count_flow(slot, false);
        maps::count_stat(Stat::FlowsClosed);
    }
    // A local client's own SYN is the truth about its ISN; one reaching a
    // listener may be a second SYN a client crafted, and never replaces a
    // half-open entry (the server's socket settles the ISN: see `promote`).
    // (Nor does a local socket's SYN rewrite a remote client's entry: a
    // socket bound to that client's address, IP_TRANSPARENT.)
    let remote_client = || {
        syn_ns != 0
            && HALF_OPEN
                .get_ptr(&key)
                // SAFETY: a map value pointer, valid for this run.
                .is_some_and(|h| unsafe { (*h).client_cookie } == 0)
    };
    let flags = if hook == Hook::Egress && !remote_client() {
        0
    } else {
        u64::from(BPF_NOEXIST)
    };
    // Marked before the entry exists (as a flow is counted, see
    // `insert_flow`): no CPU finds the slot unmarked with the entry there.
    maps::mark_half_open(slot, now());
    if HALF_OPEN.insert(&key, flow, flags).is_ok() {
        maps::count_stat(Stat::HalfOpen);
    }
    PASS
}

/// A SYN-ACK: the server's ISN, for the half-open entry it answers.
#[inline(never)]
fn answer(ctx: &SkBuffContext, hook: Hook, seg: &Segment) {
    let (key, src_is_lo) = FlowKey::new(seg.src, seg.sport, seg.dst, seg.dport);
    // Every connection's SYN-ACK comes here: an unmarked slot (no half-open
    // entry hashes to it) spares the untracked ones the lookups.
    if maps::filter(key.filter_slot()).1 == 0 || !origin(ctx).is_tcp() {
        return;
    }
    let Some(half) = HALF_OPEN.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a map value pointer, valid for this run.
    let half = unsafe { &mut *half };
    if half.direction(src_is_lo) != S2C {
        return;
    }
    // A local server's SYN-ACK is its kernel's word on the connection it
    // is opening (the request it answers may not be the first SYN's: a
    // client can reset it and send another); a remote one must answer the
    // SYN the local client sent.
    if hook == Hook::Egress {
        half.start_seq[C2S] = seg.ack;
        half.next_seq[C2S] = seg.ack;
        half.started[S2C] = 0;
    } else if seg.ack != half.start_seq[C2S] {
        return;
    }
    half.start(S2C, seg.seq);
    half.server_start = seg.seq.wrapping_add(1);
    half.last_ns = now();
    maps::mark_half_open(key.filter_slot(), half.last_ns);
}

/// What [`promote`] or [`pick_up`] did.
enum Promotion {
    /// The connection is in `FLOWS` now; `true` when its server had
    /// received some of its bytes already (see [`decide_missed`]).
    Tracked(bool),
    /// Not (yet) tracked; the segment passes.
    Pass,
    /// On an enforced path; the segment is dropped, for this reason.
    Drop(DropReason),
    /// No half-open entry (evicted, or never seen): see [`pick_up`].
    Missing,
}

/// A segment of a connection that may be half-open: moves it to `FLOWS`
/// when a TCP socket proves the handshake complete.
#[inline(never)]
fn promote(
    ctx: &SkBuffContext,
    hook: Hook,
    key: &FlowKey,
    src_is_lo: bool,
    seg: &Segment,
) -> Promotion {
    let Some(half) = HALF_OPEN.get_ptr_mut(key) else {
        return Promotion::Missing;
    };
    // SAFETY: a map value pointer, valid for this run.
    let half = unsafe { &mut *half };
    let enforced = path_enforced(half.path);
    let from = origin(ctx);
    let server_here = local_is_server(hook, half.direction(src_is_lo));
    // A segment from or to a socket past its handshake; or the handshake's
    // last ACK, which reaches the listener, acknowledging the server's ISN
    // (only the real client has seen it).
    let joined = from.joinable(server_here);
    let last_ack = from.in_state(state::LISTEN)
        && half.server_start != 0
        && seg.flags & ACK != 0
        && seg.ack == half.server_start;
    if joined.is_none() && !last_ack {
        // Client data no socket has accepted yet (the handshake's last ACK
        // with data, unconfirmed) would reach the application unjudged.
        if enforced && seg.payload_len > 0 && half.direction(src_is_lo) == C2S {
            return Promotion::Drop(DropReason::Crafted);
        }
        return Promotion::Pass;
    }
    let mut missed = false;
    if let Some(fins) = joined {
        half.fin = fins;
        // The connection's own socket knows where the client's stream
        // starts. (At the last ACK the socket is the listener: the SYN the
        // SYN-ACK answered, in the half-open entry, is the truth then.)
        if let Some((start, went)) = client_stream_start(ctx, server_here) {
            half.start_seq[C2S] = start;
            half.next_seq[C2S] = start;
            missed = went;
        }
    }
    let promotion = insert_flow(key, half, enforced, missed);
    // Tracked, or left untracked for good (the table is full, the path has
    // no block rule: counted once): it is half-open no more.
    if matches!(promotion, Promotion::Tracked(_))
        || (!enforced && matches!(promotion, Promotion::Pass))
    {
        let _ = HALF_OPEN.remove(key);
    }
    promotion
}

/// Puts `flow` into `FLOWS` under `key`. A tracked connection already there
/// with the same client ISN is this one (another CPU was first); with
/// another ISN it is an old connection on the same ends, replaced.
#[inline(always)]
fn insert_flow(key: &FlowKey, flow: &Flow, enforced: bool, missed: bool) -> Promotion {
    let slot = key.filter_slot();
    // The filter counts the entry before it exists, so no other CPU can
    // find the entry with the filter saying there is none.
    maps::count_flow(slot, true);
    match FLOWS.insert(key, flow, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            maps::count_stat(Stat::FlowsCreated);
            Promotion::Tracked(missed)
        }
        Err(e) => {
            maps::count_flow(slot, false);
            if e == -EEXIST {
                // SAFETY: a map value pointer, valid for this run.
                let same = FLOWS
                    .get_ptr(key)
                    .is_some_and(|f| unsafe { (*f).start_seq[C2S] } == flow.start_seq[C2S]);
                if same {
                    return Promotion::Tracked(false);
                }
                // Over the old entry only if it is still there (it keeps
                // its count); gone meanwhile, the next segment inserts anew.
                if FLOWS.insert(key, flow, u64::from(BPF_EXIST)).is_ok() {
                    maps::count_stat(Stat::FlowsClosed);
                    maps::count_stat(Stat::FlowsCreated);
                    return Promotion::Tracked(missed);
                }
                // Gone meanwhile: the next segment inserts anew.
                if enforced {
                    Promotion::Drop(DropReason::TableFull)
                } else {
                    Promotion::Pass
                }
            } else if enforced {
                Promotion::Drop(DropReason::TableFull)
            } else {
                maps::count_stat(Stat::FlowTableFull);
                Promotion::Pass
            }
        }
    }
}

/// A connection on an enforced path that is already past its start when it
/// enters `FLOWS`: its first bytes were never judged, so it is `other`. A
/// subprogram of its own, called from the entry point: its event report
/// must not stack on `pick_up`'s frame.
#[inline(never)]
fn decide_missed(ctx: &SkBuffContext, key: &FlowKey) {
    if let Some(flow) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value pointer, valid for this run.
        decide(ctx, unsafe { &mut *flow }, key, Protocol::Other as u8);
    }
}

/// A segment in a slot a half-open SYN marked, of a connection found in
/// neither table: its half-open entry was pushed out (a flood) before its
/// handshake completed. On an enforced path the connection is tracked from
/// here, from what its socket says, rather than passed untracked.
///
/// Only client bytes are judged, so the segment is taken for one the client
/// sends, and only when the local socket's role agrees: at egress a socket
/// that `connect()`ed (it has a `CONNECTS` entry), at ingress one that did
/// not and whose port a listener holds (a server's: a flood of `connect()`s
/// can push a client's entry out, but cannot give it a listener). And only a connection none of whose client bytes went
/// yet is picked up: an older one, never seen from its start, is left
/// alone (its first bytes cannot be judged any more).
///
/// Two sibling subprograms, as for a SYN (see [`classify_syn`]): their
/// frames would not fit the verifier's stack limit stacked.
#[inline(always)]
fn pick_up(ctx: &SkBuffContext, hook: Hook, seg: &Segment) -> Promotion {
    match pick_up_path(ctx, hook, seg) {
        Some((path, cookie)) => join(ctx, hook, seg, path, cookie),
        None => Promotion::Pass,
    }
}

/// The enforced path of a segment taken for a client's, and the local
/// client socket's cookie (0 at ingress), or `None`.
#[inline(never)]
fn pick_up_path(ctx: &SkBuffContext, hook: Hook, seg: &Segment) -> Option<(Path, u64)> {
    // SAFETY: a plain helper call on the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let connect = CONNECTS.get_ptr(&cookie);
    if connect.is_some() != (hook == Hook::Egress) {
        return None;
    }
    let ports = PORTS.get(0)?;
    let end = |addr: Addr, port: u16| End {
        roles: roles_of(addr),
        port,
        apiserver: is_apiserver(&Endpoint {
            addr,
            port,
            _pad: 0,
        }),
    };
    // The segment's source is the client: at egress, the local socket
    // that connect()ed.
    let client = End {
        roles: client_roles(seg.src, connect),
        ..end(seg.src, seg.sport)
    };
    let path = classify(&client, &end(seg.dst, seg.dport), ports)?;
    path_enforced(path as u8).then_some((path, if hook == Hook::Egress { cookie } else { 0 }))
}

/// Tracks a picked-up connection from what its socket says.
#[inline(never)]
fn join(ctx: &SkBuffContext, hook: Hook, seg: &Segment, path: Path, cookie: u64) -> Promotion {
    let server_here = hook == Hook::Ingress;
    let Some(fins) = origin(ctx).joinable(server_here) else {
        return if seg.payload_len > 0 {
            Promotion::Drop(DropReason::Crafted)
        } else {
            Promotion::Pass
        };
    };
    let (start, missed) = match client_stream_start(ctx, server_here) {
        Some((_, true)) => return Promotion::Pass,
        // Without a CONNECTS entry, a socket is a server's only if a
        // listener holds its port: else it is a client whose entry was
        // pushed out, and the segment is its server's answer.
        Some(_) if server_here && !origin::listening(ctx, &seg.dst, seg.dport) => {
            return Promotion::Pass;
        }
        Some((start, false)) => (start, false),
        // No socket to ask (test runs): fail closed.
        None => (seg.seq, true),
    };
    let (key, src_is_lo) = FlowKey::new(seg.src, seg.sport, seg.dst, seg.dport);
    let Some(flow) = maps::scratch(Flow {
        fin: fins,
        client_cookie: cookie,
        ..Flow::new(path as u8, src_is_lo, start.wrapping_sub(1), now())
    }) else {
        return Promotion::Pass;
    };
    insert_flow(&key, flow, true, missed)
}

/// The agent's CLOCK_MONOTONIC, at its tick resolution (see `maps::CLOCK`).
#[inline(always)]
fn now() -> u64 {
    CLOCK.get(0).map_or(0, |t| *t)
}

/// True when `ep` is an apiserver endpoint or the `kubernetes` VIP.
#[inline(always)]
fn is_apiserver(ep: &Endpoint) -> bool {
    APISERVERS.get_ptr(ep).is_some()
}

/// The roles of a connection's client at `addr`: its address's, and the
/// control plane's when `connect` (its `CONNECTS` entry, if it is a local
/// process's socket) was made by the apiserver running on this node
/// (`APISERVER_TASKS`): its connections come from the node's addresses.
#[inline(always)]
fn client_roles(addr: Addr, connect: Option<*const Connect>) -> Roles {
    let roles = roles_of(addr);
    // SAFETY: a map value pointer, valid for this run; the key is read
    // from it in place.
    let apiserver = connect.is_some_and(|c| {
        APISERVER_TASKS
            .get_ptr(unsafe { &(*c).caller.pid })
            .is_some()
    });
    if apiserver {
        roles.union(Roles::CONTROL_PLANE)
    } else {
        roles
    }
}

#[inline(always)]
fn roles_of(addr: Addr) -> Roles {
    ROLES
        .get(Key::new(128, addr))
        .map_or(Roles::EMPTY, |r| Roles(*r))
}

/// The stream rules of an enforced path, for a segment with payload (or
/// URG): what reaches the server's application first must be what was
/// judged. `Some(reason)` drops the segment.
#[inline(never)]
fn guard(
    ctx: &SkBuffContext,
    flow: &mut Flow,
    key: &FlowKey,
    dir: usize,
    seg: &Segment,
) -> Result<Option<DropReason>, ()> {
    if flow.reset != 0 {
        return Ok(Some(DropReason::Rewritten)); // nothing after a RST
    }
    if dir != C2S {
        return Ok(None); // only the client's bytes are judged
    }
    let place = flow.place(seg.seq);
    if place == Place::Before {
        // Before the stream's first byte, where no sender has bytes: a
        // crafted segment (the receiver would trim what it has and keep the
        // rest), or our start is not the receiver's. Either way unjudged.
        return Ok(Some(DropReason::Rewritten));
    }
    // After the client's FIN (which took a sequence number): no receiver
    // delivers it, but detection must not see it either.
    let fin_at = flow.next_seq[C2S].wrapping_sub(1);
    if flow.fin[C2S] != 0 && (seg.seq.wrapping_add(seg.payload_len).wrapping_sub(fin_at) as i32) > 0
    {
        return Ok(Some(DropReason::Rewritten));
    }
    let undecided = flow.decision().0 == UNDECIDED;
    if undecided && seg.flags & URG != 0 {
        decide_urgent(ctx, flow, key);
        return Ok(None);
    }
    let Place::Prefix(off) = place else {
        // Beyond the judged bytes: after a gap (held back until it is
        // filled) while undecided, ordinary data once decided.
        return Ok(undecided.then_some(DropReason::OutOfOrder));
    };
    // On or right after the judged bytes: they must agree (a segment the
    // receiver discarded, bad checksum or no ACK, may have been judged).
    let mut bytes = [0u64; 2];
    let n = packet::load_prefix(ctx, seg, &mut bytes)?;
    if !flow.agrees(off, &bytes, n) {
        return Ok(Some(DropReason::Rewritten));
    }
    if undecided {
        judge(ctx, flow, key, off, &bytes, n);
    }
    Ok(None)
}

/// Urgent data before the decision: the server's TCP takes it out of the
/// stream (unless the application asked for SO_OOBINLINE), so it would
/// read something else than the sequence space holds: `other`.
#[inline(always)]
fn decide_urgent(ctx: &SkBuffContext, flow: &mut Flow, key: &FlowKey) {
    decide(ctx, flow, key, Protocol::Other as u8);
}

/// Adds `n` client bytes at stream offset `off` to the prefix and decides
/// the protocol once the prefix is conclusive.
#[inline(always)]
fn judge(
    ctx: &SkBuffContext,
    flow: &mut Flow,
    key: &FlowKey,
    off: usize,
    bytes: &Prefix,
    n: usize,
) {
    flow.merge_prefix(off, bytes, n);
    if let Detection::Decided(protocol) = detect(&flow.prefix, flow.prefix_len as usize, false) {
        decide(ctx, flow, key, protocol as u8);
    }
}

/// On a path without a block rule (visibility only): adds a client
/// segment's leading bytes to the prefix, in stream order, and decides the
/// protocol once the prefix is conclusive.
#[inline(never)]
fn feed_detection(
    ctx: &SkBuffContext,
    flow: &mut Flow,
    key: &FlowKey,
    seg: &Segment,
) -> Result<(), ()> {
    if seg.flags & URG != 0 {
        decide_urgent(ctx, flow, key);
        return Ok(());
    }
    // Beyond a gap, or before the stream: nothing to add in order.
    let Place::Prefix(off) = flow.place(seg.seq) else {
        return Ok(());
    };
    let mut bytes = [0u64; 2];
    let n = packet::load_prefix(ctx, seg, &mut bytes)?;
    judge(ctx, flow, key, off, &bytes, n);
    Ok(())
}

/// Records the protocol and verdict, counts the connection once, and
/// reports a violation.
#[inline(always)]
fn decide(ctx: &SkBuffContext, flow: &mut Flow, key: &FlowKey, protocol: u8) {
    let slot = POLICY_SLOT.get(0).map_or(0, |s| *s);
    let entry = POLICY
        .get(policy_index(slot, flow.path, protocol))
        .map_or(0, |a| *a);
    let (action, dry_run) = policy::decode(entry);
    let verdict = policy::verdict(action, dry_run) as u8;
    flow.set_decision(protocol, verdict);
    trace::decided(flow, key);
    maps::add(
        &CONNECTIONS,
        connection_index(flow.path, protocol, verdict),
        1,
    );
    if let Some(i) = violation_index(flow.path, protocol, action) {
        maps::add(&VIOLATIONS, i, 1);
        report(ctx, flow, key, action, dry_run);
        if head::wanted(flow) {
            head::copy_prefix(flow, key);
        }
    }
}

/// Puts a violation event on the ring buffer, or counts it as lost.
#[inline(never)]
fn report(ctx: &SkBuffContext, flow: &Flow, key: &FlowKey, action: Action, dry_run: bool) {
    // Written in place in the ring, not built on the stack: the frames of
    // the path that reaches here are at the verifier's limit.
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        maps::count_stat(Stat::EventsLost);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: the reserved record is ours until submitted; zeroed, it is a
    // valid `Event` (plain integers).
    let e = unsafe {
        core::ptr::write_bytes(e, 0, 1);
        &mut *e
    };
    let (client, client_port, server, server_port) = key.ends(flow);
    e.client = client;
    e.server = server;
    e.client_port = client_port;
    e.server_port = server_port;
    e.stream_start = flow.start_seq[C2S];
    e.path = flow.path;
    e.protocol = flow.protocol;
    e.action = action as u8;
    e.verdict = flow.verdict;
    if dry_run && matches!(action, Action::Block) {
        e.flags = event::DRY_RUN;
    }
    if flow.client_cookie != 0
        && let Some(c) = CONNECTS.get_ptr(&flow.client_cookie)
    {
        // SAFETY: a map value pointer, valid for this run.
        e.caller = unsafe { (*c).caller };
        e.flags |= event::HAS_PROCESS;
    }
    // The deciding segment's local socket, which the agent destroys. Not a
    // listener's (data that came with the handshake's last ACK is filtered
    // on the listener): the agent falls back to the ends then.
    if let Origin::Tcp(s) = origin(ctx)
        && s != state::LISTEN
    {
        // SAFETY: a plain helper call on the context.
        e.cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    }
    entry.submit(0);
}

/// A FIN or RST. It counts only if the receiving TCP would take it: a
/// FIN right after the last byte let through, a RST at the sequence number
/// the receiver expects, from or to a TCP socket. Then a client FIN or any
/// RST decides an undecided connection from what was seen, and the RST or
/// the second FIN removes the entry.
#[inline(never)]
fn close(ctx: &SkBuffContext, flow: &mut Flow, key: &FlowKey, dir: usize, seg: &Segment) {
    let d = dir & 1;
    let reset = seg.flags & RST != 0;
    let valid = if !reset {
        seg.seq.wrapping_add(seg.payload_len) == flow.next_seq[d]
    } else if flow.started[d] != 0 {
        seg.seq == flow.next_seq[d]
    } else {
        // A RST from an end that never sent anything we saw: it must at
        // least acknowledge all the other end sent.
        seg.flags & ACK != 0 && seg.ack == flow.next_seq[d ^ 1]
    };
    if !valid || !origin(ctx).is_tcp() {
        return;
    }
    if flow.decision().0 == UNDECIDED && (dir == C2S || reset) {
        let protocol = match detect(&flow.prefix, flow.prefix_len as usize, true) {
            // The server spoke, the client never did.
            Detection::Decided(Protocol::None) if flow.next_seq[S2C] != flow.start_seq[S2C] => {
                Protocol::Other
            }
            Detection::Decided(p) => p,
            Detection::NeedMore => Protocol::Other,
        };
        decide(ctx, flow, key, protocol as u8);
    }
    if !reset {
        // The FIN takes a sequence number: a RST after it comes one later.
        flow.next_seq[d] = flow.next_seq[d].wrapping_add(1);
        flow.fin[d] = 1;
    }
    if path_enforced(flow.path) {
        // The entry stays, and enforces `guard`'s rules on whatever comes
        // after: the receiver may have discarded this segment (a bad
        // checksum, no ACK). The agent removes closed entries after a short
        // linger, destroying any socket still there.
        if reset {
            flow.reset = 1;
        }
        return;
    }
    if (reset || flow.fin[C2S] & flow.fin[S2C] != 0) && FLOWS.remove(key).is_ok() {
        maps::count_flow(key.filter_slot(), false);
        maps::add(&STATS, Stat::FlowsClosed as u32, 1);
    }
}
