//! The agent against a large cluster: the tests' real kube-apiserver
//! (v1.20.2, on etcd) holding thousands of Nodes and Pods, all created
//! through the API (no kubelets), and the agent's discovery started on the
//! node that holds [`NODE_PODS`] of them. At each size: the time from the
//! agent's start to its complete view, its CPU and the control plane's
//! until then, its peak and steady memory, the bytes the apiserver sent to
//! the node until then and during a quiet period after, and, from the
//! apiserver's audit log, every request the agent made; none may list or
//! watch the pods or nodes of the whole cluster ([`audit::check`]).
//!
//! Creating 150,000 pods takes minutes, so the etcd data of each size is
//! cached under `~/.cache/cp-observer/bench-cluster/` (keyed by [`RECIPE`]
//! and the sizes; built in a temporary folder, renamed when complete); each
//! measurement starts etcd on a copy of it.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};

use crate::{
    bench::{
        audit,
        plot::{self, Axis, Series},
    },
    cluster::{
        agent::{Agent, cpu_time},
        kube::{ControlPlane, Options},
        netns::NetNs,
        topology::{Topology, addrs},
    },
};

/// Pods on the agent's node (the kubelet's default maximum).
pub const NODE_PODS: usize = 110;
/// Pods on every other node.
pub const PODS_PER_NODE: usize = 30;
/// One konnectivity agent pod (in `kube-system`) per this many nodes.
pub const NODES_PER_KONNECTIVITY_AGENT: usize = 100;
/// Target: at most this peak resident memory (VmHWM), MiB.
pub const MAX_RSS_MIB: f64 = 64.0;
/// Target: the complete view within this time from the agent's start.
pub const MAX_COMPLETE: Duration = Duration::from_secs(30);
/// The version of the population recipe: a change to the objects made
/// must change it, so that an old cache is never taken for a new one.
pub const RECIPE: &str = "1-kube-v1.20.2";
/// Pods created on other nodes after the quiet period, whose traffic to
/// the agent's node is counted (none should reach it).
pub const CHURN_PODS: usize = 200;
/// Writes in flight while populating.
const CONCURRENCY: usize = 64;
/// Tenant namespaces the pods are spread over.
pub const TEAMS: usize = 50;
/// How long the agent may take to its complete view before the benchmark
/// gives up.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(180);
/// The agent's node: the first.
const AGENT_NODE: usize = 0;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Cluster sizes, in nodes, ascending (the pods follow: see [`pods`]).
    pub sizes: &'static [usize],
    /// The quiet period after the complete view whose traffic is counted.
    pub quiet: Duration,
    /// Whether to keep the populated etcd data in the cache (and use it).
    pub cache: bool,
    /// Namespace tag (see [`Topology::new`]).
    pub tag: &'static str,
}

impl Plan {
    /// What `cargo xtask bench` runs: 500, 2,500 and 5,000 nodes (15,080,
    /// 75,080 and 150,080 pods).
    pub const FULL: Self = Self {
        sizes: &[500, 2500, 5000],
        quiet: Duration::from_secs(10),
        cache: true,
        tag: "scale",
    };
}

/// The name of node `i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// Pods on node `i`.
fn pods_on(i: usize) -> usize {
    if i == AGENT_NODE {
        NODE_PODS
    } else {
        PODS_PER_NODE
    }
}

/// Pods in a cluster of `nodes` nodes.
pub fn pods(nodes: usize) -> usize {
    (0..nodes).map(pods_on).sum()
}

/// Whether node `i` runs a konnectivity agent.
fn has_konnectivity_agent(i: usize) -> bool {
    i % NODES_PER_KONNECTIVITY_AGENT == 1
}

/// Konnectivity agent pods in a cluster of `nodes` nodes.
pub fn konnectivity_agents(nodes: usize) -> usize {
    (0..nodes).filter(|i| has_konnectivity_agent(*i)).count()
}

/// Node `i`'s InternalIP: the lab node's address for the agent's node.
fn node_ip(i: usize) -> IpAddr {
    if i == AGENT_NODE {
        addrs::NODE4.into()
    } else {
        [100, 64 + (i >> 8) as u8, (i & 255) as u8, 10].into()
    }
}

/// Node `i`'s pod CIDR, 10.x.y.0/24.
fn pod_cidr(i: usize) -> String {
    format!("10.{}.{}.0/24", i >> 8, i & 255)
}

/// The pods of node `i`: the first two are the node's DaemonSet pods
/// (kube-proxy and the network plugin, on the host network), the third a
/// konnectivity agent on some nodes; the rest are tenants' Deployments.
struct PodSpec {
    namespace: String,
    name: String,
    labels: serde_json::Value,
    host_network: bool,
    ip: IpAddr,
}

fn pod_spec(i: usize, j: usize) -> PodSpec {
    let node = node_name(i);
    let daemon = |app: &str| PodSpec {
        namespace: "kube-system".to_owned(),
        name: format!("{app}-{node}"),
        labels: serde_json::json!({"k8s-app": app, "controller-revision-hash": "7f9c6d5b8"}),
        host_network: true,
        ip: node_ip(i),
    };
    let ip: IpAddr = [10, (i >> 8) as u8, (i & 255) as u8, j as u8 + 2].into();
    match j {
        0 => daemon("kube-proxy"),
        1 => daemon("cni"),
        2 if has_konnectivity_agent(i) => PodSpec {
            namespace: "kube-system".to_owned(),
            name: format!("konnectivity-agent-{node}"),
            labels: serde_json::json!({"k8s-app": "konnectivity-agent", "pod-template-hash": "6b8d4f7c9"}),
            host_network: false,
            ip,
        },
        _ => {
            let n = i * NODE_PODS + j;
            let app = format!("svc-{}", n % 400);
            PodSpec {
                namespace: format!("team-{}", n % TEAMS),
                name: format!("{app}-5d9c7f8b6-{i}x{j}"),
                labels: serde_json::json!({"app": app, "pod-template-hash": "5d9c7f8b6", "tier": "backend"}),
                host_network: false,
                ip,
            }
        }
    }
}

/// A pod as a Deployment makes it (two containers, probes, resources, the
/// service account volume, the default tolerations).
fn pod_object(i: usize, p: &PodSpec) -> serde_json::Value {
    let app = p.name.rsplit_once('-').map_or(p.name.as_str(), |(a, _)| a);
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": p.name, "namespace": p.namespace, "labels": p.labels,
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-01T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": app,
                                 "uid": "0b6c2f4e-3a1d-4f8e-9c7b-5d2e1f0a9b8c", "controller": true,
                                 "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": node_name(i), "hostNetwork": p.host_network,
            "serviceAccountName": "default", "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "terminationGracePeriodSeconds": 30,
            "enableServiceLinks": true, "priority": 0,
            "containers": [
                {"name": "app", "image": format!("registry.example/{}/{app}:1.4.2", p.namespace),
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                 "env": [{"name": "LOG_LEVEL", "value": "info"},
                         {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                                    "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                 "volumeMounts": [{"name": "kube-api-access", "readOnly": true,
                                   "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                 "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                 "imagePullPolicy": "IfNotPresent"},
                {"name": "proxy", "image": "registry.example/mesh/proxy:2.1.0",
                 "args": ["--listen", ":15001", "--admin", ":15000"],
                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                 "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                 "imagePullPolicy": "IfNotPresent"}
            ],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]
        }
    })
}

/// A running pod's status (set through the status subresource: the
/// apiserver drops it on create).
fn pod_status(i: usize, p: &PodSpec) -> serde_json::Value {
    let at = "2026-11-01T10:00:05Z";
    let condition =
        |t: &str| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": at});
    let container = |name: &str, image: &str, id: usize| {
        serde_json::json!({
            "name": name, "ready": true, "started": true, "restartCount": 0, "image": image,
            "imageID": format!("{image}@sha256:{:064x}", id),
            "containerID": format!("containerd://{:064x}", id * 2 + 1),
            "state": {"running": {"startedAt": at}}, "lastState": {}
        })
    };
    let n = i * NODE_PODS + 1000;
    serde_json::json!({"status": {
        "phase": "Running", "qosClass": "Burstable", "startTime": at,
        "hostIP": node_ip(i).to_string(), "podIP": p.ip.to_string(), "podIPs": [{"ip": p.ip.to_string()}],
        "conditions": [condition("Initialized"), condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
        "containerStatuses": [container("app", "registry.example/app:1.4.2", n),
                              container("proxy", "registry.example/mesh/proxy:2.1.0", n + 1)]
    }})
}

fn node_object(i: usize) -> serde_json::Value {
    let name = node_name(i);
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "m5.2xlarge",
            "topology.kubernetes.io/region": "eu-west-1", "topology.kubernetes.io/zone": format!("eu-west-1{}", ["a", "b", "c"][i % 3])
        }},
        "spec": {"podCIDR": pod_cidr(i), "podCIDRs": [pod_cidr(i)], "providerID": format!("aws:///eu-west-1a/i-{i:017x}")}
    })
}

fn node_status(i: usize) -> serde_json::Value {
    let at = "2026-11-01T09:00:00Z";
    let condition = |t: &str, s: &str| {
        serde_json::json!({"type": t, "status": s, "reason": format!("Kubelet{t}"),
        "message": "kubelet reports it", "lastHeartbeatTime": at, "lastTransitionTime": at})
    };
    let resources = serde_json::json!({"cpu": "8", "memory": "32386208Ki", "pods": "110", "ephemeral-storage": "104845292Ki"});
    let images: Vec<serde_json::Value> = (0..8)
        .map(|k| serde_json::json!({"names": [format!("registry.example/image-{k}@sha256:{:064x}", k + 1), format!("registry.example/image-{k}:1.{k}")], "sizeBytes": 50_000_000 + k * 1_000_000}))
        .collect();
    serde_json::json!({"status": {
        "addresses": [{"type": "InternalIP", "address": node_ip(i).to_string()}, {"type": "Hostname", "address": node_name(i)}],
        "capacity": resources, "allocatable": resources,
        "conditions": [condition("MemoryPressure", "False"), condition("DiskPressure", "False"),
                       condition("PIDPressure", "False"), condition("Ready", "True")],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": format!("{i:032x}"), "systemUUID": format!("ec2{i:029x}"), "bootID": format!("{:032x}", i + 7),
                     "kernelVersion": "6.1.0-27-cloud-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                     "containerRuntimeVersion": "containerd://1.6.20", "kubeletVersion": "v1.20.2",
                     "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64"},
        "images": images
    }})
}

/// How a population went.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Population {
    /// Nodes in the cluster at its end.
    pub nodes: usize,
    /// Pods in the cluster at its end.
    pub pods: usize,
    /// Requests written (each object's create and status update, the
    /// namespaces).
    pub writes: usize,
    /// Seconds it took, stage snapshots (compaction, copies) included.
    pub seconds: f64,
    /// Seconds spent writing objects.
    pub writing_seconds: f64,
}

impl Population {
    /// Objects written a second (two writes each).
    pub fn rate(&self) -> f64 {
        self.writes as f64 / self.writing_seconds
    }
}

/// A client of the control plane, from the thread's namespace.
async fn client(cp: &ControlPlane) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", cp.kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", cp.kubeconfig.display()));
    Client::try_from(config).expect("a Kubernetes client")
}

/// Runs `f` with a client on a runtime inside the control plane's
/// namespace (where the apiserver is reachable at its address).
fn with_client<T: Send>(
    ns: &NetNs,
    cp: &ControlPlane,
    f: impl AsyncFnOnce(Client) -> T + Send,
) -> T {
    ns.run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(async { f(client(cp).await).await })
    })
}

/// One write, retried (with a growing pause) up to five times; an object
/// that already exists was made by an earlier try.
async fn write<F: AsyncFnMut() -> Result<(), kube::Error>>(
    what: &str,
    mut f: F,
) -> Result<(), String> {
    let mut pause = Duration::from_millis(100);
    for attempt in 1.. {
        match f().await {
            Ok(()) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
            Err(e) if attempt >= 5 => return Err(format!("{what}: {e}")),
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    unreachable!()
}

/// Creates `object` with `api` and sets its status.
async fn create_with_status<K>(
    api: Api<K>,
    name: String,
    object: serde_json::Value,
    status: serde_json::Value,
) -> Result<(), String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).map_err(|e| format!("{name}: {e}"))?;
    write(&name, async || {
        api.create(&PostParams::default(), &object).await.map(drop)
    })
    .await?;
    write(&name, async || {
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map(drop)
    })
    .await
}

/// Creates nodes `from..to` and their pods (and, from zero, the tenants'
/// namespaces); returns the writes made.
async fn populate(client: Client, from: usize, to: usize) -> usize {
    let mut writes = 0;
    if from == 0 {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for t in 0..TEAMS {
            let ns: Namespace = serde_json::from_value(
                serde_json::json!({"metadata": {"name": format!("team-{t}")}}),
            )
            .expect("a namespace");
            write("namespace", async || {
                namespaces
                    .create(&PostParams::default(), &ns)
                    .await
                    .map(drop)
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            writes += 1;
        }
    }
    let nodes = futures::stream::iter(from..to).map(|i| {
        create_with_status::<Node>(
            Api::all(client.clone()),
            node_name(i),
            node_object(i),
            node_status(i),
        )
    });
    nodes
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await
        .unwrap_or_else(|e| panic!("creating nodes: {e}"));
    let pods = (from..to).flat_map(|i| (0..pods_on(i)).map(move |j| (i, pod_spec(i, j))));
    create_pods(&client, pods, "pods").await;
    writes + 2 * (to - from) + 2 * (from..to).map(pods_on).sum::<usize>()
}

/// Creates [`CHURN_PODS`] pods on the nodes other than the agent's.
async fn churn(client: Client, nodes: usize) {
    let pods = (0..CHURN_PODS).map(|k| {
        let i = 1 + k % (nodes - 1).max(1);
        let p = PodSpec {
            namespace: "team-0".to_owned(),
            name: format!("churn-{k}"),
            labels: serde_json::json!({"app": "churn"}),
            host_network: false,
            ip: [10, (i >> 8) as u8, (i & 255) as u8, 200].into(),
        };
        (i, p)
    });
    create_pods(&client, pods, "churn pods").await;
}

/// Creates `pods` (each with the index of its node), then sets their
/// status, [`CONCURRENCY`] requests in flight; `what` names them in a
/// failure.
async fn create_pods(client: &Client, pods: impl Iterator<Item = (usize, PodSpec)>, what: &str) {
    futures::stream::iter(pods)
        .map(|(i, p)| {
            create_with_status::<Pod>(
                Api::namespaced(client.clone(), &p.namespace),
                p.name.clone(),
                pod_object(i, &p),
                pod_status(i, &p),
            )
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await
        .unwrap_or_else(|e| panic!("creating {what}: {e}"));
}

/// Waits until the apiserver serves the agent's reads from its watch
/// cache (`resourceVersion=0`, which waits for the cache to be filled):
/// as on a cluster that has been up for a while.
fn wait_for_caches(ns: &NetNs, cp: &ControlPlane) {
    with_client(ns, cp, async |c: Client| {
        let node = node_name(AGENT_NODE);
        let pods: Api<Pod> = Api::all(c.clone());
        pods.list(
            &ListParams::default()
                .fields(&format!("spec.nodeName={node}"))
                .match_any(),
        )
        .await
        .expect("the apiserver lists the node's pods");
        let nodes: Api<Node> = Api::all(c);
        nodes
            .list(
                &ListParams::default()
                    .fields(&format!("metadata.name={node}"))
                    .match_any(),
            )
            .await
            .expect("the apiserver lists the node");
    });
}

/// Compacts etcd's history and defragments its file (smaller copies).
fn compact_etcd(ns: &NetNs) {
    let post = |path: &str, body: &str| -> serde_json::Value {
        let out = ns.exec(&[
            "curl",
            "-sS",
            "--fail",
            "-X",
            "POST",
            &format!("http://127.0.0.1:2379{path}"),
            "-d",
            body,
        ]);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("etcd's answer to {path} is not JSON ({e})"))
    };
    let range = post("/v3/kv/range", r#"{"key":"Lw=="}"#);
    let revision = range["header"]["revision"]
        .as_str()
        .unwrap_or_else(|| panic!("no revision in {range}"))
        .to_owned();
    post(
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    );
    post("/v3/maintenance/defragment", "{}");
}

/// The cache of populated clusters: a folder per size (`nodes-N/etcd`)
/// and `population.json`.
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn new(plan: &Plan) -> Self {
        let home = std::env::var_os("HOME").expect("HOME is set");
        let sizes: Vec<String> = plan.sizes.iter().map(ToString::to_string).collect();
        Self {
            dir: PathBuf::from(home)
                .join(".cache/cp-observer/bench-cluster")
                .join(format!("{RECIPE}-{}", sizes.join("-"))),
        }
    }

    fn etcd(dir: &Path, nodes: usize) -> PathBuf {
        dir.join(format!("nodes-{nodes}")).join("etcd")
    }

    fn population(&self) -> Option<Population> {
        let text = std::fs::read_to_string(self.dir.join("population.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// Populates the cluster stage by stage (each of the plan's sizes), and
/// with the cache on, keeps a copy of etcd's data at each. Returns how it
/// went.
fn build(plan: &Plan, topo: &Topology, audit_args: &[String], into: Option<&Path>) -> Population {
    let started = Instant::now();
    let mut cp = ControlPlane::start_with(
        &topo.cp,
        Options {
            apiserver_args: audit_args.to_owned(),
            ..Options::default()
        },
    );
    let (mut from, mut writes, mut writing) = (0, 0, Duration::ZERO);
    for &to in plan.sizes {
        let t = Instant::now();
        writes += with_client(&topo.cp, &cp, async |c: Client| populate(c, from, to).await);
        writing += t.elapsed();
        eprintln!(
            "bench: populated {to} nodes, {} pods ({writes} writes in {:.0} s)",
            pods(to),
            writing.as_secs_f64()
        );
        if let Some(into) = into {
            compact_etcd(&topo.cp);
            cp.restart_all(|etcd| {
                let dest = Cache::etcd(into, to);
                std::fs::create_dir_all(dest.parent().expect("a parent")).expect("cache folder");
                crate::cluster::checked(
                    std::process::Command::new("cp")
                        .arg("-a")
                        .arg(etcd)
                        .arg(&dest),
                );
            });
        }
        from = to;
    }
    Population {
        nodes: from,
        pods: pods(from),
        writes,
        seconds: started.elapsed().as_secs_f64(),
        writing_seconds: writing.as_secs_f64(),
    }
}

/// The measurements at one size.
#[derive(Clone, Debug)]
pub struct Row {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Pods in the cluster.
    pub pods: usize,
    /// Konnectivity agent pods the view must hold.
    pub konnectivity_agents: usize,
    /// From the control plane's start (on its data) until it served the
    /// agent's reads from its watch cache.
    pub control_plane_ready: Duration,
    /// From the agent's start to its complete view.
    pub complete: Duration,
    /// The agent's CPU time (user + system) until then.
    pub agent_cpu: Duration,
    /// The apiserver's and etcd's CPU time from the agent's start until
    /// then.
    pub control_plane_cpu: Duration,
    /// The agent's peak resident memory (VmHWM) at the end, KiB.
    pub peak_rss_kib: u64,
    /// Its resident memory (VmRSS) after the quiet period, KiB.
    pub steady_rss_kib: u64,
    /// Bytes the node received from the control plane from the agent's
    /// start to its complete view.
    pub bytes_to_complete: u64,
    /// Bytes it received during the quiet period after.
    pub bytes_quiet: u64,
    /// Bytes it received while [`CHURN_PODS`] pods were created (and
    /// their status set) on the other nodes, after the quiet period.
    pub bytes_churn: u64,
    /// The agent's requests, from the audit log.
    pub requests: Vec<audit::Request>,
}

/// What the benchmark found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The plan it ran.
    pub plan: Plan,
    /// How the cluster was populated (this run, or the run that filled the
    /// cache).
    pub population: Population,
    /// Whether this run took the populated clusters from the cache.
    pub cached: bool,
    /// One row per size.
    pub rows: Vec<Row>,
    /// The whole run.
    pub elapsed: Duration,
}

/// Runs the plan: populates the clusters (or takes them from the cache),
/// then at each size starts a control plane on a copy of its data and
/// the agent on [`NODE_PODS`]' node. Panics if the agent makes a request
/// for the pods or nodes of the whole cluster.
pub fn run(plan: &Plan) -> Report {
    let started = Instant::now();
    let topo = Topology::new(plan.tag);
    let work =
        std::env::temp_dir().join(format!("cp-observer-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("a work folder");
    let _cleanup = RemoveOnDrop(work.clone());
    let policy = work.join("audit-policy.yaml");
    std::fs::write(&policy, audit::POLICY).expect("write the audit policy");
    let audit_log = work.join("audit.log");
    let audit_args = audit::apiserver_args(&policy, &audit_log);

    let cache = plan.cache.then(|| Cache::new(plan));
    let (population, cached, data) = match &cache {
        Some(cache) if cache.population().is_some() => (
            cache.population().expect("checked"),
            true,
            cache.dir.clone(),
        ),
        Some(cache) => {
            let tmp = cache
                .dir
                .with_extension(format!("tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let _partial = RemoveOnDrop(tmp.clone());
            let population = build(plan, &topo, &audit_args, Some(&tmp));
            std::fs::write(
                tmp.join("population.json"),
                serde_json::to_string(&population).expect("JSON"),
            )
            .expect("write population.json");
            let _ = std::fs::remove_dir_all(&cache.dir);
            std::fs::rename(&tmp, &cache.dir).unwrap_or_else(|e| {
                panic!(
                    "cannot rename {} to {}: {e}",
                    tmp.display(),
                    cache.dir.display()
                )
            });
            (population, false, cache.dir.clone())
        }
        None => (
            build(plan, &topo, &audit_args, Some(&work)),
            false,
            work.clone(),
        ),
    };
    let rows = plan
        .sizes
        .iter()
        .map(|&nodes| {
            measure(
                plan,
                &topo,
                &Cache::etcd(&data, nodes),
                nodes,
                &audit_args,
                &audit_log,
            )
        })
        .collect();
    Report {
        plan: plan.clone(),
        population,
        cached,
        rows,
        elapsed: started.elapsed(),
    }
}

/// One size: the control plane on a copy of `etcd`, then the agent.
fn measure(
    plan: &Plan,
    topo: &Topology,
    etcd: &Path,
    nodes: usize,
    audit_args: &[String],
    audit_log: &Path,
) -> Row {
    let _ = std::fs::remove_file(audit_log);
    let started = Instant::now();
    let cp = ControlPlane::start_with(
        &topo.cp,
        Options {
            etcd_data: Some(etcd.to_owned()),
            apiserver_args: audit_args.to_owned(),
        },
    );
    wait_for_caches(&topo.cp, &cp);
    let control_plane_ready = started.elapsed();

    let node = node_name(AGENT_NODE);
    let konnectivity = konnectivity_agents(nodes);
    let pod_ips = {
        let mut ips: Vec<IpAddr> = (0..NODE_PODS).map(|j| pod_spec(AGENT_NODE, j).ip).collect();
        ips.sort();
        ips.dedup();
        ips.len()
    };
    let args = [
        "--kubeconfig".to_owned(),
        cp.kubeconfig.display().to_string(),
        "--node-name".to_owned(),
        node.clone(),
    ];
    let cp_cpu = || cpu_time(cp.apiserver_pid()) + cpu_time(cp.etcd_pid());
    let received = || received_bytes(&topo.node, "to-cp");
    let (bytes0, cpu0) = (received(), cp_cpu());
    let t0 = Instant::now();
    let agent = Agent::start_in(Some(topo.node.name()), &args);
    let complete = crate::eventually(
        COMPLETE_TIMEOUT,
        crate::later(|| {
            format!(
                "the agent's complete view of {nodes} nodes ({konnectivity} konnectivity agents, \
                 {pod_ips} pod addresses on its node): {:?}; stderr:\n{}",
                agent.scrape().nonzero("cp_observer_discovered"),
                agent.stderr()
            )
        }),
        || {
            let m = agent.scrape();
            let found = |kind: &str| m.sum("cp_observer_discovered", &[("kind", kind)]) as usize;
            let done = ["apiservers", "vips", "node_ips", "pod_cidrs"]
                .iter()
                .all(|k| found(k) >= 1)
                && found("konnectivity_agents") == konnectivity
                && found("pods") == pod_ips;
            done.then(|| t0.elapsed())
        },
    );
    let (bytes1, cpu1, agent_cpu) = (received(), cp_cpu(), agent.usage().1);
    std::thread::sleep(plan.quiet);
    let bytes2 = received();
    let steady_rss_kib = status_kib(agent.pid(), "VmRSS:");
    with_client(&topo.cp, &cp, async |c: Client| churn(c, nodes).await);
    let bytes3 = received();
    let (peak_rss_kib, _) = agent.usage();
    agent.stop();
    drop(cp);
    let log = std::fs::read_to_string(audit_log)
        .unwrap_or_else(|e| panic!("cannot read the audit log {}: {e}", audit_log.display()));
    let requests = audit::requests_from(&log, &[addrs::NODE4.into(), addrs::NODE6.into()]);
    assert!(
        !requests.is_empty(),
        "the audit log has none of the agent's requests"
    );
    if let Err(e) = audit::check(&requests, &node) {
        panic!("{e}");
    }
    eprintln!(
        "bench: {nodes} nodes: complete view in {:.2} s, peak RSS {} KiB",
        complete.as_secs_f64(),
        peak_rss_kib
    );
    Row {
        nodes,
        pods: pods(nodes),
        konnectivity_agents: konnectivity,
        control_plane_ready,
        complete,
        agent_cpu,
        control_plane_cpu: cpu1.saturating_sub(cpu0),
        peak_rss_kib,
        steady_rss_kib,
        bytes_to_complete: bytes1 - bytes0,
        bytes_quiet: bytes2 - bytes1,
        bytes_churn: bytes3 - bytes2,
        requests,
    }
}

/// A `kB` field of /proc/PID/status.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes received on interface `dev` of namespace `ns` (its
/// /proc/thread-self/net/dev, as seen from inside).
fn received_bytes(ns: &NetNs, dev: &str) -> u64 {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
        .expect("read net/dev");
    text.lines()
        .find_map(|l| {
            let (name, counters) = l.split_once(':')?;
            (name.trim() == dev).then(|| counters.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no interface {dev} in {}:\n{text}", ns.name()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The charts [`plots`] draws, by file name: time, memory and traffic
/// against the cluster's pods.
pub const PLOTS: [&str; 3] = [
    "cluster-start.png",
    "cluster-memory.png",
    "cluster-traffic.png",
];

/// Draws the rows as [`PLOTS`] in `dir` (which must exist): one line per
/// measure, over the pods of the cluster.
pub fn plots(r: &Report, dir: &Path) -> anyhow::Result<()> {
    let line = |name: &str, y: &dyn Fn(&Row) -> f64| {
        Series::new(
            name,
            r.rows.iter().map(|row| (row.pods as f64, y(row))).collect(),
        )
    };
    let kib = |bytes: u64| bytes as f64 / 1024.0;
    let charts = [
        (
            "The agent's start against a large cluster",
            "seconds",
            vec![
                line("time to complete view", &|row| row.complete.as_secs_f64()),
                line("agent CPU until then", &|row| row.agent_cpu.as_secs_f64()),
                line("apiserver + etcd CPU until then", &|row| {
                    row.control_plane_cpu.as_secs_f64()
                }),
            ],
        ),
        (
            "The agent's memory against a large cluster",
            "MiB",
            vec![
                line("peak RSS", &|row| row.peak_rss_kib as f64 / 1024.0),
                line("steady RSS", &|row| row.steady_rss_kib as f64 / 1024.0),
            ],
        ),
        (
            "Bytes the apiserver sent to the agent's node",
            "KiB",
            vec![
                line("until the complete view", &|row| kib(row.bytes_to_complete)),
                line("during the quiet period", &|row| kib(row.bytes_quiet)),
                line("while pods were created on other nodes", &|row| {
                    kib(row.bytes_churn)
                }),
            ],
        ),
    ];
    for (file, (title, y, series)) in PLOTS.iter().zip(charts) {
        plot::lines(
            &dir.join(file),
            title,
            &Axis::log("pods in the cluster"),
            &Axis::linear(y),
            &series,
        )?;
    }
    Ok(())
}

/// The report as Markdown: the rows, the targets, the agent's requests at
/// the largest size, and links to the [`PLOTS`] in `plot_dir`.
pub fn markdown(r: &Report, plot_dir: &str) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let p = &r.population;
    let mut out = format!(
        "Populated through the API{}: {} nodes and {} pods, {} writes in {:.0} s ({:.0} writes/s, \
         {CONCURRENCY} in flight; {:.0} s with the snapshots of each size). This run took {:.0} s.\n\n",
        if r.cached {
            " by the run that filled the cache"
        } else {
            " by this run"
        },
        p.nodes,
        p.pods,
        p.writes,
        p.writing_seconds,
        p.rate(),
        p.seconds,
        r.elapsed.as_secs_f64(),
    );
    let _ = write!(
        out,
        "| nodes | pods | konnectivity agents | control plane up, s | complete view, s | agent CPU, s \
         | apiserver + etcd CPU, s | peak RSS, MiB | steady RSS, MiB | received until complete, KiB \
         | received in quiet period, B | received while {CHURN_PODS} pods were created elsewhere, B \
         | requests |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &r.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            row.nodes,
            row.pods,
            row.konnectivity_agents,
            row.control_plane_ready.as_secs_f64(),
            row.complete.as_secs_f64(),
            row.agent_cpu.as_secs_f64(),
            row.control_plane_cpu.as_secs_f64(),
            mib(row.peak_rss_kib),
            mib(row.steady_rss_kib),
            row.bytes_to_complete as f64 / 1024.0,
            row.bytes_quiet,
            row.bytes_churn,
            row.requests.len(),
        );
    }
    if let Some(last) = r.rows.last() {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let _ = write!(
            out,
            "\n| target, at {} nodes and {} pods | value | target | met |\n|---|---:|---:|---|\n\
             | agent peak RSS (VmHWM), MiB | {:.1} | ≤ {MAX_RSS_MIB} | {} |\n\
             | time to complete view, s | {:.2} | ≤ {} | {} |\n\
             | lists or watches of all pods or nodes (audit log) | 0 | 0 | yes |\n\n",
            last.nodes,
            last.pods,
            mib(last.peak_rss_kib),
            yes(mib(last.peak_rss_kib) <= MAX_RSS_MIB),
            last.complete.as_secs_f64(),
            MAX_COMPLETE.as_secs(),
            yes(last.complete <= MAX_COMPLETE),
        );
        out.push_str(&audit::markdown(&last.requests));
    }
    for file in PLOTS {
        let _ = write!(out, "\n![{file}]({plot_dir}/{file})\n");
    }
    out
}
