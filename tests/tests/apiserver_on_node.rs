//! An apiserver that runs on the node itself (a control-plane node, a
//! single-node cluster): its proxy connections to pods and its kubelet
//! connections come from the node's own addresses, so no address tells
//! them from the node's. The agent recognises the process that holds the
//! apiserver's listener (an `--apiserver` endpoint that is a node address)
//! and makes its connections the control plane's (README, "The paths").
//! The agent runs in the node's namespace, its host network namespace as
//! on a node; the apiserver is a process of its own there
//! (`cp-observer-lab-process`), holding a listener on the node's address.
//! Needs root; run through `cargo xtask test`.

use std::{net::SocketAddr, time::Duration};

use lab::{
    cluster::{
        agent::Agent,
        metrics::Metrics,
        process::HostProcess,
        scenario::{Lab, Where},
        topology::{Topology, addrs},
    },
    eventually, later,
    traffic::{self, is_reset},
};
use observer_common::{
    path::Path,
    policy::{Action, Verdict},
    protocol::Protocol,
};

/// The lab's process that may hold a listener.
const PROCESS: &str = env!("CARGO_BIN_EXE_cp-observer-lab-process");
const CONNECTIONS: &str = "cp_observer_connections_total";
const RECOGNISED: &str = "cp_observer_local_apiserver_processes";

/// The apiserver's endpoint: the node's own address.
fn endpoint() -> SocketAddr {
    SocketAddr::new(addrs::NODE4.into(), addrs::APISERVER_PORT)
}

fn pod(port: u16) -> SocketAddr {
    SocketAddr::new(addrs::POD4.into(), port)
}

/// The agent in the node's namespace, told (flags, no discovery) that the
/// apiserver's endpoint is the node's address.
fn agent(lab: &Lab, extra: &[&str]) -> Agent {
    let mut args = Topology::agent_args();
    args.extend(["--apiserver".to_owned(), endpoint().to_string()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Agent::start_in(Some(lab.topo.node.name()), &args)
}

/// The apiserver: a process of the node holding the endpoint's listener.
fn apiserver(lab: &Lab) -> HostProcess {
    HostProcess::start(PROCESS, lab.ns(Where::Node), Some(endpoint()))
}

/// How much the series (path, protocol, default verdict) grew.
fn grew(before: &Metrics, after: &Metrics, path: Path, protocol: Protocol) -> f64 {
    let verdict = Verdict::of(Action::default_for(path, protocol));
    let labels = [
        ("path", path.name()),
        ("protocol", protocol.name()),
        ("verdict", verdict.name()),
    ];
    after.sum(CONNECTIONS, &labels) - before.sum(CONNECTIONS, &labels)
}

/// Waits until the agent recognises `n` apiserver processes.
fn wait_recognised(agent: &Agent, n: f64) {
    let what = later(|| {
        format!(
            "{n} local apiserver processes recognised, got {}; stderr:\n{}",
            agent.scrape().sum(RECOGNISED, &[]),
            agent.stderr()
        )
    });
    eventually(Duration::from_secs(10), what, || {
        agent.scrape().sum(RECOGNISED, &[]) == n
    });
}

#[test]
fn the_process_holding_the_apiservers_listener_is_the_control_plane() {
    let lab = Lab::new("t-apinode");
    let node = lab.ns(Where::Node);
    // Up before the agent, as on a node: the agent knows it from its start.
    let mut api = apiserver(&lab);
    let agent = agent(&lab, &[]);

    let before = agent.scrape();
    let x = api
        .http_get(pod(8080))
        .expect("the apiserver's proxy request");
    assert!(x.status.contains("200"), "{x:?}");
    let after = agent.scrape();
    assert_eq!(
        grew(&before, &after, Path::ApiserverProxyToPod, Protocol::Http),
        1.0,
        "the apiserver's request to the pod is apiserver-proxy-to-pod/http; grew: {:?}",
        after.nonzero(CONNECTIONS)
    );
    assert_eq!(
        after.sum(CONNECTIONS, &[]) - before.sum(CONNECTIONS, &[]),
        1.0
    );

    // To the kubelet (plaintext to its TLS port: the path is the point).
    let before = after;
    let kubelet = SocketAddr::new(addrs::NODE4.into(), 10250);
    let _answer_does_not_matter = api.http_get(kubelet);
    let after = agent.scrape();
    assert_eq!(
        grew(&before, &after, Path::ApiserverToKubelet, Protocol::Http),
        1.0,
        "the apiserver's request to the kubelet is apiserver-to-kubelet; grew: {:?}",
        after.nonzero(CONNECTIONS)
    );

    // The same request from another process of the node (this test's):
    // node traffic, on no path.
    let before = after;
    let x = traffic::http_get(node, pod(8080)).expect("the node's request");
    assert!(x.status.contains("200"), "{x:?}");
    let after = agent.scrape();
    assert_eq!(
        after.sum(CONNECTIONS, &[]) - before.sum(CONNECTIONS, &[]),
        0.0,
        "a node process without the listener is on no path; grew: {:?}",
        after.nonzero(CONNECTIONS)
    );
    assert_eq!(after.sum(RECOGNISED, &[]), 1.0);
    let pid = api.pid().to_string();
    assert!(
        agent.stderr().contains(&pid),
        "the log names the apiserver's process {pid}:\n{}",
        agent.stderr()
    );

    // A restart: the old process goes, a new one (another pid) comes.
    drop(api);
    wait_recognised(&agent, 0.0);
    let mut api = apiserver(&lab);
    wait_recognised(&agent, 1.0);
    let before = agent.scrape();
    api.http_get(pod(8080))
        .expect("the restarted apiserver's proxy request");
    assert_eq!(
        grew(
            &before,
            &agent.scrape(),
            Path::ApiserverProxyToPod,
            Protocol::Http
        ),
        1.0,
        "the restarted apiserver is recognised"
    );
}

#[test]
fn enforce_blocks_the_apiservers_plaintext_to_pods_and_not_the_nodes() {
    let lab = Lab::new("t-apinode-enf");
    let node = lab.ns(Where::Node);
    let mut api = apiserver(&lab);
    let agent = agent(
        &lab,
        &["--policy", "apiserver-proxy-to-pod:plaintext=block"],
    );

    let err = api
        .http_get(pod(8080))
        .expect_err("the apiserver's plaintext request to the pod is blocked");
    assert!(is_reset(&err), "the apiserver sees a reset, not {err:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lab.server(8080).requests(),
        Vec::<String>::new(),
        "no request reached the pod"
    );
    let m = agent.scrape();
    let labels = [
        ("path", "apiserver-proxy-to-pod"),
        ("protocol", "http"),
        ("verdict", "blocked"),
    ];
    assert_eq!(m.sum(CONNECTIONS, &labels), 1.0);
    let events = eventually(Duration::from_secs(5), "one event", || {
        let lines = agent.stdout_lines();
        (!lines.is_empty()).then_some(lines)
    });
    let e: serde_json::Value = serde_json::from_str(&events[0]).expect("a JSON event");
    assert_eq!(e["path"], "apiserver-proxy-to-pod", "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(e["process"]["pid"], api.pid(), "{e}");

    // Another process of the node: not the proxy path, it passes.
    let x = traffic::http_get(node, pod(8080)).expect("the node's request passes");
    assert!(x.status.contains("200"), "{x:?}");
    assert_eq!(lab.server(8080).requests().len(), 1);
    assert_eq!(agent.scrape().sum(CONNECTIONS, &labels), 1.0);
}

/// A restart with discovery while the apiserver cannot be reached: the
/// new agent's programs replace the old ones at once and do not know the
/// endpoints yet (discovery only), so the processes the previous programs
/// took for the apiserver are carried over until they are known, and the
/// apiserver's proxy requests stay on their path meanwhile.
#[test]
fn a_restart_keeps_the_apiservers_processes_until_the_endpoints_are_known() {
    const PIN_DIR: &str = "/sys/fs/bpf/cp-observer-test-apinode";
    let cleanup = || lab::cluster::agent::cleanup_pins(std::path::Path::new(PIN_DIR));
    let _ = cleanup(); // a killed earlier run
    let lab = Lab::new("t-apinode-carry");
    let mut api = apiserver(&lab);
    let first = agent(&lab, &["--pin-dir", PIN_DIR]);
    assert_eq!(first.scrape().sum(RECOGNISED, &[]), 1.0);
    first.stop();

    // The flags without any endpoint, and discovery of an apiserver that
    // does not answer (nothing listens there).
    let dir = std::env::temp_dir().join(format!("cpo-apinode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n\
         users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: u\n\
         current-context: gone\n",
    )
    .expect("a kubeconfig");
    let mut args: Vec<String> = Vec::new();
    let flags = Topology::agent_args();
    for pair in flags.chunks(2) {
        if pair[0] != "--apiserver" {
            args.extend_from_slice(pair);
        }
    }
    args.extend(
        [
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--node-name",
            "lab-node",
            "--pin-dir",
            PIN_DIR,
        ]
        .map(str::to_owned),
    );
    let second = Agent::start_in(Some(lab.topo.node.name()), &args);
    wait_recognised(&second, 1.0);
    let before = second.scrape();
    api.http_get(pod(8080))
        .expect("the apiserver's proxy request");
    assert_eq!(
        grew(
            &before,
            &second.scrape(),
            Path::ApiserverProxyToPod,
            Protocol::Http
        ),
        1.0,
        "still the apiserver's after the restart"
    );
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
    let out = cleanup();
    assert!(out.status.success(), "cleanup: {out:?}");
}
