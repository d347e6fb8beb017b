//! The role trie: which addresses are control plane, node or pod.
//!
//! The kernel makes one longest-prefix lookup per address. For that lookup to
//! return every role, each entry carries its own roles and those of every
//! shorter prefix that contains it (a node IP inside the control-plane range
//! is both). That folding happens here, in plain testable Rust.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use observer_common::config::{Addr, Roles, V4_MAPPED_PREFIX};

use crate::config::Settings;

/// One entry of the kernel's `ROLES` trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleEntry {
    /// Prefix length over the 128-bit [`Addr`].
    pub prefix_len: u32,
    /// The prefix, host bits cleared.
    pub addr: Addr,
    /// Roles of this prefix and of every prefix containing it.
    pub roles: Roles,
}

fn entry_key(net: IpNet) -> (u32, Addr) {
    match net {
        IpNet::V4(n) => (
            u32::from(n.prefix_len()) + V4_MAPPED_PREFIX,
            Addr::from(IpAddr::from(n.network())),
        ),
        IpNet::V6(n) => (
            u32::from(n.prefix_len()),
            Addr::from(IpAddr::from(n.network())),
        ),
    }
}

/// The trie entries for `settings`, most important first, so that a trie
/// too small for all of them loses the least important: this node's
/// addresses and pod ranges, then the control plane in the order given
/// (the flags or the apiserver hosts, then the konnectivity agents
/// discovery appends).
pub fn role_entries(settings: &Settings) -> Vec<RoleEntry> {
    let nets = settings
        .node_ips
        .iter()
        .map(|ip| (IpNet::from(ip.to_canonical()), Roles::NODE))
        .chain(settings.pod_cidrs.iter().map(|c| (c.0, Roles::POD)))
        .chain(
            settings
                .control_plane
                .iter()
                .map(|c| (c.0, Roles::CONTROL_PLANE)),
        );
    fold(nets)
}

/// Merges duplicate prefixes and folds enclosing prefixes' roles inwards;
/// the entries keep the order in which their prefixes first appear.
pub fn fold(nets: impl IntoIterator<Item = (IpNet, Roles)>) -> Vec<RoleEntry> {
    let mut merged: BTreeMap<(u32, Addr), (usize, IpNet, Roles)> = BTreeMap::new();
    for (net, roles) in nets {
        let net = net.trunc();
        let first = merged.len();
        let e = merged
            .entry(entry_key(net))
            .or_insert((first, net, Roles::EMPTY));
        e.2 = e.2.union(roles);
    }
    let all: Vec<(IpNet, Roles)> = merged.values().map(|(_, n, r)| (*n, *r)).collect();
    let mut ordered: Vec<_> = merged.into_iter().collect();
    ordered.sort_by_key(|(_, (first, _, _))| *first);
    ordered
        .into_iter()
        .map(|((prefix_len, addr), (_, net, own))| {
            let roles = all
                .iter()
                .filter(|(outer, _)| outer.contains(&net))
                .fold(own, |acc, (_, r)| acc.union(*r));
            RoleEntry {
                prefix_len,
                addr,
                roles,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn enclosing_roles_fold_in() {
        let entries = fold([
            (net("10.0.0.0/16"), Roles::CONTROL_PLANE),
            (net("10.0.1.5/32"), Roles::NODE),
            (net("10.244.0.0/24"), Roles::POD),
            (net("10.244.0.0/24"), Roles::NODE),
        ]);
        assert_eq!(entries.len(), 3);
        let node = entries.iter().find(|e| e.prefix_len == 128).unwrap();
        assert_eq!(node.addr, Addr::from_v4([10, 0, 1, 5]));
        assert_eq!(node.roles, Roles::CONTROL_PLANE.union(Roles::NODE));
        let pods = entries.iter().find(|e| e.prefix_len == 96 + 24).unwrap();
        assert_eq!(pods.roles, Roles::POD.union(Roles::NODE));
        let cp = entries.iter().find(|e| e.prefix_len == 96 + 16).unwrap();
        assert_eq!(cp.roles, Roles::CONTROL_PLANE);
    }

    #[test]
    fn the_node_and_its_pods_come_first_konnectivity_agents_last() {
        let settings = Settings::from_args(&crate::config::RunArgs {
            control_plane: vec!["10.0.0.2".parse().unwrap(), "10.244.1.7".parse().unwrap()],
            node_ip: vec!["10.0.1.5".parse().unwrap()],
            pod_cidr: vec!["10.244.1.0/24".parse().unwrap()],
            no_pin: true,
            ..Default::default()
        })
        .unwrap();
        let order: Vec<Addr> = role_entries(&settings).iter().map(|e| e.addr).collect();
        assert_eq!(
            order,
            vec![
                Addr::from_v4([10, 0, 1, 5]),
                Addr::from_v4([10, 244, 1, 0]),
                Addr::from_v4([10, 0, 0, 2]),
                Addr::from_v4([10, 244, 1, 7]),
            ]
        );
    }

    #[test]
    fn families_do_not_mix() {
        // Settings refuse IPv6 ranges that cover ::ffff:0:0/96, so an IPv6
        // prefix never encloses an IPv4 one and nothing is folded across.
        let entries = fold([
            (net("fd00::/8"), Roles::POD),
            (net("10.0.0.0/8"), Roles::NODE),
        ]);
        let v4 = entries.iter().find(|e| e.prefix_len == 104).unwrap();
        assert_eq!(v4.roles, Roles::NODE);
    }

    #[test]
    fn mapped_addresses() {
        assert_eq!(
            Addr::from("::ffff:1.2.3.4".parse::<IpAddr>().unwrap()),
            Addr::from_v4([1, 2, 3, 4])
        );
        assert_eq!(
            Addr::from("1.2.3.4".parse::<IpAddr>().unwrap()),
            Addr::from_v4([1, 2, 3, 4])
        );
        assert_eq!(
            Addr::from("fd00::1".parse::<IpAddr>().unwrap()).as_v4(),
            None
        );
    }
}
