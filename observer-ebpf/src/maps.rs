//! The maps shared with the agent. Names are the contract with
//! `observer/src/ebpf.rs`; types come from `observer-common`.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{
    config::{Addr, Endpoint, Ports},
    counters::{BYTE_ENTRIES, CONNECTION_ENTRIES, STAT_ENTRIES, Stat},
    event::EVENTS_BYTES,
    flow::{Connect, FILTER_SLOTS, Flow, FlowKey},
    policy::{POLICY_ENTRIES, POLICY_SLOTS, VIOLATION_ENTRIES},
};

/// Tracked connections. The agent sets the capacity at load time
/// (`--flow-table-capacity`).
#[map]
pub static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(65536, 0);

/// Counters in front of `FLOWS` (`observer_common::flow::filter_slot`): a
/// packet whose counter is 0 is untracked, decided without hashing its key.
/// Memory-mappable, so the agent's idle expiry can decrement atomically.
#[map]
pub static FLOW_FILTER: Array<u64> = Array::with_max_entries(FILTER_SLOTS, BPF_F_MMAPABLE);

/// The agent's clock, CLOCK_MONOTONIC nanoseconds, advanced by its expiry
/// thread (`observer/src/flows.rs`): what `Flow::last_ns` is stamped with.
/// Reading it is a load; the kernel's clock would be a helper call on every
/// tracked packet.
#[map]
pub static CLOCK: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Address prefix → [`observer_common::config::Roles`] bits. The agent folds
/// the roles of enclosing prefixes into each entry, so one longest-prefix
/// lookup gives every role of an address.
#[map]
pub static ROLES: LpmTrie<Addr, u32> = LpmTrie::with_max_entries(4096, 0);

/// Apiserver endpoints and the `kubernetes` VIP. The value is unused (1).
#[map]
pub static APISERVERS: HashMap<Endpoint, u32> = HashMap::with_max_entries(256, 0);

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

/// Adds `delta` (wrapping: `u64::MAX` subtracts one) to a `FLOW_FILTER`
/// counter, atomically: other CPUs update the same counters. (64-bit: the
/// BPF target has no 32-bit atomics.)
#[inline(always)]
pub fn filter_add(slot: u32, delta: u64) {
    if let Some(c) = FLOW_FILTER.get_ptr_mut(slot) {
        // The BPF target offers no `AtomicU64::fetch_add`; the intrinsic is
        // what it would call, and compiles to one `lock xadd` instruction.
        // SAFETY: an aligned u64 inside the map's value area, valid for the run.
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
}

/// True when some tracked connection may hash to `slot`.
#[inline(always)]
pub fn filter_maybe(slot: u32) -> bool {
    FLOW_FILTER.get(slot).is_some_and(|c| *c != 0)
}

/// Counts one occurrence of `stat`.
#[inline(always)]
pub fn count_stat(stat: Stat) {
    add(&STATS, stat as u32, 1);
}
