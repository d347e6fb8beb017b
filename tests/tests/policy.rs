//! Policy and enforcement with the real agent and real traffic: blocking
//! plaintext apiserver-proxy connections to pods while TLS ones pass, the
//! dry run, and the JSON events. Needs root; run through `cargo xtask test`.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lab::{
    agent::Agent,
    metrics::Metrics,
    scenario::{Lab, Where},
    topology::{Topology, addrs},
    traffic,
};

const BLOCK_PLAINTEXT: &str = "apiserver-proxy-to-pod:http=block";

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

/// Waits until the agent has printed `n` events (they are read asynchronously).
fn wait_events(agent: &Agent, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let e = events(agent);
        if e.len() >= n || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
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
    let agent = agent(&["--policy", BLOCK_PLAINTEXT]);
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
    let agent = agent(&["--policy", BLOCK_PLAINTEXT, "--dry-run"]);
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
