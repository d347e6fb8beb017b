//! Every path of the Kubernetes page with real traffic between network
//! namespaces, against the real agent: each connection must move exactly
//! its (path, protocol, verdict) series by one and the byte counters by
//! exactly what the client sent and received. Needs root; run through
//! `cargo xtask test`.

use lab::{
    cluster::agent::Agent,
    cluster::metrics::Metrics,
    cluster::scenario::{self, Lab, Where},
    cluster::topology::{Topology, addrs},
    traffic,
};
use observer_common::{
    path::Path,
    policy::{Action, Verdict},
};

const CONNECTIONS: &str = "cp_observer_connections_total";
const BYTES: &str = "cp_observer_bytes_total";

fn bytes(m: &Metrics, path: Path, dir: &str) -> f64 {
    m.sum(BYTES, &[("path", path.name()), ("direction", dir)])
}

#[test]
fn every_path_is_classified_with_exact_counts_and_bytes() {
    let lab = Lab::new("t-paths");
    let agent = Agent::start(&Topology::agent_args());
    let plan = scenario::plan();
    let mut before = agent.scrape();
    for step in &plan {
        let x = lab
            .run(step)
            .unwrap_or_else(|e| panic!("{}: the client failed: {e}", step.what));
        let after = agent.scrape();
        let grew = after.sum(CONNECTIONS, &[]) - before.sum(CONNECTIONS, &[]);
        match step.expect {
            None => assert_eq!(grew, 0.0, "{}: on no path, must not be counted", step.what),
            Some((path, protocol)) => {
                let verdict = Verdict::of(Action::default_for(path, protocol));
                let labels = [
                    ("path", path.name()),
                    ("protocol", protocol.name()),
                    ("verdict", verdict.name()),
                ];
                assert_eq!(
                    after.sum(CONNECTIONS, &labels) - before.sum(CONNECTIONS, &labels),
                    1.0,
                    "{}: counted as {labels:?} once; grew: {:?}",
                    step.what,
                    after.nonzero(CONNECTIONS)
                );
                assert_eq!(grew, 1.0, "{}: nothing else counted", step.what);
                // rx/tx are as seen by the node: what flows toward the node
                // or its pods is rx.
                let (rx, tx) = if path.server_is_local() {
                    (x.sent, x.received)
                } else {
                    (x.received, x.sent)
                };
                let d = |dir| bytes(&after, path, dir) - bytes(&before, path, dir);
                assert_eq!(
                    (d("rx"), d("tx")),
                    (rx as f64, tx as f64),
                    "{}: bytes (rx, tx)",
                    step.what
                );
            }
        }
        before = after;
    }
    let expected = scenario::expected_connections(&plan, &observer::policy::Policy::default());
    assert_eq!(
        before.sum(CONNECTIONS, &[]),
        expected.values().sum::<u64>() as f64
    );
    assert_eq!(before.sum("cp_observer_events_lost_total", &[]), 0.0);
}

/// More tracked connections at once than the flow table holds: the excess
/// is counted as lost, nothing hangs, and once they are gone, tracking is
/// exact again, also after a flood of untracked connections.
#[test]
fn a_full_flow_table_loses_visibly_and_recovers() {
    const CAPACITY: usize = 16;
    let lab = Lab::new("t-flood");
    let mut args = Topology::agent_args();
    args.extend(["--flow-table-capacity".to_owned(), CAPACITY.to_string()]);
    let agent = Agent::start(&args);
    let pod = std::net::SocketAddr::new(addrs::POD4.into(), 8080);

    // 40 proxy connections held open: 16 fit, 24 do not.
    let held: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            lab.ns(Where::ControlPlane)
                .run(move || std::net::TcpStream::connect(pod).expect("connect"))
        })
        .collect();
    let m = agent.scrape();
    assert_eq!(
        m.sum("cp_observer_flow_table_entries", &[]),
        CAPACITY as f64
    );
    assert_eq!(
        m.sum("cp_observer_flow_table_capacity", &[]),
        CAPACITY as f64
    );
    let lost = m.sum("cp_observer_events_lost_total", &[]);
    assert!(
        lost >= 24.0,
        "each connection that did not fit is visible as lost, got {lost}"
    );
    drop(held);

    // A flood of untracked connections (node → pod) larger than the table.
    for _ in 0..(4 * CAPACITY) {
        traffic::connect_close(lab.ns(Where::Node), pod).expect("node to pod");
    }
    lab::eventually(
        std::time::Duration::from_secs(5),
        "closed connections leave the table",
        || agent.scrape().sum("cp_observer_flow_table_entries", &[]) == 0.0,
    );
    let before = agent.scrape();
    for _ in 0..3 {
        let x = traffic::http_get(lab.ns(Where::ControlPlane), pod).expect("proxy request");
        assert!(x.status.contains("200"));
    }
    let after = agent.scrape();
    let labels = [("path", "apiserver-proxy-to-pod"), ("protocol", "http")];
    assert_eq!(
        after.sum(CONNECTIONS, &labels) - before.sum(CONNECTIONS, &labels),
        3.0
    );
    assert_eq!(
        after.sum("cp_observer_events_lost_total", &[]),
        lost,
        "no loss once there is room"
    );
}
