//! `cargo xtask lab`: a throwaway simulated node and control plane, the real
//! agent attached, a plaintext and a TLS apiserver-proxy request to a pod
//! plus one connection that matches no path, and the agent's per-path table.
//! Everything is removed on exit, also on Ctrl-C or failure.

use std::{net::SocketAddr, process::ExitCode};

use lab::{
    agent::{self, Agent},
    metrics::Metrics,
    netns,
    tls::Tls,
    topology::{Topology, addrs},
    traffic::{self, Kind, Server},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: cp-observer-lab --agent PATH   (run through `cargo xtask lab`)");
        return ExitCode::SUCCESS;
    }
    if let Some(i) = args.iter().position(|a| a == "--agent") {
        let path = args.get(i + 1).expect("--agent needs a path");
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var("CP_OBSERVER_BIN", path) };
    }
    cleanup_on_signals();
    match std::panic::catch_unwind(run) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("lab: some expectations were not met (see above)");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

/// Returns whether every expectation held.
fn run() -> bool {
    say("building the topology: control plane, node and pod namespaces");
    let topo = Topology::new("lab");
    let tls = Tls::self_signed(&[addrs::POD4.to_string(), addrs::POD6.to_string()]);
    let pod = |ip: std::net::IpAddr, port| SocketAddr::new(ip, port);
    let servers: Vec<Server> = [false, true]
        .into_iter()
        .flat_map(|v6| {
            [
                Server::start(&topo.pod, pod(Topology::pod_ip(v6), 8080), Kind::Http, &tls),
                Server::start(
                    &topo.pod,
                    pod(Topology::pod_ip(v6), 8443),
                    Kind::Https,
                    &tls,
                ),
            ]
        })
        .collect();

    say("starting the agent");
    let args = Topology::agent_args();
    println!("    {} run {}", agent::binary().display(), args.join(" "));
    let agent = Agent::start(&args);

    let mut expected_http = 0.0;
    let mut expected_tls = 0.0;
    for v6 in [false, true] {
        let ip = Topology::pod_ip(v6);
        say(&format!("apiserver proxy → pod {ip}:8080, plain HTTP"));
        report(traffic::http_get(&topo.cp, pod(ip, 8080)));
        expected_http += 1.0;
        say(&format!("apiserver proxy → pod {ip}:8443, HTTPS"));
        report(traffic::https_get(&topo.cp, pod(ip, 8443), &tls));
        expected_tls += 1.0;
        say(&format!(
            "node → pod {ip}:8080 (matches no path: must not be counted)"
        ));
        report(traffic::http_get(&topo.node, pod(ip, 8080)));
    }

    let m = agent.scrape();
    print_table(&m);
    let mut ok = true;
    let mut expect = |what: &str, got: f64, want: f64| {
        let mark = if got == want { "ok" } else { "MISMATCH" };
        println!("  {mark:8} {what}: {got} (want {want})");
        ok &= got == want;
    };
    println!("\nchecks:");
    let c = "cp_observer_connections_total";
    expect(
        "plaintext proxy connections",
        m.sum(
            c,
            &[("path", "apiserver-proxy-to-pod"), ("protocol", "http")],
        ),
        expected_http,
    );
    expect(
        "TLS proxy connections",
        m.sum(
            c,
            &[("path", "apiserver-proxy-to-pod"), ("protocol", "tls")],
        ),
        expected_tls,
    );
    expect(
        "all tracked connections",
        m.sum(c, &[]),
        expected_http + expected_tls,
    );
    expect(
        "pod servers saw requests",
        servers.iter().map(|s| s.requests().len() as f64).sum(),
        expected_http + expected_tls + 2.0,
    );

    say("stopping the agent and removing the lab");
    let status = agent.stop();
    drop(servers);
    drop(topo);
    println!(
        "agent exited with {status}; programs still loaded by cp-observer: {}",
        agent::loaded_observer_programs()
    );
    ok && status.success()
}

fn say(what: &str) {
    println!("\n== {what}");
}

fn report(r: std::io::Result<traffic::Exchange>) {
    match r {
        Ok(x) => println!(
            "    {} ({} bytes sent, {} received)",
            x.status, x.sent, x.received
        ),
        Err(e) => println!("    failed: {e}"),
    }
}

fn print_table(m: &Metrics) {
    println!(
        "\n{:<26} {:<9} {:<9} {:>11} {:>9} {:>9}",
        "PATH", "PROTOCOL", "VERDICT", "CONNECTIONS", "RX BYTES", "TX BYTES"
    );
    for s in m.nonzero("cp_observer_connections_total") {
        let path = s.labels["path"].as_str();
        let bytes = |d| {
            m.sum(
                "cp_observer_bytes_total",
                &[("path", path), ("direction", d)],
            )
        };
        println!(
            "{:<26} {:<9} {:<9} {:>11} {:>9} {:>9}",
            path,
            s.labels["protocol"],
            s.labels["verdict"],
            s.value,
            bytes("rx"),
            bytes("tx")
        );
    }
    println!("(bytes are per path, all protocols)");
}

/// Ctrl-C or SIGTERM: remove the namespaces (Drop will not run), then exit.
/// The signals are blocked in every thread and taken by one waiting thread,
/// so the cleanup runs outside signal-handler context. Children (the agent)
/// start with an empty mask and get the terminal's Ctrl-C themselves.
fn cleanup_on_signals() {
    // SAFETY: plain libc signal-set manipulation on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waits on the set blocked above.
        unsafe { libc::sigwait(&set, &mut sig) };
        eprintln!("\nlab: signal {sig}: stopping the agent and removing the lab");
        agent::terminate_all();
        netns::cleanup_all();
        std::process::exit(130);
    });
}
