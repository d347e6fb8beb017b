//! `cargo xtask lab`: a throwaway simulated node and control plane, the real
//! agent attached, one connection on every path of the Kubernetes page (and
//! two on no path), and the agent's per-path table checked against the plan.
//! Everything is removed on exit, also on Ctrl-C or failure.

use std::process::ExitCode;

use observer::policy::Policy;
use observer_common::policy::Verdict;

use lab::{
    cluster::agent::{self, Agent},
    cluster::metrics::Metrics,
    cluster::scenario::{self, Lab},
    cluster::topology::Topology,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: cp-observer-lab --agent PATH [--enforce] [--kube]   (run through `cargo xtask lab`)"
        );
        println!(
            "  --enforce   block plaintext apiserver-proxy-to-pod connections ({ENFORCE_RULE})"
        );
        println!(
            "  --kube      a real kube-apiserver on the control plane; the agent uses discovery only"
        );
        return ExitCode::SUCCESS;
    }
    if let Some(i) = args.iter().position(|a| a == "--agent") {
        let path = args.get(i + 1).expect("--agent needs a path");
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var("CP_OBSERVER_BIN", path) };
    }
    let enforce = args.iter().any(|a| a == "--enforce");
    let kube = args.iter().any(|a| a == "--kube");
    lab::cluster::signals::cleanup_on_signals("lab");
    match std::panic::catch_unwind(|| {
        if kube {
            run_kube(enforce)
        } else {
            run(enforce)
        }
    }) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("lab: some expectations were not met (see above)");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

/// The rule `--enforce` adds.
const ENFORCE_RULE: &str = "apiserver-proxy-to-pod:plaintext=block";

/// Returns whether every expectation held.
fn run(enforce: bool) -> bool {
    say("building the lab: control plane, node and pod namespaces, and their servers");
    let lab = Lab::new("lab");

    say("starting the agent");
    let mut args = Topology::agent_args();
    let rules: Vec<observer::policy::Rule> = if enforce {
        vec![ENFORCE_RULE.parse().expect("a valid rule")]
    } else {
        vec![]
    };
    if enforce {
        args.extend(["--policy".to_owned(), ENFORCE_RULE.to_owned()]);
    }
    let policy = Policy::new(&rules, false).expect("no contradiction");
    println!("    {} run {}", agent::binary().display(), args.join(" "));
    let agent = Agent::start(&args);

    say("driving one connection per path (IPv4 and IPv6)");
    let plan = scenario::plan();
    let mut ok = true;
    let mut before = agent.scrape();
    for step in &plan {
        let expect = step.expect.map_or("no path".to_owned(), |(p, q)| {
            format!("{}/{}", p.name(), q.name())
        });
        let blocked = scenario::verdict(step, &policy) == Some(Verdict::Blocked);
        let result = lab.run(step);
        let after = agent.scrape();
        let seen = counted(&before, &after);
        before = after;
        let outcome = match (&result, blocked) {
            (Ok(x), false) => format!("{} ({})", step.to, x.status),
            (Err(e), true) => format!("{} (BLOCKED: {e})", step.to),
            (Ok(x), true) => {
                ok = false;
                format!("{} ({}) SHOULD HAVE BEEN BLOCKED", step.to, x.status)
            }
            (Err(e), false) => {
                ok = false;
                format!("{} FAILED: {e}", step.to)
            }
        };
        println!(
            "    {:<60} {:<56} expect {expect}, agent counted {seen}",
            step.what, outcome
        );
    }

    let m = before;
    print_table(&m);
    println!("\nchecks against the plan:");
    let expected = scenario::expected_connections(&plan, &policy);
    let c = "cp_observer_connections_total";
    for ((path, protocol, verdict), want) in &expected {
        let got = m.sum(
            c,
            &[("path", path), ("protocol", protocol), ("verdict", verdict)],
        );
        ok &= check(&format!("{path}/{protocol}/{verdict}"), got, *want as f64);
    }
    ok &= check(
        "all tracked connections",
        m.sum(c, &[]),
        expected.values().sum::<u64>() as f64,
    );
    ok &= check(
        "lost events",
        m.sum("cp_observer_events_lost_total", &[]),
        0.0,
    );
    // A violation that may carry a request head is printed once its head
    // is whole, or at most 500 ms after it was read (README, "Request
    // attribution"): wait that long, and more on a slow machine.
    let violations = m.sum("cp_observer_policy_violations_total", &[]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut events = agent.stdout_lines();
    while (events.len() as f64) < violations && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
        events = agent.stdout_lines();
    }
    ok &= check(
        "JSON events (one per violation)",
        events.len() as f64,
        violations,
    );
    println!("\nfirst events on the agent's stdout:");
    for line in events.iter().take(3) {
        println!("    {line}");
    }

    report_usage(&agent);
    say("stopping the agent and removing the lab");
    let status = agent.stop();
    drop(lab);
    println!(
        "agent exited with {status}; cp-observer programs still loaded: {}",
        agent::loaded_observer_programs()
    );
    ok && status.success()
}

/// `--kube`: a real kube-apiserver and etcd on the control plane, and the
/// agent on the node with no cluster flags at all: it learns the control
/// plane, endpoint, VIP, node addresses, pod CIDRs and konnectivity agents
/// from the apiserver, then sees the apiserver's own connections.
fn run_kube(enforce: bool) -> bool {
    use lab::{cluster::kube::ControlPlane, cluster::topology::addrs, traffic};
    use std::net::SocketAddr;

    say("building the lab and starting etcd and kube-apiserver on the control plane");
    let lab = Lab::for_real_control_plane("lab");
    let cp = ControlPlane::start(&lab.topo.cp);
    cp.register_lab_objects();
    let konnectivity = cp.add_konnectivity_agent(&lab.topo.pod);

    say("starting the agent on the node with discovery only");
    let mut args = cp.discovery_args();
    if enforce {
        args.extend(["--policy".to_owned(), ENFORCE_RULE.to_owned()]);
    }
    println!("    {} run {}", agent::binary().display(), args.join(" "));
    let agent = Agent::start_in(Some(lab.topo.node.name()), &args);
    agent.wait_for_complete_discovery();
    for s in agent.scrape().nonzero("cp_observer_discovered") {
        println!("    discovered {}: {}", s.labels["kind"], s.value);
    }

    say("the apiserver's own connections, and the node's and pods' to it");
    let kubectl = |path: &str| {
        let out = cp.kubectl(&["get", "--raw", path]);
        if out.status.success() {
            Ok(format!("{} bytes", out.stdout.len()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    };
    let node_ep = SocketAddr::new(addrs::CP4.into(), addrs::APISERVER_PORT);
    let vip = SocketAddr::new(addrs::VIP4.into(), addrs::VIP_PORT);
    let kubelet = SocketAddr::new(addrs::NODE4.into(), 10250);
    let ro = SocketAddr::new(addrs::NODE4.into(), 10255);
    let io = |r: std::io::Result<traffic::Exchange>| r.map(|x| x.status).map_err(|e| e.to_string());
    type Step<'a> = (
        &'a str,
        Box<dyn Fn() -> Result<String, String> + 'a>,
        &'a str,
    );
    let steps: Vec<Step> = vec![
        (
            "kubectl get --raw .../pods/web:8080/proxy/",
            Box::new(|| kubectl("/api/v1/namespaces/default/pods/web:8080/proxy/")),
            "apiserver-proxy-to-pod/http",
        ),
        (
            "kubectl get --raw .../pods/https:web:8443/proxy/",
            Box::new(|| kubectl("/api/v1/namespaces/default/pods/https:web:8443/proxy/")),
            "apiserver-proxy-to-pod/tls",
        ),
        (
            "kubectl get --raw .../nodes/lab-node:10250/proxy/healthz",
            Box::new(|| kubectl("/api/v1/nodes/lab-node:10250/proxy/healthz")),
            "apiserver-to-kubelet/tls",
        ),
        (
            "konnectivity agent pod connects to the kubelet",
            Box::new(|| {
                traffic::connect_close_from(&lab.topo.pod, konnectivity, kubelet)
                    .map(|()| "closed".into())
                    .map_err(|e| e.to_string())
            }),
            "apiserver-to-kubelet/none",
        ),
        (
            "node connects to the apiserver endpoint",
            Box::new(|| io(traffic::connect_close(&lab.topo.node, node_ep))),
            "node-to-apiserver/none",
        ),
        (
            "pod connects to the kubernetes VIP (no kube-proxy here)",
            Box::new(|| io(traffic::connect_close(&lab.topo.pod, vip))),
            "pod-to-apiserver/none",
        ),
        (
            "pod reads the kubelet's read-only port",
            Box::new(|| io(traffic::http_get(&lab.topo.pod, ro))),
            "kubelet-read-only/http",
        ),
    ];
    let mut ok = true;
    let mut before = agent.scrape();
    for (what, run, expect) in &steps {
        let result = run();
        let after = agent.scrape();
        let seen = counted(&before, &after);
        before = after;
        let outcome = match &result {
            Ok(s) => s.clone(),
            Err(e) => format!("FAILED: {}", e.lines().last().unwrap_or_default()),
        };
        let blocked = enforce && *expect == "apiserver-proxy-to-pod/http";
        ok &= seen == *expect && (result.is_ok() != blocked || expect.ends_with("/none"));
        println!("    {what:<58} {outcome:<40} expect {expect}, agent counted {seen}");
    }
    print_table(&before);
    println!("\nfirst events on the agent's stdout:");
    for line in agent.stdout_lines().iter().take(3) {
        println!("    {line}");
    }
    report_usage(&agent);
    say("stopping the agent and removing the lab");
    let status = agent.stop();
    drop(steps);
    drop(cp);
    drop(lab);
    println!("agent exited with {status}");
    ok && status.success()
}

/// The agent's peak memory and CPU time, measured by the lab.
fn report_usage(agent: &Agent) {
    let (rss, cpu) = agent.usage();
    println!(
        "\nagent: peak RSS {:.1} MiB, CPU {:.2} s",
        rss as f64 / 1024.0,
        cpu.as_secs_f64()
    );
}

/// The connection series that grew between two scrapes, as `path/protocol`.
fn counted(before: &Metrics, after: &Metrics) -> String {
    let c = "cp_observer_connections_total";
    let grown: Vec<String> = after
        .nonzero(c)
        .into_iter()
        .filter(|s| {
            let labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            s.value > before.sum(c, &labels)
        })
        .map(|s| format!("{}/{}", s.labels["path"], s.labels["protocol"]))
        .collect();
    if grown.is_empty() {
        "nothing".to_owned()
    } else {
        grown.join(" + ")
    }
}

fn check(what: &str, got: f64, want: f64) -> bool {
    let mark = if got == want { "ok" } else { "MISMATCH" };
    println!("  {mark:8} {what}: {got} (want {want})");
    got == want
}

fn say(what: &str) {
    println!("\n== {what}");
}

/// One row per path with its protocols; bytes per path.
fn print_table(m: &Metrics) {
    println!(
        "\n{:<24} {:<72} {:>11} {:>9} {:>9}",
        "PATH", "PROTOCOL:VERDICT=CONNECTIONS", "CONNECTIONS", "RX BYTES", "TX BYTES"
    );
    for path in observer_common::path::Path::ALL {
        let name = path.name();
        let c = "cp_observer_connections_total";
        let parts: Vec<String> = m
            .nonzero(c)
            .into_iter()
            .filter(|s| s.labels["path"] == name)
            .map(|s| {
                format!(
                    "{}:{}={}",
                    s.labels["protocol"], s.labels["verdict"], s.value
                )
            })
            .collect();
        let bytes = |d| {
            m.sum(
                "cp_observer_bytes_total",
                &[("path", name), ("direction", d)],
            )
        };
        println!(
            "{:<24} {:<72} {:>11} {:>9} {:>9}",
            name,
            if parts.is_empty() {
                "-".to_owned()
            } else {
                parts.join(" ")
            },
            m.sum(c, &[("path", name)]),
            bytes("rx"),
            bytes("tx")
        );
    }
}
