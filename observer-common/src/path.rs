//! The control-plane↔node paths of the Kubernetes page "Control Plane-Node
//! Communication", and the rule that puts a connection on one of them.

use crate::config::{Ports, Roles};

/// One row of the path table (SPEC §1). The discriminant indexes the kernel's
/// counter arrays, so the order is part of the kernel/agent contract.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Path {
    /// Anyone → node:10255, the unauthenticated read-only kubelet API.
    KubeletReadOnly = 0,
    /// Control plane → node:10250: logs, exec/attach, port-forward.
    ApiserverToKubelet = 1,
    /// Control plane → node:22: the deprecated SSH tunnels.
    SshTunnel = 2,
    /// Control plane → pod: apiserver proxy, plain HTTP by default.
    ApiserverProxyToPod = 3,
    /// Control plane → node, any other port: apiserver proxy to nodes.
    ApiserverProxyToNode = 4,
    /// Node or pod → control plane:8132: the Konnectivity agent's tunnel.
    Konnectivity = 5,
    /// Node → apiserver endpoint or `kubernetes` VIP.
    NodeToApiserver = 6,
    /// Pod → apiserver endpoint or `kubernetes` VIP.
    PodToApiserver = 7,
}

impl Path {
    /// Number of paths; the size of every per-path table.
    pub const COUNT: usize = 8;

    /// All paths, in table order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::KubeletReadOnly,
        Self::ApiserverToKubelet,
        Self::SshTunnel,
        Self::ApiserverProxyToPod,
        Self::ApiserverProxyToNode,
        Self::Konnectivity,
        Self::NodeToApiserver,
        Self::PodToApiserver,
    ];

    /// The `path` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::KubeletReadOnly => "kubelet-read-only",
            Self::ApiserverToKubelet => "apiserver-to-kubelet",
            Self::SshTunnel => "ssh-tunnel",
            Self::ApiserverProxyToPod => "apiserver-proxy-to-pod",
            Self::ApiserverProxyToNode => "apiserver-proxy-to-node",
            Self::Konnectivity => "konnectivity",
            Self::NodeToApiserver => "node-to-apiserver",
            Self::PodToApiserver => "pod-to-apiserver",
        }
    }

    /// Parses a `path` label value.
    pub fn from_name(name: &str) -> Option<Self> {
        let mut i = 0;
        while i < Self::COUNT {
            if eq(Self::ALL[i].name(), name) {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// Converts a table index (as stored in kernel maps) back to a path.
    pub const fn from_u8(v: u8) -> Option<Self> {
        if (v as usize) < Self::COUNT {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// True when the server end of this path is the node or one of its pods,
    /// so that client→server bytes are received (`rx`) by the node. On the
    /// other paths the node is the client and client→server bytes are `tx`.
    pub const fn server_is_local(self) -> bool {
        (self as u8) <= Self::ApiserverProxyToNode as u8
    }
}

fn eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes() == b.as_bytes()
}

/// What the agent knows about one end of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct End {
    /// Roles of the address (control plane, node, pod), from the CIDR tables.
    pub roles: Roles,
    /// TCP port in host byte order.
    pub port: u16,
    /// The address:port is an apiserver endpoint or the `kubernetes` VIP.
    pub apiserver: bool,
}

/// Puts a connection from `client` (sent the SYN) to `server` on its path:
/// the first matching row of SPEC §1, or `None` when the connection is not one
/// the page talks about.
#[inline(always)]
pub fn classify(client: &End, server: &End, ports: &Ports) -> Option<Path> {
    let c = client.roles;
    let s = server.roles;
    if s.has(Roles::NODE) && server.port == ports.kubelet_read_only {
        return Some(Path::KubeletReadOnly);
    }
    if c.has(Roles::CONTROL_PLANE) {
        if s.has(Roles::NODE) {
            if server.port == ports.kubelet {
                return Some(Path::ApiserverToKubelet);
            }
            if server.port == ports.ssh {
                return Some(Path::SshTunnel);
            }
        }
        if s.has(Roles::POD) {
            return Some(Path::ApiserverProxyToPod);
        }
        if s.has(Roles::NODE) {
            return Some(Path::ApiserverProxyToNode);
        }
    }
    if (c.has(Roles::NODE) || c.has(Roles::POD))
        && s.has(Roles::CONTROL_PLANE)
        && server.port == ports.konnectivity
    {
        return Some(Path::Konnectivity);
    }
    if server.apiserver {
        if c.has(Roles::NODE) {
            return Some(Path::NodeToApiserver);
        }
        if c.has(Roles::POD) {
            return Some(Path::PodToApiserver);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const CP: Roles = Roles::CONTROL_PLANE;
    const NODE: Roles = Roles::NODE;
    const POD: Roles = Roles::POD;
    const NONE: Roles = Roles::EMPTY;

    fn end(roles: Roles, port: u16) -> End {
        End {
            roles,
            port,
            apiserver: false,
        }
    }

    fn api(roles: Roles, port: u16) -> End {
        End {
            roles,
            port,
            apiserver: true,
        }
    }

    #[test]
    fn every_row_of_the_table() {
        let p = Ports::default();
        let cases = [
            (
                end(NONE, 40000),
                end(NODE, 10255),
                Some(Path::KubeletReadOnly),
            ),
            (
                end(POD, 40000),
                end(NODE, 10255),
                Some(Path::KubeletReadOnly),
            ),
            (
                end(CP, 40000),
                end(NODE, 10255),
                Some(Path::KubeletReadOnly),
            ),
            (
                end(CP, 40000),
                end(NODE, 10250),
                Some(Path::ApiserverToKubelet),
            ),
            (end(CP, 40000), end(NODE, 22), Some(Path::SshTunnel)),
            (
                end(CP, 40000),
                end(POD, 8080),
                Some(Path::ApiserverProxyToPod),
            ),
            (
                end(CP, 40000),
                end(POD, 10250),
                Some(Path::ApiserverProxyToPod),
            ),
            (
                end(CP, 40000),
                end(NODE, 9100),
                Some(Path::ApiserverProxyToNode),
            ),
            (end(NODE, 40000), end(CP, 8132), Some(Path::Konnectivity)),
            (end(POD, 40000), end(CP, 8132), Some(Path::Konnectivity)),
            (end(NODE, 40000), api(CP, 6443), Some(Path::NodeToApiserver)),
            (
                end(NODE, 40000),
                api(NONE, 443),
                Some(Path::NodeToApiserver),
            ),
            (end(POD, 40000), api(NONE, 443), Some(Path::PodToApiserver)),
            (end(POD, 40000), api(CP, 6443), Some(Path::PodToApiserver)),
        ];
        for (c, s, want) in cases {
            assert_eq!(classify(&c, &s, &p), want, "client {c:?} server {s:?}");
        }
    }

    #[test]
    fn untracked() {
        let p = Ports::default();
        let cases = [
            (end(NONE, 40000), end(POD, 8080)),
            (end(NODE, 40000), end(POD, 8080)),
            (end(POD, 40000), end(POD, 8080)),
            (end(NODE, 40000), end(CP, 6443)), // a control-plane host, but not an apiserver endpoint
            (end(NONE, 40000), api(NONE, 443)), // nobody of ours calls the apiserver
            (end(CP, 40000), end(CP, 8132)),
            (end(NONE, 40000), end(NONE, 10255)),
        ];
        for (c, s) in cases {
            assert_eq!(classify(&c, &s, &p), None, "client {c:?} server {s:?}");
        }
    }

    #[test]
    fn ports_are_configurable() {
        let p = Ports {
            kubelet: 11250,
            kubelet_read_only: 0,
            ssh: 2222,
            konnectivity: 9132,
            _pad: 0,
        };
        assert_eq!(
            classify(&end(CP, 1), &end(NODE, 11250), &p),
            Some(Path::ApiserverToKubelet)
        );
        assert_eq!(
            classify(&end(CP, 1), &end(NODE, 10250), &p),
            Some(Path::ApiserverProxyToNode)
        );
        assert_eq!(
            classify(&end(CP, 1), &end(NODE, 2222), &p),
            Some(Path::SshTunnel)
        );
        assert_eq!(
            classify(&end(POD, 1), &end(CP, 9132), &p),
            Some(Path::Konnectivity)
        );
        // Port 0 never matches a real connection, so it disables the row.
        assert_eq!(classify(&end(NONE, 1), &end(NODE, 10255), &p), None);
    }

    #[test]
    fn names_round_trip() {
        for p in Path::ALL {
            assert_eq!(Path::from_name(p.name()), Some(p));
            assert_eq!(Path::from_u8(p as u8), Some(p));
        }
        assert_eq!(Path::from_name("banana"), None);
        assert_eq!(Path::from_u8(Path::COUNT as u8), None);
    }
}
