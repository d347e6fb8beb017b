//! End to end against a real kube-apiserver (built from Debian's source
//! package by `cargo xtask test`), running in the lab's control-plane
//! namespace: the connections it makes for `kubectl get --raw .../proxy/`
//! are the ones the Kubernetes page describes. Needs root.

use std::time::{Duration, Instant};

use lab::{
    cluster::agent::Agent,
    cluster::kube::{ControlPlane, NODE},
    cluster::metrics::Metrics,
    cluster::scenario::Lab,
    cluster::topology::{Topology, addrs},
    eventually, later,
};

const C: &str = "cp_observer_connections_total";

fn grew(before: &Metrics, after: &Metrics, labels: &[(&str, &str)]) -> f64 {
    after.sum(C, labels) - before.sum(C, labels)
}

#[test]
fn the_apiserver_proxies_plaintext_to_pods_and_tls_to_the_kubelet() {
    let lab = Lab::for_real_control_plane("t-kube");
    let cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    let agent = Agent::start(&Topology::agent_args());
    let before = agent.scrape();

    let body = cp.get_raw("/api/v1/namespaces/default/pods/web:8080/proxy/");
    assert!(
        body.contains("hello from the lab pod"),
        "the apiserver reached the pod: {body}"
    );
    let body = cp.get_raw(&format!("/api/v1/nodes/{NODE}:10250/proxy/healthz"));
    assert!(
        body.contains("hello from the lab pod"),
        "the apiserver reached the kubelet: {body}"
    );

    let after = agent.scrape();
    let proxy = [
        ("path", "apiserver-proxy-to-pod"),
        ("protocol", "http"),
        ("verdict", "alerted"),
    ];
    let kubelet = [
        ("path", "apiserver-to-kubelet"),
        ("protocol", "tls"),
        ("verdict", "allowed"),
    ];
    assert_eq!(grew(&before, &after, &proxy), 1.0, "{:?}", after.nonzero(C));
    assert_eq!(
        grew(&before, &after, &kubelet),
        1.0,
        "{:?}",
        after.nonzero(C)
    );
    assert_eq!(
        grew(&before, &after, &[]),
        2.0,
        "kubectl→apiserver and apiserver→etcd are on no path"
    );
    assert_eq!(lab.server(8080).requests().len(), 1);
}

#[test]
fn a_blocked_proxy_request_fails_promptly_and_never_reaches_the_pod() {
    let lab = Lab::for_real_control_plane("t-kblock");
    let cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    let mut args = Topology::agent_args();
    args.extend([
        "--policy".to_owned(),
        "apiserver-proxy-to-pod:plaintext=block".to_owned(),
    ]);
    let agent = Agent::start(&args);

    let start = Instant::now();
    let out = cp.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/web:8080/proxy/",
    ]);
    let took = start.elapsed();
    assert!(
        !out.status.success(),
        "the proxied plaintext request must fail"
    );
    assert!(
        took < Duration::from_secs(5),
        "it failed after {took:?}, not at once"
    );
    assert_eq!(
        lab.server(8080).requests(),
        Vec::<String>::new(),
        "the pod never saw the request"
    );

    // The apiserver's TLS proxy to the pod (`https:` scheme prefix) passes.
    let body = cp.get_raw("/api/v1/namespaces/default/pods/https:web:8443/proxy/");
    assert!(body.contains("hello from the lab pod"), "{body}");

    let m = agent.scrape();
    assert_eq!(
        m.sum(
            C,
            &[
                ("path", "apiserver-proxy-to-pod"),
                ("protocol", "http"),
                ("verdict", "blocked")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            C,
            &[
                ("path", "apiserver-proxy-to-pod"),
                ("protocol", "tls"),
                ("verdict", "allowed")
            ]
        ),
        1.0
    );
}

/// kubectl on the node asks the apiserver to proxy a plaintext request to
/// the pod, with a secret in its query: the violation names kubectl, its
/// command, the node's address (the apiserver's `X-Forwarded-For`) and the
/// apiserver endpoint used, and never the query.
fn a_proxied_request_names_its_caller(tag: &str, policy: Option<&str>) -> serde_json::Value {
    let lab = Lab::for_real_control_plane(tag);
    let cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    let mut args = Topology::agent_args();
    args.extend(
        policy
            .map(|p| ["--policy".to_owned(), p.to_owned()])
            .into_iter()
            .flatten(),
    );
    let agent = Agent::start(&args);
    let out = cp.kubectl_from(
        &lab.topo.node,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/web:8080/proxy/metrics?token=secret",
        ],
    );
    assert_eq!(out.status.success(), policy.is_none(), "{out:?}");
    let line = eventually(Duration::from_secs(10), "the violation is printed", || {
        agent
            .stdout_lines()
            .into_iter()
            .find(|l| l.contains("apiserver-proxy-to-pod"))
    });
    assert!(!line.contains("secret"), "the query never shows: {line}");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let http = &v["http"];
    assert!(
        http["user_agent"]
            .as_str()
            .is_some_and(|ua| ua.starts_with("kubectl/v")),
        "{v}"
    );
    assert_eq!(
        serde_json::json!({
            "method": http["method"],
            "path": http["path"],
            "kubectl_command": http["kubectl_command"],
            "forwarded_for": http["forwarded_for"],
            "forwarded_uri": http["forwarded_uri"],
            "truncated": http["truncated"],
        }),
        serde_json::json!({
            "method": "GET",
            "path": "/metrics",
            "kubectl_command": "kubectl get",
            "forwarded_for": [addrs::NODE4.to_string()],
            "forwarded_uri": "/api/v1/namespaces/default/pods/web:8080/proxy/metrics",
            "truncated": false,
        }),
        "{v}"
    );
    v
}

#[test]
fn an_alerted_proxy_request_names_its_caller() {
    let v = a_proxied_request_names_its_caller("t-kwho", None);
    assert_eq!(v["verdict"], "alerted");
}

#[test]
fn a_blocked_proxy_request_names_its_caller() {
    let v = a_proxied_request_names_its_caller(
        "t-kwhob",
        Some("apiserver-proxy-to-pod:plaintext=block"),
    );
    assert_eq!(v["verdict"], "blocked");
}

/// With `--kubeconfig` and `--node-name` only, the agent learns the
/// control plane, the apiserver endpoint, the VIP, the node's addresses and
/// pod CIDRs from the real apiserver, and classifies with them; it treats
/// the konnectivity agent pods as control plane, and names pods in events.
#[test]
fn discovery_learns_the_cluster_from_the_real_apiserver() {
    let lab = Lab::for_real_control_plane("t-disco");
    let cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    let agent_ip = cp.add_konnectivity_agent(&lab.topo.pod);
    let agent = Agent::start_in(Some(lab.topo.node.name()), &cp.discovery_args());
    agent.wait_for_complete_discovery();
    let before = agent.scrape();

    // The apiserver's proxy (control plane from the endpoints, pod from the
    // node's pod CIDR).
    let body = cp.get_raw("/api/v1/namespaces/default/pods/web:8080/proxy/");
    assert!(body.contains("hello from the lab pod"));
    // The node dialling the apiserver endpoint, and a pod dialling the VIP
    // (a bare listener answers there: only connections whose handshake
    // completes are counted).
    use lab::{cluster::topology::addrs, traffic};
    let endpoint = std::net::SocketAddr::new(addrs::CP4.into(), addrs::APISERVER_PORT);
    let vip = std::net::SocketAddr::new(addrs::VIP4.into(), addrs::VIP_PORT);
    let _vip = lab
        .topo
        .cp
        .run(move || std::net::TcpListener::bind(vip).expect("bind the VIP"));
    traffic::connect_close(&lab.topo.node, endpoint).expect("the node reaches the apiserver");
    traffic::connect_close(&lab.topo.pod, vip).expect("the pod reaches the VIP");

    // The konnectivity agent calls the kubelet on the apiserver's behalf.
    let kubelet = std::net::SocketAddr::new(addrs::NODE4.into(), 10250);
    traffic::connect_close_from(&lab.topo.pod, agent_ip, kubelet)
        .expect("the agent reaches the kubelet");

    let after = agent.scrape();
    assert_eq!(
        grew(
            &before,
            &after,
            &[("path", "apiserver-to-kubelet"), ("protocol", "none")]
        ),
        1.0,
        "konnectivity agent traffic counts as the control plane's"
    );
    let event = eventually(
        Duration::from_secs(5),
        "the plaintext proxy request is alerted",
        || {
            agent
                .stdout_lines()
                .into_iter()
                .find(|l| l.contains("apiserver-proxy-to-pod"))
        },
    );
    let event: serde_json::Value = serde_json::from_str(&event).expect("JSON");
    assert_eq!(
        event["dst_pod"],
        serde_json::json!({"namespace": "default", "name": "web"}),
        "{event}"
    );
    let proxy = [("path", "apiserver-proxy-to-pod"), ("protocol", "http")];
    assert_eq!(
        grew(&before, &after, &proxy),
        1.0,
        "{:?}\n{}",
        after.nonzero(C),
        agent.stderr()
    );
    assert_eq!(
        grew(
            &before,
            &after,
            &[("path", "node-to-apiserver"), ("protocol", "none")]
        ),
        1.0,
        "the endpoint was learned"
    );
    assert_eq!(
        grew(
            &before,
            &after,
            &[("path", "pod-to-apiserver"), ("protocol", "none")]
        ),
        1.0,
        "the VIP was learned"
    );
    assert_eq!(after.sum("cp_observer_discovery_errors_total", &[]), 0.0);
    // Kubernetes 1.20 has no discovery.k8s.io/v1: the fallback is in use.
    assert!(
        agent
            .stderr()
            .contains("reading the apiserver endpoints source=Endpoints"),
        "{}",
        agent.stderr()
    );
}

/// When the apiserver stops answering, the agent keeps the configuration it
/// learned (classification goes on), reports the failed watches, and does
/// not crash.
#[test]
fn a_silent_apiserver_leaves_the_last_configuration_in_force() {
    let lab = Lab::for_real_control_plane("t-silent");
    let mut cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    let agent_ip = cp.add_konnectivity_agent(&lab.topo.pod);
    let agent = Agent::start_in(Some(lab.topo.node.name()), &cp.discovery_args());
    agent.wait_for_complete_discovery();

    cp.stop_apiserver();
    let what = later(|| {
        format!(
            "the failing watches are reported; stderr:\n{}",
            agent.stderr()
        )
    });
    eventually(Duration::from_secs(30), what, || {
        agent
            .scrape()
            .sum("cp_observer_discovery_errors_total", &[])
            >= 1.0
    });
    let before = agent.scrape();
    use lab::{cluster::topology::addrs, traffic};
    let kubelet = std::net::SocketAddr::new(addrs::NODE4.into(), 10250);
    traffic::connect_close_from(&lab.topo.pod, agent_ip, kubelet)
        .expect("the konnectivity agent reaches the kubelet");
    let after = agent.scrape();
    assert_eq!(
        grew(&before, &after, &[("path", "apiserver-to-kubelet")]),
        1.0,
        "the learned configuration (konnectivity agent as control plane) is still in force"
    );
    assert_eq!(
        agent.get("/healthz").map(|(c, _)| c),
        Some(200),
        "the agent is alive"
    );
}

/// Two more addresses of the lab pod's namespace, for pods the tests add.
const SECOND_POD4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 16, 4);
const THIRD_POD4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 16, 5);

/// Adds `ip` to the lab pod's interface.
fn add_pod_address(lab: &Lab, ip: std::net::Ipv4Addr) {
    lab.topo
        .pod
        .ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
}

/// `cp_observer_connections_total{path="apiserver-to-kubelet"}` grown by a
/// connection from `from` (an address of the lab pod) to the kubelet.
fn kubelet_connection_from(lab: &Lab, agent: &Agent, from: std::net::IpAddr) -> f64 {
    use lab::{cluster::topology::addrs, traffic};
    let kubelet = std::net::SocketAddr::new(addrs::NODE4.into(), 10250);
    let before = agent.scrape();
    traffic::connect_close_from(&lab.topo.pod, from, kubelet)
        .unwrap_or_else(|e| panic!("{from} reaches the kubelet: {e}"));
    grew(
        &before,
        &agent.scrape(),
        &[("path", "apiserver-to-kubelet")],
    )
}

/// Only the cluster administrator's namespace is trusted: a pod any tenant
/// can create with the konnectivity agents' label in its own namespace is
/// not control plane, nor is the node whose address a host-network one
/// reports; the same label in `kube-system` is.
#[test]
fn a_tenant_pod_with_the_konnectivity_label_is_not_control_plane() {
    use lab::{cluster::topology::addrs, traffic};
    let lab = Lab::for_real_control_plane("t-ktenant");
    let cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    cp.create_namespace("tenant");
    add_pod_address(&lab, SECOND_POD4);
    let label = "k8s-app=konnectivity-agent";
    cp.create_pod(
        "tenant",
        "konnectivity-agent-fake",
        label,
        SECOND_POD4.into(),
    );
    cp.create_pod_with(
        "tenant",
        "konnectivity-agent-host",
        label,
        addrs::NODE4.into(),
        true,
    );
    let agent_ip = cp.add_konnectivity_agent(&lab.topo.pod);
    let agent = Agent::start_in(Some(lab.topo.node.name()), &cp.discovery_args());
    agent.wait_for_complete_discovery();

    assert_eq!(
        kubelet_connection_from(&lab, &agent, agent_ip),
        1.0,
        "the kube-system konnectivity agent is control plane; stderr:\n{}",
        agent.stderr()
    );
    assert_eq!(
        kubelet_connection_from(&lab, &agent, SECOND_POD4.into()),
        0.0,
        "a tenant's pod with the konnectivity label is control plane"
    );
    let before = agent.scrape();
    let web = std::net::SocketAddr::new(addrs::POD4.into(), 8080);
    traffic::connect_close(&lab.topo.node, web).expect("the node reaches the pod");
    let after = agent.scrape();
    assert_eq!(
        grew(&before, &after, &[("path", "apiserver-proxy-to-pod")]),
        0.0,
        "a tenant's host-network pod with the konnectivity label made the node control plane: {:?}",
        after.nonzero(C)
    );
    assert_eq!(
        after.sum("cp_observer_discovered", &[("kind", "konnectivity_agents")]),
        1.0
    );
}

/// A watch that comes back after an outage long enough for the apiserver to
/// have forgotten where it was (here: restarted while the agent was cut
/// off) lists again; the list replaces what the agent knew, so a
/// konnectivity agent deleted meanwhile is no longer control plane.
#[test]
fn a_relist_forgets_pods_deleted_while_the_watch_was_cut() {
    use lab::cluster::topology::addrs;
    let lab = Lab::for_real_control_plane("t-relist");
    let mut cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    let label = "k8s-app=konnectivity-agent";
    let kept = cp.add_konnectivity_agent(&lab.topo.pod);
    add_pod_address(&lab, SECOND_POD4);
    add_pod_address(&lab, THIRD_POD4);
    cp.create_pod(
        "kube-system",
        "konnectivity-agent-gone",
        label,
        SECOND_POD4.into(),
    );
    let agent = Agent::start_in(Some(lab.topo.node.name()), &cp.discovery_args());
    agent.wait_for_complete_discovery();
    eventually(
        Duration::from_secs(30),
        "both konnectivity agents are discovered",
        || {
            agent
                .scrape()
                .sum("cp_observer_discovered", &[("kind", "konnectivity_agents")])
                == 2.0
        },
    );
    assert_eq!(
        kubelet_connection_from(&lab, &agent, SECOND_POD4.into()),
        1.0
    );

    // Cut the agent off: no route from the node to the apiserver, and its
    // open watches destroyed.
    let errors = agent
        .scrape()
        .sum("cp_observer_discovery_errors_total", &[]);
    let route = format!("{}/32", addrs::CP4);
    lab.topo.node.ip(&["route", "add", "prohibit", &route]);
    let killed = std::process::Command::new("ip")
        .args(["netns", "exec", lab.topo.node.name(), "ss", "-K", "dst"])
        .arg(addrs::CP4.to_string())
        .args(["dport", "=", &addrs::APISERVER_PORT.to_string()])
        .output()
        .expect("ss runs");
    assert!(killed.status.success(), "ss -K: {killed:?}");
    eventually(
        Duration::from_secs(30),
        "the agent reports its failing watches",
        || {
            agent
                .scrape()
                .sum("cp_observer_discovery_errors_total", &[])
                > errors
        },
    );
    cp.delete_pod("kube-system", "konnectivity-agent-gone");
    cp.create_pod(
        "kube-system",
        "konnectivity-agent-new",
        label,
        THIRD_POD4.into(),
    );
    cp.restart_apiserver();
    lab.topo.node.ip(&["route", "del", "prohibit", &route]);

    // The agent is back and listed again when it knows the new pod.
    let what = later(|| {
        format!(
            "the agent learns the pod created during the cut; stderr:\n{}",
            agent.stderr()
        )
    });
    eventually(Duration::from_secs(90), what, || {
        kubelet_connection_from(&lab, &agent, THIRD_POD4.into()) == 1.0
    });
    assert_eq!(
        kubelet_connection_from(&lab, &agent, SECOND_POD4.into()),
        0.0,
        "a konnectivity agent deleted during the cut is still control plane"
    );
    assert_eq!(kubelet_connection_from(&lab, &agent, kept), 1.0);
    assert_eq!(
        agent
            .scrape()
            .sum("cp_observer_discovered", &[("kind", "konnectivity_agents")]),
        2.0
    );
}

/// A restart while the apiserver is unreachable: the new agent's programs
/// replace the old ones at once, and their address maps start from the
/// flags alone, which here name nothing (discovery only, as the shipped
/// DaemonSet runs). The previous agent's view, discovery's, is carried
/// over, so the proxy path stays enforced until the new agent's discovery
/// reaches the apiserver. Before, plaintext from the control plane reached
/// the pod from the moment of the swap until then.
#[test]
fn a_restart_keeps_the_learned_addresses_until_discovery_is_back() {
    const PIN_DIR: &str = "/sys/fs/bpf/cp-observer-test-carry";
    let cleanup = || lab::cluster::agent::cleanup_pins(std::path::Path::new(PIN_DIR));
    let _ = cleanup(); // a killed earlier run
    let lab = Lab::for_real_control_plane("t-carry");
    let mut cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    cp.add_konnectivity_agent(&lab.topo.pod);
    let mut args = cp.discovery_args();
    args.extend(
        [
            "--policy",
            "apiserver-proxy-to-pod:plaintext=block",
            "--pin-dir",
            PIN_DIR,
        ]
        .map(str::to_owned),
    );
    let first = Agent::start_in(Some(lab.topo.node.name()), &args);
    first.wait_for_complete_discovery();
    cp.stop_apiserver();
    first.stop();

    let second = Agent::start_in(Some(lab.topo.node.name()), &args);
    use lab::{
        cluster::scenario::Where,
        cluster::topology::addrs,
        traffic::{self, is_reset},
    };
    let pod = std::net::SocketAddr::new(addrs::POD4.into(), 8080);
    let plain = traffic::http_get(lab.ns(Where::ControlPlane), pod);
    assert!(
        plain.as_ref().is_err_and(is_reset),
        "plaintext from the control plane to the pod is still blocked: {plain:?}"
    );
    assert_eq!(
        lab.server(8080).requests(),
        Vec::<String>::new(),
        "the pod never saw the request"
    );
    let m = second.scrape();
    assert_eq!(
        m.sum(
            C,
            &[
                ("path", "apiserver-proxy-to-pod"),
                ("protocol", "http"),
                ("verdict", "blocked")
            ]
        ),
        1.0
    );
    drop(second);
    let out = cleanup();
    assert!(out.status.success(), "cleanup: {out:?}");
}

/// The proxied request of the Kubernetes Events tests: a query string
/// that must never be shown.
const PROXIED_METRICS: &str = "/api/v1/namespaces/default/pods/web:8080/proxy/metrics?token=secret";

/// The `events.k8s.io/v1` Events in `default` regarding the pod `web`.
fn events_about_web(cp: &ControlPlane) -> Vec<serde_json::Value> {
    let out = cp.kubectl_ok(
        &[
            "-n",
            "default",
            "get",
            "events.v1.events.k8s.io",
            "-o",
            "json",
        ],
        None,
    );
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["regarding"]["kind"] == "Pod" && e["regarding"]["name"] == "web")
        .cloned()
        .collect()
}

/// With discovery, plaintext through the apiserver proxy to a pod of this
/// node is a Warning Event on that pod: three requests are one Event
/// (kube-rs's Recorder: created, then patched with `series.count`), which
/// `kubectl describe pod` shows (it finds Events by the pod's UID). The
/// query string is not in it.
#[test]
fn plaintext_through_the_proxy_is_an_event_on_the_pod() {
    let lab = Lab::for_real_control_plane("t-kevent");
    let cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    cp.add_konnectivity_agent(&lab.topo.pod);
    let agent = Agent::start_in(Some(lab.topo.node.name()), &cp.discovery_args());
    agent.wait_for_complete_discovery();

    for _ in 0..3 {
        let body = cp.get_raw(PROXIED_METRICS);
        assert!(body.contains("hello from the lab pod"), "{body}");
    }
    let published = || {
        agent
            .scrape()
            .sum("cp_observer_kube_events_total", &[("result", "published")])
    };
    let what = later(|| {
        format!(
            "3 events published (now {}); stderr:\n{}",
            published(),
            agent.stderr()
        )
    });
    eventually(Duration::from_secs(15), what, || published() == 3.0);
    let m = agent.scrape();
    for result in ["rate-limited", "queue-full", "failed"] {
        assert_eq!(
            m.sum("cp_observer_kube_events_total", &[("result", result)]),
            0.0,
            "{result}"
        );
    }

    let events = events_about_web(&cp);
    assert_eq!(
        events.len(),
        1,
        "one Event, repeats aggregated: {events:#?}"
    );
    let e = &events[0];
    let uid = cp.kubectl_ok(
        &[
            "-n",
            "default",
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );
    assert_eq!(e["type"], "Warning", "{e:#}");
    assert_eq!(e["reason"], "PlaintextApiserverProxy", "{e:#}");
    assert_eq!(e["action"], "Alerted", "{e:#}");
    assert_eq!(e["series"]["count"], 3, "{e:#}");
    assert_eq!(e["regarding"]["apiVersion"], "v1", "{e:#}");
    assert_eq!(e["regarding"]["namespace"], "default", "{e:#}");
    assert_eq!(e["regarding"]["uid"], uid.trim(), "{e:#}");
    assert_eq!(e["reportingController"], "cp-observer", "{e:#}");
    assert_eq!(e["reportingInstance"], lab::cluster::kube::NODE, "{e:#}");
    let note = e["note"].as_str().expect("a note");
    // kubectl runs in the control-plane namespace: the apiserver names
    // that address as its caller.
    assert!(
        note.starts_with(&format!(
            "Plaintext GET /metrics to port 8080 through the apiserver proxy, from {} (kubectl/v",
            addrs::CP4
        )),
        "{note}"
    );
    assert!(note.contains(", kubectl get)"), "{note}");
    assert!(!note.contains("secret"), "the query string leaked: {note}");

    let described = cp.kubectl_ok(&["-n", "default", "describe", "pod", "web"], None);
    let line = described
        .lines()
        .find(|l| l.contains("PlaintextApiserverProxy"))
        .unwrap_or_else(|| panic!("kubectl describe pod web shows the Event:\n{described}"));
    assert!(
        line.contains("(x3 over") && line.contains("through the apiserver proxy"),
        "the Event, three times: {line}"
    );
}

/// Under a `block` rule the Event says so: reason `ApiserverProxyBlocked`.
#[test]
fn a_blocked_proxy_request_is_an_apiserver_proxy_blocked_event() {
    let lab = Lab::for_real_control_plane("t-kevblk");
    let cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    cp.add_konnectivity_agent(&lab.topo.pod);
    let mut args = cp.discovery_args();
    args.extend(["--policy", "apiserver-proxy-to-pod:plaintext=block"].map(str::to_owned));
    let agent = Agent::start_in(Some(lab.topo.node.name()), &args);
    agent.wait_for_complete_discovery();

    let out = cp.kubectl(&["get", "--raw", PROXIED_METRICS]);
    assert!(!out.status.success(), "the request is blocked");
    let what = later(|| {
        format!(
            "the blocked request is an Event; stderr:\n{}",
            agent.stderr()
        )
    });
    let events = eventually(Duration::from_secs(15), what, || {
        let events = events_about_web(&cp);
        (!events.is_empty()).then_some(events)
    });
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["reason"], "ApiserverProxyBlocked", "{e:#}");
    assert_eq!(e["action"], "Blocked", "{e:#}");
    assert!(
        e["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("Blocked plaintext")),
        "{e:#}"
    );
}
