//! Supervision and the metrics server under attack (README, "Metrics"):
//! a part of the agent that dies fails `/healthz` and stops the agent, and
//! whatever reaches the metrics port leaves the datapath alone. The agent
//! is the test build, with fail points (`FAILPOINTS`). Needs root; run
//! through `cargo xtask test`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lab::{
    cluster::agent::Agent,
    cluster::scenario::{Lab, Where},
    cluster::topology::{Topology, addrs},
    eventually, later,
    traffic::{self, is_reset},
};

fn pod(port: u16) -> SocketAddr {
    SocketAddr::new(addrs::POD4.into(), port)
}

#[test]
fn a_dead_event_reader_fails_healthz_and_the_agent_exits_non_zero() {
    let lab = Lab::new("t-superv");
    // The event reader panics at its next wake-up; the agent then holds
    // for 5 s before it stops, so that the test sees /healthz meanwhile.
    let mut agent = Agent::start_with(
        &[("FAILPOINTS", "event-reader=panic;agent-exit=sleep(5000)")],
        None,
        &Topology::agent_args(),
    );
    assert_eq!(agent.get("/healthz").map(|(c, _)| c), Some(200));
    // A plaintext proxy request is an alert: its event wakes the reader.
    traffic::http_get(lab.ns(Where::ControlPlane), pod(8080)).expect("an alerted request passes");
    let (code, body) = eventually(
        Duration::from_secs(10),
        later(|| format!("/healthz fails; stderr:\n{}", agent.stderr())),
        || agent.get("/healthz").filter(|(code, _)| *code != 200),
    );
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("event-reader died") && body.contains("panicked"),
        "/healthz names the dead part and how it died: {body}"
    );
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the agent exits; stderr:\n{}", agent.stderr()));
    assert_eq!(
        status.code(),
        Some(1),
        "a non-zero exit; stderr:\n{}",
        agent.stderr()
    );
    let stderr = agent.stderr();
    assert!(
        stderr.contains("cp-observer: event-reader died"),
        "the exit names the dead part:\n{stderr}"
    );
}

/// Idle connections held open to the metrics port.
const IDLE: usize = 2000;
/// The scrape flood: threads, and requests (each on a new connection) at
/// most, within [`FLOOD_TIME`] at most.
const FLOODERS: usize = 4;
const FLOOD_REQUESTS: usize = 5000;
const FLOOD_TIME: Duration = Duration::from_secs(20);
/// Blocked connections tried during the attack.
const BLOCKED: usize = 5;

/// One `GET /metrics` on a new connection; true if it got a 200.
fn scrape(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return false;
    }
    if write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// The agent runs with a soft limit of 1024 descriptors, as containers do
/// under containerd 2 (hard limit higher): before the server had its own
/// runtime, a connection cap and timeouts, 2,000 idle connections took
/// every descriptor, the enforcer could not open a namespace (blocked
/// connections were not reset) and `/metrics` never answered again.
#[test]
fn idle_connections_and_a_scrape_flood_leave_resets_and_metrics_working() {
    let lab = Lab::new("t-flood");
    let mut args = Topology::agent_args();
    args.extend([
        "--policy".to_owned(),
        "apiserver-proxy-to-pod:plaintext=block".to_owned(),
    ]);
    let agent = Agent::start_with(&[], Some(1024), &args);
    let addr = agent.metrics_addr;

    let mut idle = Vec::with_capacity(IDLE);
    let start = Instant::now();
    while idle.len() < IDLE && start.elapsed() < Duration::from_secs(60) {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            idle.push(s);
        }
    }
    println!(
        "{} idle connections open after {:?}",
        idle.len(),
        start.elapsed()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed)
                    && start.elapsed() < FLOOD_TIME
                    && sent.fetch_add(1, Ordering::Relaxed) < FLOOD_REQUESTS
                {
                    scrape(addr);
                }
            })
        })
        .collect();

    let cp = lab.ns(Where::ControlPlane);
    for i in 0..BLOCKED {
        let err =
            traffic::http_get(cp, pod(8080)).expect_err(&format!("blocked request {i} must fail"));
        assert!(
            is_reset(&err),
            "blocked request {i}: the client sees a reset, not {err:?}; agent stderr:\n{}",
            agent.stderr()
        );
    }
    // The idle connections hold the server's slots until their header
    // timeout; then /metrics answers again, flood or not.
    eventually(
        Duration::from_secs(40),
        later(|| format!("/metrics answers; agent stderr:\n{}", agent.stderr())),
        || scrape(addr),
    );
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().expect("a flooder");
    }
    drop(idle);
    let m = agent.scrape();
    assert!(
        m.sum("cp_observer_sockets_reset_total", &[]) >= BLOCKED as f64,
        "every blocked connection was reset"
    );
    assert_eq!(m.sum("cp_observer_reset_errors_total", &[]), 0.0);
    assert!(
        m.sum("cp_observer_metrics_connections_rejected_total", &[]) > 0.0,
        "connections beyond the cap were refused and counted"
    );
    assert_eq!(agent.get("/healthz").map(|(c, _)| c), Some(200));
}
