//! What the agent itself counts (the kernel's counters are maps, read at
//! each scrape: `ebpf::Counters`), shared by the threads that do the
//! counting and the metrics endpoint.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use observer_common::{counters::ResetFailure, path::Path};

use crate::heads::Summary;

/// The agent's own counters.
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// Flow entries removed by the agent's expiry.
    pub flows_expired: AtomicU64,
    /// Sockets of connections destroyed (blocked ones, and ones forgotten
    /// on an enforced path).
    pub sockets_reset: AtomicU64,
    /// Connections the agent could not reset, by [`ResetFailure`].
    pub reset_errors: [AtomicU64; ResetFailure::COUNT],
    /// Errors by [`Component`] (`cp_observer_agent_errors_total`).
    errors: [AtomicU64; Component::COUNT],
    /// Violation events read from the ring buffer but not printed: a record
    /// this build cannot decode, or lines standard output refused
    /// (`cp_observer_events_unprinted_total`; each also logged).
    pub events_unprinted: AtomicU64,
    /// Connections to the metrics server closed at once because
    /// `server::MAX_CONNECTIONS` were open.
    pub metrics_connections_rejected: AtomicU64,
    /// Processes the kernel programs take for the apiserver running on
    /// this node (`APISERVER_TASKS`), a gauge
    /// (`cp_observer_local_apiserver_processes`).
    pub local_apiserver_processes: AtomicU64,
    /// Kubernetes Events by what became of them
    /// (`cp_observer_kube_events_total`).
    kube_events: [AtomicU64; KubeEventOutcome::COUNT],
    /// Violating plaintext requests summarised, by path and user agent
    /// (`cp_observer_plaintext_proxy_requests_total`).
    plaintext_requests: PlaintextRequests,
}

impl AgentCounters {
    /// Counts one error of `component`. Every caller logs it too.
    pub fn error(&self, component: Component) {
        self.errors[component as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` errors of `component` (each logged by the caller).
    pub fn errors_add(&self, component: Component, n: u64) {
        self.errors[component as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Errors of `component` so far.
    pub fn errors(&self, component: Component) -> u64 {
        self.errors[component as usize].load(Ordering::Relaxed)
    }

    /// Counts one Kubernetes Event that ended as `outcome`.
    pub fn kube_event(&self, outcome: KubeEventOutcome) {
        self.kube_events[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Kubernetes Events that ended as `outcome` so far.
    pub fn kube_events(&self, outcome: KubeEventOutcome) -> u64 {
        self.kube_events[outcome as usize].load(Ordering::Relaxed)
    }

    /// Counts one violating connection on `path` whose request head was
    /// summarised as `summary`, under its user agent's product
    /// ([`Summary::user_agent_product`]).
    pub fn plaintext_request(&self, path: Path, summary: &Summary) {
        self.plaintext_requests
            .count(path, summary.user_agent_product());
    }

    /// The counts of [`Self::plaintext_request`]: `(path, product, count)`
    /// in label order, with [`OTHER_PRODUCT`] on every summarised path
    /// (zero until counted).
    pub fn plaintext_requests(&self) -> Vec<(Path, String, u64)> {
        self.plaintext_requests.snapshot()
    }
}

/// Distinct user agent products that get a label value of their own, at
/// most: a caller chooses its `User-Agent`, and a label value per choice
/// would let it grow the agent's memory and the metrics without bound.
pub const MAX_USER_AGENT_PRODUCTS: usize = 32;

/// The label value of the products beyond [`MAX_USER_AGENT_PRODUCTS`].
pub const OTHER_PRODUCT: &str = "other";

/// Counts by (path, user agent product), with at most
/// [`MAX_USER_AGENT_PRODUCTS`] products.
#[derive(Debug, Default)]
struct PlaintextRequests(Mutex<ProductCounts>);

#[derive(Debug, Default)]
struct ProductCounts {
    counts: BTreeMap<(Path, String), u64>,
    /// The products with a label value of their own, first come.
    products: BTreeSet<String>,
}

impl PlaintextRequests {
    fn count(&self, path: Path, product: String) {
        let mut c = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = c.products.contains(&product);
        let product = if known || c.products.len() < MAX_USER_AGENT_PRODUCTS {
            if !known {
                c.products.insert(product.clone());
            }
            product
        } else {
            OTHER_PRODUCT.to_owned()
        };
        *c.counts.entry((path, product)).or_default() += 1;
    }

    fn snapshot(&self) -> Vec<(Path, String, u64)> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counts
            .clone();
        for path in Path::ALL.into_iter().filter(|p| p.summarised()) {
            counts.entry((path, OTHER_PRODUCT.to_owned())).or_default();
        }
        counts.into_iter().map(|((p, u), n)| (p, u, n)).collect()
    }
}

/// The parts of the agent that run on their own (a task or a thread) and
/// can fail: the `component` label of `cp_observer_agent_errors_total`,
/// and the names `/healthz` and the log give a dead one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// Reads the kernel's violation events, prints them, hands blocked
    /// connections to the enforcer.
    EventReader,
    /// Forwards the kernel programs' trace (`--kernel-log`).
    KernelLog,
    /// Watches the cluster and rewrites the address maps.
    Discovery,
    /// Resets blocked connections.
    Enforcer,
    /// Advances the kernel's clock and forgets idle flows.
    FlowExpiry,
    /// Checks the kubelet's serving certificate.
    KubeletCheck,
    /// Serves `/metrics` and `/healthz`.
    MetricsServer,
    /// Reads the kernel maps for a scrape.
    Metrics,
    /// Finds the processes of an apiserver running on this node.
    LocalApiserver,
    /// Publishes violations as Kubernetes Events ([`crate::kube_events`]).
    KubeEvents,
}

impl Component {
    /// Number of components.
    pub const COUNT: usize = Self::ALL.len();

    /// Every component, in label order.
    pub const ALL: [Self; 10] = [
        Self::EventReader,
        Self::KernelLog,
        Self::Discovery,
        Self::Enforcer,
        Self::FlowExpiry,
        Self::KubeletCheck,
        Self::MetricsServer,
        Self::Metrics,
        Self::LocalApiserver,
        Self::KubeEvents,
    ];

    /// The label value and the name in logs and `/healthz`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::EventReader => "event-reader",
            Self::KernelLog => "kernel-log",
            Self::Discovery => "discovery",
            Self::Enforcer => "enforcer",
            Self::FlowExpiry => "flow-expiry",
            Self::KubeletCheck => "kubelet-check",
            Self::MetricsServer => "metrics-server",
            Self::Metrics => "metrics",
            Self::LocalApiserver => "local-apiserver",
            Self::KubeEvents => "kube-events",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// `ALL` lists each variant at its own index.
const _: () = {
    let mut i = 0;
    while i < Component::COUNT {
        assert!(Component::ALL[i] as usize == i);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    fn with_agent(user_agent: &str) -> Summary {
        Summary {
            user_agent: Some(user_agent.to_owned()),
            ..Summary::default()
        }
    }

    #[test]
    fn user_agent_products_are_bounded() {
        let c = AgentCounters::default();
        let proxy = Path::ApiserverProxyToPod;
        assert_eq!(
            c.plaintext_requests().into_iter().collect::<BTreeSet<_>>(),
            BTreeSet::from([
                (Path::KubeletReadOnly, OTHER_PRODUCT.to_owned(), 0),
                (Path::ApiserverProxyToPod, OTHER_PRODUCT.to_owned(), 0),
                (Path::ApiserverProxyToNode, OTHER_PRODUCT.to_owned(), 0),
            ]),
            "every summarised path has its `other` from the start"
        );
        c.plaintext_request(proxy, &with_agent("kubectl/v1.32.4 (linux/amd64)"));
        c.plaintext_request(proxy, &Summary::default());
        for i in 0..MAX_USER_AGENT_PRODUCTS * 3 {
            c.plaintext_request(proxy, &with_agent(&format!("attacker{i}/1.0")));
        }
        // Known products keep counting under their own name.
        c.plaintext_request(Path::ApiserverProxyToNode, &with_agent("kubectl/v1.31.0"));
        let counts = c.plaintext_requests();
        let products: BTreeSet<&str> = counts.iter().map(|(_, u, _)| u.as_str()).collect();
        assert_eq!(products.len(), MAX_USER_AGENT_PRODUCTS + 1, "{products:?}");
        let get = |path: Path, product: &str| {
            counts
                .iter()
                .find(|(p, u, _)| *p == path && u == product)
                .map(|(_, _, n)| *n)
        };
        assert_eq!(get(proxy, "kubectl"), Some(1));
        assert_eq!(get(proxy, "unknown"), Some(1));
        assert_eq!(get(Path::ApiserverProxyToNode, "kubectl"), Some(1));
        assert_eq!(
            get(proxy, OTHER_PRODUCT),
            Some((MAX_USER_AGENT_PRODUCTS * 3 - (MAX_USER_AGENT_PRODUCTS - 2)) as u64)
        );
        let total: u64 = counts.iter().map(|(_, _, n)| n).sum();
        assert_eq!(total, MAX_USER_AGENT_PRODUCTS as u64 * 3 + 3, "none lost");
    }
}

/// What became of an offered event: the `result` label of
/// `cp_observer_kube_events_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeEventOutcome {
    /// The apiserver took it (a new Event, or a repeat added to one).
    Published,
    /// Held back by the per-pod rate limit ([`crate::kube_events::SPAM_BURST`], [`crate::kube_events::SPAM_REFILL`]).
    RateLimited,
    /// Dropped by the event reader: the queue to the publishing task was
    /// full ([`crate::kube_events::QUEUE`]) or the task gone.
    QueueFull,
    /// The apiserver refused it (403 without the RBAC rule) or did not
    /// answer in time; also an error of `component="kube-events"`.
    Failed,
}

impl KubeEventOutcome {
    /// Number of outcomes.
    pub const COUNT: usize = Self::ALL.len();

    /// Every outcome, in label order.
    pub const ALL: [Self; 4] = [
        Self::Published,
        Self::RateLimited,
        Self::QueueFull,
        Self::Failed,
    ];

    /// The label value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::RateLimited => "rate-limited",
            Self::QueueFull => "queue-full",
            Self::Failed => "failed",
        }
    }
}

// `ALL` lists each variant at its own index.
const _: () = {
    let mut i = 0;
    while i < KubeEventOutcome::COUNT {
        assert!(KubeEventOutcome::ALL[i] as usize == i);
        i += 1;
    }
};
