//! Learning the cluster from the cluster (kube-rs): the apiserver endpoints
//! (`default/kubernetes` Endpoints), the `kubernetes` Service VIPs, this
//! node's addresses and pod CIDRs (its Node object), and the konnectivity
//! agents (pods matching `--konnectivity-selector`, whose traffic is the
//! apiserver's). Watches keep it current; what the flags give wins.
//!
//! A cluster that does not answer leaves the last good configuration in
//! force: watch errors are logged and counted, and the maps are only ever
//! rewritten with a complete new view.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::Notify;

use crate::{config::Settings, net::Cidr};

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
    /// control plane; the konnectivity agents always join it (they carry
    /// the apiserver's traffic to the node).
    pub fn fill(&self, settings: &Settings) -> Settings {
        let mut s = settings.clone();
        if s.control_plane.is_empty() {
            let mut hosts: Vec<IpAddr> = self.apiservers.iter().map(SocketAddr::ip).collect();
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
        if s.node_ips.is_empty() {
            s.node_ips.clone_from(&self.node_ips);
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// The pods of this node by IP, kept by discovery, read by the events.
pub type PodIndex = Arc<std::sync::RwLock<std::collections::HashMap<IpAddr, PodRef>>>;

/// Where discovery stands, for the metrics.
#[derive(Debug, Default)]
pub struct Status {
    /// Watch errors so far.
    pub errors: AtomicU64,
    /// Times a new view was written to the kernel.
    pub updates: AtomicU64,
    /// Sizes of the last view, by [`Cluster::KINDS`].
    pub found: [AtomicU64; 5],
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

#[derive(Default)]
struct State {
    endpoints: Vec<SocketAddr>,
    vips: Vec<SocketAddr>,
    node: Option<(Vec<IpAddr>, Vec<Cidr>)>,
    konnectivity: BTreeMap<String, Vec<IpAddr>>,
}

impl State {
    fn cluster(&self) -> Cluster {
        let (node_ips, pod_cidrs) = self.node.clone().unwrap_or_default();
        let mut konnectivity_agents: Vec<IpAddr> =
            self.konnectivity.values().flatten().copied().collect();
        konnectivity_agents.sort();
        konnectivity_agents.dedup();
        Cluster {
            apiservers: self.endpoints.clone(),
            vips: self.vips.clone(),
            node_ips,
            pod_cidrs,
            konnectivity_agents,
        }
    }
}

/// What to watch.
#[derive(Clone, Debug)]
pub struct Target {
    /// This node's name.
    pub node: String,
    /// Label selector of the konnectivity agent pods.
    pub konnectivity_selector: String,
}

/// Watches the cluster and calls `apply` with every new complete view, and
/// keeps `pods_index` (this node's pods by IP) current. Runs until dropped.
pub async fn run(
    client: Client,
    target: Target,
    status: Arc<Status>,
    pods_index: PodIndex,
    mut apply: impl FnMut(&Cluster) + Send,
) {
    let state = Arc::new(Mutex::new(State::default()));
    let changed = Arc::new(Notify::new());
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));

    macro_rules! watch {
        ($api:expr, $config:expr, |$st:ident, $obj:ident, $present:ident| $body:block) => {{
            let (state, changed, status) = (state.clone(), changed.clone(), status.clone());
            let stream = watcher($api, $config).default_backoff();
            tokio::spawn(async move {
                futures::pin_mut!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Apply($obj) | watcher::Event::InitApply($obj)) => {
                            let $present = true;
                            let mut $st = state.lock().expect("lock");
                            $body
                        }
                        Ok(watcher::Event::Delete($obj)) => {
                            let $present = false;
                            let mut $st = state.lock().expect("lock");
                            $body
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            status.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                "discovery: watch failed, keeping the last configuration: {e}"
                            );
                            continue;
                        }
                    }
                    changed.notify_one();
                }
            })
        }};
    }

    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client);
    let node_pods = watcher::Config::default().fields(&format!("spec.nodeName={}", target.node));
    let index = pods_index.clone();
    let tasks = [
        watch!(endpoints, by_name("kubernetes"), |st, e, present| {
            st.endpoints = if present {
                endpoints_of(&e)
            } else {
                Vec::new()
            };
        }),
        watch!(services, by_name("kubernetes"), |st, s, present| {
            st.vips = if present { vips_of(&s) } else { Vec::new() };
        }),
        watch!(nodes, by_name(&target.node), |st, n, present| {
            st.node = present.then(|| node_of(&n));
        }),
        watch!(pods.clone(), node_pods, |_st, p, present| {
            let r = PodRef {
                namespace: p.namespace().unwrap_or_default(),
                name: p.name_any(),
            };
            let mut index = index.write().expect("lock");
            index.retain(|_, v| *v != r);
            if present {
                for ip in pod_ips(&p) {
                    index.insert(ip, r.clone());
                }
            }
        }),
        watch!(
            pods,
            watcher::Config::default().labels(&target.konnectivity_selector),
            |st, p, present| {
                let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
                if present {
                    st.konnectivity.insert(key, pod_ips(&p));
                } else {
                    st.konnectivity.remove(&key);
                }
            }
        ),
    ];
    let _abort = AbortOnDrop(tasks.into_iter().collect());
    let mut last: Option<Cluster> = None;
    loop {
        changed.notified().await;
        let cluster = state.lock().expect("lock").cluster();
        if last.as_ref() != Some(&cluster) {
            apply(&cluster);
            for (slot, n) in status.found.iter().zip(cluster.sizes()) {
                slot.store(n as u64, Ordering::Relaxed);
            }
            status.updates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(?cluster, "discovery: configuration updated");
            last = Some(cluster);
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
}
