//! The `kubernetes` VIP translated by NAT on the node (as kube-proxy does):
//! the SYN carries the endpoint, not the VIP, yet `pod-to-apiserver` is
//! recognised from what the pod's `connect()` asked for. Needs root and
//! iptables (`cargo xtask test` installs it).

use std::net::SocketAddr;

use lab::{
    cluster::agent::Agent,
    cluster::scenario::{Lab, Where},
    cluster::topology::addrs,
    traffic,
};

const C: &str = "cp_observer_connections_total";

#[test]
fn a_vip_translated_by_nat_is_still_the_apiserver() {
    let lab = Lab::new("t-nat");
    let vip = SocketAddr::new(addrs::VIP4.into(), addrs::VIP_PORT);
    let endpoint = SocketAddr::new(addrs::CP4.into(), addrs::APISERVER_PORT);
    // kube-proxy's rule, in the pod's namespace: VIP → endpoint.
    lab.topo.pod.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        &addrs::VIP4.to_string(),
        "--dport",
        &addrs::VIP_PORT.to_string(),
        "-j",
        "DNAT",
        "--to-destination",
        &endpoint.to_string(),
    ]);

    // Only the VIP is configured: the endpoint itself is not an apiserver
    // endpoint for the agent.
    let args: Vec<String> = [
        "--control-plane",
        &addrs::CP4.to_string(),
        "--node-ip",
        &addrs::NODE4.to_string(),
        "--pod-cidr",
        addrs::POD_CIDR4,
        "--apiserver-vip",
        &vip.to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let agent = Agent::start(&args);

    let x = traffic::https_get(lab.ns(Where::Pod), vip, &lab.tls)
        .expect("the pod reaches the apiserver through the VIP");
    assert!(x.status.contains("200"));
    let m = agent.scrape();
    assert_eq!(
        m.sum(C, &[("path", "pod-to-apiserver"), ("protocol", "tls")]),
        1.0,
        "the translated connection is pod-to-apiserver: {:?}",
        m.nonzero(C)
    );

    // Control: dialling the endpoint directly is on no path here.
    traffic::https_get(lab.ns(Where::Pod), endpoint, &lab.tls).expect("direct");
    assert_eq!(
        agent.scrape().sum(C, &[]),
        1.0,
        "only the VIP connection counts"
    );
}
