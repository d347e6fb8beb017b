//! Request attribution with real traffic between the lab's namespaces: a
//! plaintext request on the apiserver proxy path is summarised in its
//! violation event from the bytes the kernel copied, however the client
//! cuts it into segments, and never beyond the allow-list. (With the real
//! kube-apiserver and kubectl: `tests/kubernetes.rs`.) Needs root.

use std::{net::SocketAddr, time::Duration};

use lab::{
    cluster::agent::Agent,
    cluster::scenario::Lab,
    cluster::topology::{Topology, addrs},
    eventually, traffic,
};

/// The lab pod's plain HTTP server.
fn pod() -> SocketAddr {
    SocketAddr::new(addrs::POD4.into(), 8080)
}

/// A request as a caller of the apiserver proxy might send it, with a
/// secret in its query and a header outside the allow-list.
fn request(extra_headers: &str) -> Vec<u8> {
    format!(
        "GET /metrics?token=secret HTTP/1.1\r\nHost: {}\r\nUser-Agent: lab-caller/1.0 (test)\r\n\
         Authorization: Bearer also-secret\r\n{extra_headers}X-Forwarded-For: 203.0.113.7\r\n\
         Connection: close\r\n\r\n",
        pod()
    )
    .into_bytes()
}

/// What the agent makes of the whole of [`request`].
fn whole() -> serde_json::Value {
    serde_json::json!({
        "method": "GET",
        "path": "/metrics",
        "user_agent": "lab-caller/1.0 (test)",
        "forwarded_for": ["203.0.113.7"],
        "truncated": false,
    })
}

/// The agent's first `n` violations on `path`, as JSON, once printed;
/// none shows the query or a header outside the allow-list.
fn violations(agent: &Agent, path: &str, n: usize) -> Vec<serde_json::Value> {
    let field = format!("\"path\":\"{path}\"");
    let lines = eventually(
        Duration::from_secs(10),
        format!("{n} violation(s) on {path}"),
        || {
            let lines: Vec<String> = agent
                .stdout_lines()
                .into_iter()
                .filter(|l| l.contains(&field))
                .collect();
            (lines.len() >= n).then_some(lines)
        },
    );
    lines
        .iter()
        .take(n)
        .map(|line| {
            for secret in ["secret", "Authorization", "Connection", "x=1"] {
                assert!(!line.contains(secret), "{secret} in {line}");
            }
            serde_json::from_str(line).expect("JSON")
        })
        .collect()
}

/// The agent's one violation on the proxy path to the pod.
fn violation(agent: &Agent) -> serde_json::Value {
    violations(agent, "apiserver-proxy-to-pod", 1).remove(0)
}

fn agent(policy: Option<&str>) -> Agent {
    let mut args = Topology::agent_args();
    if let Some(p) = policy {
        args.extend(["--policy".to_owned(), p.to_owned()]);
    }
    Agent::start(&args)
}

#[test]
fn a_head_sent_one_byte_per_segment_is_summarised_whole() {
    let lab = Lab::new("t-attr-split");
    let agent = agent(None);
    traffic::http_request_split(&lab.topo.cp, pod(), request(""), 1).expect("alerted, not blocked");
    let v = violation(&agent);
    assert_eq!(v["http"], whole(), "{v}");
}

#[test]
fn a_blocked_head_is_reported_as_far_as_it_was_seen() {
    let lab = Lab::new("t-attr-block");
    let agent = agent(Some("apiserver-proxy-to-pod:plaintext=block"));
    // One byte per segment: the bytes after the method are dropped, and
    // the connection is reset soon after, before the whole head was sent.
    let sent = traffic::http_request_split(&lab.topo.cp, pod(), request(""), 1);
    assert!(sent.is_err(), "the blocked request fails: {sent:?}");
    let v = violation(&agent);
    assert_eq!(v["verdict"], "blocked", "{v}");
    assert_eq!(v["http"]["method"], "GET", "{v}");
    assert_eq!(v["http"]["truncated"], true, "{v}");
    assert!(
        lab.server(8080).requests().is_empty(),
        "the pod never saw the request"
    );
    // In one segment, the dropped segment holds the whole head.
    traffic::http_request_split(&lab.topo.cp, pod(), request(""), 4096).expect_err("blocked again");
    let v = violations(&agent, "apiserver-proxy-to-pod", 2).remove(1);
    assert_eq!(v["http"], whole(), "{v}");
}

#[test]
fn a_head_longer_than_the_copy_is_cut_and_marked() {
    let lab = Lab::new("t-attr-long");
    let agent = agent(None);
    let cookie = format!("Cookie: {}\r\n", "c".repeat(3000));
    traffic::http_request_split(&lab.topo.cp, pod(), request(&cookie), 8192).expect("alerted");
    let v = violation(&agent);
    assert_eq!(
        v["http"],
        serde_json::json!({
            "method": "GET",
            "path": "/metrics",
            "user_agent": "lab-caller/1.0 (test)",
            "truncated": true,
        }),
        "the lines before the cut, and nothing after: {v}"
    );
}

/// The read-only kubelet: which endpoint a pod scrapes, and the apiserver
/// proxy to a node's other ports: what was asked of them.
#[test]
fn kubelet_read_only_and_node_proxy_requests_are_summarised() {
    let lab = Lab::new("t-attr-node");
    let agent = agent(None);
    let node = |port| SocketAddr::new(addrs::NODE4.into(), port);
    let scrape = format!(
        "GET /pods?x=1 HTTP/1.1\r\nHost: {}\r\nUser-Agent: scraper/2\r\n\r\n",
        node(10255)
    );
    traffic::http_request_split(&lab.topo.pod, node(10255), scrape.into_bytes(), 4096)
        .expect("alerted");
    traffic::http_request_split(&lab.topo.cp, node(9100), request(""), 4096).expect("alerted");
    let http_of = |path: &str| violations(&agent, path, 1).remove(0)["http"].clone();
    assert_eq!(
        http_of("kubelet-read-only"),
        serde_json::json!({"method": "GET", "path": "/pods", "user_agent": "scraper/2", "truncated": false})
    );
    assert_eq!(http_of("apiserver-proxy-to-node")["path"], "/metrics");
}
