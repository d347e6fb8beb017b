//! The kubelet serving certificate check, against TLS servers playing the
//! kubelet on the lab node: a self-signed certificate (what a kubelet makes
//! for itself by default) does not verify against the cluster CA, one the
//! cluster CA signed for the node's address does. Needs root.

use std::{net::SocketAddr, time::Duration};

use lab::{
    cluster::agent::Agent,
    cluster::metrics::Metrics,
    cluster::scenario::Lab,
    cluster::topology::{Topology, addrs},
    eventually, later,
    traffic::tls::Tls,
    traffic::{Kind, Server},
};

const VERIFIED: &str = "cp_observer_kubelet_serving_cert_verified";
const EXPIRY: &str = "cp_observer_kubelet_serving_cert_expiry_timestamp_seconds";

/// Starts the agent in the node namespace (where the kubelet is local)
/// and waits for the first check.
fn check(lab: &Lab, extra: &[String]) -> Metrics {
    let mut args = Topology::agent_args();
    args.extend(extra.iter().cloned());
    let agent = Agent::start_in(Some(lab.topo.node.name()), &args);
    let what = later(|| {
        format!(
            "the kubelet certificate is checked; stderr:\n{}",
            agent.stderr()
        )
    });
    eventually(Duration::from_secs(20), what, || {
        let m = agent.scrape();
        (m.sum(VERIFIED, &[]) != -1.0).then_some(m)
    })
}

fn write_ca(name: &str, pem: &str) -> String {
    let path = std::env::temp_dir().join(format!("cp-observer-{name}-{}.pem", std::process::id()));
    std::fs::write(&path, pem).expect("temp file");
    path.to_string_lossy().into_owned()
}

#[test]
fn a_self_signed_kubelet_certificate_does_not_verify() {
    let lab = Lab::new("t-kcert1"); // its kubelet on 10250 has a self-signed certificate
    let cluster = Tls::ca_signed(&[addrs::NODE4.to_string()], (2030, 1, 1));
    let ca = write_ca("cluster-ca-1", &cluster.ca_pem);
    let m = check(&lab, &["--kubelet-ca".to_owned(), ca.clone()]);
    assert_eq!(m.sum(VERIFIED, &[]), 0.0);
    assert!(
        m.sum(EXPIRY, &[]) > 1.7e9,
        "the expiry is read even when unverified"
    );
    let _ = std::fs::remove_file(ca);
}

#[test]
fn a_kubelet_certificate_signed_by_the_cluster_ca_verifies() {
    let lab = Lab::new("t-kcert2");
    let kubelet = Tls::ca_signed(&[addrs::NODE4.to_string()], (2030, 1, 1));
    let _server = Server::start(
        &lab.topo.node,
        SocketAddr::new(addrs::NODE4.into(), 11250),
        Kind::Https,
        &kubelet.tls,
    );
    let ca = write_ca("cluster-ca-2", &kubelet.ca_pem);
    let m = check(
        &lab,
        &[
            "--kubelet-ca".to_owned(),
            ca.clone(),
            "--kubelet-port".to_owned(),
            "11250".to_owned(),
        ],
    );
    assert_eq!(m.sum(VERIFIED, &[]), 1.0);
    assert_eq!(m.sum(EXPIRY, &[]), kubelet.not_after as f64);
    assert_eq!(kubelet.not_after, 1_893_456_000, "2030-01-01T00:00:00Z");
    let _ = std::fs::remove_file(ca);
}
