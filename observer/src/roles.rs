//! The role trie: which addresses are control plane, node or pod.
//!
//! The kernel makes one longest-prefix lookup per address. For that lookup to
//! return every role, each entry carries its own roles and those of every
//! shorter prefix that contains it (a node IP inside the control-plane range
//! is both). That folding happens here, in plain testable Rust.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

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
///
/// An enclosing prefix has one of the prefix lengths in use, so each entry
/// looks up its few candidates (its address cut to each shorter length)
/// instead of comparing itself with every other entry: 100,000 prefixes
/// (konnectivity agents, pod ranges) fold in well under a second.
pub fn fold(nets: impl IntoIterator<Item = (IpNet, Roles)>) -> Vec<RoleEntry> {
    let mut merged: BTreeMap<(u32, Addr), (usize, Roles)> = BTreeMap::new();
    for (net, roles) in nets {
        let first = merged.len();
        let e = merged
            .entry(entry_key(net.trunc()))
            .or_insert((first, Roles::EMPTY));
        e.1 = e.1.union(roles);
    }
    let lengths: BTreeSet<u32> = merged.keys().map(|(len, _)| *len).collect();
    let mut ordered: Vec<_> = merged.iter().collect();
    ordered.sort_by_key(|(_, (first, _))| *first);
    ordered
        .into_iter()
        .map(|(&(prefix_len, addr), &(_, own))| {
            let roles = lengths
                .range(..prefix_len)
                .filter_map(|len| merged.get(&(*len, cut(addr, *len))))
                .fold(own, |acc, (_, r)| acc.union(*r));
            RoleEntry {
                prefix_len,
                addr,
                roles,
            }
        })
        .collect()
}

/// `addr` with all but its first `len` bits cleared (over the 128-bit
/// [`Addr`], as the kernel's trie compares keys).
fn cut(addr: Addr, len: u32) -> Addr {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    Addr((u128::from_be_bytes(addr.0) & mask).to_be_bytes())
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

    /// The folding by lookup gives what comparing every pair of prefixes
    /// gives, on nested prefixes of both families.
    #[test]
    fn folding_by_lookup_is_folding_by_containment() {
        let mut nets = Vec::new();
        for i in 0u32..600 {
            let (a, b) = ((i * 37 % 256) as u8, (i * 101 % 256) as u8);
            let roles = [Roles::POD, Roles::NODE, Roles::CONTROL_PLANE][i as usize % 3];
            let len = [8, 16, 20, 24, 28, 32][i as usize % 6];
            nets.push((net(&format!("10.{a}.{b}.{}/{len}", i % 7)), roles));
            let len6 = [32, 48, 56, 64, 100, 128][i as usize % 6];
            nets.push((net(&format!("fd00:{a:x}:{b:x}::{i:x}/{len6}")), roles));
        }
        let naive: Vec<Roles> = nets
            .iter()
            .map(|(n, _)| {
                nets.iter()
                    .filter(|(outer, _)| outer.trunc().contains(&n.trunc()))
                    .fold(Roles::EMPTY, |acc, (_, r)| acc.union(*r))
            })
            .collect();
        let folded = fold(nets.iter().copied());
        for ((n, _), want) in nets.iter().zip(naive) {
            let (len, addr) = entry_key(n.trunc());
            let got = folded
                .iter()
                .find(|e| e.prefix_len == len && e.addr == addr)
                .expect("an entry for each prefix");
            assert_eq!(got.roles, want, "{n}");
        }
        assert!(
            folded.iter().any(|e| e.roles.0.count_ones() > 1),
            "some prefixes are nested"
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
