//! The flow table as the agent sees it: inspection, and removal of entries
//! whose connection went away without a FIN or RST passing our hooks (a pod
//! deleted with its network namespace, a peer that vanished). Without this,
//! such entries would fill the table over weeks.

use std::{
    sync::{Arc, atomic::Ordering, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{HashMap, MapData, MapError};
use observer_common::flow::{
    CLOSED_LINGER_NS, FILTER_SLOTS, Flow, FlowKey, HALF_OPEN_TTL_NS, flow_count,
};
use observer_common::path::Path;

use crate::{
    agent_counters::{AgentCounters, Component},
    mapped::MappedArray,
};

/// The kernel's `FLOWS` map, owned by whoever maintains it, with the
/// `FLOW_FILTER` slots in front of it, its `FLOW_COUNT`, and the `CLOCK`
/// its entries are stamped with.
pub struct FlowTable {
    map: HashMap<MapData, FlowKey, Flow>,
    /// `HALF_OPEN`: entries older than their TTL are removed here, and a
    /// slot's mark only once none of them hashes there.
    half_open: HashMap<MapData, FlowKey, Flow>,
    /// `FLOW_FILTER`, two words per slot (`observer_common::flow::Filter`):
    /// the kernel programs and the agent update it with atomic instructions
    /// on the same memory, so a change here cannot lose a concurrent one
    /// there.
    filter: MappedArray,
    /// `FLOW_COUNT`: entries and capacity (the metrics read the entries).
    count: Arc<MappedArray>,
    /// `CLOCK`: CLOCK_MONOTONIC nanoseconds, written here, read by the
    /// kernel programs for `Flow::last_ns` (a load instead of a helper call
    /// on every tracked packet).
    clock: MappedArray,
    /// Map errors met (and logged) since the last [`Self::take_errors`].
    errors: u64,
}

/// A delete that found nothing (ENOENT): someone else removed it first.
fn is_not_found(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable").finish_non_exhaustive()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `Flow::last_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl FlowTable {
    pub(crate) fn new(
        map: HashMap<MapData, FlowKey, Flow>,
        half_open: HashMap<MapData, FlowKey, Flow>,
        filter: MappedArray,
        count: Arc<MappedArray>,
        clock: MappedArray,
        capacity: u32,
    ) -> Self {
        let table = Self {
            map,
            half_open,
            filter,
            count,
            clock,
            errors: 0,
        };
        table
            .count
            .word(flow_count::CAPACITY as usize)
            .store(u64::from(capacity), Ordering::Relaxed);
        table.tick(monotonic_ns());
        table
    }

    /// Sets the kernel's `CLOCK` to `now_ns` (CLOCK_MONOTONIC): segments
    /// from now on stamp their flows with it.
    pub fn tick(&self, now_ns: u64) {
        self.clock.word(0).store(now_ns, Ordering::Relaxed);
    }

    /// The `FLOW_FILTER` count of `slot` (tests: it must match the table).
    pub fn filter_count(&self, slot: u32) -> u64 {
        self.filter_flows(slot).load(Ordering::Relaxed)
    }

    /// The `FLOW_COUNT` entry count (tests: it must match the table).
    pub fn counted(&self) -> u64 {
        self.count
            .word(flow_count::ENTRIES as usize)
            .load(Ordering::Relaxed)
    }

    /// `Filter::flows` of `slot`.
    fn filter_flows(&self, slot: u32) -> &std::sync::atomic::AtomicU64 {
        self.filter.word(2 * slot as usize)
    }

    /// Every entry now (a snapshot; the kernel keeps changing it).
    pub fn entries(&self) -> Vec<(FlowKey, Flow)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Gives every decided entry the verdict `policy` gives its (path,
    /// protocol), as an agent adopting a previous one's table must: a
    /// connection allowed before and blocked now is dropped from here on.
    /// Returns every entry, as now. (An entry the kernel changes meanwhile
    /// may lose that change: the window is one update, once per start.)
    pub fn apply_policy(&mut self, policy: &crate::policy::Policy) -> Vec<(FlowKey, Flow)> {
        let mut entries = self.entries();
        for (key, flow) in &mut entries {
            let (Some(path), Some(protocol)) = (Path::from_u8(flow.path), flow.protocol()) else {
                continue;
            };
            let verdict =
                observer_common::policy::verdict(policy.action(path, protocol), policy.dry_run)
                    as u8;
            if verdict != flow.verdict {
                flow.verdict = verdict;
                // BPF_EXIST: only over the entry read (2, linux/bpf.h).
                if let Err(e) = self.map.insert(*key, *flow, 2) {
                    self.errors += 1;
                    tracing::warn!("cannot update the verdict of an adopted connection: {e}");
                }
            }
        }
        entries
    }

    /// Map errors met (each logged) since the last call.
    pub fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    /// Number of entries now.
    pub fn len(&self) -> usize {
        self.map.keys().filter_map(Result::ok).count()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes half-open entries older than their TTL at `now_ns`, then
    /// clears the half-open marks (`Filter::syn_ns`) older than their TTL
    /// in slots no half-open entry hashes to any more, so untracked packets
    /// there skip the `HALF_OPEN` lookup again. Returns how many marks it
    /// cleared.
    pub fn clear_stale_marks(&mut self, now_ns: u64) -> usize {
        let mut live = vec![false; FILTER_SLOTS as usize];
        let old: Vec<FlowKey> = self
            .half_open
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(key, half)| {
                if now_ns.saturating_sub(half.last_ns) > HALF_OPEN_TTL_NS {
                    Some(key)
                } else {
                    live[key.filter_slot() as usize] = true;
                    None
                }
            })
            .collect();
        for key in old {
            match self.half_open.remove(&key) {
                // Promoted or pushed out meanwhile: gone either way.
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    self.errors += 1;
                    tracing::warn!("cannot remove a stale entry of map HALF_OPEN: {e}");
                }
            }
        }
        let mut cleared = 0;
        for slot in (0..FILTER_SLOTS as usize).filter(|s| !live[*s]) {
            let mark = self.filter.word(2 * slot + 1);
            let seen = mark.load(Ordering::Relaxed);
            // A compare-and-swap: a SYN marking the slot meanwhile wins.
            if seen != 0
                && now_ns.saturating_sub(seen) > HALF_OPEN_TTL_NS
                && mark
                    .compare_exchange(seen, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                cleared += 1;
            }
        }
        cleared
    }

    /// Removes entries whose last segment is older than `idle` at `now_ns`,
    /// or than [`CLOSED_LINGER_NS`] for entries the kernel saw close, and
    /// returns how many it removed. `before_removing` runs first for each
    /// (the agent destroys the sockets of connections on enforced paths).
    pub fn expire(
        &mut self,
        idle: Duration,
        now_ns: u64,
        mut before_removing: impl FnMut(&FlowKey, &Flow),
    ) -> Result<usize, MapError> {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let stale = |f: &Flow| {
            let limit = if f.closed() {
                idle_ns.min(CLOSED_LINGER_NS)
            } else {
                idle_ns
            };
            now_ns.saturating_sub(f.last_ns) > limit
        };
        let candidates: Vec<(FlowKey, Flow)> = self
            .map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, f)| stale(f))
            .collect();
        let mut removed = 0;
        for (key, flow) in candidates {
            // Look again: a segment since the scan, or a new connection on
            // the same ends, keeps the entry (and its sockets).
            let same = |f: &Flow| {
                stale(f) && (f.start_seq, f.created_ns) == (flow.start_seq, flow.created_ns)
            };
            if !self.map.get(&key, 0).is_ok_and(|f| same(&f)) {
                continue;
            }
            before_removing(&key, &flow);
            // And again after: resetting takes a while, and a client told
            // by the reset may have reconnected on the same ends meanwhile.
            if !self.map.get(&key, 0).is_ok_and(|f| same(&f)) {
                continue;
            }
            // The kernel may have removed it meanwhile (the connection
            // closed); then it released the filter slot itself.
            if self.map.remove(&key).is_ok() {
                self.filter_flows(key.filter_slot())
                    .fetch_sub(1, Ordering::Relaxed);
                self.count
                    .word(flow_count::ENTRIES as usize)
                    .fetch_sub(1, Ordering::Relaxed);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// [`Self::expire`] with nothing to do before removing.
    pub fn expire_idle(&mut self, idle: Duration, now_ns: u64) -> Result<usize, MapError> {
        self.expire(idle, now_ns, |_, _| {})
    }
}

/// How often the expiry runs for a given idle timeout: often enough that an
/// entry lives at most ~1.5 timeouts, never more than twice a second.
pub fn sweep_interval(idle: Duration) -> Duration {
    (idle / 2).clamp(Duration::from_millis(500), Duration::from_secs(60))
}

/// How often the agent advances the kernel's `CLOCK`: the resolution of
/// `Flow::last_ns`, a small part of the idle timeout.
pub fn tick_interval(idle: Duration) -> Duration {
    (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// How often entries the kernel saw close are looked for: they linger
/// [`CLOSED_LINGER_NS`].
const CLOSED_SWEEP: Duration = Duration::from_secs(5);

/// Runs the clock and the expiry on their own thread until `stop` is
/// dropped or sent to. Removed entries are added to `counters`' expired
/// count. Before an entry on an enforced path (`enforced`, by path) goes,
/// its sockets are destroyed: a connection the kernel programs no longer
/// track could no longer be blocked.
///
/// The first idle sweep waits one idle timeout: entries the kernel kept
/// while no agent ran were stamped with the clock the last agent left,
/// however busy they were since; by then every live one has been stamped
/// anew. Closed entries are swept from the start.
pub fn spawn_expiry(
    mut table: FlowTable,
    idle: Duration,
    enforced: [bool; Path::COUNT],
    counters: Arc<AgentCounters>,
    enforcer: crate::enforce::Queue,
    stop: mpsc::Receiver<()>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("flow-expiry".into())
        .spawn(move || {
            let start = std::time::Instant::now();
            // Settings refuse timeouts over a year; clamped again here so
            // that no value can overflow the clock and kill the thread.
            let idle = idle.min(Duration::from_secs(crate::config::MAX_FLOW_IDLE_TIMEOUT));
            let mut next_sweep = start + idle.max(sweep_interval(idle));
            let mut next_closed = start + CLOSED_SWEEP;
            // Adopting a table (`apply_policy`) may have met errors.
            counters.errors_add(Component::FlowExpiry, table.take_errors());
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(tick_interval(idle))
            {
                let now = monotonic_ns();
                table.tick(now);
                let at = std::time::Instant::now();
                let sweep_idle = at >= next_sweep;
                if !sweep_idle && at < next_closed {
                    continue;
                }
                next_closed = at + CLOSED_SWEEP;
                let timeout = if sweep_idle {
                    next_sweep += sweep_interval(idle);
                    let cleared = table.clear_stale_marks(now);
                    if cleared > 0 {
                        tracing::debug!(cleared, "cleared stale half-open marks");
                    }
                    idle
                } else {
                    Duration::MAX // closed entries only
                };
                // A connection the programs no longer track could no
                // longer be blocked: none may be left when its entry goes.
                // (Idle or closed, its socket may well be gone: not an
                // error.)
                let reset = |key: &FlowKey, flow: &Flow| {
                    if Path::from_u8(flow.path).is_some_and(|p| enforced[p as usize]) {
                        enforcer.push(crate::enforce::Target::of_flow(
                            key,
                            flow,
                            "forgotten on an enforced path",
                        ));
                    }
                };
                match table.expire(timeout, now, reset) {
                    Ok(0) => {}
                    Ok(n) => {
                        counters
                            .flows_expired
                            .fetch_add(n as u64, Ordering::Relaxed);
                        tracing::debug!(removed = n, "expired flows");
                    }
                    Err(e) => {
                        counters.error(Component::FlowExpiry);
                        tracing::warn!("cannot sweep map FLOWS: {e}");
                    }
                }
                counters.errors_add(Component::FlowExpiry, table.take_errors());
            }
        })
        .expect("a thread can be spawned")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(
            sweep_interval(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(100)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn ticks_are_a_fraction_of_the_timeout() {
        assert_eq!(
            tick_interval(Duration::from_secs(3600)),
            Duration::from_secs(1)
        );
        assert_eq!(
            tick_interval(Duration::from_secs(1)),
            Duration::from_millis(125)
        );
        assert_eq!(
            tick_interval(Duration::from_millis(1)),
            Duration::from_millis(10)
        );
    }

    /// Across the timeouts where neither interval is clamped, an idle
    /// entry goes within half a timeout of expiring (at most 1.5 timeouts
    /// after its last segment), and its stamp lags its last segment by at
    /// most an eighth of the timeout.
    #[test]
    fn expiry_is_accurate_to_a_fraction_of_the_timeout() {
        for ms in [1_000, 2_500, 7_000, 10_000, 60_000, 120_000] {
            let idle = Duration::from_millis(ms);
            assert!(sweep_interval(idle) <= idle / 2, "sweep for {idle:?}");
        }
        for ms in [80, 125, 1_000, 5_000, 8_000] {
            let idle = Duration::from_millis(ms);
            assert!(tick_interval(idle) <= idle / 8, "tick for {idle:?}");
        }
    }
}
