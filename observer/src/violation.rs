//! The JSON form of a violation event (README, "Events"): what the event
//! printer writes, and what Kubernetes Events and the metrics are made of.

use std::net::{IpAddr, SocketAddr};

use observer_common::{
    event::{DRY_RUN, Event, HAS_PROCESS},
    path::Path,
    policy::{Action, Verdict},
    protocol::Protocol,
};
use serde::Serialize;

use crate::{
    discovery::{PodIndex, PodRef},
    enforce,
};

/// The JSON form of an [`Event`].
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// RFC 3339, when the agent read the event.
    pub ts: String,
    /// Always `violation`.
    pub kind: &'static str,
    /// The `path` label.
    pub path: &'static str,
    /// The `protocol` label.
    pub protocol: &'static str,
    /// `alert` or `block`, as configured.
    pub action: &'static str,
    /// What was done: `alerted` or `blocked` (`alerted` for a dry-run block).
    pub verdict: &'static str,
    /// The client, `IP:PORT`.
    pub src: String,
    /// The server, `IP:PORT`.
    pub dst: String,
    /// A `block` reported under `--dry-run`, not enforced.
    pub dry_run: bool,
    /// The client's pod, when it is a pod of this node (needs discovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<PodRef>,
    /// The server's pod, when it is a pod of this node (needs discovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<PodRef>,
    /// The client process, when the client is a process on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// What the request said about who sent it: plaintext HTTP on a
    /// summarised path only (see [`crate::heads`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::heads::Summary>,
}

/// A process on this node.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Process {
    /// Process id (as the host's /proc sees it).
    pub pid: u32,
    /// Command name (at most 15 bytes).
    pub comm: String,
}

impl Violation {
    /// Decodes a kernel event; `None` for values this build does not know.
    pub fn from_event(e: &Event, now: std::time::SystemTime) -> Option<Self> {
        // `allow` is no violation.
        let action = Action::from_u32(e.action.into()).filter(|a| *a != Action::Allow)?;
        Some(Self {
            ts: humantime::format_rfc3339_millis(now).to_string(),
            kind: "violation",
            path: Path::from_u8(e.path)?.name(),
            protocol: Protocol::from_u8(e.protocol)?.name(),
            action: action.name(),
            verdict: Verdict::from_u8(e.verdict)?.name(),
            src: SocketAddr::new(IpAddr::from(e.client), e.client_port).to_string(),
            dst: SocketAddr::new(IpAddr::from(e.server), e.server_port).to_string(),
            dry_run: e.flags & DRY_RUN != 0,
            src_pod: None,
            dst_pod: None,
            http: None,
            process: (e.flags & HAS_PROCESS != 0).then(|| Process {
                pid: e.caller.pid,
                comm: String::from_utf8_lossy(
                    e.caller.comm.split(|b| *b == 0).next().unwrap_or_default(),
                )
                .into_owned(),
            }),
        })
    }

    /// Names the pods at either end from `pods`.
    pub fn attribute(mut self, e: &Event, pods: &PodIndex) -> Self {
        let pods = pods.read().expect("lock");
        self.src_pod = pods.get(&IpAddr::from(e.client)).cloned();
        self.dst_pod = pods.get(&IpAddr::from(e.server)).cloned();
        self
    }

    /// What the enforcer resets for a blocked connection: the socket
    /// the event names.
    pub fn target(e: &Event) -> enforce::Target {
        let (client, server) = ends(e);
        enforce::Target {
            client,
            server,
            cookie: e.cookie,
            live: true,
            why: "blocked",
        }
    }
}

/// The connection's ends, client first.
pub fn ends(e: &Event) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(IpAddr::from(e.client), e.client_port),
        SocketAddr::new(IpAddr::from(e.server), e.server_port),
    )
}

#[cfg(test)]
mod tests {
    use observer_common::{config::Addr, flow::Caller};

    use super::*;

    #[test]
    fn json_has_the_documented_fields() {
        let e = Event {
            client: Addr::from_v4([198, 18, 0, 1]),
            server: Addr([0x20, 1, 0x0d, 0xb8, 0, 0x16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            client_port: 40000,
            server_port: 8080,
            path: Path::ApiserverProxyToPod as u8,
            protocol: Protocol::Http as u8,
            action: Action::Block as u8,
            verdict: Verdict::Alerted as u8,
            flags: DRY_RUN | HAS_PROCESS,
            caller: Caller {
                pid: 4242,
                comm: *b"kube-apiserver\0\0",
            },
            cookie: 7,
            stream_start: 0,
            _pad: 0,
        };
        let v = Violation::from_event(&e, std::time::UNIX_EPOCH).unwrap();
        let json: serde_json::Value = serde_json::to_value(&v).unwrap();
        assert_eq!(json["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["kind"], "violation");
        assert_eq!(json["path"], "apiserver-proxy-to-pod");
        assert_eq!(json["protocol"], "http");
        assert_eq!(json["action"], "block");
        assert_eq!(json["verdict"], "alerted");
        assert_eq!(json["src"], "198.18.0.1:40000");
        assert_eq!(json["dst"], "[2001:db8:16::2]:8080");
        assert_eq!(json["dry_run"], true);
        assert_eq!(
            json["process"],
            serde_json::json!({"pid": 4242, "comm": "kube-apiserver"})
        );
        assert!(
            Violation::from_event(
                &Event {
                    action: Action::Allow as u8,
                    ..e
                },
                std::time::UNIX_EPOCH
            )
            .is_none(),
            "allow is no violation"
        );
    }
}
