//! The shipped DaemonSet on a real node: kubelet on containerd, the bridge
//! CNI, kube-proxy, a real control plane (see `lab::node`). The same plan
//! runs with the control plane on another "machine" (its own network
//! namespace) and with the apiserver on the node itself:
//!
//! 1. both overlays become Ready from `kubectl apply -k`, with no cluster
//!    flags (discovery from the in-cluster service account);
//! 2. the apiserver's proxy to a plain-HTTP pod is
//!    `apiserver-proxy-to-pod/http`, and blocked under the enforce overlay
//!    while the pod's server never sees it; the `https:` proxy passes; the
//!    violation is in `kubectl logs` of the agent;
//! 3. `kubectl logs`, `exec` and `port-forward` are
//!    `apiserver-to-kubelet/tls`, the kubelet's own calls
//!    `node-to-apiserver/tls`, and a pod calling the `kubernetes` service
//!    through kube-proxy's DNAT `pod-to-apiserver/tls`;
//! 4. a rolling update to a second image, with plaintext proxy requests
//!    throughout: not one reaches the pod;
//! 5. `kubectl delete -k`, then the documented cleanup (`deploy/cleanup`,
//!    a DaemonSet running `cp-observer cleanup`) leave nothing of
//!    cp-observer attached or pinned.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lab::{
    cluster::{agent, manifests::repo, metrics::Metrics},
    node::{Binaries, Images, Mode, NODE_IP, Node},
};

/// Where the DaemonSet pins (deploy/base/config.toml).
const PIN_DIR: &str = "/sys/fs/bpf/cp-observer";
const PROXY_HTTP: &str = "/api/v1/namespaces/default/pods/web:8080/proxy/";
const PROXY_HTTPS: &str = "/api/v1/namespaces/default/pods/https:tls:8443/proxy/";

#[test]
fn the_daemonset_on_a_real_node_with_a_remote_control_plane() {
    plan(Mode::Remote);
}

#[test]
fn the_daemonset_on_a_control_plane_node() {
    plan(Mode::Local);
}

/// The node, taken down (and the agent's pins removed) however the test ends.
struct Up {
    node: Option<Node>,
    images: Images,
}

impl Up {
    fn new(mode: Mode) -> Self {
        let binaries = Binaries::from_env().expect("run through `cargo xtask test`");
        let images = Images::from_env().expect("run through `cargo xtask test`");
        let node = Node::up(mode, binaries, &images).unwrap_or_else(|e| panic!("node up: {e:#}"));
        Self {
            node: Some(node),
            images,
        }
    }

    fn node(&self) -> &Node {
        self.node.as_ref().expect("up")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            if std::thread::panicking() {
                eprintln!("{}\n{}", node.status(), node.agent_diagnosis());
                for daemon in ["kube-apiserver", "kubelet", "containerd"] {
                    let tail: String = node
                        .daemons()
                        .tail(daemon, 15)
                        .lines()
                        .map(|l| format!("{}\n", l.chars().take(300).collect::<String>()))
                        .collect();
                    eprintln!("--- {daemon}:\n{tail}");
                }
            }
            if let Err(e) = node.down() {
                eprintln!("node down: {e:#}");
            }
        }
        // Whatever the test left: pinned programs stay attached without
        // their agent, and would enforce on the next test's traffic.
        let _ = agent::cleanup_pins(Path::new(PIN_DIR));
    }
}

fn plan(mode: Mode) {
    let up = Up::new(mode);
    let node = up.node();
    let images = &up.images;
    start_pods(node, images);
    let repo = repo("");

    // 1. The observe overlay, discovery from the service account.
    node.deploy(&repo, "overlays/observe", &images.agent)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let agent = AgentPod::new(node);
    agent.wait_discovery();

    // 2. The proxy, observed.
    let page = node
        .kubectl_ok(&["get", "--raw", PROXY_HTTP], None)
        .expect("plain proxy passes");
    assert!(
        page.contains("cp-observer test web"),
        "the web pod's page: {page}"
    );
    agent.wait_count("apiserver-proxy-to-pod", "http", "alerted", 1);
    let page = node
        .kubectl_ok(&["get", "--raw", PROXY_HTTPS], None)
        .expect("https proxy passes");
    assert!(!page.is_empty());
    agent.wait_count("apiserver-proxy-to-pod", "tls", "allowed", 1);
    let event = agent.wait_event("apiserver-proxy-to-pod", "alert");
    assert_eq!(event["protocol"], "http", "{event}");

    // 3. The other paths.
    node_paths(node, &agent);

    // 2 again, enforced.
    node.deploy(&repo, "overlays/enforce", &images.agent)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let agent = AgentPod::new(node);
    agent.wait_discovery();
    let seen = web_requests(node);
    let out = node
        .kubectl(&["get", "--raw", PROXY_HTTP])
        .expect("kubectl runs");
    assert!(
        !out.status.success(),
        "the plain proxy request was answered under enforce"
    );
    agent.wait_count("apiserver-proxy-to-pod", "http", "blocked", 1);
    assert_eq!(
        web_requests(node),
        seen,
        "the web pod's server saw a blocked request"
    );
    node.kubectl_ok(&["get", "--raw", PROXY_HTTPS], None)
        .expect("https proxy passes under enforce");
    let event = agent.wait_event("apiserver-proxy-to-pod", "block");
    assert_eq!(event["protocol"], "http", "{event}");

    // 4. A rolling update with plaintext throughout.
    let (requests, answered) = during(
        || {
            node.deploy(&repo, "overlays/enforce", &images.agent_next)
                .unwrap_or_else(|e| panic!("{e:#}"))
        },
        || {
            node.kubectl(&["get", "--raw", PROXY_HTTP])
                .is_ok_and(|o| o.status.success())
        },
    );
    assert!(
        requests >= 5,
        "only {requests} plaintext requests during the update"
    );
    assert_eq!(
        answered, 0,
        "{answered} of {requests} plaintext requests were answered during the update"
    );
    assert_eq!(
        web_requests(node),
        seen,
        "the web pod's server saw a request during the update"
    );

    // 5. Uninstall as the README says: the overlay, then deploy/cleanup.
    node.undeploy(&repo, "overlays/enforce", &images.agent_next)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        Path::new(PIN_DIR).exists(),
        "the pins outlive the DaemonSet (by design)"
    );
    node.deploy(&repo, "cleanup", &images.agent_next)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !Path::new(PIN_DIR).exists(),
        "{PIN_DIR} remains after the cleanup DaemonSet ran"
    );
    agent::programs_settle_at(0);
    node.undeploy(&repo, "cleanup", &images.agent_next)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Without the agent, plaintext passes again: nothing was left behind.
    node.kubectl_ok(&["get", "--raw", PROXY_HTTP], None)
        .expect("plain proxy passes once cp-observer is gone");
}

/// The web pod (busybox httpd, every request logged), the TLS pod (which
/// also reaches the `kubernetes` service by name, through kube-proxy).
fn start_pods(node: &Node, images: &Images) {
    let pods = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{ name: web, namespace: default }}
spec:
  containers:
    - name: web
      image: {web}
      command: ["/bin/busybox", "httpd", "-f", "-vv", "-p", "8080", "-h", "/www"]
---
apiVersion: v1
kind: Pod
metadata: {{ name: tls, namespace: default }}
spec:
  hostAliases:
    - ip: "{vip}"
      hostnames: ["kubernetes.default.svc"]
  containers:
    - name: tls
      image: {tls}
"#,
        web = images.web,
        tls = images.tls,
        vip = lab::node::KUBERNETES_VIP,
    );
    node.kubectl_ok(&["apply", "-f", "-"], Some(&pods))
        .expect("pods created");
    node.wait(
        "the web and tls pods are Ready",
        Duration::from_secs(120),
        || {
            let out = node.kubectl_ok(
                &[
                    "get",
                    "pods",
                    "-n",
                    "default",
                    "-o",
                    "jsonpath={range .items[*]}{.status.containerStatuses[0].ready}{\" \"}{end}",
                ],
                None,
            )?;
            Ok(out.trim() == "true true")
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}",
            node.kubectl_ok(&["describe", "pods", "-n", "default"], None)
                .unwrap_or_default()
        )
    });
}

/// Requests the web pod's server logged so far.
fn web_requests(node: &Node) -> usize {
    node.kubectl_ok(&["logs", "web"], None)
        .expect("kubectl logs web")
        .lines()
        .filter(|l| l.contains("url:"))
        .count()
}

/// Paths 3: logs, exec, port-forward, the kubelet's own calls, a pod
/// calling the apiserver through the `kubernetes` VIP.
fn node_paths(node: &Node, agent: &AgentPod) {
    let before = agent.metrics().sum(
        "cp_observer_connections_total",
        &[("path", "apiserver-to-kubelet"), ("protocol", "tls")],
    );
    node.kubectl_ok(&["logs", "web"], None)
        .expect("kubectl logs");
    let out = node
        .kubectl_ok(
            &["exec", "web", "--", "/bin/busybox", "echo", "exec-ok"],
            None,
        )
        .expect("kubectl exec");
    assert_eq!(out.trim(), "exec-ok");
    port_forward(node);
    agent.wait_sum("apiserver-to-kubelet", "tls", before + 3.0);
    agent.wait_count("node-to-apiserver", "tls", "allowed", 1);
    let out = node
        .kubectl_ok(
            &["exec", "tls", "--", "sh", "-c", "echo | openssl s_client -connect kubernetes.default.svc:443 -servername kubernetes.default.svc 2>&1 | head -20"],
            None,
        )
        .expect("the pod reaches the apiserver");
    assert!(out.contains("CONNECTED"), "openssl s_client: {out}");
    agent.wait_count("pod-to-apiserver", "tls", "allowed", 1);
}

/// `kubectl port-forward` to the web pod, one request through it.
fn port_forward(node: &Node) {
    let port = agent::free_port();
    let mut child = Command::new(std::env::var_os("CP_OBSERVER_KUBECTL").expect("kubectl"))
        .arg("--kubeconfig")
        .arg(node.kubeconfig())
        .args(["port-forward", "pod/web", &format!("{port}:8080")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    let got = node.wait("port-forward answers", Duration::from_secs(30), || {
        Ok(http_get(&format!("127.0.0.1:{port}"), "/")
            .is_some_and(|b| b.contains("cp-observer test web")))
    });
    let _ = child.kill();
    let _ = child.wait();
    got.unwrap_or_else(|e| panic!("{e:#}"));
}

/// Runs `task` while `probe` runs again and again on another thread (at
/// most 2,000 times, 200 ms apart): how many probes ran, how many were true.
fn during(task: impl FnOnce(), probe: impl Fn() -> bool + Send + Sync) -> (usize, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let (mut runs, mut trues) = (0, 0);
            while !stop.load(Ordering::Relaxed) && runs < 2_000 {
                runs += 1;
                trues += usize::from(probe());
                std::thread::sleep(Duration::from_millis(200));
            }
            (runs, trues)
        });
        task();
        stop.store(true, Ordering::Relaxed);
        handle.join().expect("the probe thread")
    })
}

/// The agent's pod on the node: its metrics (on the node's address, the
/// host network) and its events (`kubectl logs`).
struct AgentPod<'a> {
    node: &'a Node,
}

impl<'a> AgentPod<'a> {
    fn new(node: &'a Node) -> Self {
        Self { node }
    }

    fn metrics(&self) -> Metrics {
        let body = http_get(&format!("{NODE_IP}:9090"), "/metrics").unwrap_or_default();
        Metrics::parse(&body)
    }

    /// Waits until discovery has seen the apiserver and this node.
    fn wait_discovery(&self) {
        self.node
            .wait(
                "the agent discovered the apiserver and the node",
                Duration::from_secs(60),
                || {
                    let m = self.metrics();
                    Ok(
                        m.sum("cp_observer_discovered", &[("kind", "apiservers")]) >= 1.0
                            && m.sum("cp_observer_discovered", &[("kind", "node_ips")]) >= 1.0
                            && m.sum("cp_observer_discovered", &[("kind", "pod_cidrs")]) >= 1.0,
                    )
                },
            )
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.node.agent_diagnosis()));
    }

    fn wait_count(&self, path: &str, protocol: &str, verdict: &str, at_least: u64) {
        let labels = [("path", path), ("protocol", protocol), ("verdict", verdict)];
        self.node
            .wait(
                &format!("{path}/{protocol} {verdict} ≥ {at_least}"),
                Duration::from_secs(30),
                || {
                    Ok(self.metrics().sum("cp_observer_connections_total", &labels)
                        >= at_least as f64)
                },
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{e:#}\nnonzero: {:?}",
                    self.metrics().nonzero("cp_observer_connections_total")
                )
            });
    }

    fn wait_sum(&self, path: &str, protocol: &str, at_least: f64) {
        let labels = [("path", path), ("protocol", protocol)];
        self.node
            .wait(
                &format!("{path}/{protocol} ≥ {at_least}"),
                Duration::from_secs(30),
                || Ok(self.metrics().sum("cp_observer_connections_total", &labels) >= at_least),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{e:#}\nnonzero: {:?}",
                    self.metrics().nonzero("cp_observer_connections_total")
                )
            });
    }

    /// The first violation event on `path` with `action`, from `kubectl logs`.
    fn wait_event(&self, path: &str, action: &str) -> serde_json::Value {
        let mut found = None;
        self.node
            .wait(
                &format!("a {action} event on {path} in kubectl logs"),
                Duration::from_secs(30),
                || {
                    let logs = self.node.kubectl_ok(
                        &[
                            "-n",
                            "cp-observer",
                            "logs",
                            "-l",
                            "app.kubernetes.io/name=cp-observer",
                            "--tail=-1",
                        ],
                        None,
                    )?;
                    found = logs
                        .lines()
                        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .find(|e| e["path"] == path && e["action"] == action);
                    Ok(found.is_some())
                },
            )
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.node.agent_diagnosis()));
        found.expect("found")
    }
}

/// GET `path` from `addr`: the body, or `None`.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}
