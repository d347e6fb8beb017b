//! The real agent binary against real traffic between network namespaces.
//! Needs root; run through `cargo xtask test` (which sets `CP_OBSERVER_BIN`).

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use lab::{
    cluster::agent::{self, Agent},
    cluster::scenario::Lab,
    cluster::topology::{Host, Topology, addrs},
    eventually, traffic,
};

const CONNECTIONS: &str = "cp_observer_connections_total";
const BYTES: &str = "cp_observer_bytes_total";
const PROXY: (&str, &str) = ("path", "apiserver-proxy-to-pod");

/// How long kernel state may take to settle (e.g. after the last FIN of a
/// connection).
const SETTLE: Duration = Duration::from_secs(5);

#[test]
fn proxy_requests_are_classified_and_counted_once_per_family() {
    let lab = Lab::new("t-proxy");
    let agent = Agent::start(&Topology::agent_args());
    assert_eq!(
        agent.scrape().sum(CONNECTIONS, &[]),
        0.0,
        "nothing counted before traffic"
    );

    let (mut sent, mut received) = (0, 0);
    for (round, v6) in [false, true].into_iter().enumerate() {
        let ip: IpAddr = Host::Pod.ip(v6);
        let http = traffic::http_get(&lab.topo.cp, SocketAddr::new(ip, 8080))
            .expect("plaintext proxy request");
        let tls = traffic::https_get(&lab.topo.cp, SocketAddr::new(ip, 8443), &lab.tls)
            .expect("TLS proxy request");
        assert!(
            http.status.contains("200") && tls.status.contains("200"),
            "{http:?} {tls:?}"
        );
        // The node talking to its pod is on no path: it must not be counted.
        traffic::http_get(&lab.topo.node, SocketAddr::new(ip, 8080)).expect("node to pod request");
        sent += http.sent + tls.sent;
        received += http.received + tls.received;

        let n = (round + 1) as f64;
        let m = agent.scrape();
        let family = if v6 { "IPv6" } else { "IPv4" };
        assert_eq!(
            m.sum(
                CONNECTIONS,
                &[PROXY, ("protocol", "http"), ("verdict", "alerted")]
            ),
            n,
            "{family}: plaintext proxy request"
        );
        assert_eq!(
            m.sum(
                CONNECTIONS,
                &[PROXY, ("protocol", "tls"), ("verdict", "allowed")]
            ),
            n,
            "{family}: TLS proxy request"
        );
        assert_eq!(
            m.sum(CONNECTIONS, &[]),
            2.0 * n,
            "{family}: exactly the two proxy connections, each once: {:?}",
            m.nonzero(CONNECTIONS)
        );
        assert_eq!(
            m.sum(
                "cp_observer_policy_violations_total",
                &[PROXY, ("protocol", "http"), ("action", "alert")]
            ),
            n,
            "{family}: plaintext is a violation under the default policy"
        );
        assert_eq!(
            m.sum("cp_observer_policy_violations_total", &[]),
            n,
            "{family}: TLS is no violation"
        );
        // Both ends of these connections live on this machine, so every
        // segment passes two hooks; bytes must still count once.
        assert_eq!(
            m.sum(BYTES, &[PROXY, ("direction", "rx")]),
            sent as f64,
            "{family}: bytes the pod received"
        );
        assert_eq!(
            m.sum(BYTES, &[PROXY, ("direction", "tx")]),
            received as f64,
            "{family}: bytes the pod sent"
        );
    }
    eventually(SETTLE, "closed connections leave the flow table", || {
        agent.scrape().sum("cp_observer_flow_table_entries", &[]) == 0.0
    });
    let m = agent.scrape();
    assert_eq!(m.sum("cp_observer_flow_table_capacity", &[]), 65536.0);
    assert_eq!(m.sum("cp_observer_events_lost_total", &[]), 0.0);
    assert_eq!(
        m.sum(
            "cp_observer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(agent.get("/healthz").map(|(code, _)| code), Some(200));
}

/// Runs the agent with `args` and expects a quick failure.
fn run_failing(args: &[&str]) -> String {
    let out = Command::new(agent::binary())
        .arg("run")
        .args(args)
        .output()
        .expect("the agent binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "cp-observer run {args:?} should fail; stderr:\n{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "stdout is for events only, got {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn bad_input_fails_naming_the_culprit_and_attaches_nothing() {
    let before = agent::loaded_observer_programs();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let busy_addr = busy.local_addr().expect("its address").to_string();
    let config = std::env::temp_dir().join(format!("cp-observer-bad-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "pod_cidr = [\"10.0.0.0/8\"]\ncontrol_plane = \"oops\"\n",
    )
    .expect("temp file");
    let config = config.to_string_lossy().into_owned();
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["--policy", "apiserver-proxy-to-pods:http=block"],
            &["--policy", "'apiserver-proxy-to-pods' in"],
        ),
        (
            &["--policy", "apiserver-proxy-to-pod:http=deny"],
            &["--policy", "'deny'"],
        ),
        (
            &[
                "--policy",
                "ssh-tunnel:*=block",
                "--policy",
                "ssh-tunnel:*=allow",
            ],
            &["'ssh-tunnel:*=block' and 'ssh-tunnel:*=allow' contradict each other"],
        ),
        (&["--pod-cidr", "banana"], &["--pod-cidr", "banana"]),
        (
            &["--control-plane", "10.0.0.0/40"],
            &["--control-plane", "10.0.0.0/40"],
        ),
        (
            &["--cgroup", "/proc"],
            &["--cgroup /proc is not a cgroup v2 mount"],
        ),
        (
            &["--metrics-addr", &busy_addr],
            &["--metrics-addr", &busy_addr],
        ),
        (&["--config", &config], &[&config, "control_plane"]),
    ];
    for (args, wanted) in cases {
        let stderr = run_failing(args);
        for w in wanted {
            assert!(
                stderr.contains(w),
                "{args:?}: stderr should name {w:?}:\n{stderr}"
            );
        }
        assert!(
            stderr.trim().lines().count() <= 3,
            "{args:?}: one clear sentence, got:\n{stderr}"
        );
        assert_eq!(
            agent::loaded_observer_programs(),
            before,
            "{args:?} left programs loaded"
        );
    }
    let _ = std::fs::remove_file(&config);
}

#[test]
fn sigterm_detaches_and_exits_cleanly() {
    let before = agent::loaded_observer_programs();
    let agent = Agent::start(&["--control-plane".into(), addrs::CP4.to_string()]);
    assert_eq!(
        agent::loaded_observer_programs(),
        before + agent::PROGRAMS_PER_AGENT,
        "all four programs are loaded"
    );
    let status = agent.stop();
    assert!(status.success(), "SIGTERM gives a clean exit, got {status}");
    assert_eq!(
        agent::loaded_observer_programs(),
        before,
        "nothing stays loaded after SIGTERM"
    );
}

#[test]
fn idle_connections_are_forgotten_after_the_timeout() {
    let lab = Lab::new("t-idle");
    let mut args = Topology::agent_args();
    args.extend(["--flow-idle-timeout".to_owned(), "1".to_owned()]);
    let agent = Agent::start(&args);
    let pod = SocketAddr::new(addrs::POD4.into(), 8080);
    let held = lab
        .topo
        .cp
        .run(move || std::net::TcpStream::connect(pod).expect("connect"));
    assert_eq!(
        agent.scrape().sum("cp_observer_flow_table_entries", &[]),
        1.0
    );
    eventually(SETTLE, "the idle connection leaves the table", || {
        agent.scrape().sum("cp_observer_flow_table_entries", &[]) == 0.0
    });
    assert_eq!(
        agent.scrape().sum("cp_observer_flows_expired_total", &[]),
        1.0
    );
    drop(held);
}

/// The kernel's role trie has a fixed size (4096 prefixes): addresses given
/// by flags that do not fit are a start-up error naming the map and the
/// flags, and nothing is left loaded (discovery, which cannot refuse, counts
/// what does not fit instead: `cp_observer_discovery_overflow`).
#[test]
fn more_addresses_than_the_role_trie_holds_are_refused_at_start() {
    let before = agent::loaded_observer_programs();
    let addrs: Vec<String> = (0..5000u32)
        .map(|i| format!("\"10.{}.{}.1\"", i / 256, i % 256))
        .collect();
    let config = std::env::temp_dir().join(format!("cp-observer-big-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "no_pin = true\nno_discovery = true\ncontrol_plane = [{}]\n",
            addrs.join(", ")
        ),
    )
    .expect("temp file");
    let stderr = run_failing(&["--config", &config.to_string_lossy()]);
    let _ = std::fs::remove_file(&config);
    // Refused before anything is loaded, naming the capacity and the flag
    // that gave the prefixes.
    assert!(
        stderr.contains("--role-trie-capacity 4096") && stderr.contains("--control-plane"),
        "{stderr}"
    );
    assert_eq!(
        agent::loaded_observer_programs(),
        before,
        "programs left loaded"
    );
}
