//! Kubernetes Events for violations on the apiserver proxy to this node's
//! pods (README, "Kubernetes Events"): `kubectl describe pod` and
//! `kubectl get events` show who reached a pod in plaintext through the
//! apiserver, next to the pod's other events.
//!
//! The event reader [`Publisher::offer`]s every violation and never waits:
//! a bounded queue feeds a task of its own, which rate-limits per pod like
//! the kubelet's event recorder and publishes through kube-rs's
//! [`Recorder`] (repeats within its cache's 6 minutes become one
//! `events.k8s.io/v1` Event whose `series.count` grows; the note stays the
//! first one's). Every event offered ends as one [`KubeEventOutcome`], counted in
//! `cp_observer_kube_events_total`; what was not published is also logged
//! (at most once a minute per outcome, with how many were not).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use observer_common::{path::Path, policy::Verdict};
use tokio::sync::mpsc;

use crate::{
    agent_counters::{AgentCounters, Component, KubeEventOutcome},
    discovery::PodRef,
    violation::Violation,
};

/// `reportingController` of the Events (`reportingInstance` is the node).
pub const REPORTER: &str = "cp-observer";

/// Events waiting for the publishing task, at most; beyond, an offer is
/// counted as [`KubeEventOutcome::QueueFull`].
pub const QUEUE: usize = 256;

/// Events about one pod published at once before the rate limit holds
/// them back: the kubelet's (client-go `tools/record`, `defaultSpamBurst`).
pub const SPAM_BURST: u32 = 25;

/// Then one more per this long, per pod: the kubelet's `defaultSpamQPS`
/// (1/300).
pub const SPAM_REFILL: Duration = Duration::from_secs(300);

/// Pods the rate limit remembers, at most (client-go's
/// `maxLruCacheEntries`); a pod forgotten has its full burst again.
const SPAM_PODS: usize = 4096;

/// An Event's `note` is at most this many bytes (the apiserver's limit).
const NOTE_BYTES: usize = 1024;

/// `reportingInstance` is at most this many bytes (the apiserver's limit).
const INSTANCE_BYTES: usize = 128;

/// How long one publication may take before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A log line about events not published is written at most this often
/// per [`KubeEventOutcome`].
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The Event a violation makes, before kube-rs's [`Event`] (which has no
/// `Debug` or `PartialEq`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The pod it is about (`regarding`).
    pub pod: PodRef,
    /// `ApiserverProxyBlocked` or `PlaintextApiserverProxy`.
    pub reason: &'static str,
    /// `Blocked` or `Alerted`.
    pub action: &'static str,
    /// A sentence for people.
    pub note: String,
}

impl Notice {
    /// The Event for `v`: only a violation on `apiserver-proxy-to-pod` whose
    /// server is a pod of this node has one.
    pub fn of(v: &Violation) -> Option<Self> {
        if v.path != Path::ApiserverProxyToPod.name() {
            return None;
        }
        let pod = v.dst_pod.clone()?;
        let (reason, action) = if v.verdict == Verdict::Blocked.name() {
            ("ApiserverProxyBlocked", "Blocked")
        } else {
            ("PlaintextApiserverProxy", "Alerted")
        };
        Some(Self {
            pod,
            reason,
            action,
            note: note(v),
        })
    }

    /// The `regarding` reference: `kubectl describe pod` finds the Event
    /// by the pod's UID.
    fn regarding(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            namespace: Some(self.pod.namespace.clone()),
            name: Some(self.pod.name.clone()),
            uid: (!self.pod.uid.is_empty()).then(|| self.pod.uid.clone()),
            ..ObjectReference::default()
        }
    }

    fn event(&self) -> Event {
        Event {
            type_: EventType::Warning,
            reason: self.reason.to_owned(),
            note: Some(self.note.clone()),
            action: self.action.to_owned(),
            secondary: None,
        }
    }
}

/// The note of `v`'s Event: what was sent to which port, and, from the
/// request head when there is one, who asked the apiserver for it. Control
/// characters (the caller wrote them) become `?`; at most [`NOTE_BYTES`].
pub fn note(v: &Violation) -> String {
    let port = v
        .dst
        .parse::<SocketAddr>()
        .map_or_else(|_| v.dst.clone(), |a| a.port().to_string());
    let start = if v.verdict == Verdict::Blocked.name() {
        "Blocked plaintext"
    } else {
        "Plaintext"
    };
    let mut s = match &v.http {
        Some(h) => {
            let mut s = format!(
                "{start} {} {} to port {port} through the apiserver proxy",
                h.method.as_deref().unwrap_or("request"),
                h.path.as_deref().unwrap_or("(no path seen)"),
            );
            // The apiserver appends its caller's address last; the rest is
            // what that caller claimed.
            if let Some((caller, claimed)) = h.forwarded_for.split_last() {
                s += &format!(", from {caller}");
                if !claimed.is_empty() {
                    s += &format!(" (forwarded for {})", claimed.join(", "));
                }
            }
            let who: Vec<&str> = [h.user_agent.as_deref(), h.kubectl_command.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            if !who.is_empty() {
                s += &format!(" ({})", who.join(", "));
            }
            if h.truncated {
                s += ", request head truncated";
            }
            s
        }
        None => {
            let from = v
                .src
                .parse::<SocketAddr>()
                .map_or_else(|_| v.src.clone(), |a| a.ip().to_string());
            format!(
                "{start} {} connection to port {port} through the apiserver proxy, from {from} (no request head seen)",
                v.protocol
            )
        }
    };
    s.push('.');
    if v.dry_run {
        s += " A block under --dry-run: not enforced.";
    }
    let mut s: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    truncate(&mut s, NOTE_BYTES);
    s
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Per-pod token buckets, as the kubelet's `EventSourceObjectSpamFilter`:
/// [`SPAM_BURST`] events at once, then one per [`SPAM_REFILL`].
#[derive(Debug, Default)]
pub struct SpamFilter {
    buckets: HashMap<PodRef, Bucket>,
}

/// Tokens left at a time.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The tokens at `now`: refilled since `at`, at most the burst.
    fn tokens_at(self, now: Instant) -> f64 {
        let refilled =
            now.saturating_duration_since(self.at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        (self.tokens + refilled).min(f64::from(SPAM_BURST))
    }
}

impl SpamFilter {
    /// Whether an event about `pod` may be published at `now` (and takes
    /// its token if so).
    pub fn allow(&mut self, pod: &PodRef, now: Instant) -> bool {
        if !self.buckets.contains_key(pod) && self.buckets.len() >= SPAM_PODS {
            self.make_room(now);
        }
        let bucket = self.buckets.entry(pod.clone()).or_insert(Bucket {
            tokens: f64::from(SPAM_BURST),
            at: now,
        });
        let tokens = bucket.tokens_at(now);
        let allowed = tokens >= 1.0;
        *bucket = Bucket {
            tokens: if allowed { tokens - 1.0 } else { tokens },
            at: now,
        };
        allowed
    }

    /// Forgets the pods whose bucket is full again (as good as new), else
    /// the one seen least recently.
    fn make_room(&mut self, now: Instant) {
        let burst = f64::from(SPAM_BURST);
        self.buckets.retain(|_, b| b.tokens_at(now) < burst);
        if self.buckets.len() >= SPAM_PODS
            && let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(p, _)| p.clone())
        {
            self.buckets.remove(&oldest);
        }
    }
}

/// Log lines about events not published: the first at once, then at most
/// one per [`LOG_EVERY`], saying how many were not logged.
#[derive(Debug, Default)]
struct LogLimit {
    last: Option<Instant>,
    unlogged: u64,
}

impl LogLimit {
    /// `Some(events not logged since the last line)` when a line may be
    /// written now.
    fn ready(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// The event reader's end: offers violations to the publishing task.
/// Cloning shares the queue.
#[derive(Clone, Debug)]
pub struct Publisher {
    queue: Option<mpsc::Sender<Notice>>,
    counters: Arc<AgentCounters>,
    full_log: Arc<Mutex<LogLimit>>,
}

impl Publisher {
    /// A publisher that publishes nothing (discovery is off: no client,
    /// no pods named).
    pub fn disabled(counters: Arc<AgentCounters>) -> Self {
        Self {
            queue: None,
            counters,
            full_log: Arc::default(),
        }
    }

    /// A publisher and the receiving end of its queue.
    fn with_queue(counters: Arc<AgentCounters>) -> (Self, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Self {
                queue: Some(tx),
                counters,
                full_log: Arc::default(),
            },
            rx,
        )
    }

    /// Queues the Event of `v`, if it has one ([`Notice::of`]); never
    /// waits. A full queue counts (and logs) the event as
    /// [`KubeEventOutcome::QueueFull`].
    pub fn offer(&self, v: &Violation) {
        let Some(queue) = &self.queue else {
            return;
        };
        let Some(notice) = Notice::of(v) else {
            return;
        };
        if let Err(e) = queue.try_send(notice) {
            self.counters.kube_event(KubeEventOutcome::QueueFull);
            let ready = self
                .full_log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .ready(Instant::now());
            if let Some(unlogged) = ready {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "its queue is full",
                    mpsc::error::TrySendError::Closed(_) => "its task is gone",
                };
                tracing::warn!(
                    "kube events: an event about a pod dropped, {why} ({unlogged} more since the last such line)"
                );
            }
        }
    }
}

/// A [`Publisher`] for this node (`node` is the Events'
/// `reportingInstance`), and the task that publishes what it offers with
/// `client`; the task ends when every publisher is dropped.
pub fn start(
    client: kube::Client,
    node: &str,
    counters: Arc<AgentCounters>,
) -> (Publisher, impl Future<Output = ()> + Send + 'static) {
    let mut instance = node.to_owned();
    truncate(&mut instance, INSTANCE_BYTES);
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: REPORTER.to_owned(),
            instance: Some(instance),
        },
    );
    let (publisher, queue) = Publisher::with_queue(counters.clone());
    (publisher, publish(queue, recorder, counters))
}

/// Publishes what arrives on `queue` until it closes.
async fn publish(
    mut queue: mpsc::Receiver<Notice>,
    recorder: Recorder,
    counters: Arc<AgentCounters>,
) {
    let mut spam = SpamFilter::default();
    let mut limited_log = LogLimit::default();
    let mut failed_log = LogLimit::default();
    while let Some(notice) = queue.recv().await {
        let now = Instant::now();
        if !spam.allow(&notice.pod, now) {
            counters.kube_event(KubeEventOutcome::RateLimited);
            if let Some(unlogged) = limited_log.ready(now) {
                tracing::info!(
                    pod = %format!("{}/{}", notice.pod.namespace, notice.pod.name),
                    "kube events: held back by the per-pod rate limit ({unlogged} more since the last such line)"
                );
            }
            continue;
        }
        let published = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            recorder.publish(&notice.event(), &notice.regarding()),
        )
        .await;
        let error = match published {
            Ok(Ok(())) => {
                counters.kube_event(KubeEventOutcome::Published);
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer in {PUBLISH_TIMEOUT:?}"),
        };
        counters.kube_event(KubeEventOutcome::Failed);
        counters.error(Component::KubeEvents);
        if let Some(unlogged) = failed_log.ready(Instant::now()) {
            tracing::warn!(
                pod = %format!("{}/{}", notice.pod.namespace, notice.pod.name),
                reason = notice.reason,
                "kube events: cannot publish: {error} ({unlogged} more failures since the last such line)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::Summary;

    fn pod(name: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn violation(verdict: Verdict, dry_run: bool, http: Option<Summary>) -> Violation {
        Violation {
            ts: String::new(),
            kind: "violation",
            path: Path::ApiserverProxyToPod.name(),
            protocol: "http",
            action: if dry_run || verdict == Verdict::Blocked {
                "block"
            } else {
                "alert"
            },
            verdict: verdict.name(),
            src: "198.18.0.1:40000".into(),
            dst: "198.18.16.2:8080".into(),
            dry_run,
            src_pod: None,
            dst_pod: Some(pod("web")),
            process: None,
            http,
        }
    }

    fn kubectl() -> Summary {
        Summary {
            method: Some("GET".into()),
            path: Some("/metrics".into()),
            user_agent: Some("kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd".into()),
            kubectl_command: Some("kubectl get".into()),
            forwarded_for: vec!["127.0.0.1".into()],
            forwarded_uri: Some("/api/v1/namespaces/default/pods/web:8080/proxy/metrics".into()),
            truncated: false,
        }
    }

    #[test]
    fn the_reason_and_action_follow_the_verdict() {
        let blocked = Notice::of(&violation(Verdict::Blocked, false, None)).unwrap();
        assert_eq!(
            (blocked.reason, blocked.action),
            ("ApiserverProxyBlocked", "Blocked")
        );
        for (verdict, dry_run) in [(Verdict::Alerted, false), (Verdict::Alerted, true)] {
            let n = Notice::of(&violation(verdict, dry_run, None)).unwrap();
            assert_eq!(
                (n.reason, n.action),
                ("PlaintextApiserverProxy", "Alerted"),
                "dry run: {dry_run}"
            );
        }
    }

    #[test]
    fn only_the_proxy_to_a_named_pod_has_an_event() {
        let mut v = violation(Verdict::Alerted, false, None);
        v.path = Path::ApiserverProxyToNode.name();
        assert_eq!(Notice::of(&v), None, "a node is not a pod");
        let mut v = violation(Verdict::Alerted, false, None);
        v.dst_pod = None;
        assert_eq!(Notice::of(&v), None, "no pod named");
        let n = Notice::of(&violation(Verdict::Alerted, false, None)).unwrap();
        let r = n.regarding();
        assert_eq!(
            (
                r.api_version.as_deref(),
                r.kind.as_deref(),
                r.namespace.as_deref(),
                r.name.as_deref(),
                r.uid.as_deref()
            ),
            (
                Some("v1"),
                Some("Pod"),
                Some("default"),
                Some("web"),
                Some("uid-web")
            )
        );
    }

    #[test]
    fn the_note_says_what_who_and_how() {
        assert_eq!(
            note(&violation(Verdict::Alerted, false, Some(kubectl()))),
            "Plaintext GET /metrics to port 8080 through the apiserver proxy, from 127.0.0.1 \
             (kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd, kubectl get)."
        );
        let mut claimed = kubectl();
        claimed.forwarded_for = vec!["203.0.113.9".into(), "10.0.0.1".into(), "127.0.0.1".into()];
        claimed.user_agent = None;
        claimed.kubectl_command = None;
        claimed.truncated = true;
        assert_eq!(
            note(&violation(Verdict::Blocked, false, Some(claimed))),
            "Blocked plaintext GET /metrics to port 8080 through the apiserver proxy, from 127.0.0.1 \
             (forwarded for 203.0.113.9, 10.0.0.1), request head truncated."
        );
        assert_eq!(
            note(&violation(Verdict::Alerted, true, None)),
            "Plaintext http connection to port 8080 through the apiserver proxy, from 198.18.0.1 \
             (no request head seen). A block under --dry-run: not enforced."
        );
    }

    #[test]
    fn the_note_is_bounded_and_has_no_control_characters() {
        let mut h = kubectl();
        h.user_agent = Some(format!("evil\u{1b}[2J\u{9b}{}", "é".repeat(600)));
        let n = note(&violation(Verdict::Alerted, false, Some(h)));
        assert!(n.len() <= NOTE_BYTES, "{} bytes", n.len());
        assert!(n.len() > NOTE_BYTES - 2, "cut at the limit: {}", n.len());
        assert!(!n.chars().any(char::is_control), "{n}");
        assert!(n.contains("evil?[2J?é"), "{n}");
    }

    #[test]
    fn the_rate_limit_is_the_kubelets_per_pod() {
        let mut f = SpamFilter::default();
        let t0 = Instant::now();
        let web = pod("web");
        for i in 0..SPAM_BURST {
            assert!(f.allow(&web, t0), "event {i} of the burst");
        }
        assert!(!f.allow(&web, t0), "the burst is spent");
        assert!(f.allow(&pod("db"), t0), "another pod has its own bucket");
        assert!(!f.allow(&web, t0 + SPAM_REFILL / 2));
        assert!(f.allow(&web, t0 + SPAM_REFILL), "one more after 5 minutes");
        assert!(!f.allow(&web, t0 + SPAM_REFILL));
        let same_name = PodRef {
            uid: "uid-web-2".into(),
            ..web.clone()
        };
        assert!(f.allow(&same_name, t0), "a new pod of the same name");
        // Refilled to the burst, no more.
        let later = t0 + SPAM_REFILL * (SPAM_BURST + 10);
        for i in 0..SPAM_BURST {
            assert!(f.allow(&web, later), "event {i} of the refilled burst");
        }
        assert!(!f.allow(&web, later));
    }

    #[test]
    fn the_rate_limit_remembers_a_bounded_number_of_pods() {
        let mut f = SpamFilter::default();
        let t0 = Instant::now();
        let web = pod("web");
        for _ in 0..SPAM_BURST {
            f.allow(&web, t0);
        }
        for i in 0..SPAM_PODS * 2 {
            f.allow(&pod(&i.to_string()), t0 + Duration::from_secs(1));
        }
        assert!(f.buckets.len() <= SPAM_PODS);
        assert!(
            f.allow(&web, t0 + Duration::from_secs(2)),
            "the least recently seen pod was forgotten"
        );
    }

    #[test]
    fn a_full_queue_is_counted_and_the_reader_never_waits() {
        let counters = Arc::new(AgentCounters::default());
        let (publisher, mut queue) = Publisher::with_queue(counters.clone());
        let v = violation(Verdict::Alerted, false, None);
        for _ in 0..QUEUE + 3 {
            publisher.offer(&v);
        }
        let mut other = violation(Verdict::Alerted, false, None);
        other.path = Path::KubeletReadOnly.name();
        publisher.offer(&other);
        assert_eq!(counters.kube_events(KubeEventOutcome::QueueFull), 3);
        assert_eq!(queue.try_recv().ok(), Notice::of(&v));
        drop(queue);
        publisher.offer(&v);
        assert_eq!(
            counters.kube_events(KubeEventOutcome::QueueFull),
            4,
            "a gone task counts too"
        );
        Publisher::disabled(counters.clone()).offer(&v);
        assert_eq!(counters.kube_events(KubeEventOutcome::QueueFull), 4);
    }

    #[test]
    fn an_apiserver_that_refuses_is_counted_and_the_rate_limit_still_holds() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let counters = Arc::new(AgentCounters::default());
        rt.block_on(async {
            // Nothing listens on port 1: every publication fails at once.
            let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
            let client = kube::Client::try_from(config).unwrap();
            let (publisher, task) = start(client, "lab-node", counters.clone());
            let v = violation(Verdict::Blocked, false, None);
            for _ in 0..SPAM_BURST + 2 {
                publisher.offer(&v);
            }
            drop(publisher);
            task.await;
        });
        assert_eq!(
            counters.kube_events(KubeEventOutcome::Failed),
            u64::from(SPAM_BURST)
        );
        assert_eq!(
            counters.errors(Component::KubeEvents),
            u64::from(SPAM_BURST)
        );
        assert_eq!(counters.kube_events(KubeEventOutcome::RateLimited), 2);
        assert_eq!(counters.kube_events(KubeEventOutcome::Published), 0);
    }

    #[test]
    fn log_lines_are_limited() {
        let mut l = LogLimit::default();
        let t0 = Instant::now();
        assert_eq!(l.ready(t0), Some(0));
        assert_eq!(l.ready(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.ready(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.ready(t0 + LOG_EVERY), Some(2));
    }
}
