//! The simulated node and control plane.
//!
//! ```text
//!  control plane ns            node ns                     pod ns
//!  198.18.0.1      eth0 ── to-cp  198.18.0.2
//!  2001:db8:cafe::1             2001:db8:cafe::2
//!  VIP 198.18.96.1, 2001:db8:96::1
//!                               to-pod 198.18.16.1 ── eth0  198.18.16.2
//!                                      2001:db8:16::1       2001:db8:16::2
//! ```
//!
//! The node namespace routes between the other two, as a real node routes
//! between its NIC and its pods' veths. The agent runs in the host's own
//! namespace: its cgroup programs see the sockets of every namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clap::Parser as _;
use observer::cli::{Cli, Command, RunArgs};

use crate::cluster::netns::NetNs;

/// Addresses of the lab, IPv4 and IPv6.
pub mod addrs {
    use super::{Ipv4Addr, Ipv6Addr};

    /// The control plane host (plays the apiserver).
    pub const CP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    /// The node's address facing the control plane.
    pub const NODE4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    /// The node's address facing its pods (the pods' gateway).
    pub const NODE_GW4: Ipv4Addr = Ipv4Addr::new(198, 18, 16, 1);
    /// The pod.
    pub const POD4: Ipv4Addr = Ipv4Addr::new(198, 18, 16, 2);
    /// The pod CIDR.
    pub const POD_CIDR4: &str = "198.18.16.0/24";
    /// A second pod address, for a konnectivity agent pod.
    pub const KONNECTIVITY_AGENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 16, 3);

    /// IPv6 twins of the above.
    pub const CP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 1);
    /// The node, facing the control plane.
    pub const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xcafe, 0, 0, 0, 0, 2);
    /// The node, facing its pods.
    pub const NODE_GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x16, 0, 0, 0, 0, 1);
    /// The pod.
    pub const POD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x16, 0, 0, 0, 0, 2);
    /// The pod CIDR.
    pub const POD_CIDR6: &str = "2001:db8:16::/64";

    /// The `kubernetes` service VIP (answered by the control plane, as if
    /// kube-proxy had translated it).
    pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 96, 1);
    /// The IPv6 VIP.
    pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x96, 0, 0, 0, 0, 1);
    /// The apiserver's secure port.
    pub const APISERVER_PORT: u16 = 6443;
    /// The VIP's port.
    pub const VIP_PORT: u16 = 443;
    /// The Service range: its first address is [`VIP4`].
    pub const SERVICE_RANGE4: &str = "198.18.96.0/24";
    /// The first of pod-CIDR addresses no namespace has, for spoofed
    /// sources.
    pub const UNUSED_POD4: Ipv4Addr = Ipv4Addr::new(198, 18, 16, 100);
}

/// The lab's hosts by role, each with an address of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// [`addrs::CP4`], [`addrs::CP6`].
    ControlPlane,
    /// [`addrs::NODE4`], [`addrs::NODE6`] (facing the control plane).
    Node,
    /// [`addrs::POD4`], [`addrs::POD6`].
    Pod,
    /// [`addrs::VIP4`], [`addrs::VIP6`] (on the control plane).
    Vip,
}

impl Host {
    /// The address of the given family.
    pub fn ip(self, v6: bool) -> IpAddr {
        use addrs::*;
        match (self, v6) {
            (Self::ControlPlane, false) => CP4.into(),
            (Self::ControlPlane, true) => CP6.into(),
            (Self::Node, false) => NODE4.into(),
            (Self::Node, true) => NODE6.into(),
            (Self::Pod, false) => POD4.into(),
            (Self::Pod, true) => POD6.into(),
            (Self::Vip, false) => VIP4.into(),
            (Self::Vip, true) => VIP6.into(),
        }
    }
}

/// The three namespaces, wired and addressed. Dropping it removes them
/// (and with them their veths).
#[derive(Debug)]
pub struct Topology {
    /// The control plane: where the apiserver's proxy connections come from.
    pub cp: NetNs,
    /// The node itself.
    pub node: NetNs,
    /// A pod on the node.
    pub pod: NetNs,
}

impl Topology {
    /// Builds the lab; `tag` keeps namespace names of concurrent users apart.
    pub fn new(tag: &str) -> Self {
        use addrs::*;
        let cp = NetNs::new(&format!("cpo-{tag}-cp"));
        let node = NetNs::new(&format!("cpo-{tag}-node"));
        let pod = NetNs::new(&format!("cpo-{tag}-pod"));

        veth(&node, "to-cp", &cp);
        veth(&node, "to-pod", &pod);
        for (ns, dev, v4, v6) in [
            (&cp, "eth0", CP4, CP6),
            (&node, "to-cp", NODE4, NODE6),
            (&node, "to-pod", NODE_GW4, NODE_GW6),
            (&pod, "eth0", POD4, POD6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            // nodad: usable at once, no duplicate-address-detection delay.
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        // The VIP lives on the control plane, reached through the node. It
        // sits on `lo` and is deprecated (preferred_lft 0) so that it is
        // never picked as a source address: IPv6 source selection would
        // otherwise prefer it for pod destinations (longer common prefix).
        cp.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"]);
        cp.ip(&[
            "addr",
            "add",
            &format!("{VIP6}/128"),
            "dev",
            "lo",
            "nodad",
            "preferred_lft",
            "0",
        ]);
        node.ip(&[
            "route",
            "add",
            &format!("{VIP4}/32"),
            "via",
            &CP4.to_string(),
        ]);
        node.ip(&[
            "-6",
            "route",
            "add",
            &format!("{VIP6}/128"),
            "via",
            &CP6.to_string(),
        ]);
        cp.ip(&["route", "add", "default", "via", &NODE4.to_string()]);
        cp.ip(&["-6", "route", "add", "default", "via", &NODE6.to_string()]);
        pod.ip(&["route", "add", "default", "via", &NODE_GW4.to_string()]);
        pod.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &NODE_GW6.to_string(),
        ]);
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        Self { cp, node, pod }
    }

    /// Agent flags describing this lab: who is control plane, node, pod.
    pub fn agent_args() -> Vec<String> {
        use addrs::*;
        let mut args = Vec::new();
        for (flag, value) in [
            ("--control-plane", CP4.to_string()),
            ("--control-plane", CP6.to_string()),
            ("--node-ip", NODE4.to_string()),
            ("--node-ip", NODE_GW4.to_string()),
            ("--node-ip", NODE6.to_string()),
            ("--node-ip", NODE_GW6.to_string()),
            ("--pod-cidr", POD_CIDR4.to_owned()),
            ("--pod-cidr", POD_CIDR6.to_owned()),
            ("--apiserver", format!("{CP4}:{APISERVER_PORT}")),
            ("--apiserver", format!("[{CP6}]:{APISERVER_PORT}")),
            ("--apiserver-vip", format!("{VIP4}:{VIP_PORT}")),
            ("--apiserver-vip", format!("[{VIP6}]:{VIP_PORT}")),
        ] {
            args.push(flag.to_owned());
            args.push(value);
        }
        args
    }

    /// [`Self::agent_args`] and `extra`, parsed as the agent parses its
    /// command line, and with nothing pinned: for code that loads the
    /// kernel programs itself.
    pub fn run_args(extra: &[&str]) -> RunArgs {
        let args = Self::agent_args();
        let cli = Cli::try_parse_from(
            ["cp-observer", "run", "--no-pin"]
                .into_iter()
                .chain(args.iter().map(String::as_str))
                .chain(extra.iter().copied()),
        )
        .unwrap_or_else(|e| panic!("the lab's agent flags parse: {e}"));
        match cli.command {
            Command::Run(args) => args,
            other => panic!("`run` parsed as {other:?}"),
        }
    }
}

/// A veth pair: `dev` in `ns`, its peer `eth0` in `peer`.
fn veth(ns: &NetNs, dev: &str, peer: &NetNs) {
    ns.ip(&[
        "link",
        "add",
        dev,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        peer.name(),
    ]);
}
