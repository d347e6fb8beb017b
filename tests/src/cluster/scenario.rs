//! The lab's traffic plan: every path of the Kubernetes page, driven for
//! real across the namespaces, with the count the agent must report for each.
//! The lab program prints it; `tests/tests/paths.rs` asserts it.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
};

use observer::policy::Policy;
use observer_common::{
    path::Path,
    policy::{self, Verdict},
    protocol::Protocol,
};

use crate::{
    cluster::{
        netns::NetNs,
        topology::{Host, Topology, addrs},
    },
    traffic::{self, Exchange, Kind, Server, tls::Tls},
};

/// The topology, a certificate for every lab address, and every server.
#[derive(Debug)]
pub struct Lab {
    /// The namespaces.
    pub topo: Topology,
    /// TLS material trusted by the lab's clients.
    pub tls: Tls,
    /// The servers, kept alive.
    pub servers: Vec<Server>,
}

/// Who listens where (dual-stack sockets: one per port serves both families).
const SERVERS: &[(Where, u16, Kind)] = &[
    (Where::Pod, 8080, Kind::Http),
    (Where::Pod, 8443, Kind::Https),
    (Where::Pod, 8081, Kind::H2c),
    (Where::Node, 10250, Kind::Https), // the kubelet
    (Where::Node, 10255, Kind::Http),  // the kubelet's read-only port
    (Where::Node, 22, Kind::Ssh),
    (Where::Node, 9100, Kind::Http), // something else on the node (node-exporter)
    (Where::ControlPlane, addrs::APISERVER_PORT, Kind::Https),
    (Where::ControlPlane, addrs::VIP_PORT, Kind::Https),
    (Where::ControlPlane, 8132, Kind::Https), // the konnectivity server
];

/// One of the lab's hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// The control plane namespace.
    ControlPlane,
    /// The node namespace.
    Node,
    /// The pod namespace.
    Pod,
}

/// What a client does.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// `GET /` over HTTP/1.1.
    Http,
    /// `GET /` with the request written one byte per TCP segment.
    HttpSplit,
    /// `GET /` over TLS.
    Https,
    /// The h2c preface.
    H2c,
    /// The SSH identification exchange (server first).
    Ssh,
    /// Bytes of no known protocol.
    Raw,
    /// Connect, then close without payload.
    Close,
}

/// One connection of the plan.
#[derive(Clone, Debug)]
pub struct Step {
    /// What it stands for.
    pub what: &'static str,
    /// The client's host.
    pub from: Where,
    /// The server's address.
    pub to: SocketAddr,
    /// What the client does.
    pub client: Client,
    /// The path and protocol the agent must report, `None` if untracked.
    pub expect: Option<(Path, Protocol)>,
}

impl Lab {
    /// Builds the topology and starts every server.
    pub fn new(tag: &str) -> Self {
        Self::with_servers(tag, |_| true)
    }

    /// The lab for a real apiserver: no stand-in servers on the control plane.
    pub fn for_real_control_plane(tag: &str) -> Self {
        Self::with_servers(tag, |at| at != Where::ControlPlane)
    }

    fn with_servers(tag: &str, keep: impl Fn(Where) -> bool) -> Self {
        let topo = Topology::new(tag);
        let names: Vec<String> = [
            IpAddr::from(addrs::POD4),
            addrs::POD6.into(),
            addrs::NODE4.into(),
            addrs::NODE6.into(),
            addrs::CP4.into(),
            addrs::CP6.into(),
            addrs::VIP4.into(),
            addrs::VIP6.into(),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let tls = Tls::self_signed(&names);
        let servers = SERVERS
            .iter()
            .filter(|(at, _, _)| keep(*at))
            .map(|(at, port, kind)| {
                let any: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, *port).into();
                Server::start(topo_ns(&topo, *at), any, *kind, &tls)
            })
            .collect();
        Self { topo, tls, servers }
    }

    /// The server listening on `port`.
    pub fn server(&self, port: u16) -> &Server {
        self.servers
            .iter()
            .find(|s| s.addr().port() == port)
            .unwrap_or_else(|| panic!("no lab server on port {port}"))
    }

    /// The namespace of a host.
    pub fn ns(&self, at: Where) -> &NetNs {
        topo_ns(&self.topo, at)
    }

    /// Runs one step's client.
    pub fn run(&self, step: &Step) -> io::Result<Exchange> {
        let ns = self.ns(step.from);
        match step.client {
            Client::Http => traffic::http_get(ns, step.to),
            Client::HttpSplit => traffic::http_get_split(ns, step.to, 1),
            Client::Https => traffic::https_get(ns, step.to, &self.tls),
            Client::H2c => traffic::h2c_hello(ns, step.to),
            Client::Ssh => traffic::ssh_hello(ns, step.to),
            Client::Raw => {
                traffic::raw(ns, step.to, b"\x00\x00\x00\x2a\x01\x02not a known protocol")
            }
            Client::Close => traffic::connect_close(ns, step.to),
        }
    }
}

fn topo_ns(topo: &Topology, at: Where) -> &NetNs {
    match at {
        Where::ControlPlane => &topo.cp,
        Where::Node => &topo.node,
        Where::Pod => &topo.pod,
    }
}

/// Every step of the plan, for both families, plus an IPv4 connection made
/// from an IPv6 socket (IPv4-mapped destination).
pub fn plan() -> Vec<Step> {
    use Client as A;
    use Path as P;
    use Protocol as Q;
    use Where::{ControlPlane as Cp, Node, Pod};
    let mut steps = Vec::new();
    for v6 in [false, true] {
        let [cp, node, pod, vip] =
            [Host::ControlPlane, Host::Node, Host::Pod, Host::Vip].map(|h| h.ip(v6));
        let at = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
        let mut add = |what, from, to, client, expect| {
            steps.push(Step {
                what,
                from,
                to,
                client,
                expect,
            })
        };
        add(
            "pod reads the kubelet's read-only port",
            Pod,
            at(node, 10255),
            A::Http,
            Some((P::KubeletReadOnly, Q::Http)),
        );
        add(
            "apiserver calls the kubelet (logs/exec)",
            Cp,
            at(node, 10250),
            A::Https,
            Some((P::ApiserverToKubelet, Q::Tls)),
        );
        add(
            "apiserver opens an SSH tunnel",
            Cp,
            at(node, 22),
            A::Ssh,
            Some((P::SshTunnel, Q::Ssh)),
        );
        add(
            "apiserver proxy to a pod, plain HTTP",
            Cp,
            at(pod, 8080),
            A::Http,
            Some((P::ApiserverProxyToPod, Q::Http)),
        );
        add(
            "apiserver proxy to a pod, request split in 1-byte segments",
            Cp,
            at(pod, 8080),
            A::HttpSplit,
            Some((P::ApiserverProxyToPod, Q::Http)),
        );
        add(
            "apiserver proxy to a pod, HTTPS",
            Cp,
            at(pod, 8443),
            A::Https,
            Some((P::ApiserverProxyToPod, Q::Tls)),
        );
        add(
            "apiserver proxy to a pod, h2c",
            Cp,
            at(pod, 8081),
            A::H2c,
            Some((P::ApiserverProxyToPod, Q::Http2)),
        );
        add(
            "apiserver proxy to a pod, unknown bytes",
            Cp,
            at(pod, 8080),
            A::Raw,
            Some((P::ApiserverProxyToPod, Q::Other)),
        );
        add(
            "apiserver proxy to a pod, closed without payload",
            Cp,
            at(pod, 8080),
            A::Close,
            Some((P::ApiserverProxyToPod, Q::None)),
        );
        add(
            "apiserver proxy to the node",
            Cp,
            at(node, 9100),
            A::Http,
            Some((P::ApiserverProxyToNode, Q::Http)),
        );
        add(
            "konnectivity agent dials the control plane",
            Pod,
            at(cp, 8132),
            A::Https,
            Some((P::Konnectivity, Q::Tls)),
        );
        add(
            "kubelet calls the apiserver endpoint",
            Node,
            at(cp, addrs::APISERVER_PORT),
            A::Https,
            Some((P::NodeToApiserver, Q::Tls)),
        );
        add(
            "node calls the kubernetes VIP",
            Node,
            at(vip, addrs::VIP_PORT),
            A::Https,
            Some((P::NodeToApiserver, Q::Tls)),
        );
        add(
            "pod calls the kubernetes VIP",
            Pod,
            at(vip, addrs::VIP_PORT),
            A::Https,
            Some((P::PodToApiserver, Q::Tls)),
        );
        add(
            "pod calls the apiserver endpoint",
            Pod,
            at(cp, addrs::APISERVER_PORT),
            A::Https,
            Some((P::PodToApiserver, Q::Tls)),
        );
        add(
            "node calls its pod (on no path)",
            Node,
            at(pod, 8080),
            A::Http,
            None,
        );
        add(
            "pod calls the node's other port (on no path)",
            Pod,
            at(node, 9100),
            A::Http,
            None,
        );
    }
    let mapped = SocketAddr::new(addrs::POD4.to_ipv6_mapped().into(), 8080);
    steps.push(Step {
        what: "apiserver proxy to a pod from an IPv6 socket (IPv4-mapped)",
        from: Where::ControlPlane,
        to: mapped,
        client: Client::Http,
        expect: Some((Path::ApiserverProxyToPod, Protocol::Http)),
    });
    steps
}

/// The verdict `policy` gives a step, `None` for an untracked one.
pub fn verdict(step: &Step, policy: &Policy) -> Option<Verdict> {
    step.expect
        .map(|(path, protocol)| policy::verdict(policy.action(path, protocol), policy.dry_run))
}

/// The `cp_observer_connections_total` the plan must produce under
/// `policy`, by (path, protocol, verdict) label values.
pub fn expected_connections(
    steps: &[Step],
    policy: &Policy,
) -> BTreeMap<(&'static str, &'static str, &'static str), u64> {
    let mut m = BTreeMap::new();
    for step in steps {
        if let (Some((path, protocol)), Some(v)) = (step.expect, verdict(step, policy)) {
            *m.entry((path.name(), protocol.name(), v.name()))
                .or_default() += 1;
        }
    }
    m
}
