//! Pinning: enforcement and counters outlive the agent, a restarted agent
//! adopts the pins instead of attaching twice, a new policy replaces the old
//! one, and `cp-observer cleanup` removes everything. Needs root; run
//! through `cargo xtask test`.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use lab::{
    cluster::agent::{self, Agent},
    cluster::scenario::{Lab, Where},
    cluster::topology::{Topology, addrs},
    eventually,
    traffic::{self, is_reset},
};

const PIN_DIR: &str = "/sys/fs/bpf/cp-observer-test-restart";
const C: &str = "cp_observer_connections_total";

fn pod(port: u16) -> SocketAddr {
    SocketAddr::new(addrs::POD4.into(), port)
}

fn start(policy: Option<&str>) -> Agent {
    let mut args = Topology::agent_args();
    args.extend(["--pin-dir".to_owned(), PIN_DIR.to_owned()]);
    if let Some(rule) = policy {
        args.extend(["--policy".to_owned(), rule.to_owned()]);
    }
    Agent::start(&args)
}

fn cleanup() -> std::process::Output {
    agent::cleanup_pins(Path::new(PIN_DIR))
}

/// Plaintext HTTP connections `agent` counted as alerted.
fn alerted_http(agent: &Agent) -> f64 {
    agent
        .scrape()
        .sum(C, &[("protocol", "http"), ("verdict", "alerted")])
}

#[test]
fn pins_outlive_the_agent_and_a_restart_adopts_them() {
    let _ = cleanup(); // a killed earlier run
    let lab = Lab::new("t-restart");
    let cp = lab.ns(Where::ControlPlane);
    let baseline = agent::loaded_observer_programs();
    let block = "apiserver-proxy-to-pod:http=block";

    let first = start(Some(block));
    let err = traffic::http_get(cp, pod(8080)).expect_err("blocked");
    assert!(is_reset(&err), "{err:?}");
    traffic::https_get(cp, pod(8443), &lab.tls).expect("TLS passes");
    assert_eq!(first.kill().code(), None, "SIGKILL");
    assert_eq!(
        agent::loaded_observer_programs(),
        baseline + agent::PROGRAMS_PER_AGENT,
        "the pinned links keep the programs"
    );

    // No agent: the kernel still drops the plaintext request (the client
    // waits), TLS still passes and is still counted.
    let waiting = {
        let cp = lab.topo.cp.name().to_owned();
        std::thread::spawn(move || {
            let ns = lab::cluster::netns::NetNs::existing(&cp);
            let start = Instant::now();
            // Long enough for the next agent to start, also under the
            // kernel matrix's software emulation.
            let waited = traffic::http_get_waiting(&ns, pod(8080), Duration::from_secs(60));
            (waited, start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    traffic::https_get(cp, pod(8443), &lab.tls).expect("TLS passes with no agent");

    // The next agent adopts the pins, finds the blocked connection and
    // resets it (the client gets a reset, not its 5 s timeout).
    let second = start(Some(block));
    let (result, took) = waiting.join().expect("client thread");
    let err = result.expect_err("blocked while no agent ran");
    assert!(
        is_reset(&err),
        "reset by the restarted agent, got {err:?} after {took:?}"
    );
    assert_eq!(
        lab.server(8080).requests(),
        Vec::<String>::new(),
        "no plaintext request reached the pod"
    );
    agent::programs_settle_at(baseline + agent::PROGRAMS_PER_AGENT);
    let m = second.scrape();
    assert_eq!(
        m.sum(C, &[("protocol", "http"), ("verdict", "blocked")]),
        2.0,
        "counters continued across the restart"
    );
    assert_eq!(
        m.sum(C, &[("protocol", "tls"), ("verdict", "allowed")]),
        2.0
    );
    let events = eventually(
        Duration::from_secs(5),
        "the next agent prints events",
        || {
            let lines = second.stdout_lines();
            (!lines.is_empty()).then_some(lines)
        },
    );
    assert!(
        events.iter().any(|e| e.contains("\"verdict\":\"blocked\"")),
        "the block raised while no agent ran is reported by the next one: {events:?}"
    );

    // A new policy replaces the old one: plaintext passes (and is alerted).
    assert!(second.stop().success());
    assert_eq!(
        agent::loaded_observer_programs(),
        baseline + agent::PROGRAMS_PER_AGENT,
        "SIGTERM with pins leaves the programs attached"
    );
    let third = start(None);
    agent::programs_settle_at(baseline + agent::PROGRAMS_PER_AGENT);
    let ok = traffic::http_get(cp, pod(8080)).expect("no longer blocked");
    assert!(ok.status.contains("200"));
    assert_eq!(alerted_http(&third), 1.0);
    assert!(third.stop().success());

    let out = cleanup();
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent::programs_settle_at(baseline);
    assert!(
        !Path::new(PIN_DIR).exists(),
        "cleanup removes the pin directory"
    );
}

/// The pinned flow tables, their filter and their count are kept or
/// dropped together: a new capacity drops them all, and tables pinned
/// without their filter (an older agent's) are dropped rather than adopted
/// with counts that miss them.
#[test]
fn the_flow_table_and_its_filter_are_one_piece_of_state() {
    use observer::{
        cli::RunArgs,
        config::Settings,
        ebpf::{self, Datapath},
        pin,
    };
    let dir = Path::new("/sys/fs/bpf/cp-observer-test-filter-pins");
    let _ = std::fs::remove_dir_all(dir);
    let load = |capacity: u32| {
        let args = RunArgs {
            control_plane: vec![addrs::CP4.to_string().parse().expect("cidr")],
            flow_table_capacity: Some(capacity),
            pin_dir: Some(dir.to_owned()),
            ..RunArgs::default()
        };
        drop(Datapath::load(&Settings::from_args(&args).expect("settings")).expect("load"));
    };
    let dropped = |capacity: u32| -> Vec<&str> {
        let shapes = ebpf::state_map_shapes(capacity).expect("the object's shapes");
        pin::check_maps(dir, &shapes)
            .expect("trusted pins")
            .into_iter()
            .map(|d| d.name)
            .collect()
    };
    load(1024);
    assert!(dir.join("FLOWS").exists() && dir.join("FLOW_FILTER").exists());
    assert_eq!(
        dropped(1024),
        Vec::<&str>::new(),
        "same shapes: everything kept"
    );
    assert_eq!(
        dropped(2048),
        ["FLOWS", "HALF_OPEN", "FLOW_FILTER", "FLOW_COUNT"],
        "a new capacity drops the tables, their filter and their count"
    );
    load(1024);
    std::fs::remove_file(dir.join("FLOW_FILTER")).expect("filter pinned");
    assert_eq!(
        dropped(1024),
        ["FLOWS", "HALF_OPEN", "FLOW_COUNT"],
        "tables without their filter are not adopted"
    );
    assert!(!dir.join("FLOWS").exists());
    std::fs::remove_dir_all(dir).expect("remove the test pins");
}

/// A connection busy while no agent ran is not taken for idle by the next
/// agent. Its segments were stamped with the clock the killed agent left;
/// the new agent's first sweep waits one idle timeout, so a connection
/// quiet for less than the timeout around the restart is still tracked
/// (a sweep at the usual interval would find its stamp old and drop it).
#[test]
fn a_connection_busy_while_no_agent_ran_is_not_expired() {
    use std::{
        io::{Read as _, Write as _},
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
    };
    let _ = cleanup();
    let lab = Lab::new("t-busy");
    let server =
        traffic::Server::start(lab.ns(Where::Pod), pod(9090), traffic::Kind::Echo, &lab.tls);
    let agent_args = || {
        let mut args = Topology::agent_args();
        args.extend(["--pin-dir", PIN_DIR, "--flow-idle-timeout", "2"].map(str::to_owned));
        args
    };
    let first = Agent::start(&agent_args());
    // apiserver-proxy-to-pod: one byte each way every 100 ms while `busy`.
    let busy = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let cp = lab.topo.cp.name().to_owned();
        let (busy, done) = (busy.clone(), done.clone());
        std::thread::spawn(move || {
            lab::cluster::netns::NetNs::existing(&cp).run(|| {
                let mut s = std::net::TcpStream::connect(pod(9090))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut n = 0u64;
                let deadline = Instant::now() + Duration::from_secs(30);
                while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if busy.load(Ordering::Relaxed) {
                        s.write_all(b"x")?;
                        s.read_exact(&mut [0u8; 1])?;
                        n += 1;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                io::Result::Ok(n)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(first.kill().code(), None, "SIGKILL");
    // Busy with no agent: stamped with the killed agent's last clock.
    std::thread::sleep(Duration::from_secs(2));
    // Quiet across the restart, for less than the 2 s timeout.
    busy.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(150));
    let second = Agent::start(&agent_args());
    std::thread::sleep(Duration::from_millis(1500));
    busy.store(true, Ordering::Relaxed);
    // Past the new agent's first sweeps.
    std::thread::sleep(Duration::from_millis(1500));
    done.store(true, Ordering::Relaxed);
    let exchanged = client.join().expect("client thread").expect("echo works");
    let m = second.scrape();
    assert_eq!(m.sum("cp_observer_flows_expired_total", &[]), 0.0);
    assert_eq!(
        m.sum(
            "cp_observer_bytes_total",
            &[("path", "apiserver-proxy-to-pod"), ("direction", "rx")]
        ),
        exchanged as f64,
        "every byte toward the pod counted, across the restart"
    );
    assert!(second.stop().success());
    drop(server);
    assert!(cleanup().status.success());
}

/// A connection judged under the old policy is judged again under the new
/// one: plaintext that was only alerted on is blocked (and reset) once an
/// agent with `plaintext=block` adopts the pins; it does not keep passing
/// under the verdict it got before.
#[test]
fn a_new_policy_judges_adopted_connections_again() {
    use std::io::{Read as _, Write as _};
    let _ = cleanup();
    let lab = Lab::new("t-repolicy");
    // A server that logs every byte it receives, on a pod port no lab
    // server uses.
    let listener = lab
        .ns(Where::Pod)
        .run(|| std::net::TcpListener::bind(pod(9091)).expect("bind"));
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let log = received.clone();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            log.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    let first = start(None);
    let mut client = lab
        .ns(Where::ControlPlane)
        .run(|| std::net::TcpStream::connect(pod(9091)).expect("connect"));
    client.write_all(b"GET / HTTP/1.1\r\n").expect("first line");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(alerted_http(&first), 1.0);
    assert!(first.stop().success());

    let second = start(Some("apiserver-proxy-to-pod:plaintext=block"));
    // The adopted connection is blocked now: the rest of the request never
    // arrives, and the client is reset.
    let wrote = client.write_all(b"Host: x\r\n\r\n");
    let mut rest = [0u8; 16];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let got = client.read(&mut rest);
    // The reset shows on whichever call comes first after it; the next one
    // then reads the end of the connection.
    assert!(
        wrote.as_ref().is_err_and(is_reset)
            || got.as_ref().is_err_and(is_reset)
            || got.as_ref().is_ok_and(|n| *n == 0),
        "the adopted plaintext connection is reset: {wrote:?}, then {got:?}"
    );
    drop(client);
    server.join().expect("server thread");
    assert_eq!(
        String::from_utf8_lossy(&received.lock().expect("lock")),
        "GET / HTTP/1.1\r\n",
        "nothing after the new policy reached the pod"
    );
    assert!(second.scrape().sum("cp_observer_sockets_reset_total", &[]) >= 1.0);
    drop(second);
    let _ = cleanup();
}
