//! Violation events: read from the kernel's ring buffer, printed as one JSON
//! object per line on standard output (README, "Events"), and handed to the
//! enforcer when a connection was blocked.

use std::{
    io::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use bytes::{BufMut as _, BytesMut};
use observer_common::{
    event::{EVENT_V1_SIZE, EVENTS_BYTES, Event},
    path::Path,
    policy::Verdict,
    protocol::Protocol,
};

use crate::{
    agent_counters::{AgentCounters, Component},
    discovery::PodIndex,
    enforce,
    heads::{self, Assembler, Summary},
    kube_events,
    violation::{Violation, ends},
};
use tokio::io::unix::AsyncFd;

/// After a wake-up, the printer waits this long before it waits for the
/// next one, so that a stream of events is read in batches: the kernel wakes
/// the reader for each event it finds caught up, and at 10,000 events a
/// second a wake-up (and a stdout write) per event cost the agent ~14 % of a
/// core. The first event after a quiet spell is still read at once; later
/// ones wait at most this long (also the most this adds to the reset of a
/// blocked connection). The ring (256 KiB, 80 bytes an event) holds 10 ms
/// of over 300,000 events a second; beyond that, see [`BUSY_EVENTS`].
const BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Bytes an event takes in the ring: the event and the ring's 8-byte
/// record header.
const RECORD_BYTES: usize = size_of::<Event>() + 8;

/// A wake-up that read at least this many events (a quarter of the ring)
/// reads on at once instead of waiting [`BATCH_INTERVAL`], which lets the
/// ring fill beyond ~300,000 events a second: an unpaced storm of 340,000
/// a second on 2 cores lost 24 % of them with the wait, 19 % without it
/// (the rest is CPU: the agent spends ~1 µs an event, and the storm's own
/// threads took the cores).
const BUSY_EVENTS: usize = EVENTS_BYTES as usize / RECORD_BYTES / 4;

/// Events are written out once this many bytes of them are waiting.
const BATCH_BYTES: usize = 64 * 1024;

/// Prints every event until a ring buffer's fd fails, naming the pods
/// `pods` knows and adding the request heads read from `heads` (see
/// [`crate::heads`]); hands blocked connections to the enforcer's queue at
/// once, before any head. Errors on the way (stdout gone) are logged and
/// counted in `counters`. Every violation, once printed, is offered to
/// `publisher` (Kubernetes Events) and, with its request summary, counted
/// by user agent. When `stop` fires (or its sender is gone) it reads the
/// rings a last time, prints what it held and returns.
pub async fn run(
    ring: RingBuf<MapData>,
    heads: RingBuf<MapData>,
    blocked: enforce::Queue,
    pods: PodIndex,
    publisher: kube_events::Publisher,
    counters: Arc<AgentCounters>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let mut printer = Printer {
        // One write per batch of events, not one per line: at thousands
        // of events a second the syscalls would be most of the agent's work.
        batch: BytesMut::with_capacity(BATCH_BYTES),
        held: Assembler::default(),
        blocked,
        pods,
        publisher,
        counters,
    };
    let result = printer.run(ring, heads, stop).await;
    // Whatever waited for its head goes out with what it has.
    for (v, summary) in printer.held.drain() {
        printer.print(v, Some(summary));
    }
    printer.write_out();
    result
}

/// The event reader's state.
struct Printer {
    batch: BytesMut,
    /// Violations waiting for their request heads.
    held: Assembler<Violation>,
    blocked: enforce::Queue,
    pods: PodIndex,
    publisher: kube_events::Publisher,
    counters: Arc<AgentCounters>,
}

impl Printer {
    async fn run(
        &mut self,
        ring: RingBuf<MapData>,
        heads: RingBuf<MapData>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) -> std::io::Result<()> {
        let readable = tokio::io::Interest::READABLE;
        // SAFETY (both): the ring buffer owns its map fd and keeps it for
        // its lifetime.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, readable) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut heads = unsafe { AsyncFd::register_with_interest(heads, readable) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        loop {
            // While violations wait for their heads, `HEADS` is read every
            // `BATCH_INTERVAL`: the kernel writes it without waking anyone.
            let deadline = match self.held.next_deadline() {
                Some(d) if !self.held.is_empty() => Some(d.min(Instant::now() + BATCH_INTERVAL)),
                d => d,
            };
            // A wake-up of either ring reads both, events first: a chunk
            // is written after its event.
            let read = tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let read = self.read_events(guard.get_inner_mut())?;
                    guard.clear_ready();
                    self.read_heads(heads.get_mut());
                    read
                }
                guard = heads.readable_mut() => {
                    let mut guard = guard?;
                    let read = self.read_events(ring.get_mut())?;
                    self.read_heads(guard.get_inner_mut());
                    guard.clear_ready();
                    read
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.read_heads(heads.get_mut());
                    0
                }
                _ = &mut stop => {
                    self.read_events(ring.get_mut())?;
                    self.read_heads(heads.get_mut());
                    return Ok(());
                }
            };
            for (v, summary) in self.held.expire(Instant::now()) {
                self.print(v, Some(summary));
            }
            self.write_out();
            if read > 0 && read < BUSY_EVENTS {
                tokio::time::sleep(BATCH_INTERVAL).await;
            }
        }
    }

    /// Reads the events in `ring`; returns how many.
    fn read_events(&mut self, ring: &mut RingBuf<MapData>) -> std::io::Result<usize> {
        // The tests' fault injection (compiled out of release builds).
        fail::fail_point!("event-reader", |_| Err(std::io::Error::other(
            "fail point event-reader"
        )));
        let mut read = 0;
        while let Some(item) = ring.next() {
            read += 1;
            let Some(event) = decode(&item) else {
                tracing::warn!(len = item.len(), "short event in ring buffer EVENTS");
                unprinted(&self.counters, 1);
                continue;
            };
            drop(item);
            if event.verdict == Verdict::Blocked as u8 {
                self.blocked.push(Violation::target(&event));
            }
            let Some(v) = Violation::from_event(&event, std::time::SystemTime::now()) else {
                tracing::warn!(?event, "event with unknown values");
                unprinted(&self.counters, 1);
                continue;
            };
            let v = v.attribute(&event, &self.pods);
            if has_head(&event) {
                for (earlier, summary) in self.held.hold(connection(&event), v, Instant::now()) {
                    self.print(earlier, Some(summary));
                }
            } else {
                self.print(v, None);
            }
        }
        Ok(read)
    }

    /// Reads the request-head chunks in `ring`.
    fn read_heads(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            let Some(chunk) = heads::decode_chunk(&item) else {
                tracing::warn!(len = item.len(), "short record in ring buffer HEADS");
                continue;
            };
            drop(item);
            if let Some((v, summary)) = self.held.chunk(chunk, Instant::now()) {
                self.print(v, Some(summary));
            }
        }
    }

    /// Adds a finished violation, with its request's summary if it has
    /// one, to the batch.
    fn print(&mut self, mut v: Violation, http: Option<Summary>) {
        v.http = http;
        serde_json::to_writer((&mut self.batch).writer(), &v).expect("a Violation serialises");
        self.batch.put_u8(b'\n');
        if let Some(summary) = &v.http
            && let Some(path) = Path::from_name(v.path)
        {
            self.counters.plaintext_request(path, summary);
        }
        self.publisher.offer(&v);
        if self.batch.len() >= BATCH_BYTES {
            self.write_out();
        }
    }

    fn write_out(&mut self) {
        write_out(&mut self.batch, &self.counters);
    }
}

/// The connection `e` is about, as its head's chunks name it.
fn connection(e: &Event) -> heads::Connection {
    let (client, server) = ends(e);
    heads::Connection {
        client,
        server,
        stream_start: e.stream_start,
    }
}

/// True when the kernel copies the request head of `e`'s connection
/// (`observer_common::head`).
fn has_head(e: &Event) -> bool {
    e.protocol == Protocol::Http as u8 && Path::from_u8(e.path).is_some_and(Path::summarised)
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The event in a ring buffer record: an [`Event`], or one of an earlier
/// agent's programs (a pinned ring after an upgrade), which has no cookie
/// (64 bytes) or no stream start (72).
fn decode(item: &[u8]) -> Option<Event> {
    if item.len() < EVENT_V1_SIZE {
        return None;
    }
    let mut bytes = [0u8; size_of::<Event>()];
    let n = item.len().min(bytes.len());
    bytes[..n].copy_from_slice(&item[..n]);
    // SAFETY: `Event` is #[repr(C)] plain data, valid for any bits; the
    // bytes an older record lacks (the cookie, the stream start) are zero.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Writes and clears `batch` (whole lines) on standard output.
fn write_out(batch: &mut BytesMut, counters: &AgentCounters) {
    if batch.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    // stdout gone (a closed pipe): nothing better to do than log and count.
    if let Err(e) = out.write_all(batch).and_then(|()| out.flush()) {
        counters.error(Component::EventReader);
        // Some lines of the batch may be out; count them all as unprinted.
        let lines = batch.iter().filter(|b| **b == b'\n').count() as u64;
        unprinted(counters, lines);
        tracing::warn!("cannot write {lines} events to stdout: {e}");
    }
    batch.clear();
}

/// Counts `n` events read but not printed.
fn unprinted(counters: &AgentCounters, n: u64) {
    counters
        .events_unprinted
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use observer_common::{config::Addr, flow::Caller};

    use observer_common::policy::Action;

    use super::*;

    #[test]
    fn records_of_earlier_agents_read_without_a_cookie() {
        let e = Event {
            client: Addr::from_v4([198, 18, 0, 1]),
            server: Addr::from_v4([198, 18, 16, 2]),
            client_port: 40000,
            server_port: 8080,
            path: Path::ApiserverProxyToPod as u8,
            protocol: Protocol::Http as u8,
            action: Action::Block as u8,
            verdict: Verdict::Blocked as u8,
            flags: 0,
            caller: Caller {
                pid: 0,
                comm: [0; 16],
            },
            cookie: 0x1234,
            stream_start: 1001,
            _pad: 0,
        };
        // SAFETY: viewing plain data as bytes.
        let bytes: [u8; size_of::<Event>()] = unsafe { std::mem::transmute(e) };
        assert_eq!(decode(&bytes), Some(e));
        assert_eq!(
            decode(&bytes[..72]),
            Some(Event {
                stream_start: 0,
                ..e
            }),
            "the last agent's event is this one without its stream start"
        );
        assert_eq!(
            decode(&bytes[..EVENT_V1_SIZE]),
            Some(Event {
                cookie: 0,
                stream_start: 0,
                ..e
            }),
            "an earlier agent's event is this one without its cookie"
        );
        assert_eq!(decode(&bytes[..EVENT_V1_SIZE - 1]), None);
    }
}
