//! The control-plane↔node paths of the Kubernetes page "Control Plane-Node
//! Communication", and the rule that puts a connection on one of them.

use crate::config::{Ports, Roles};

indexed_enum! {
    /// One row of the path table (README, "The paths"). The discriminant indexes
    /// the kernel's counter arrays, so the order is part of the kernel/agent
    /// contract.
    pub enum Path: u8, label "path" {
        /// Anyone → node:10255, the unauthenticated read-only kubelet API.
        KubeletReadOnly = 0 => "kubelet-read-only",
        /// Control plane → node:10250: logs, exec/attach, port-forward.
        ApiserverToKubelet = 1 => "apiserver-to-kubelet",
        /// Control plane → node:22: the deprecated SSH tunnels.
        SshTunnel = 2 => "ssh-tunnel",
        /// Control plane → pod: apiserver proxy, plain HTTP by default.
        ApiserverProxyToPod = 3 => "apiserver-proxy-to-pod",
        /// Control plane → node, any other port: apiserver proxy to nodes.
        ApiserverProxyToNode = 4 => "apiserver-proxy-to-node",
        /// Node or pod → control plane:8132: the Konnectivity agent's tunnel.
        Konnectivity = 5 => "konnectivity",
        /// Node → apiserver endpoint or `kubernetes` VIP.
        NodeToApiserver = 6 => "node-to-apiserver",
        /// Pod → apiserver endpoint or `kubernetes` VIP.
        PodToApiserver = 7 => "pod-to-apiserver",
    }
}

impl Path {
    /// True when the server end of this path is the node or one of its pods,
    /// so that client→server bytes are received (`rx`) by the node. On the
    /// other paths the node is the client and client→server bytes are `tx`.
    pub const fn server_is_local(self) -> bool {
        (self as u8) <= Self::ApiserverProxyToNode as u8
    }
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
/// the first matching row of the path table, or `None` when the connection is not one
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
        use Path::*;
        let p = Ports::default();
        let cases = [
            (end(NONE, 40000), end(NODE, 10255), KubeletReadOnly),
            (end(POD, 40000), end(NODE, 10255), KubeletReadOnly),
            (end(CP, 40000), end(NODE, 10255), KubeletReadOnly),
            (end(CP, 40000), end(NODE, 10250), ApiserverToKubelet),
            (end(CP, 40000), end(NODE, 22), SshTunnel),
            (end(CP, 40000), end(POD, 8080), ApiserverProxyToPod),
            (end(CP, 40000), end(POD, 10250), ApiserverProxyToPod),
            (end(CP, 40000), end(NODE, 9100), ApiserverProxyToNode),
            (end(NODE, 40000), end(CP, 8132), Konnectivity),
            (end(POD, 40000), end(CP, 8132), Konnectivity),
            (end(NODE, 40000), api(CP, 6443), NodeToApiserver),
            (end(NODE, 40000), api(NONE, 443), NodeToApiserver),
            (end(POD, 40000), api(NONE, 443), PodToApiserver),
            (end(POD, 40000), api(CP, 6443), PodToApiserver),
        ];
        for (c, s, want) in cases {
            assert_eq!(
                classify(&c, &s, &p),
                Some(want),
                "client {c:?} server {s:?}"
            );
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
        for (c, s, want) in [
            (end(CP, 1), end(NODE, 11250), Path::ApiserverToKubelet),
            (end(CP, 1), end(NODE, 10250), Path::ApiserverProxyToNode),
            (end(CP, 1), end(NODE, 2222), Path::SshTunnel),
            (end(POD, 1), end(CP, 9132), Path::Konnectivity),
        ] {
            assert_eq!(classify(&c, &s, &p), Some(want), "server {s:?}");
        }
        // Port 0 never matches a real connection, so it disables the row.
        assert_eq!(classify(&end(NONE, 1), &end(NODE, 10255), &p), None);
    }
}
