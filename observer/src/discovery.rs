//! Learning the cluster from the cluster (kube-rs): the apiserver endpoints
//! (the `kubernetes` Service's EndpointSlices, or its Endpoints on clusters
//! without `discovery.k8s.io/v1`), the `kubernetes` Service VIPs, this
//! node's addresses and pod CIDRs (its Node object), and the konnectivity
//! agents (pods matching `--konnectivity-selector` in
//! `--konnectivity-namespace`, whose traffic is the apiserver's). What the
//! flags give wins.
//!
//! Only what the cluster administrator controls is trusted: the objects in
//! `default` that the apiserver itself maintains, the Node, and pods in one
//! namespace (a label alone is something any tenant can put on a pod).
//!
//! Each watch keeps a kube-rs reflector store; a re-list replaces a store's
//! content when it completes, so objects deleted while a watch was away
//! leave it. A cluster that does not answer leaves the last good
//! configuration in force: watch errors are logged and counted.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Endpoints, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::Notify;

use crate::{config::Settings, ebpf::Unwritten, net::Cidr};

/// What the cluster says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// `default/kubernetes` Endpoints.
    pub apiservers: Vec<SocketAddr>,
    /// `default/kubernetes` Service cluster IPs × ports.
    pub vips: Vec<SocketAddr>,
    /// This node's InternalIP/ExternalIP addresses.
    pub node_ips: Vec<IpAddr>,
    /// This node's pod CIDRs.
    pub pod_cidrs: Vec<Cidr>,
    /// Konnectivity agent pod IPs.
    pub konnectivity_agents: Vec<IpAddr>,
}

impl Cluster {
    /// `settings` with what the flags left empty filled from the cluster:
    /// without `--control-plane`, the apiserver endpoints' hosts are the
    /// control plane, except this node's own addresses (an apiserver
    /// running on this node is recognised by its process, see
    /// [`crate::local_apiserver`]: as an address, every process of the node
    /// would be the control plane); the konnectivity agents always join it
    /// (they carry the apiserver's traffic to the node).
    pub fn fill(&self, settings: &Settings) -> Settings {
        let mut s = settings.clone();
        if s.node_ips.is_empty() {
            s.node_ips.clone_from(&self.node_ips);
        }
        if s.control_plane.is_empty() {
            let mut hosts: Vec<IpAddr> = self
                .apiservers
                .iter()
                .map(|ep| ep.ip().to_canonical())
                .filter(|ip| !s.node_ips.iter().any(|n| n.to_canonical() == *ip))
                .collect();
            hosts.sort();
            hosts.dedup();
            s.control_plane
                .extend(hosts.into_iter().map(|ip| Cidr(ipnet::IpNet::from(ip))));
        }
        if s.apiservers.is_empty() {
            s.apiservers.clone_from(&self.apiservers);
        }
        if s.apiserver_vips.is_empty() {
            s.apiserver_vips.clone_from(&self.vips);
        }
        if s.pod_cidrs.is_empty() {
            s.pod_cidrs.clone_from(&self.pod_cidrs);
        }
        s.control_plane.extend(
            self.konnectivity_agents
                .iter()
                .map(|ip| Cidr(ipnet::IpNet::from(*ip))),
        );
        s
    }
}

/// The apiserver endpoints of an Endpoints object.
pub fn endpoints_of(e: &Endpoints) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for subset in e.subsets.iter().flatten() {
        for addr in subset.addresses.iter().flatten() {
            let Ok(ip) = addr.ip.parse::<IpAddr>() else {
                continue;
            };
            for port in subset.ports.iter().flatten() {
                if let Ok(p) = u16::try_from(port.port) {
                    out.push(SocketAddr::new(ip, p));
                }
            }
        }
    }
    out
}

/// The VIPs of a Service: every cluster IP with every port.
pub fn vips_of(s: &Service) -> Vec<SocketAddr> {
    let Some(spec) = &s.spec else {
        return Vec::new();
    };
    let ips = spec
        .cluster_ips
        .clone()
        .unwrap_or_else(|| spec.cluster_ip.iter().cloned().collect());
    let ports: Vec<u16> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    ips.iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .flat_map(|ip| ports.iter().map(move |p| SocketAddr::new(ip, *p)))
        .collect()
}

/// A Node's addresses and pod CIDRs.
pub fn node_of(n: &Node) -> (Vec<IpAddr>, Vec<Cidr>) {
    let ips = n
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    let spec = n.spec.as_ref();
    let cidrs = spec
        .and_then(|s| s.pod_cidrs.clone())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    (ips, cidrs)
}

/// A pod's IPs.
/// False for a pod that has ended (`Succeeded`, `Failed`, e.g. evicted):
/// it keeps its `podIP` in the API until garbage-collected, while the
/// network plugin gives the address to another pod.
pub fn running(p: &Pod) -> bool {
    !matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub fn pod_ips(p: &Pod) -> Vec<IpAddr> {
    let Some(status) = &p.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|i| i.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|i| i.parse::<IpAddr>().ok()),
        );
    }
    ips
}

/// A pod, as events name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID: what a Kubernetes Event about it names (`kubectl describe`
    /// matches on it); not in the JSON events.
    #[serde(skip)]
    pub uid: String,
}

/// The pods of this node by IP, kept by discovery, read by the events.
pub type PodIndex = Arc<std::sync::RwLock<std::collections::HashMap<IpAddr, PodRef>>>;

/// Where discovery stands, for the metrics.
#[derive(Debug, Default)]
pub struct Status {
    /// Watch errors so far (and stale map entries that could not be removed).
    pub errors: AtomicU64,
    /// Times a new view was written to the kernel.
    pub updates: AtomicU64,
    /// Sizes of the last view, by [`Cluster::KINDS`].
    pub found: [AtomicU64; 5],
    /// Addresses of this node's pods that events can name (the size of the
    /// [`PodIndex`]).
    pub pods: AtomicU64,
    /// Entries of a view that did not fit in the kernel's maps, summed over
    /// views, by [`Unwritten::MAPS`].
    pub overflow: [AtomicU64; 2],
    /// Whether the last view is only partly in the kernel's maps.
    pub degraded: AtomicBool,
}

impl Status {
    /// Records (counts, and logs) what the kernel's maps did not take of a
    /// view.
    pub fn record(&self, unwritten: &Unwritten) {
        for ((map, shortfall), slot) in unwritten.by_map().into_iter().zip(&self.overflow) {
            slot.fetch_add(shortfall.unwritten, Ordering::Relaxed);
            self.errors.fetch_add(shortfall.stale, Ordering::Relaxed);
            if shortfall.unwritten > 0 || shortfall.stale > 0 {
                tracing::error!(
                    map,
                    unwritten = shortfall.unwritten,
                    stale = shortfall.stale,
                    error = shortfall.error.as_deref().unwrap_or(""),
                    "discovery: the cluster's view does not fit in the kernel's map: degraded \
                     (the apiserver entries are written first)"
                );
            }
        }
        self.degraded
            .store(!unwritten.is_complete(), Ordering::Relaxed);
    }
}

impl Cluster {
    /// Names of the parts of a view, for `cp_observer_discovered`.
    pub const KINDS: [&'static str; 5] = [
        "apiservers",
        "vips",
        "node_ips",
        "pod_cidrs",
        "konnectivity_agents",
    ];

    fn sizes(&self) -> [usize; 5] {
        [
            self.apiservers.len(),
            self.vips.len(),
            self.node_ips.len(),
            self.pod_cidrs.len(),
            self.konnectivity_agents.len(),
        ]
    }
}

/// Where the apiserver endpoints are read from: `discovery.k8s.io/v1`
/// EndpointSlices when the cluster serves them, else core/v1 Endpoints
/// (deprecated since Kubernetes 1.33; older clusters lack v1 slices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointSource {
    /// The EndpointSlice `default/kubernetes` (labelled
    /// `kubernetes.io/service-name=kubernetes`), which the apiserver writes.
    Slices,
    /// The `default/kubernetes` Endpoints object.
    Endpoints,
}

/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl EndpointSource {
    /// Asks the apiserver whether it serves EndpointSlices (API discovery).
    /// A 4xx answer (the group version does not exist, or this account may
    /// not read it) means Endpoints; other failures are returned.
    pub async fn detect(client: &Client) -> Result<Self, kube::Error> {
        match client.list_api_group_resources("discovery.k8s.io/v1").await {
            Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
                Ok(Self::Slices)
            }
            Ok(_) => Ok(Self::Endpoints),
            Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
                if e.code != 404 {
                    tracing::warn!(
                        "discovery: cannot read API group discovery.k8s.io/v1 ({e}): reading Endpoints"
                    );
                }
                Ok(Self::Endpoints)
            }
            Err(e) => Err(e),
        }
    }
}

/// The apiserver endpoints of the `kubernetes` Service's EndpointSlices:
/// every address of an endpoint not known to be unready, with every port
/// (FQDN slices are skipped: the kernel matches addresses). Sorted, without
/// duplicates (the same endpoint can be in two slices while they are
/// rebalanced).
pub fn endpoints_of_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let ports: Vec<u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.and_then(|p| u16::try_from(p).ok()))
            .collect();
        for endpoint in &slice.endpoints {
            // Unset means ready (the API's rule for consumers).
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for ip in endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
            {
                out.extend(ports.iter().map(|p| SocketAddr::new(ip, *p)));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A kube-rs reflector: a watch that keeps a [`Store`] of the objects it
/// selects. A re-list (after `410 Gone`, or a watch that cannot resume)
/// replaces the store's content at its end (`InitDone`), so objects
/// deleted while the watch was away leave it; until then the store keeps
/// the last complete view.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    status: &Arc<Status>,
    changed: &Arc<Notify>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let (status, changed) = (status.clone(), changed.clone());
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                // A re-list in progress: the store still holds the last
                // complete view, and swaps at `InitDone`.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) => {
                    changed.notify_one();
                }
                Err(e) => {
                    status.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "discovery: watch of {what} failed, keeping the last configuration: {e}"
                    );
                }
            }
        }
    });
    (store, task)
}

/// The stores discovery reads its view from.
struct Stores {
    apiservers: ApiserverStore,
    services: Store<Service>,
    node: Store<Node>,
    node_pods: Store<Pod>,
    konnectivity: Store<Pod>,
}

enum ApiserverStore {
    Slices(Store<EndpointSlice>),
    Endpoints(Store<Endpoints>),
}

impl Stores {
    fn cluster(&self) -> Cluster {
        let apiservers = match &self.apiservers {
            ApiserverStore::Slices(s) => endpoints_of_slices(s.state().iter().map(AsRef::as_ref)),
            ApiserverStore::Endpoints(s) => {
                let mut all: Vec<SocketAddr> =
                    s.state().iter().flat_map(|e| endpoints_of(e)).collect();
                all.sort();
                all.dedup();
                all
            }
        };
        let vips = self
            .services
            .state()
            .iter()
            .flat_map(|s| vips_of(s))
            .collect();
        let (node_ips, pod_cidrs) = self
            .node
            .state()
            .first()
            .map(|n| node_of(n))
            .unwrap_or_default();
        let mut konnectivity_agents: Vec<IpAddr> = self
            .konnectivity
            .state()
            .iter()
            .filter(|p| running(p))
            .flat_map(|p| pod_ips(p))
            .collect();
        konnectivity_agents.sort();
        konnectivity_agents.dedup();
        Cluster {
            apiservers,
            vips,
            node_ips,
            pod_cidrs,
            konnectivity_agents,
        }
    }

    /// This node's pods by IP.
    fn pod_index(&self) -> std::collections::HashMap<IpAddr, PodRef> {
        let mut index = std::collections::HashMap::new();
        for p in self.node_pods.state() {
            let r = PodRef {
                namespace: p.namespace().unwrap_or_default(),
                name: p.name_any(),
                uid: p.uid().unwrap_or_default(),
            };
            for ip in pod_ips(&p) {
                index.insert(ip, r.clone());
            }
        }
        index
    }
}

/// What to watch.
#[derive(Clone, Debug)]
pub struct Target {
    /// This node's name.
    pub node: String,
    /// Label selector of the konnectivity agent pods.
    pub konnectivity_selector: String,
    /// The one namespace the konnectivity agent pods are trusted in.
    pub konnectivity_namespace: String,
}

/// Watches the cluster and calls `apply` with every new complete view, and
/// keeps `pods_index` (this node's pods by IP) current. `apply` says what
/// did not fit in the kernel's maps; that is counted, and the status is
/// degraded until a view fits. Runs until dropped.
pub async fn run(
    client: Client,
    target: Target,
    status: Arc<Status>,
    pods_index: PodIndex,
    mut apply: impl FnMut(&Cluster) -> Unwritten + Send,
) {
    let changed = Arc::new(Notify::new());
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let source = detect_endpoint_source(&client, &status).await;
    tracing::info!(?source, "discovery: reading the apiserver endpoints");
    let mut tasks = Vec::new();
    let apiservers = match source {
        EndpointSource::Slices => {
            let (store, task) = reflect(
                Api::<EndpointSlice>::namespaced(client.clone(), "default"),
                // The one slice the apiserver writes is named after the
                // Service: a label alone is what anyone who may create
                // EndpointSlices in `default` can copy.
                by_name("kubernetes").labels(&format!("{SERVICE_NAME_LABEL}=kubernetes")),
                "EndpointSlices",
                &status,
                &changed,
            );
            tasks.push(task);
            ApiserverStore::Slices(store)
        }
        EndpointSource::Endpoints => {
            let (store, task) = reflect(
                Api::<Endpoints>::namespaced(client.clone(), "default"),
                by_name("kubernetes"),
                "Endpoints",
                &status,
                &changed,
            );
            tasks.push(task);
            ApiserverStore::Endpoints(store)
        }
    };
    let (services, task) = reflect(
        Api::<Service>::namespaced(client.clone(), "default"),
        by_name("kubernetes"),
        "Services",
        &status,
        &changed,
    );
    tasks.push(task);
    let (node, task) = reflect(
        Api::<Node>::all(client.clone()),
        by_name(&target.node),
        "Nodes",
        &status,
        &changed,
    );
    tasks.push(task);
    // This node's pods are listed from the apiserver's watch cache
    // (`resourceVersion=0`): a quorum read goes to etcd, which cannot apply
    // the field selector, so the apiserver would read and decode every pod
    // of the cluster, ~16 s of its CPU per agent start at 150,000 pods.
    // kube-rs sends `resourceVersion=0` on every list of such a watch (a
    // re-list too, which may then be older than what it replaces), and
    // only unpaged (the cache does not page anyway). Only events' pod
    // names come from here; what makes an address control plane is read
    // with quorum lists above and below, which are cheap (by name, or one
    // namespace and a label).
    let mut node_pods_config = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", target.node))
        .any_semantic();
    node_pods_config.page_size = None;
    let (node_pods, task) = reflect(
        Api::<Pod>::all(client.clone()),
        node_pods_config,
        "this node's Pods",
        &status,
        &changed,
    );
    tasks.push(task);
    // Only the administrator's namespace: a label is something any tenant
    // can put on its own pods.
    let (konnectivity, task) = reflect(
        Api::<Pod>::namespaced(client, &target.konnectivity_namespace),
        watcher::Config::default().labels(&target.konnectivity_selector),
        "konnectivity agent Pods",
        &status,
        &changed,
    );
    tasks.push(task);
    let _abort = AbortOnDrop(tasks);
    let stores = Stores {
        apiservers,
        services,
        node,
        node_pods,
        konnectivity,
    };
    let mut last: Option<Cluster> = None;
    loop {
        changed.notified().await;
        let index = stores.pod_index();
        status.pods.store(index.len() as u64, Ordering::Relaxed);
        *pods_index.write().expect("lock") = index;
        let cluster = stores.cluster();
        if last.as_ref() != Some(&cluster) {
            let unwritten = apply(&cluster);
            status.record(&unwritten);
            for (slot, n) in status.found.iter().zip(cluster.sizes()) {
                slot.store(n as u64, Ordering::Relaxed);
            }
            status.updates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(?cluster, "discovery: configuration updated");
            last = Some(cluster);
        }
    }
}

/// [`EndpointSource::detect`], asked again (with a growing pause, counted
/// as errors) until the apiserver answers.
async fn detect_endpoint_source(client: &Client, status: &Status) -> EndpointSource {
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        match EndpointSource::detect(client).await {
            Ok(source) => return source,
            Err(e) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "discovery: cannot ask the apiserver which APIs it serves, retrying in {pause:?}: {e}"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_uid_is_not_in_the_json_events() {
        let p = PodRef {
            namespace: "default".into(),
            name: "web".into(),
            uid: "7f1c".into(),
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"namespace": "default", "name": "web"})
        );
    }

    #[test]
    fn objects_to_addresses() {
        let e: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes"},
            "subsets": [{"addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}], "ports": [{"name": "https", "port": 6443}]}]
        }))
        .unwrap();
        assert_eq!(
            endpoints_of(&e),
            vec![
                "10.0.0.2:6443".parse().unwrap(),
                "10.0.0.3:6443".parse().unwrap()
            ]
        );
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes"},
            "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00:96::1"], "ports": [{"port": 443}]}
        }))
        .unwrap();
        assert_eq!(
            vips_of(&s),
            vec![
                "10.96.0.1:443".parse().unwrap(),
                "[fd00:96::1]:443".parse().unwrap()
            ]
        );
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.1.5"}, {"type": "Hostname", "address": "n1"}]}
        }))
        .unwrap();
        assert_eq!(
            node_of(&n),
            (
                vec!["10.0.1.5".parse().unwrap()],
                vec!["10.244.1.0/24".parse().unwrap()]
            )
        );
    }

    /// An evicted konnectivity agent keeps its `podIP` in the API while
    /// the address goes to another pod: it is no longer an agent.
    #[test]
    fn ended_pods_are_not_running() {
        let pod = |phase: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "konnectivity-agent-x", "namespace": "kube-system"},
                "status": {"phase": phase, "podIP": "10.244.1.7"}
            }))
            .unwrap()
        };
        assert!(running(&pod("Running")));
        assert!(running(&pod("Pending")));
        assert!(!running(&pod("Failed")));
        assert!(!running(&pod("Succeeded")));
    }

    #[test]
    fn endpoint_slices_to_addresses() {
        let slice = |v: serde_json::Value| -> EndpointSlice { serde_json::from_value(v).unwrap() };
        let v4 = slice(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.3"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"]},
                {"addresses": ["10.0.0.9"], "conditions": {"ready": false}},
                {"addresses": ["not-an-ip"]}
            ],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}, {"name": "none"}]
        }));
        let v6 = slice(serde_json::json!({
            "metadata": {"name": "kubernetes-v6"},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00::2"]}],
            "ports": [{"port": 6443}]
        }));
        let fqdn = slice(serde_json::json!({
            "metadata": {"name": "kubernetes-fqdn"},
            "addressType": "FQDN",
            "endpoints": [{"addresses": ["10.0.0.7"]}],
            "ports": [{"port": 6443}]
        }));
        // The same endpoint in two slices (a rebalance) counts once.
        assert_eq!(
            endpoints_of_slices([&v4, &v6, &fqdn, &v4]),
            vec![
                "10.0.0.2:6443".parse().unwrap(),
                "10.0.0.3:6443".parse().unwrap(),
                "[fd00::2]:6443".parse().unwrap(),
            ],
            "unready endpoints, FQDN slices and portless ports are left out"
        );
        assert_eq!(endpoints_of_slices([]), Vec::<SocketAddr>::new());
    }

    #[test]
    fn flags_win_and_konnectivity_agents_join_the_control_plane() {
        let flags = Settings::from_args(&crate::config::RunArgs {
            node_ip: vec!["192.0.2.9".parse().unwrap()],
            no_pin: true,
            ..Default::default()
        })
        .unwrap();
        let cluster = Cluster {
            apiservers: vec!["10.0.0.2:6443".parse().unwrap()],
            vips: vec!["10.96.0.1:443".parse().unwrap()],
            node_ips: vec!["10.0.1.5".parse().unwrap()],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            konnectivity_agents: vec!["10.244.1.7".parse().unwrap()],
        };
        let s = cluster.fill(&flags);
        assert_eq!(s.node_ips, flags.node_ips, "the flag wins");
        assert_eq!(s.apiservers, cluster.apiservers);
        assert_eq!(s.apiserver_vips, cluster.vips);
        assert_eq!(s.pod_cidrs, cluster.pod_cidrs);
        assert_eq!(
            s.control_plane,
            vec![
                "10.0.0.2/32".parse().unwrap(),
                "10.244.1.7/32".parse().unwrap()
            ]
        );
        let with_flag = Settings {
            control_plane: vec!["192.0.2.0/24".parse().unwrap()],
            ..flags
        };
        assert_eq!(
            cluster.fill(&with_flag).control_plane,
            vec![
                "192.0.2.0/24".parse().unwrap(),
                "10.244.1.7/32".parse().unwrap()
            ],
            "the flag wins; konnectivity agents are added"
        );
    }

    /// On a control-plane node the apiserver's endpoint is the node's own
    /// address: as control plane, every process of the node would be.
    /// The other apiservers' hosts still are.
    #[test]
    fn an_apiserver_on_this_node_does_not_make_its_address_control_plane() {
        let flags = Settings::from_args(&crate::config::RunArgs {
            no_pin: true,
            ..Default::default()
        })
        .unwrap();
        let cluster = Cluster {
            apiservers: vec![
                "10.0.1.5:6443".parse().unwrap(),
                "10.0.1.6:6443".parse().unwrap(),
            ],
            node_ips: vec!["10.0.1.5".parse().unwrap()],
            ..Cluster::default()
        };
        let s = cluster.fill(&flags);
        assert_eq!(s.control_plane, vec!["10.0.1.6/32".parse().unwrap()]);
        assert_eq!(s.apiservers, cluster.apiservers, "still the endpoints");
    }
}
