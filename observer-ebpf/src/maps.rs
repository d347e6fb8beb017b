//! The maps shared with the agent. Names are the contract with
//! `observer/src/ebpf.rs`; types come from `observer-common`.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{
    config::{Addr, Endpoint, Ports},
    counters::{BYTE_ENTRIES, CONNECTION_ENTRIES, DropReason, STAT_ENTRIES, Stat},
    event::EVENTS_BYTES,
    flow::{Connect, FILTER_SLOTS, Filter, Flow, FlowKey, flow_count},
    head::{HEADS_BYTES, HeadChunk},
    policy::{POLICY_ENTRIES, POLICY_SLOTS, VIOLATION_ENTRIES},
};

/// Tracked connections whose handshake completed. The agent sets the
/// capacity at load time (`--flow-table-capacity`).
#[map]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(65536, 0);

/// Connections between their SYN and the end of their handshake. Least
/// recently used entries make room, so a flood of SYNs nobody completes
/// (spoofed sources) pushes out only its own kind and never fills `FLOWS`.
/// Same capacity as `FLOWS`, set by the agent.
#[map]
pub static HALF_OPEN: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(65536, 0);

/// [`Filter`]s in front of `FLOWS` and `HALF_OPEN`
/// (`observer_common::flow::filter_slot`): a packet whose slot is all zeros
/// is untracked, decided without hashing its key. Memory-mappable, so the
/// agent's expiry can update it atomically.
#[map]
pub static FLOW_FILTER: Array<Filter> = Array::with_max_entries(FILTER_SLOTS, BPF_F_MMAPABLE);

/// One `Flow` per CPU to build a new entry in before inserting it: a map
/// value is a valid source for an insert, and the verifier's 512 bytes of
/// stack (5.10 and 6.1 round each frame up) have no room for it.
#[map]
pub static SCRATCH: PerCpuArray<Flow> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's [`SCRATCH`] entry, holding `flow`.
#[inline(always)]
pub fn scratch(flow: Flow) -> Option<&'static Flow> {
    let slot = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's value, valid for the run; programs do not migrate
    // CPUs mid-run, so nothing else writes it meanwhile.
    unsafe {
        *slot = flow;
        Some(&*slot)
    }
}

/// `FLOWS`'s entry count and capacity (`observer_common::flow::flow_count`):
/// a new connection on a path with a block rule is refused while the table
/// is full. Memory-mappable, for the agent's expiry.
#[map]
pub static FLOW_COUNT: Array<u64> = Array::with_max_entries(flow_count::WORDS, BPF_F_MMAPABLE);

/// The agent's clock, CLOCK_MONOTONIC nanoseconds, advanced by its expiry
/// thread (`observer/src/flows.rs`): what `Flow::last_ns` is stamped with.
/// Reading it is a load; the kernel's clock would be a helper call on every
/// tracked packet.
#[map]
pub static CLOCK: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Address prefix → [`observer_common::config::Roles`] bits. The agent folds
/// the roles of enclosing prefixes into each entry, so one longest-prefix
/// lookup gives every role of an address. The agent sets its capacity at
/// load time (`--role-trie-capacity`).
#[map]
pub static ROLES: LpmTrie<Addr, u32> = LpmTrie::with_max_entries(4096, 0);

/// Apiserver endpoints and the `kubernetes` VIP. The value is unused (1).
#[map]
pub static APISERVERS: HashMap<Endpoint, u32> = HashMap::with_max_entries(256, 0);

/// Processes (tgids) that are the apiserver running on this node: they
/// hold a listener on its endpoint, a local address (the agent looks:
/// `observer/src/local_apiserver.rs`). A connection one of them
/// `connect()`s gets the control-plane role at its client's end, whatever
/// its source address. The value is unused (1).
#[map]
pub static APISERVER_TASKS: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

/// Port numbers, one entry.
#[map]
pub static PORTS: Array<Ports> = Array::with_max_entries(1, 0);

/// Two policy tables of (path, protocol) → encoded action
/// (`observer_common::policy::encode`); `POLICY_SLOT` picks the one in force.
#[map]
pub static POLICY: Array<u32> = Array::with_max_entries((POLICY_SLOTS * POLICY_ENTRIES) as u32, 0);

/// Which `POLICY` table is in force (0 or 1).
#[map]
pub static POLICY_SLOT: Array<u32> = Array::with_max_entries(1, 0);

/// Violations per (path, protocol, configured action).
#[map]
pub static VIOLATIONS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(VIOLATION_ENTRIES as u32, 0);

/// Socket cookie → what `connect()` asked for, and who asked. Least
/// recently used entries make room: only the SYN that follows a connect
/// (and the event of its connection) needs its entry. Per-CPU LRU lists
/// (`BPF_F_NO_COMMON_LRU`): an insert on every `connect()` of the node
/// would otherwise take the map's global LRU lock, the hook's main cost.
#[map]
pub static CONNECTS: LruHashMap<u64, Connect> =
    LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU);

/// Violation events for the agent (`observer_common::event::Event`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Connections per (path, protocol, verdict).
/// Copies of violating requests' heads (`head.rs`), apart from `EVENTS`
/// so that a flood of copies never costs an event.
#[map]
pub static HEADS: RingBuf = RingBuf::with_byte_size(HEADS_BYTES, 0);

/// Where a head chunk is put together before it goes on `HEADS`: larger
/// than the stack allows.
#[map]
pub static HEAD_SCRATCH: PerCpuArray<HeadScratch> = PerCpuArray::with_max_entries(1, 0);

/// A CPU's [`HEAD_SCRATCH`]: the chunk, and whether a run holds it (see
/// `head::start`).
#[repr(C)]
pub struct HeadScratch {
    /// 1 while a run on this CPU puts a chunk together.
    pub busy: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The chunk.
    pub chunk: HeadChunk,
}

#[map]
pub static CONNECTIONS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(CONNECTION_ENTRIES as u32, 0);

/// Payload bytes per (path, direction).
#[map]
pub static BYTES: PerCpuArray<u64> = PerCpuArray::with_max_entries(BYTE_ENTRIES as u32, 0);

/// Datapath health counters, indexed by [`Stat`].
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_ENTRIES as u32, 0);

/// Adds `n` to entry `index` of a per-CPU counter array.
#[inline(always)]
pub fn add(counters: &PerCpuArray<u64>, index: u32, n: u64) {
    if let Some(c) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and programs do not migrate CPUs mid-run.
        unsafe { *c += n };
    }
}

/// Adds `delta` (wrapping: `u64::MAX` subtracts one) to the word at `c`,
/// atomically: other CPUs and the agent update the same words.
#[inline(always)]
fn atomic_add(c: *mut u64, delta: u64) {
    // The BPF target offers no `AtomicU64::fetch_add`; the intrinsic is
    // what it would call, and compiles to one `lock xadd` instruction.
    // (64-bit: the BPF target has no 32-bit atomics before 5.12.)
    // SAFETY: an aligned u64 inside a map's value area, valid for the run.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            c, delta,
        );
    }
    // Host builds (clippy, rustdoc) only.
    // SAFETY: as above.
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(c) }
        .fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}

/// One more (`true`) or one less `FLOWS` entry in `slot`'s filter and in
/// the table's count.
#[inline(always)]
pub fn count_flow(slot: u32, more: bool) {
    let delta = if more { 1 } else { u64::MAX };
    if let Some(f) = FLOW_FILTER.get_ptr_mut(slot) {
        // SAFETY: a map value pointer, valid for the run.
        atomic_add(unsafe { &raw mut (*f).flows }, delta);
    }
    if let Some(c) = FLOW_COUNT.get_ptr_mut(flow_count::ENTRIES) {
        atomic_add(c, delta);
    }
}

/// True when `FLOWS` holds as many entries as it can.
#[inline(always)]
pub fn flows_full() -> bool {
    let entries = FLOW_COUNT.get(flow_count::ENTRIES).map_or(0, |n| *n);
    let capacity = FLOW_COUNT.get(flow_count::CAPACITY).map_or(0, |n| *n);
    entries >= capacity
}

/// `slot`'s filter: (`Filter::flows`, `Filter::syn_ns`), zeros for none.
#[inline(always)]
pub fn filter(slot: u32) -> (u64, u64) {
    match FLOW_FILTER.get_ptr(slot) {
        // SAFETY: a map value pointer, valid for the run.
        Some(f) => unsafe { ((*f).flows, (*f).syn_ns) },
        None => (0, 0),
    }
}

/// Marks `slot` as holding a half-open connection seen at `now_ns`.
#[inline(always)]
pub fn mark_half_open(slot: u32, now_ns: u64) {
    if let Some(f) = FLOW_FILTER.get_ptr_mut(slot) {
        // SAFETY: a map value pointer, valid for the run; a plain store
        // (every writer writes about the same time), which the agent clears
        // with a compare-and-swap.
        unsafe { (*f).syn_ns = now_ns };
    }
}

/// Counts a segment dropped by the datapath's hardening.
#[inline(always)]
pub fn count_drop(reason: DropReason) {
    add(&STATS, reason.index(), 1);
}

/// Counts one occurrence of `stat`.
#[inline(always)]
pub fn count_stat(stat: Stat) {
    add(&STATS, stat as u32, 1);
}
