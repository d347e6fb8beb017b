//! Violation events: read from the kernel's ring buffer, printed as one JSON
//! object per line on standard output (README, "Events"), and handed to the
//! enforcer when a connection was blocked.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use bytes::{BufMut as _, BytesMut};
use observer_common::{
    event::{DRY_RUN, EVENT_V1_SIZE, EVENTS_BYTES, Event, HAS_PROCESS},
    path::Path,
    policy::{Action, Verdict},
    protocol::Protocol,
};
use serde::Serialize;

use crate::{
    agent_counters::{AgentCounters, Component},
    discovery::{PodIndex, PodRef},
    enforce, kube_events,
};
use tokio::io::unix::AsyncFd;

/// The JSON form of an [`Event`].
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// RFC 3339, when the agent read the event.
    pub ts: String,
    /// Always `violation`.
    pub kind: &'static str,
    /// The `path` label.
    pub path: &'static str,
    /// The `protocol` label.
    pub protocol: &'static str,
    /// `alert` or `block`, as configured.
    pub action: &'static str,
    /// What was done: `alerted` or `blocked` (`alerted` for a dry-run block).
    pub verdict: &'static str,
    /// The client, `IP:PORT`.
    pub src: String,
    /// The server, `IP:PORT`.
    pub dst: String,
    /// A `block` reported under `--dry-run`, not enforced.
    pub dry_run: bool,
    /// The client's pod, when it is a pod of this node (needs discovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<PodRef>,
    /// The server's pod, when it is a pod of this node (needs discovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<PodRef>,
    /// The client process, when the client is a process on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// What the request said about who sent it: plaintext HTTP on a
    /// summarised path only (see [`crate::heads`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::heads::Summary>,
}

/// A process on this node.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Process {
    /// Process id (as the host's /proc sees it).
    pub pid: u32,
    /// Command name (at most 15 bytes).
    pub comm: String,
}

impl Violation {
    /// Decodes a kernel event; `None` for values this build does not know.
    pub fn from_event(e: &Event, now: std::time::SystemTime) -> Option<Self> {
        // `allow` is no violation.
        let action = Action::from_u32(e.action.into()).filter(|a| *a != Action::Allow)?;
        Some(Self {
            ts: humantime::format_rfc3339_millis(now).to_string(),
            kind: "violation",
            path: Path::from_u8(e.path)?.name(),
            protocol: Protocol::from_u8(e.protocol)?.name(),
            action: action.name(),
            verdict: Verdict::from_u8(e.verdict)?.name(),
            src: SocketAddr::new(IpAddr::from(e.client), e.client_port).to_string(),
            dst: SocketAddr::new(IpAddr::from(e.server), e.server_port).to_string(),
            dry_run: e.flags & DRY_RUN != 0,
            src_pod: None,
            dst_pod: None,
            http: None,
            process: (e.flags & HAS_PROCESS != 0).then(|| Process {
                pid: e.caller.pid,
                comm: String::from_utf8_lossy(
                    e.caller.comm.split(|b| *b == 0).next().unwrap_or_default(),
                )
                .into_owned(),
            }),
        })
    }

    /// Names the pods at either end from `pods`.
    pub fn attribute(mut self, e: &Event, pods: &PodIndex) -> Self {
        let pods = pods.read().expect("lock");
        self.src_pod = pods.get(&IpAddr::from(e.client)).cloned();
        self.dst_pod = pods.get(&IpAddr::from(e.server)).cloned();
        self
    }

    /// What the enforcer resets for a blocked connection: the socket
    /// the event names.
    pub fn target(e: &Event) -> enforce::Target {
        enforce::Target {
            client: SocketAddr::new(IpAddr::from(e.client), e.client_port),
            server: SocketAddr::new(IpAddr::from(e.server), e.server_port),
            cookie: e.cookie,
            live: true,
            why: "blocked",
        }
    }
}

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

/// Prints every event until the ring buffer's fd fails, naming the pods
/// `pods` knows; hands blocked connections to the enforcer's queue, and
/// offers every violation to `publisher` (Kubernetes Events).
/// Errors on the way (stdout gone) are logged and counted in `counters`.
pub async fn run(
    ring: RingBuf<MapData>,
    blocked: enforce::Queue,
    pods: PodIndex,
    publisher: kube_events::Publisher,
    counters: Arc<AgentCounters>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it for its lifetime.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // One write per batch of events, not one per line: at thousands of
    // events a second the syscalls would be most of the agent's work.
    let mut batch = BytesMut::with_capacity(BATCH_BYTES);
    loop {
        let mut guard = fd.readable_mut().await?;
        // The tests' fault injection (compiled out of release builds).
        fail::fail_point!("event-reader", |_| Err(std::io::Error::other(
            "fail point event-reader"
        )));
        let ring = guard.get_inner_mut();
        let mut read = 0;
        while let Some(item) = ring.next() {
            read += 1;
            let Some(event) = decode(&item) else {
                tracing::warn!(len = item.len(), "short event in ring buffer EVENTS");
                unprinted(&counters, 1);
                continue;
            };
            if event.verdict == Verdict::Blocked as u8 {
                blocked.push(Violation::target(&event));
            }
            match Violation::from_event(&event, std::time::SystemTime::now()) {
                Some(v) => {
                    let v = v.attribute(&event, &pods);
                    serde_json::to_writer((&mut batch).writer(), &v)
                        .expect("a Violation serialises");
                    batch.put_u8(b'\n');
                    publisher.offer(&v);
                }
                None => {
                    tracing::warn!(?event, "event with unknown values");
                    unprinted(&counters, 1);
                }
            }
            if batch.len() >= BATCH_BYTES {
                write_out(&mut batch, &counters);
            }
        }
        write_out(&mut batch, &counters);
        guard.clear_ready();
        if read < BUSY_EVENTS {
            tokio::time::sleep(BATCH_INTERVAL).await;
        }
    }
}

/// The event in a ring buffer record: an [`Event`], or one of an earlier
/// agent's programs (a pinned ring after an upgrade), which has no cookie.
fn decode(item: &[u8]) -> Option<Event> {
    if item.len() < EVENT_V1_SIZE {
        return None;
    }
    let mut bytes = [0u8; size_of::<Event>()];
    let n = item.len().min(bytes.len());
    bytes[..n].copy_from_slice(&item[..n]);
    // SAFETY: `Event` is #[repr(C)] plain data, valid for any bits; the
    // bytes an older record lacks (the cookie) are zero.
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
        };
        // SAFETY: viewing plain data as bytes.
        let bytes: [u8; size_of::<Event>()] = unsafe { std::mem::transmute(e) };
        assert_eq!(decode(&bytes), Some(e));
        assert_eq!(
            decode(&bytes[..EVENT_V1_SIZE]),
            Some(Event { cookie: 0, ..e }),
            "an earlier agent's event is this one without its cookie"
        );
        assert_eq!(decode(&bytes[..EVENT_V1_SIZE - 1]), None);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let e = Event {
            client: Addr::from_v4([198, 18, 0, 1]),
            server: Addr([0x20, 1, 0x0d, 0xb8, 0, 0x16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            client_port: 40000,
            server_port: 8080,
            path: Path::ApiserverProxyToPod as u8,
            protocol: Protocol::Http as u8,
            action: Action::Block as u8,
            verdict: Verdict::Alerted as u8,
            flags: DRY_RUN | HAS_PROCESS,
            caller: Caller {
                pid: 4242,
                comm: *b"kube-apiserver\0\0",
            },
            cookie: 7,
        };
        let v = Violation::from_event(&e, std::time::UNIX_EPOCH).unwrap();
        let json: serde_json::Value = serde_json::to_value(&v).unwrap();
        assert_eq!(json["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["kind"], "violation");
        assert_eq!(json["path"], "apiserver-proxy-to-pod");
        assert_eq!(json["protocol"], "http");
        assert_eq!(json["action"], "block");
        assert_eq!(json["verdict"], "alerted");
        assert_eq!(json["src"], "198.18.0.1:40000");
        assert_eq!(json["dst"], "[2001:db8:16::2]:8080");
        assert_eq!(json["dry_run"], true);
        assert_eq!(
            json["process"],
            serde_json::json!({"pid": 4242, "comm": "kube-apiserver"})
        );
        assert!(
            Violation::from_event(
                &Event {
                    action: Action::Allow as u8,
                    ..e
                },
                std::time::UNIX_EPOCH
            )
            .is_none(),
            "allow is no violation"
        );
    }
}
