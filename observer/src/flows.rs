//! The flow table as the agent sees it: inspection, and removal of entries
//! whose connection went away without a FIN or RST passing our hooks (a pod
//! deleted with its network namespace, a peer that vanished). Without this,
//! such entries would fill the table over weeks.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{HashMap, MapData, MapError};
use observer_common::flow::{FILTER_SLOTS, Flow, FlowKey};

use crate::ebpf::Counters;

/// The kernel's `FLOWS` map, owned by whoever maintains it, with the
/// `FLOW_FILTER` counters in front of it.
pub struct FlowTable {
    map: HashMap<MapData, FlowKey, Flow>,
    filter: Filter,
}

/// `FLOW_FILTER`, memory-mapped: the kernel programs and the agent update
/// its counters with atomic instructions on the same memory, so a removal
/// here cannot lose a concurrent increment there.
struct Filter {
    slots: std::ptr::NonNull<AtomicU64>,
    /// Keeps the map open while it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Filter {}
// SAFETY: as above.
unsafe impl Sync for Filter {}

const FILTER_BYTES: usize = FILTER_SLOTS as usize * size_of::<u64>();

impl Filter {
    fn new(map: MapData) -> std::io::Result<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        // SAFETY: a shared mapping of a BPF_F_MMAPABLE array of exactly
        // FILTER_BYTES (checked by the pin shapes and the object's map).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILTER_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let slots = std::ptr::NonNull::new(ptr.cast())
            .ok_or_else(|| std::io::Error::other("mmap returned NULL"))?;
        Ok(Self { slots, _map: map })
    }

    fn slot(&self, slot: u32) -> &AtomicU64 {
        assert!(slot < FILTER_SLOTS, "filter slot {slot} out of range");
        // SAFETY: in bounds, aligned, and alive as long as `self`.
        unsafe { self.slots.add(slot as usize).as_ref() }
    }

    /// One entry hashing to `slot` is gone.
    fn release(&self, slot: u32) {
        self.slot(slot).fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), FILTER_BYTES) };
    }
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
        filter: MapData,
    ) -> std::io::Result<Self> {
        Ok(Self {
            map,
            filter: Filter::new(filter)?,
        })
    }

    /// The `FLOW_FILTER` counter of `slot` (tests: it must match the table).
    pub fn filter_count(&self, slot: u32) -> u64 {
        self.filter.slot(slot).load(Ordering::Relaxed)
    }

    /// Every entry now (a snapshot; the kernel keeps changing it).
    pub fn entries(&self) -> Vec<(FlowKey, Flow)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Number of entries now.
    pub fn len(&self) -> usize {
        self.map.keys().filter_map(Result::ok).count()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes entries whose last segment is older than `idle` at `now_ns`
    /// and returns how many it removed.
    pub fn expire_idle(&mut self, idle: Duration, now_ns: u64) -> Result<usize, MapError> {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        let stale: Vec<FlowKey> = self
            .map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, f)| now_ns.saturating_sub(f.last_ns) > idle_ns)
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for key in stale {
            // The kernel may have removed it meanwhile (the connection
            // closed); then it released the filter slot itself.
            if self.map.remove(&key).is_ok() {
                self.filter.release(key.filter_slot());
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// How often the expiry runs for a given idle timeout: often enough that an
/// entry lives at most ~1.5 timeouts, never more than twice a second.
pub fn sweep_interval(idle: Duration) -> Duration {
    (idle / 2).clamp(Duration::from_millis(500), Duration::from_secs(60))
}

/// Runs the expiry on its own thread until `stop` is dropped or sent to.
/// Removed entries are added to `counters`' expired count.
pub fn spawn_expiry(
    mut table: FlowTable,
    idle: Duration,
    counters: Arc<Counters>,
    stop: mpsc::Receiver<()>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("flow-expiry".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(sweep_interval(idle))
            {
                match table.expire_idle(idle, monotonic_ns()) {
                    Ok(0) => {}
                    Ok(n) => {
                        counters
                            .flows_expired
                            .fetch_add(n as u64, Ordering::Relaxed);
                        tracing::debug!(removed = n, "expired idle flows");
                    }
                    Err(e) => tracing::warn!("cannot sweep map FLOWS: {e}"),
                }
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
    fn monotonic_advances() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() > a);
    }
}
