//! Policy and enforcement with the real agent and real traffic: blocking
//! plaintext apiserver-proxy connections to pods while TLS ones pass, the
//! dry run, and the JSON events; and enforcement under attack (README,
//! "Threat model"): each attack test delivered a plaintext request to the
//! pod on the agent before the datapath's hardening. Needs root; run
//! through `cargo xtask test`.

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use lab::{
    cluster::agent::Agent,
    cluster::metrics::Metrics,
    cluster::scenario::{Lab, Where},
    cluster::topology::{Topology, addrs},
    eventually, later,
    traffic::attack,
    traffic::{self, Kind, Server, is_reset},
};

const NO_PLAINTEXT: &str = "apiserver-proxy-to-pod:plaintext=block";

fn pod(port: u16) -> SocketAddr {
    SocketAddr::new(addrs::POD4.into(), port)
}

fn agent(extra: &[&str]) -> Agent {
    let mut args = Topology::agent_args();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Agent::start(&args)
}

/// The agent's events, parsed; panics on any stdout line that is not one.
fn events(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .stdout_lines()
        .iter()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Waits until the agent has printed `n` events (they are read
/// asynchronously), and returns them all.
fn wait_events(agent: &Agent, n: usize) -> Vec<serde_json::Value> {
    let what = later(|| format!("{n} events: {:?}", events(agent)));
    eventually(Duration::from_secs(5), what, || {
        let e = events(agent);
        (e.len() >= n).then_some(e)
    })
}

fn assert_event(e: &serde_json::Value, action: &str, verdict: &str, dry_run: bool) {
    assert_eq!(e["kind"], "violation", "{e}");
    assert_eq!(e["path"], "apiserver-proxy-to-pod", "{e}");
    assert_eq!(e["protocol"], "http", "{e}");
    assert_eq!(e["action"], action, "{e}");
    assert_eq!(e["verdict"], verdict, "{e}");
    assert_eq!(e["dry_run"], dry_run, "{e}");
    assert_eq!(e["dst"], pod(8080).to_string(), "{e}");
    let src: SocketAddr = e["src"]
        .as_str()
        .expect("src")
        .parse()
        .expect("src is IP:PORT");
    assert_eq!(src.ip(), std::net::IpAddr::from(addrs::CP4), "{e}");
    let ts = e["ts"].as_str().expect("ts");
    humantime_check(ts);
}

/// RFC 3339 with a `Z` offset, as the agent writes it.
fn humantime_check(ts: &str) {
    assert!(
        ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "not RFC 3339: {ts}"
    );
}

#[test]
fn enforce_blocks_plaintext_to_pods_promptly_and_keeps_tls() {
    let lab = Lab::new("t-enforce");
    let agent = agent(&["--policy", NO_PLAINTEXT]);
    let cp = lab.ns(Where::ControlPlane);

    for (what, split) in [
        ("whole request", false),
        ("request in 1-byte segments", true),
    ] {
        let start = Instant::now();
        let result = if split {
            traffic::http_get_split(cp, pod(8080), 1)
        } else {
            traffic::http_get(cp, pod(8080))
        };
        let took = start.elapsed();
        let err = result.expect_err(&format!("{what}: a blocked request must fail"));
        assert!(
            is_reset(&err),
            "{what}: the client sees a reset, not {err:?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{what}: failed after {took:?}"
        );
    }
    let tls = traffic::https_get(cp, pod(8443), &lab.tls).expect("TLS on the same path passes");
    assert!(tls.status.contains("200"));

    // The pod's HTTP server never saw a complete request.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lab.server(8080).requests(),
        Vec::<String>::new(),
        "no plaintext request reached the pod"
    );
    assert_eq!(lab.server(8443).requests().len(), 1);

    let m: Metrics = agent.scrape();
    let labels = [
        ("path", "apiserver-proxy-to-pod"),
        ("protocol", "http"),
        ("verdict", "blocked"),
    ];
    assert_eq!(m.sum("cp_observer_connections_total", &labels), 2.0);
    assert_eq!(
        m.sum(
            "cp_observer_policy_violations_total",
            &[("action", "block")]
        ),
        2.0
    );
    assert!(
        m.sum("cp_observer_sockets_reset_total", &[]) >= 2.0,
        "both connections were reset"
    );
    assert!(m.sum("cp_observer_blocked_segments_total", &[]) >= 2.0);

    let events = wait_events(&agent, 2);
    assert_eq!(
        events.len() as f64,
        m.sum("cp_observer_policy_violations_total", &[]),
        "one event per violation: {events:?}"
    );
    for e in &events {
        assert_event(e, "block", "blocked", false);
    }
}

#[test]
fn dry_run_reports_what_it_would_block_and_blocks_nothing() {
    let lab = Lab::new("t-dryrun");
    let agent = agent(&["--policy", NO_PLAINTEXT, "--dry-run"]);
    let cp = lab.ns(Where::ControlPlane);
    let plain = traffic::http_get(cp, pod(8080)).expect("dry run: plaintext passes");
    assert!(plain.status.contains("200"));
    let tls = traffic::https_get(cp, pod(8443), &lab.tls).expect("TLS passes");
    assert!(tls.status.contains("200"));
    assert_eq!(lab.server(8080).requests().len(), 1);

    let m = agent.scrape();
    let c = "cp_observer_connections_total";
    assert_eq!(
        m.sum(c, &[("protocol", "http"), ("verdict", "alerted")]),
        1.0
    );
    assert_eq!(m.sum(c, &[("verdict", "blocked")]), 0.0);
    assert_eq!(
        m.sum(
            "cp_observer_policy_violations_total",
            &[("protocol", "http"), ("action", "block")]
        ),
        1.0
    );
    assert_eq!(m.sum("cp_observer_sockets_reset_total", &[]), 0.0);

    let events = wait_events(&agent, 1);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_event(&events[0], "block", "alerted", true);
}

#[test]
fn default_policy_alerts_on_plaintext_with_one_event_each() {
    let lab = Lab::new("t-alert");
    let agent = agent(&[]);
    let cp = lab.ns(Where::ControlPlane);
    for _ in 0..3 {
        traffic::http_get(cp, pod(8080)).expect("alert does not block");
    }
    traffic::https_get(cp, pod(8443), &lab.tls).expect("TLS passes");
    let events = wait_events(&agent, 3);
    assert_eq!(events.len(), 3, "TLS is no violation: {events:?}");
    for e in &events {
        assert_event(e, "alert", "alerted", false);
        // The client is this test process: its connect() was seen.
        assert_eq!(e["process"]["pid"], std::process::id(), "{e}");
        assert!(
            e["process"]["comm"].as_str().is_some_and(|c| !c.is_empty()),
            "{e}"
        );
    }
    assert_eq!(
        agent.scrape().sum(
            "cp_observer_policy_violations_total",
            &[("action", "alert")]
        ),
        3.0
    );
}

/// The pod's plaintext server never got a request line, and TLS to the pod
/// still works: what every attack test ends with.
fn assert_plaintext_kept_out(lab: &Lab, server: &Server, what: &str) {
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.requests(),
        Vec::<String>::new(),
        "{what}: a plaintext request reached the pod"
    );
    let tls = traffic::https_get(lab.ns(Where::ControlPlane), pod(8443), &lab.tls)
        .unwrap_or_else(|e| panic!("{what}: TLS on the same path fails: {e}"));
    assert!(tls.status.contains("200"), "{what}: {}", tls.status);
}

fn dropped(agent: &Agent, reason: &str) -> f64 {
    agent
        .scrape()
        .sum("cp_observer_dropped_segments_total", &[("reason", reason)])
}

/// Three urgent bytes `16 03 01`, then a request line: the sequence space
/// looks like TLS, the server (no SO_OOBINLINE) reads a clean request.
#[test]
fn urgent_bytes_do_not_pass_plaintext_off_as_tls() {
    let lab = Lab::new("t-urg");
    let agent = agent(&["--policy", NO_PLAINTEXT]);
    let got =
        attack::urgent_then_request(lab.ns(Where::ControlPlane), pod(8080), &[0x16, 0x03, 0x01]);
    assert!(
        got.as_ref().is_err_and(is_reset),
        "the connection is reset, not answered: {got:?}"
    );
    assert_plaintext_kept_out(&lab, lab.server(8080), "urgent data");
    assert_eq!(
        agent.scrape().sum(
            "cp_observer_connections_total",
            &[("protocol", "other"), ("verdict", "blocked")]
        ),
        1.0
    );
}

/// A request carried in the SYN (TCP Fast Open, enabled in both
/// namespaces): a server hands it to its application before any other
/// segment.
#[test]
fn a_request_in_a_fast_open_syn_is_not_delivered() {
    let lab = Lab::new("t-tfo");
    let (cp, pod_ns) = (lab.ns(Where::ControlPlane), lab.ns(Where::Pod));
    attack::enable_fast_open(cp);
    attack::enable_fast_open(pod_ns);
    let any = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 8090);
    let server = Server::with_listener(
        attack::fast_open_listener(pod_ns, any),
        Kind::Http,
        &lab.tls,
    );
    let agent = agent(&["--policy", NO_PLAINTEXT]);
    let got = attack::fast_open_request(cp, pod(8090));
    assert!(
        !got.as_ref().is_ok_and(|r| r.syn_data_acked),
        "the SYN's data was not taken: {got:?}"
    );
    assert_plaintext_kept_out(&lab, &server, "TCP Fast Open");
    assert!(dropped(&agent, "syn-data") >= 1.0);
}

/// Bytes 1..n of a request, then byte 0 (raw segments in a real
/// connection): the server reassembles the request, detection must not
/// decide on what it has not seen in order.
#[test]
fn a_request_sent_around_a_hole_is_not_delivered() {
    let lab = Lab::new("t-hole");
    let agent = agent(&["--policy", NO_PLAINTEXT]);
    let to = SocketAddrV4::new(addrs::POD4, 8080);
    let hole =
        attack::out_of_order_request(lab.ns(Where::ControlPlane), to).expect("the attack runs");
    std::thread::sleep(Duration::from_millis(200));
    // The sender's retransmission, in order.
    let _ = hole.resend_in_order();
    assert_plaintext_kept_out(&lab, lab.server(8080), "a hole");
    assert!(dropped(&agent, "out-of-order") >= 1.0);
}

/// A request line the signatures do not list (lower case, or after a
/// CRLF) is `other`, which "no plaintext" blocks too.
#[test]
fn unlisted_request_lines_are_blocked_as_plaintext() {
    let lab = Lab::new("t-unlisted");
    let _agent = agent(&["--policy", NO_PLAINTEXT]);
    for request in [
        &b"get / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    ] {
        let got = traffic::raw(lab.ns(Where::ControlPlane), pod(8080), request);
        assert!(got.as_ref().is_err_and(is_reset), "{got:?}");
    }
    assert_plaintext_kept_out(&lab, lab.server(8080), "unlisted request lines");
}

/// A pod with CAP_NET_RAW floods spoofed SYNs (sources nobody uses, in the
/// pod CIDR) at the konnectivity port, and spoofs the control plane towards
/// a pod. Before, the flow table filled within a second and later
/// connections went untracked: plaintext passed. Now the flood's entries
/// stay half-open, counted, and the proxy path keeps blocking plaintext
/// and carrying TLS throughout.
#[test]
fn a_spoofed_syn_flood_from_a_pod_does_not_switch_enforcement_off() {
    const RATE: u32 = 20_000;
    let lab = Lab::new("t-flood");
    let agent = agent(&["--policy", NO_PLAINTEXT, "--flow-table-capacity", "4096"]);
    let pod_ns = lab.ns(Where::Pod);
    let flood = attack::syn_flood(
        pod_ns,
        addrs::UNUSED_POD4,
        100,
        SocketAddrV4::new(addrs::CP4, 8132),
        RATE,
        Duration::from_secs(8),
    );
    let spoofed_cp = attack::syn_flood(
        pod_ns,
        addrs::CP4,
        1,
        SocketAddrV4::new(addrs::POD4, 8081),
        1000,
        Duration::from_secs(8),
    );
    // At this rate the table (4096) would have been full many times over.
    std::thread::sleep(Duration::from_secs(1));
    for round in 0..3 {
        let plain = traffic::http_get(lab.ns(Where::ControlPlane), pod(8080));
        assert!(
            plain.as_ref().is_err_and(is_reset),
            "round {round}: {plain:?}"
        );
        assert_plaintext_kept_out(&lab, lab.server(8080), &format!("flood, round {round}"));
    }
    let (report, spoofed) = (flood.stop(), spoofed_cp.stop());
    assert!(report.sent >= u64::from(RATE), "the flood ran: {report:?}");
    let m = agent.scrape();
    let half_open = m.sum("cp_observer_half_open_total", &[]);
    assert!(
        half_open >= report.sent as f64 / 2.0,
        "the flood's SYNs are counted as half-open: {half_open} of {report:?}"
    );
    assert!(
        m.sum("cp_observer_flow_table_entries", &[]) < 100.0,
        "the flood stayed out of the flow table"
    );
    assert_eq!(m.sum("cp_observer_flow_table_full_total", &[]), 0.0);
    assert!(
        m.sum(
            "cp_observer_dropped_segments_total",
            &[("reason", "crafted")]
        ) >= spoofed.sent as f64,
        "every SYN spoofing the control plane towards a pod is dropped: {spoofed:?}"
    );
}

/// A server that speaks first (SSH, SMTP, MySQL) on the proxy path, while
/// a pod floods: spoofed SYNs push the connection's half-open entry out
/// before its handshake completes (held here by the client), and TCP
/// `connect()`s push out what the connect hook knew of the client. Then
/// the server's greeting goes first and the client's plaintext request
/// follows. The server's socket has sent data already, which once made it
/// pass for a client's and the connection pass untracked: the request
/// reached the pod. A listener on its port says it is a server's.
#[test]
fn a_server_first_connection_whose_handshake_a_flood_pushed_out_is_still_judged() {
    let lab = Lab::new("t-first");
    let any = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 2222);
    let server = Server::start(lab.ns(Where::Pod), any, Kind::Ssh, &lab.tls);
    let agent = agent(&["--policy", NO_PLAINTEXT, "--flow-table-capacity", "1024"]);
    let pod_ns = lab.ns(Where::Pod);
    let got =
        attack::request_after_a_held_handshake(lab.ns(Where::ControlPlane), pod(2222), || {
            let flood = attack::syn_flood(
                pod_ns,
                addrs::UNUSED_POD4,
                100,
                SocketAddrV4::new(addrs::CP4, 8132),
                20_000,
                Duration::from_millis(500),
            )
            .wait();
            assert!(flood.sent >= 5_000, "the SYN flood ran: {flood:?}");
            // To a closed port of the pod's own: refused at once.
            let connects = attack::connect_flood(pod_ns, pod(9), 20_000);
            assert!(connects >= 20_000, "the connect flood ran: {connects}");
        });
    // (The server closes on any line, so the client's outcome says little.)
    drop(got);
    assert_plaintext_kept_out(&lab, &server, "a server-first connection after a flood");
    assert_eq!(
        agent.scrape().sum(
            "cp_observer_connections_total",
            &[("protocol", "http"), ("verdict", "blocked")]
        ),
        1.0
    );
}
