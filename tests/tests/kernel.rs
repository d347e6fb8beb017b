//! The kernel programs on crafted packets, through BPF_PROG_TEST_RUN: the
//! classification, detection and counting the kernel does, without any
//! network. Needs root (loading BPF).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunOptions},
};
use lab::{
    cluster::topology::{
        Host,
        addrs::{APISERVER_PORT, CP4 as CP, CP6, NODE4 as NODE, POD4 as POD, POD6, VIP_PORT},
    },
    kernel::{
        self, filter_slot,
        packets::{ETH_LEN, Tcp, ext, handshake, with_ipv4_options, with_ipv6_ext_headers},
    },
};
use observer::heads;
use observer::{
    cli::RunArgs,
    ebpf::{Counters, Datapath, Loaded},
    flows::{FlowTable, monotonic_ns},
};
use observer_common::{
    counters::{Direction, DropReason, Stat, byte_index, connection_index},
    flow::FILTER_SLOTS,
    head::{HEAD_BUDGET, HEAD_BYTES, HeadChunk, copy_cost},
    path::Path,
    policy::{Action, Verdict},
    protocol::Protocol,
};

struct Kernel {
    datapath: Datapath,
    counters: Counters,
    flows: FlowTable,
    events: RingBuf<MapData>,
    heads: RingBuf<MapData>,
}

/// The programs loaded for the lab's addresses, with the default policy.
fn kernel() -> Kernel {
    kernel_with(|_| {})
}

/// The programs with "no plaintext to pods" in force.
fn enforcing() -> Kernel {
    kernel_with(|args| args.policy = vec![NO_PLAINTEXT.parse().unwrap()])
}

/// [`enforcing`], with a flow table of `capacity` entries.
fn enforcing_with_capacity(capacity: u32) -> Kernel {
    kernel_with(|args| {
        args.flow_table_capacity = Some(capacity);
        args.policy = vec![NO_PLAINTEXT.parse().unwrap()];
    })
}

const NO_PLAINTEXT: &str = "apiserver-proxy-to-pod:plaintext=block";

/// The programs, with the lab's addresses and what `adjust` changes.
fn kernel_with(adjust: impl FnOnce(&mut RunArgs)) -> Kernel {
    let Loaded {
        datapath,
        counters,
        flows,
        events,
        heads,
        ..
    } = kernel::load(adjust);
    Kernel {
        datapath,
        counters,
        flows,
        events,
        heads,
    }
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

impl Kernel {
    fn run(&self, prog: &'static str, packet: &[u8]) -> u32 {
        kernel::run(&self.datapath, prog, packet)
    }

    /// A packet as the sender's egress hook sees it, then (both ends local)
    /// as the receiver's ingress hook does. Both must pass it.
    fn both(&self, p: &Tcp) {
        let bytes = p.build();
        assert_eq!(self.run("egress", &bytes), 1, "egress passes {p:?}");
        assert_eq!(self.run("ingress", &bytes), 1, "ingress passes {p:?}");
    }

    fn connections(&self, path: Path, protocol: Protocol, verdict: Verdict) -> u64 {
        self.counters.connections().unwrap()
            [connection_index(path as u8, protocol as u8, verdict as u8) as usize]
    }

    /// [`Self::connections`] on apiserver-proxy-to-pod, the path most
    /// tests use.
    fn proxied(&self, protocol: Protocol, verdict: Verdict) -> u64 {
        self.connections(Path::ApiserverProxyToPod, protocol, verdict)
    }

    fn total(&self) -> u64 {
        self.counters.connections().unwrap().iter().sum()
    }

    fn bytes(&self, path: Path, dir: Direction) -> u64 {
        self.counters.bytes().unwrap()[byte_index(path as u8, dir) as usize]
    }

    fn flows(&self) -> usize {
        self.flows.len()
    }

    /// The filter in front of the flow table counts exactly its entries,
    /// slot by slot (no packet is in flight here).
    fn assert_filter_matches(&self) {
        let mut want = std::collections::HashMap::<u32, u64>::new();
        for (key, _) in self.flows.entries() {
            *want.entry(key.filter_slot()).or_default() += 1;
        }
        for slot in 0..FILTER_SLOTS {
            assert_eq!(
                self.flows.filter_count(slot),
                want.get(&slot).copied().unwrap_or(0),
                "FLOW_FILTER slot {slot}"
            );
        }
    }

    /// SYN, SYN-ACK and the handshake's last ACK of `c` → `s`.
    fn handshake(&self, c: SocketAddr, s: SocketAddr) {
        self.handshake_isn(c, s, 1000);
    }

    /// [`Self::handshake`] with client ISN `isn` (the server's is 5000).
    fn handshake_isn(&self, c: SocketAddr, s: SocketAddr, isn: u32) {
        for p in handshake(c, s, isn) {
            self.both(&p);
        }
    }

    /// A connection of `c` to `s` whose first client bytes are `payload`,
    /// passed at both hooks.
    fn request(&self, c: SocketAddr, s: SocketAddr, payload: &[u8]) {
        self.handshake(c, s);
        self.both(&Tcp::new(c, s).seq(1001).payload(payload));
    }

    /// The handshake of `c` to `s`, then what the egress and ingress
    /// programs return for the client's first bytes, `payload`.
    fn open(&self, c: SocketAddr, s: SocketAddr, payload: &[u8]) -> (u32, u32) {
        self.handshake(c, s);
        self.verdicts(&Tcp::new(c, s).seq(1001).payload(payload))
    }

    /// What the egress and ingress programs return for `p`, in that order.
    fn verdicts(&self, p: &Tcp) -> (u32, u32) {
        let bytes = p.build();
        (self.run("egress", &bytes), self.run("ingress", &bytes))
    }

    fn dropped(&self, reason: DropReason) -> u64 {
        self.counters.stats().unwrap()[reason.index() as usize]
    }

    /// The violation events in the ring buffer.
    fn events(&mut self) -> Vec<observer_common::event::Event> {
        let mut got = Vec::new();
        while let Some(item) = self.events.next() {
            // SAFETY: the kernel writes whole `Event`s.
            got.push(unsafe {
                std::ptr::read_unaligned(item.as_ptr().cast::<observer_common::event::Event>())
            });
        }
        got
    }
}

impl Kernel {
    /// The request-head chunks in the ring buffer (boxed, as the agent
    /// reads them: 1 KiB each).
    #[expect(clippy::vec_box, reason = "the agent's own decode_chunk boxes")]
    fn chunks(&mut self) -> Vec<Box<HeadChunk>> {
        let mut got = Vec::new();
        while let Some(item) = self.heads.next() {
            got.push(heads::decode_chunk(&item).expect("whole chunk records"));
        }
        got
    }

    /// The summary the agent makes of the chunks copied of `c`'s
    /// connection to `s` (whose violation event is read too), as its
    /// event printer would after the wait.
    fn summary(&mut self, c: SocketAddr, s: SocketAddr) -> heads::Summary {
        let events = self.events();
        assert_eq!(events.len(), 1, "one violation: {events:?}");
        let conn = heads::Connection {
            client: c,
            server: s,
            stream_start: events[0].stream_start,
        };
        let mut a = heads::Assembler::default();
        let t = std::time::Instant::now();
        let mut ready = a.hold(conn, (), t);
        for chunk in self.chunks() {
            assert_eq!(heads::Connection::of_chunk(&chunk), conn, "{chunk:?}");
            ready.extend(a.chunk(chunk, t));
        }
        ready.extend(a.expire(t + heads::HEAD_WAIT));
        assert_eq!(ready.len(), 1);
        ready.pop().unwrap().1
    }
}

/// A request as the tests' kube-apiserver proxies `kubectl get --raw
/// .../pods/web:8080/proxy/metrics?token=secret` to the pod.
const PROXIED: &[u8] = b"GET /metrics?token=secret HTTP/1.1\r\n\
    Host: 198.18.16.2:8080\r\n\
    User-Agent: kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd\r\n\
    Kubectl-Command: kubectl get\r\n\
    X-Forwarded-For: 198.18.0.2\r\n\
    X-Forwarded-Uri: /api/v1/namespaces/default/pods/web:8080/proxy/metrics?token=secret\r\n\
    \r\n";

/// What the agent must make of [`PROXIED`].
fn proxied_summary() -> heads::Summary {
    heads::Summary {
        method: Some("GET".into()),
        path: Some("/metrics".into()),
        user_agent: Some("kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd".into()),
        kubectl_command: Some("kubectl get".into()),
        forwarded_for: vec!["198.18.0.2".into()],
        forwarded_uri: Some("/api/v1/namespaces/default/pods/web:8080/proxy/metrics".into()),
        truncated: false,
    }
}

#[test]
fn a_violating_requests_head_is_copied_once_and_nothing_else_is() {
    let mut k = kernel();
    let (c, s) = (sa(CP, 41000), sa(POD, 8080));
    k.request(c, s, PROXIED);
    // The other end's sighting, a retransmission, and the next request
    // on the connection: no more copies.
    k.both(&Tcp::new(c, s).seq(1001).payload(PROXIED));
    let next = 1001 + PROXIED.len() as u32;
    k.both(
        &Tcp::new(c, s)
            .seq(next)
            .payload(b"GET /again HTTP/1.1\r\n\r\n"),
    );
    k.both(&Tcp::new(s, c).seq(5001).payload(b"HTTP/1.1 200 OK\r\n\r\n"));
    assert_eq!(k.summary(c, s), proxied_summary());
    // 2 copies: the prefix detection kept, and the deciding segment.
    // (`summary` read them; a second request's would be a third.)

    // Not copied: TLS on the same path, plaintext allowed on another path
    // (node to apiserver), plaintext the policy allows.
    k.request(sa(CP, 41001), sa(POD, 8443), CLIENT_HELLO);
    k.request(sa(NODE, 41002), sa(CP, APISERVER_PORT), PROXIED);
    assert_eq!(k.chunks().len(), 0);
    let mut quiet = kernel_with(|args| {
        args.policy = vec!["apiserver-proxy-to-pod:http=allow".parse().unwrap()]
    });
    quiet.request(c, s, PROXIED);
    assert_eq!(quiet.proxied(Protocol::Http, Verdict::Allowed), 1);
    assert_eq!(
        quiet.chunks().len(),
        0,
        "an allowed request is never copied"
    );
}

#[test]
fn a_blocked_requests_head_is_read_from_the_dropped_segments() {
    let mut k = enforcing();
    let (c, s) = (sa(CP, 41010), sa(POD, 8080));
    k.handshake(c, s);
    // "GET" passes undecided; the rest decides, is blocked and dropped,
    // and so is its retransmission, which is copied again.
    k.both(&Tcp::new(c, s).seq(1001).payload(&PROXIED[..3]));
    let rest = Tcp::new(c, s).seq(1004).payload(&PROXIED[3..]).build();
    assert_eq!(k.run("egress", &rest), 0);
    assert_eq!(k.run("egress", &rest), 0);
    assert_eq!(k.proxied(Protocol::Http, Verdict::Blocked), 1);
    assert_eq!(k.summary(c, s), proxied_summary());
}

#[test]
fn a_head_in_one_byte_segments_is_copied_whole() {
    let mut k = enforcing();
    let (c, s) = (sa(CP, 41020), sa(POD, 8080));
    k.handshake(c, s);
    for (i, b) in PROXIED.iter().enumerate() {
        let p = Tcp::new(c, s).seq(1001 + i as u32).payload(&[*b]).build();
        // Until the method is whole the bytes pass; then each is dropped.
        assert_eq!(k.run("egress", &p), u32::from(i < 3), "byte {i}");
    }
    assert_eq!(k.summary(c, s), proxied_summary());
}

#[test]
fn only_the_first_kilobyte_is_copied() {
    let mut k = kernel();
    let (c, s) = (sa(CP, 41030), sa(POD, 8080));
    let mut long = PROXIED[..PROXIED.len() - 2].to_vec();
    long.extend_from_slice(b"Cookie: ");
    long.extend(std::iter::repeat_n(b'c', 3000));
    long.extend_from_slice(b"\r\nX-Late: 1\r\n\r\n");
    k.request(c, s, &long);
    let got = k.summary(c, s);
    assert!(got.truncated, "{got:?}");
    assert_eq!(
        heads::Summary {
            truncated: false,
            ..got
        },
        proxied_summary(),
        "every line before the cut is summarised"
    );
    k.request(sa(CP, 41031), s, &long);
    let copied: usize = k
        .chunks()
        .iter()
        .map(|c| c.offset as usize + c.len as usize)
        .max()
        .unwrap();
    assert_eq!(copied, HEAD_BYTES, "nothing past the copy's bound");
    k.events();
}

/// A blocked client retransmitting its head (or a crafted flood of its
/// segments) gets at most its connection's budget of the ring.
#[test]
fn one_connection_cannot_flood_the_head_ring() {
    let mut k = enforcing();
    let (c, s) = (sa(CP, 41040), sa(POD, 8080));
    k.handshake(c, s);
    let mut long = PROXIED.to_vec();
    long.resize(HEAD_BYTES, b'x');
    let segment = Tcp::new(c, s).seq(1001).payload(&long).build();
    for _ in 0..100 {
        assert_eq!(k.run("egress", &segment), 0, "blocked");
    }
    let chunks = k.chunks();
    let copied: u32 = chunks.iter().map(|c| copy_cost(c.len)).sum();
    assert!(
        copied <= u32::from(HEAD_BUDGET),
        "{copied} bytes of the ring"
    );
    assert!(
        copied + copy_cost(HEAD_BYTES as u32) > u32::from(HEAD_BUDGET),
        "the budget was used: {copied}"
    );
    // 101 copies asked: the prefix at the decision, and each segment.
    assert_eq!(
        k.counters.stat(Stat::HeadsLost).unwrap(),
        101 - chunks.len() as u64,
        "every copy not made is counted"
    );
    k.events();
}

/// A burst of violating requests while nobody reads: every copy is in
/// the ring or counted lost, and no violation event is lost for them.
#[test]
fn head_copies_lost_under_a_burst_are_counted_and_cost_no_event() {
    let mut k = kernel();
    let mut long = PROXIED[..PROXIED.len() - 2].to_vec();
    long.extend(std::iter::repeat_n(b'c', 2000));
    // A copy of the prefix (72 bytes in the ring) and one of 1 KiB (1080):
    // 512 KiB hold about 455 requests' copies.
    let n = 600;
    for port in 0..n {
        k.request(sa(CP, 20000 + port), sa(POD, 8080), &long);
    }
    let lost = k.counters.stat(Stat::HeadsLost).unwrap();
    let copied = k.chunks().len() as u64;
    assert!(lost > 0, "the ring overflowed");
    assert_eq!(copied + lost, 2 * u64::from(n));
    assert_eq!(k.events().len(), n as usize, "every violation is reported");
}

const GET: &[u8] = b"GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\n\r\n";
/// The start of a TLS 1.2/1.3 ClientHello record.
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xf1, 0x01, 0x00, 0x00, 0xed, 0x03, 0x03, 0xaa,
];

#[test]
fn plaintext_proxy_request_is_http_and_counted_once() {
    let k = kernel();
    let (c, s) = (sa(CP, 40000), sa(POD, 8080));
    k.handshake(c, s);
    assert_eq!(k.flows(), 1, "the SYN created one flow for both sightings");
    assert_eq!(
        k.total(),
        0,
        "nothing is counted before the protocol is known"
    );
    k.both(&Tcp::new(c, s).seq(1001).payload(GET));
    assert_eq!(k.proxied(Protocol::Http, Verdict::Alerted), 1);
    assert_eq!(k.total(), 1);
    assert_eq!(
        k.bytes(Path::ApiserverProxyToPod, Direction::Rx),
        GET.len() as u64,
        "seen twice, counted once"
    );
    // A retransmission changes nothing.
    k.both(&Tcp::new(c, s).seq(1001).payload(GET));
    assert_eq!(k.total(), 1);
    assert_eq!(
        k.bytes(Path::ApiserverProxyToPod, Direction::Rx),
        GET.len() as u64
    );
    // The response is tx for the node.
    k.both(&Tcp::new(s, c).seq(5001).payload(b"HTTP/1.1 200 OK\r\n\r\n"));
    assert_eq!(k.bytes(Path::ApiserverProxyToPod, Direction::Tx), 19);
    // FIN both ways closes the flow.
    k.both(&Tcp::new(c, s).seq(1001 + GET.len() as u32).fin());
    assert_eq!(k.flows(), 1);
    k.both(&Tcp::new(s, c).seq(5020).fin());
    assert_eq!(k.flows(), 0, "the second FIN removes the flow");
    assert_eq!(k.total(), 1);
}

#[test]
fn tls_and_other_payloads() {
    let k = kernel();
    let (c, s) = (sa(CP, 40001), sa(POD, 8443));
    k.request(c, s, CLIENT_HELLO);
    assert_eq!(k.proxied(Protocol::Tls, Verdict::Allowed), 1);

    let (c, s) = (sa(CP, 40002), sa(POD, 9000));
    k.handshake(c, s);
    k.both(
        &Tcp::new(c, s)
            .seq(1001)
            .payload(b"\x00\x00\x00\x10binary-protocol!"),
    );
    assert_eq!(k.proxied(Protocol::Other, Verdict::Alerted), 1);
    assert_eq!(k.total(), 2);
}

#[test]
fn request_line_split_into_one_byte_segments_is_still_http() {
    let k = kernel();
    let (c, s) = (sa(CP, 40003), sa(POD, 8080));
    k.handshake(c, s);
    for (i, b) in GET.iter().enumerate().take(3) {
        k.both(&Tcp::new(c, s).seq(1001 + i as u32).payload(&[*b]));
        assert_eq!(k.total(), 0, "{} byte(s) decide nothing", i + 1);
    }
    // Out of order: a segment beyond a hole is not taken as the start.
    k.both(&Tcp::new(c, s).seq(1005).payload(b"X"));
    assert_eq!(k.total(), 0);
    k.both(&Tcp::new(c, s).seq(1004).payload(b" "));
    assert_eq!(k.proxied(Protocol::Http, Verdict::Alerted), 1);
    assert_eq!(k.total(), 1);
}

#[test]
fn ipv6_proxy_request() {
    let k = kernel();
    let (c, s) = (sa(CP6, 40004), sa(POD6, 8080));
    k.request(c, s, GET);
    assert_eq!(k.proxied(Protocol::Http, Verdict::Alerted), 1);
    assert_eq!(k.total(), 1);
}

/// SSH: the server speaks first, and the client answers with its own
/// identification string, which decides.
#[test]
fn server_speaks_first_over_ssh() {
    let k = kernel();
    let (c, s) = (sa(CP, 40005), sa(NODE, 22));
    k.handshake(c, s);
    k.both(
        &Tcp::new(s, c)
            .seq(5001)
            .payload(b"SSH-2.0-OpenSSH_9.2p1\r\n"),
    );
    assert_eq!(k.total(), 0, "the server's bytes decide nothing");
    k.both(&Tcp::new(c, s).seq(1001).payload(b"SSH-2.0-OpenSSH_9.6\r\n"));
    assert_eq!(
        k.connections(Path::SshTunnel, Protocol::Ssh, Verdict::Alerted),
        1
    );
}

#[test]
fn closed_without_payload_is_none() {
    let k = kernel();
    let (c, s) = (sa(CP, 40006), sa(POD, 8080));
    k.handshake(c, s);
    k.both(&Tcp::new(c, s).seq(1001).rst());
    assert_eq!(k.proxied(Protocol::None, Verdict::Allowed), 1);
    assert_eq!(k.flows(), 0, "a reset removes the flow");
}

#[test]
fn untracked_traffic_leaves_no_trace() {
    let k = kernel();
    for (c, s) in [
        (sa(NODE, 40007), sa(POD, 8080)), // node → pod: no path
        (sa(POD, 40008), sa(NODE, 9100)), // pod → node: no path
        (sa(Ipv4Addr::new(192, 0, 2, 1), 40009), sa(POD, 8080)),
    ] {
        k.request(c, s, GET);
    }
    assert_eq!(k.flows(), 0);
    assert_eq!(k.total(), 0);
    assert!(k.counters.bytes().unwrap().iter().all(|b| *b == 0));
    k.assert_filter_matches();
}

/// Untracked traffic that shares its filter slot with a tracked connection
/// takes the flow table lookup, misses, and stays untracked; the tracked
/// connection is counted as usual.
#[test]
fn untracked_traffic_in_a_tracked_slot_stays_untracked() {
    let k = kernel();
    let (c, s) = (sa(CP, 40100), sa(POD, 8080)); // apiserver-proxy-to-pod
    let slot = filter_slot;
    let twin = (1024..u16::MAX)
        .map(|port| (sa(NODE, port), sa(POD, 8080))) // node → pod: no path
        .find(|(uc, us)| slot(*uc, *us) == slot(c, s))
        .expect("some node port shares the slot");
    k.handshake(c, s);
    k.request(twin.0, twin.1, GET);
    k.both(&Tcp::new(c, s).seq(1001).payload(GET));
    assert_eq!(k.flows(), 1);
    assert_eq!(k.total(), 1);
    assert_eq!(
        k.bytes(Path::ApiserverProxyToPod, Direction::Rx),
        GET.len() as u64
    );
    assert_eq!(k.flows.filter_count(slot(c, s)), 1);
    k.both(&Tcp::new(c, s).seq(1001 + GET.len() as u32).rst());
    k.assert_filter_matches();
    assert_eq!(k.flows.filter_count(slot(c, s)), 0);
}

#[test]
fn truncated_and_malformed_packets_pass_untouched() {
    let k = kernel();
    let (c, s) = (sa(CP, 40010), sa(POD, 8080));
    let syn = Tcp::new(c, s).syn(1000).build();
    // Cut inside the IP header: kernels since 5.13 refuse to build such an
    // skb (they pull a full IP header first), as they never deliver one to
    // the hooks; older ones run the program on it, which must pass it.
    // Cut inside the TCP header: the program must pass it.
    let prog = k.datapath.program("egress").unwrap();
    for cut in [ETH_LEN + 1, ETH_LEN + 10] {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(&syn[..cut]),
            ..TestRunOptions::default()
        });
        if let Ok(r) = r {
            assert_eq!(r.return_value, 1, "cut at {cut}: passed untouched");
        }
    }
    for cut in [ETH_LEN + 20, ETH_LEN + 30] {
        assert_eq!(k.run("egress", &syn[..cut]), 1, "cut at {cut}");
    }
    let syn6 = Tcp::new(sa(CP6, 40010), sa(POD6, 8080)).syn(1000).build();
    for cut in [ETH_LEN + 40, ETH_LEN + 50] {
        assert_eq!(k.run("ingress", &syn6[..cut]), 1, "IPv6 cut at {cut}");
    }
    // A TCP data offset below the minimum (2 words) and beyond the packet.
    for doff in [2u8, 15] {
        let mut bad = syn.clone();
        bad[ETH_LEN + 20 + 12] = doff << 4;
        assert_eq!(k.run("egress", &bad), 1, "data offset {doff}");
    }
    // Not TCP: UDP (protocol 17).
    let mut udp = syn.clone();
    udp[ETH_LEN + 9] = 17;
    assert_eq!(k.run("egress", &udp), 1);
    assert_eq!(k.flows(), 0, "none of these opened a flow");
    assert_eq!(k.total(), 0);
    assert_eq!(
        k.counters.stats().unwrap().iter().sum::<u64>(),
        0,
        "nor counted anything"
    );
}

/// Every path of the table, some twice (both kinds of client or server):
/// a representative client and server, in either family, and the port.
const ROWS: &[(Path, Host, Host, u16)] = &[
    (Path::KubeletReadOnly, Host::Pod, Host::Node, 10255),
    (Path::KubeletReadOnly, Host::ControlPlane, Host::Node, 10255),
    (
        Path::ApiserverToKubelet,
        Host::ControlPlane,
        Host::Node,
        10250,
    ),
    (Path::SshTunnel, Host::ControlPlane, Host::Node, 22),
    (
        Path::ApiserverProxyToPod,
        Host::ControlPlane,
        Host::Pod,
        8080,
    ),
    (
        Path::ApiserverProxyToNode,
        Host::ControlPlane,
        Host::Node,
        9100,
    ),
    (Path::Konnectivity, Host::Pod, Host::ControlPlane, 8132),
    (Path::Konnectivity, Host::Node, Host::ControlPlane, 8132),
    (
        Path::NodeToApiserver,
        Host::Node,
        Host::ControlPlane,
        APISERVER_PORT,
    ),
    (Path::NodeToApiserver, Host::Node, Host::Vip, VIP_PORT),
    (Path::PodToApiserver, Host::Pod, Host::Vip, VIP_PORT),
    (
        Path::PodToApiserver,
        Host::Pod,
        Host::ControlPlane,
        APISERVER_PORT,
    ),
];

/// The first bytes of each protocol, and who speaks first.
fn opening(protocol: Protocol) -> Option<(&'static [u8], bool)> {
    match protocol {
        Protocol::Tls => Some((CLIENT_HELLO, false)),
        Protocol::Http => Some((GET, false)),
        Protocol::Http2 => Some((b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false)),
        Protocol::Ssh => Some((b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", true)),
        Protocol::Other => Some((b"\x00\x00\x00\x10binary-protocol!", false)),
        Protocol::None => None,
    }
}

/// Every row × every protocol × both families: exactly one connection, on
/// the right path, with the protocol and the default policy's verdict.
#[test]
fn every_path_every_protocol_both_families() {
    let k = kernel();
    let mut port = 41000;
    for &(path, client, server, sport) in ROWS {
        for protocol in Protocol::ALL {
            for (family, v6) in [("IPv4", false), ("IPv6", true)] {
                port += 1;
                let (c, s) = (sa(client.ip(v6), port), sa(server.ip(v6), sport));
                let verdict = Verdict::of(Action::default_for(path, protocol));
                let before = k.connections(path, protocol, verdict);
                let total = k.total();
                k.handshake(c, s);
                let sent = match opening(protocol) {
                    Some((bytes, server_first)) => {
                        if server_first {
                            k.both(&Tcp::new(s, c).seq(5001).payload(bytes));
                        }
                        k.both(&Tcp::new(c, s).seq(1001).payload(bytes));
                        bytes.len() as u32
                    }
                    None => {
                        k.both(&Tcp::new(c, s).seq(1001).fin());
                        1 // the FIN's sequence number
                    }
                };
                let case = format!("{:?} {protocol:?} {family} {c} -> {s}", path);
                assert_eq!(k.connections(path, protocol, verdict), before + 1, "{case}");
                assert_eq!(k.total(), total + 1, "{case}: counted once, nowhere else");
                // Close so the table does not fill up across cases.
                k.both(&Tcp::new(c, s).seq(1001 + sent).rst());
            }
        }
    }
    assert_eq!(k.flows(), 0, "every case cleaned up after itself");
    assert_eq!(k.total(), (ROWS.len() * Protocol::COUNT * 2) as u64);
    k.assert_filter_matches();
}

#[test]
fn ipv4_options_do_not_hide_the_tcp_header() {
    let k = kernel();
    for words in [1, 4, 10] {
        let (c, s) = (sa(CP, 42000 + words as u16), sa(POD, 8080));
        for p in [
            Tcp::new(c, s).syn(1000),
            Tcp::new(s, c).syn_ack(5000).ack_seq(1001),
            Tcp::new(c, s).seq(1001).payload(GET),
        ] {
            let bytes = with_ipv4_options(&p.build(), words);
            assert_eq!(k.run("egress", &bytes), 1);
            assert_eq!(k.run("ingress", &bytes), 1);
        }
    }
    assert_eq!(k.proxied(Protocol::Http, Verdict::Alerted), 3);
    assert_eq!(
        k.bytes(Path::ApiserverProxyToPod, Direction::Rx),
        3 * GET.len() as u64,
        "options are not payload"
    );
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let k = kernel();
    let chains: [&[u8]; 4] = [
        &[ext::HOP_BY_HOP],
        &[ext::HOP_BY_HOP, ext::ROUTING, ext::DEST_OPTS],
        &[ext::DEST_OPTS, ext::FRAGMENT], // first fragment: offset 0
        &[
            ext::HOP_BY_HOP,
            ext::DEST_OPTS,
            ext::ROUTING,
            ext::DEST_OPTS,
            ext::HOP_BY_HOP,
        ],
    ];
    for (i, chain) in chains.iter().enumerate() {
        let (c, s) = (sa(CP6, 43000 + i as u16), sa(POD6, 8080));
        for p in [
            Tcp::new(c, s).syn(1000),
            Tcp::new(s, c).syn_ack(5000).ack_seq(1001),
            Tcp::new(c, s).seq(1001).payload(GET),
        ] {
            let bytes = with_ipv6_ext_headers(&p.build(), chain, 0);
            assert_eq!(k.run("egress", &bytes), 1, "chain {chain:?}");
            assert_eq!(k.run("ingress", &bytes), 1, "chain {chain:?}");
        }
    }
    assert_eq!(
        k.proxied(Protocol::Http, Verdict::Alerted),
        chains.len() as u64
    );
    assert_eq!(
        k.bytes(Path::ApiserverProxyToPod, Direction::Rx),
        chains.len() as u64 * GET.len() as u64
    );

    // A later fragment has no TCP header; a chain longer than the programs
    // walk is given up on. Neither may open a flow or count anything; with
    // nothing enforced, both pass (see `unreadable_headers_...` below).
    let (c, s) = (sa(CP6, 43100), sa(POD6, 8080));
    let syn = Tcp::new(c, s).syn(1000).build();
    for bytes in unreadable(&syn) {
        assert_eq!(k.run("egress", &bytes), 1);
    }
    assert_eq!(
        k.flows(),
        chains.len(),
        "only the well-formed flows (still open) are in the table"
    );
}

/// `packet` (IPv6) made unreadable to the programs: as a later fragment,
/// and behind a chain of extension headers longer than they walk.
fn unreadable(packet: &[u8]) -> [Vec<u8>; 2] {
    [
        with_ipv6_ext_headers(packet, &[ext::FRAGMENT], 4),
        with_ipv6_ext_headers(packet, &[ext::DEST_OPTS; 7], 0),
    ]
}

#[test]
fn zero_length_segments_and_pure_acks_count_nothing() {
    let k = kernel();
    let (c, s) = (sa(CP, 44000), sa(POD, 8080));
    k.handshake(c, s);
    for _ in 0..5 {
        k.both(&Tcp::new(c, s).seq(1001));
        k.both(&Tcp::new(s, c).seq(5001));
    }
    assert_eq!(k.total(), 0, "no payload: nothing decided yet");
    assert!(k.counters.bytes().unwrap().iter().all(|b| *b == 0));
    assert_eq!(k.flows(), 1);
}

/// A flow table smaller than the tracked connections, on a path without a
/// block rule: the ones that fit are counted exactly, the others are
/// counted as lost, nothing breaks; and a flood of untracked connections
/// never touches the table.
#[test]
fn full_flow_table_loses_visibly() {
    let k = kernel_with(|args| args.flow_table_capacity = Some(8));
    for i in 0..200 {
        k.handshake(sa(NODE, 45000 + i), sa(POD, 8080)); // untracked: node → pod
    }
    assert_eq!(k.flows(), 0);
    for i in 0..20 {
        k.handshake(sa(CP, 46000 + i), sa(POD, 8080));
    }
    assert_eq!(k.flows(), 8, "the table holds its capacity");
    k.assert_filter_matches(); // refused connections took nothing
    assert_eq!(k.flows.counted(), 8);
    let stat = |s: Stat| k.counters.stat(s).unwrap();
    assert_eq!(stat(Stat::FlowsCreated), 8);
    // Each refused connection is counted once, at the first sighting of
    // the ACK that completed its handshake: it stays untracked for good.
    assert_eq!(stat(Stat::FlowTableFull), 12);
    for i in 0..20 {
        k.both(
            &Tcp::new(sa(CP, 46000 + i), sa(POD, 8080))
                .seq(1001)
                .payload(GET),
        );
    }
    assert_eq!(k.proxied(Protocol::Http, Verdict::Alerted), 8);
    // Closing makes room again.
    for i in 0..8 {
        k.both(
            &Tcp::new(sa(CP, 46000 + i), sa(POD, 8080))
                .seq(1001 + GET.len() as u32)
                .rst(),
        );
    }
    assert_eq!(k.flows(), 0);
    assert_eq!(k.flows.counted(), 0);
    k.assert_filter_matches();
    k.handshake(sa(CP, 47000), sa(POD, 8080));
    assert_eq!(k.flows(), 1);
}

/// Entries carry the time of their last segment; expiry removes the idle
/// ones and only those.
#[test]
fn idle_flows_expire_and_active_ones_stay() {
    let mut k = kernel();
    let idle = (sa(CP, 48000), sa(POD, 8080));
    let active = (sa(CP, 48001), sa(POD, 8080));
    k.handshake(idle.0, idle.1);
    k.handshake(active.0, active.1);
    let t0 = monotonic_ns();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // What the agent's expiry thread does every tick.
    k.flows.tick(monotonic_ns());
    k.both(&Tcp::new(active.0, active.1).seq(1001).payload(GET));
    let entries = k.flows.entries();
    let last = |c: SocketAddr| {
        entries
            .iter()
            .find(|(key, _)| key.lo_port == c.port() || key.hi_port == c.port())
            .unwrap()
            .1
            .last_ns
    };
    assert!(
        last(active.0) > last(idle.0),
        "the active flow's clock moved"
    );
    // Stamped with the clock written when the table was set up, just
    // before t0.
    assert!(
        last(idle.0).abs_diff(t0) < 50_000_000,
        "last_ns is CLOCK_MONOTONIC"
    );
    let removed = k
        .flows
        .expire_idle(std::time::Duration::from_millis(150), monotonic_ns())
        .unwrap();
    assert_eq!(removed, 1);
    let left = k.flows.entries();
    assert_eq!(left.len(), 1);
    assert!(left[0].0.lo_port == active.0.port() || left[0].0.hi_port == active.0.port());
    // The expiry released the idle entry's filter slot.
    k.assert_filter_matches();
}

/// A `block` rule: the deciding segment and every later payload segment of
/// the connection are dropped at both hooks, the ACKs and FIN still pass,
/// TLS on the same path passes, and one event says what happened.
#[test]
fn block_drops_payload_and_reports_one_event() {
    let mut k = kernel_with(|args| {
        args.policy = vec!["apiserver-proxy-to-pod:http=block".parse().unwrap()]
    });
    let (c, s) = (sa(CP, 49000), sa(POD, 8080));
    k.handshake(c, s);
    // "GET" alone decides nothing and passes; the segment that completes
    // the method decides `http`, is blocked, and is dropped.
    k.both(&Tcp::new(c, s).seq(1001).payload(b"GET"));
    let rest = Tcp::new(c, s).seq(1004).payload(&GET[3..]).build();
    assert_eq!(k.run("egress", &rest), 0, "the deciding segment is dropped");
    assert_eq!(
        k.run("ingress", &rest),
        0,
        "and its retransmission, at either hook"
    );
    assert_eq!(
        k.run(
            "ingress",
            &Tcp::new(s, c).seq(5001).payload(b"HTTP/1.1 200 OK").build()
        ),
        0
    );
    assert_eq!(
        k.run("egress", &Tcp::new(c, s).seq(1004).build()),
        1,
        "a pure ACK passes"
    );
    assert_eq!(
        k.run("egress", &Tcp::new(c, s).seq(1004).fin().build()),
        1,
        "so does the FIN"
    );
    assert_eq!(k.proxied(Protocol::Http, Verdict::Blocked), 1);
    assert_eq!(k.counters.stat(Stat::SegmentsDropped).unwrap(), 3);

    let (c2, s2) = (sa(CP, 49001), sa(POD, 8443));
    k.request(c2, s2, CLIENT_HELLO);
    assert_eq!(k.proxied(Protocol::Tls, Verdict::Allowed), 1);

    let got = k.events();
    assert_eq!(got.len(), 1, "one event, for the blocked connection only");
    let e = got[0];
    assert_eq!(
        (e.path, e.protocol),
        (Path::ApiserverProxyToPod as u8, Protocol::Http as u8)
    );
    assert_eq!(
        (e.action, e.verdict, e.flags),
        (Action::Block as u8, Verdict::Blocked as u8, 0)
    );
    assert_eq!((e.client_port, e.server_port), (49000, 8080));
    assert_eq!(std::net::IpAddr::from(e.client), c.ip());
    assert_eq!(std::net::IpAddr::from(e.server), s.ip());
}

/// A burst of violations larger than the ring buffer while nobody reads it:
/// every event is either in the buffer or counted as lost.
#[test]
fn event_loss_under_a_burst_is_counted() {
    let mut k = kernel();
    // 88 bytes a record (80 + 8 of header): 256 KiB hold 2978 of them.
    const BURST: u32 = 6000;
    for i in 0..BURST {
        let (c, s) = (sa(CP, 1024 + (i % 60000) as u16), sa(POD, 8080));
        assert_eq!(k.run("egress", &Tcp::new(c, s).syn(1000).build()), 1);
        assert_eq!(
            k.run("egress", &Tcp::new(c, s).seq(1001).payload(GET).build()),
            1
        );
        let rst = Tcp::new(c, s).seq(1001 + GET.len() as u32).rst();
        assert_eq!(k.run("egress", &rst.build()), 1);
    }
    let read = k.events().len() as u64;
    let lost = k.counters.stat(Stat::EventsLost).unwrap();
    assert_eq!(
        k.proxied(Protocol::Http, Verdict::Alerted),
        u64::from(BURST)
    );
    assert!(lost > 0, "the burst overflowed the ring buffer");
    assert_eq!(read + lost, u64::from(BURST), "read {read} + lost {lost}");
}

// Attacks on enforcement (README, "Threat model"): each test below gets
// plaintext through a blocked path on the programs before the hardening.
// Socket-level rules (who may open, complete or end a connection) need
// real sockets: `tests/tests/attacks.rs` covers those.

/// A client connection to the pod's HTTP (`http`) and HTTPS (`tls`)
/// servers, on apiserver-proxy-to-pod.
fn to_pod(client_port: u16, server_port: u16) -> (SocketAddr, SocketAddr) {
    (sa(CP, client_port), sa(POD, server_port))
}

/// A spoofed-SYN flood far larger than the flow table leaves it empty: only
/// completed handshakes enter it. A connection opened during the flood is
/// still tracked, its plaintext blocked and TLS allowed.
#[test]
fn a_spoofed_syn_flood_never_fills_the_flow_table() {
    const CAPACITY: u32 = 1024;
    let k = enforcing_with_capacity(CAPACITY);
    let flood = |from: u32, n: u32| {
        for i in from..from + n {
            // Spoofed control-plane sources, each SYN from its own port.
            let (c, s) = to_pod(1024 + (i % 60000) as u16, 8080 + (i / 60000) as u16);
            assert_eq!(k.verdicts(&Tcp::new(c, s).syn(i)), (1, 1));
        }
    };
    flood(0, 5 * CAPACITY);
    assert_eq!(k.flows(), 0, "no half-open connection entered the table");
    assert_eq!(
        k.counters.stat(Stat::HalfOpen).unwrap(),
        u64::from(5 * CAPACITY)
    );

    let (c, s) = to_pod(61000, 8080);
    k.both(&Tcp::new(c, s).syn(1000));
    flood(5 * CAPACITY, 100);
    k.both(&Tcp::new(s, c).syn_ack(5000).ack_seq(1001));
    k.both(&Tcp::new(c, s).seq(1001).ack_seq(5001));
    assert_eq!(
        k.verdicts(&Tcp::new(c, s).seq(1001).payload(GET)),
        (0, 0),
        "plaintext is blocked during the flood"
    );
    let (c, s) = to_pod(61001, 8443);
    assert_eq!(k.open(c, s, CLIENT_HELLO), (1, 1));
    assert_eq!(k.flows(), 2);
    k.assert_filter_matches();
}

/// With the table truly full, a new connection on an enforced path is
/// refused at its SYN (fail closed); elsewhere it passes untracked (fail
/// open). Both are counted.
#[test]
fn a_full_table_fails_closed_on_enforced_paths_only() {
    let k = enforcing_with_capacity(8);
    for i in 0..8 {
        let (c, s) = to_pod(50000 + i, 8443);
        k.request(c, s, CLIENT_HELLO);
    }
    assert_eq!(k.flows(), 8);
    let (c, s) = to_pod(50100, 8443);
    assert_eq!(k.verdicts(&Tcp::new(c, s).syn(1000)), (0, 0), "refused");
    assert_eq!(k.dropped(DropReason::TableFull), 2);
    // node-to-apiserver has no block rule: it must never break.
    let (c, s) = (sa(NODE, 50200), sa(CP, APISERVER_PORT));
    assert_eq!(k.open(c, s, GET), (1, 1));
    assert!(k.counters.stat(Stat::FlowTableFull).unwrap() > 0);
    assert_eq!(k.flows(), 8);
}

/// Client bytes beyond a gap wait until the gap is filled: sent 1..n before
/// byte 0, a request must not reach the server while detection holds one
/// byte. On a path without a block rule they pass.
#[test]
fn segments_beyond_a_hole_wait_until_it_is_filled() {
    let k = enforcing();
    let (c, s) = to_pod(51000, 8080);
    k.handshake(c, s);
    let after_hole = Tcp::new(c, s).seq(1002).payload(&GET[1..]);
    assert_eq!(k.run("egress", &after_hole.build()), 0, "beyond the hole");
    assert_eq!(k.dropped(DropReason::OutOfOrder), 1);
    assert_eq!(
        k.verdicts(&Tcp::new(c, s).seq(1001).payload(&GET[..1])),
        (1, 1)
    );
    assert_eq!(k.total(), 0, "one byte decides nothing");
    // The retransmission is in order now: `http`, blocked.
    assert_eq!(k.verdicts(&after_hole), (0, 0));
    assert_eq!(k.proxied(Protocol::Http, Verdict::Blocked), 1);
    // Not enforced: visibility only.
    let (c, s) = (sa(CP, 51001), sa(NODE, 10250));
    k.handshake(c, s);
    assert_eq!(
        k.verdicts(&Tcp::new(c, s).seq(1002).payload(&GET[1..])),
        (1, 1)
    );
}

/// Urgent bytes sit in the sequence space but a server without
/// SO_OOBINLINE never reads them: they cannot make plaintext look like TLS.
#[test]
fn urgent_data_decides_other() {
    let k = enforcing();
    let (c, s) = to_pod(52000, 8080);
    k.handshake(c, s);
    let urgent = Tcp::new(c, s)
        .seq(1001)
        .payload(&CLIENT_HELLO[..3])
        .urgent();
    assert_eq!(k.verdicts(&urgent), (0, 0));
    assert_eq!(k.proxied(Protocol::Other, Verdict::Blocked), 1);
    assert_eq!(k.verdicts(&Tcp::new(c, s).seq(1004).payload(GET)), (0, 0));
}

/// A TLS record header followed by a request line is not TLS.
#[test]
fn a_tls_looking_prefix_then_plaintext_is_other() {
    let k = enforcing();
    let (c, s) = to_pod(53000, 8080);
    k.handshake(c, s);
    let bytes = [&CLIENT_HELLO[..3], GET].concat();
    assert_eq!(
        k.verdicts(&Tcp::new(c, s).seq(1001).payload(&bytes)),
        (0, 0)
    );
    assert_eq!(k.proxied(Protocol::Other, Verdict::Blocked), 1);
}

/// TCP Fast Open: a server hands data in a SYN to its application at once.
/// On an enforced path the SYN is dropped (the client retries without the
/// data); elsewhere it passes.
#[test]
fn data_in_a_syn_is_dropped_on_enforced_paths() {
    let k = enforcing();
    let (c, s) = to_pod(54000, 8080);
    assert_eq!(k.verdicts(&Tcp::new(c, s).syn(1000).payload(GET)), (0, 0));
    assert_eq!(k.dropped(DropReason::SynData), 2);
    assert_eq!(k.flows(), 0);
    let (c, s) = (sa(CP, 54001), sa(NODE, 10250));
    assert_eq!(k.verdicts(&Tcp::new(c, s).syn(1000).payload(GET)), (1, 1));
}

/// Packets whose TCP header the programs cannot find pass while nothing is
/// enforced (`ipv6_extension_headers_are_walked`), and are dropped while
/// something is: the receiving stack may walk further than we do.
#[test]
fn unreadable_headers_are_dropped_while_enforcing() {
    let k = enforcing();
    let (c, s) = (sa(CP6, 55000), sa(POD6, 8080));
    for bytes in unreadable(&Tcp::new(c, s).seq(1001).payload(GET).build()) {
        assert_eq!(k.run("ingress", &bytes), 0);
    }
    assert_eq!(k.dropped(DropReason::UnreadableHeaders), 2);
}

/// A RST or FIN the receiver would not accept (wrong sequence number)
/// changes nothing: it neither removes the entry nor decides `none`.
#[test]
fn resets_and_fins_out_of_sequence_change_nothing() {
    let mut k = enforcing();
    let (c, s) = to_pod(56000, 8080);
    k.handshake(c, s);
    k.both(&Tcp::new(c, s).seq(1001 + 4000).rst());
    k.both(&Tcp::new(s, c).seq(5001 + 4000).rst());
    k.both(&Tcp::new(c, s).seq(1001 + 500).fin());
    assert_eq!(k.flows(), 1, "still tracked");
    assert_eq!(k.total(), 0, "still undecided");
    assert_eq!(k.verdicts(&Tcp::new(c, s).seq(1001).payload(GET)), (0, 0));
    // A RST where the stream is counts, but on an enforced path the entry
    // stays (the receiver may have discarded it): nothing passes after it.
    k.both(&Tcp::new(c, s).seq(1001).rst());
    assert_eq!(k.flows(), 1);
    let tls = to_pod(56001, 8443);
    k.request(tls.0, tls.1, CLIENT_HELLO);
    let end = 1001 + CLIENT_HELLO.len() as u32;
    k.both(&Tcp::new(tls.0, tls.1).seq(end).rst());
    assert_eq!(
        k.verdicts(&Tcp::new(tls.0, tls.1).seq(end).payload(GET)),
        (0, 0),
        "after a RST"
    );
    assert_eq!(k.dropped(DropReason::Rewritten), 2);
    // The agent forgets closed entries after a short linger.
    let later = monotonic_ns() + 60_000_000_000;
    assert_eq!(
        k.flows
            .expire_idle(std::time::Duration::from_secs(3600), later)
            .unwrap(),
        2
    );
    assert_eq!(k.flows(), 0);
}

/// A SYN with a new ISN on the key of a tracked connection is a new
/// connection: it is judged afresh, not given the old one's verdict. A
/// retransmitted SYN (same ISN) changes nothing.
#[test]
fn a_new_connection_on_a_known_key_is_judged_afresh() {
    let k = enforcing();
    let (c, s) = to_pod(57000, 8080);
    k.request(c, s, CLIENT_HELLO);
    k.both(&Tcp::new(c, s).syn(1000));
    assert_eq!(k.flows(), 1);
    k.handshake_isn(c, s, 90_000);
    assert_eq!(
        k.verdicts(&Tcp::new(c, s).seq(90_001).payload(GET)),
        (0, 0),
        "not the old connection's `tls`"
    );
    assert_eq!(k.proxied(Protocol::Http, Verdict::Blocked), 1);
}

/// Only the client's bytes decide: a server that writes first (here, bytes
/// that would be TLS) cannot hide the client's request.
#[test]
fn the_client_decides_even_when_the_server_speaks_first() {
    let k = enforcing();
    let (c, s) = to_pod(58000, 8080);
    k.handshake(c, s);
    k.both(&Tcp::new(s, c).seq(5001).payload(CLIENT_HELLO));
    assert_eq!(k.total(), 0);
    assert_eq!(k.verdicts(&Tcp::new(c, s).seq(1001).payload(GET)), (0, 0));
}

/// The agent forgets a half-open entry, and clears its slot's mark, five
/// minutes after the last SYN or SYN-ACK: untracked packets in that slot
/// skip the `HALF_OPEN` lookup again, and a handshake that slow is not
/// tracked.
#[test]
fn half_open_marks_expire() {
    use observer_common::flow::HALF_OPEN_TTL_NS;
    let mut k = kernel();
    let (c, s) = to_pod(59000, 8080);
    k.both(&Tcp::new(c, s).syn(1000));
    let now = monotonic_ns();
    assert_eq!(k.flows.clear_stale_marks(now), 0, "a fresh mark stays");
    assert_eq!(
        k.flows
            .clear_stale_marks(now + HALF_OPEN_TTL_NS + 1_000_000_000),
        1
    );
    k.both(&Tcp::new(c, s).seq(1001).ack_seq(5001));
    assert_eq!(k.flows(), 0);
    // The retransmitted SYN (known already) and its SYN-ACK mark it again.
    k.handshake(c, s);
    assert_eq!(k.flows(), 1);
}

/// The first bytes judged are the ones the server gets: a decoy the server
/// discards (a bad checksum, no ACK: the programs run before TCP checks
/// either) may decide the protocol, but bytes that differ at the same
/// place are dropped afterwards.
#[test]
fn bytes_that_differ_from_what_was_judged_are_dropped() {
    let k = enforcing();
    let (c, s) = to_pod(60000, 8080);
    k.request(c, s, CLIENT_HELLO);
    assert_eq!(k.proxied(Protocol::Tls, Verdict::Allowed), 1);
    assert_eq!(k.verdicts(&Tcp::new(c, s).seq(1001).payload(GET)), (0, 0));
    assert_eq!(
        k.verdicts(&Tcp::new(c, s).seq(1001).payload(CLIENT_HELLO)),
        (1, 1),
        "the same bytes again (a retransmission) pass"
    );
    assert_eq!(k.dropped(DropReason::Rewritten), 2);
}

/// A FIN the server discards decides `none`; nothing the client sends
/// after its FIN may pass.
#[test]
fn nothing_passes_after_the_clients_fin() {
    let k = enforcing();
    let (c, s) = to_pod(60100, 8080);
    k.handshake(c, s);
    k.both(&Tcp::new(c, s).seq(1001).fin());
    assert_eq!(k.proxied(Protocol::None, Verdict::Allowed), 1);
    assert_eq!(k.verdicts(&Tcp::new(c, s).seq(1001).payload(GET)), (0, 0));
}

/// Bytes starting before the stream's first byte and running into it: the
/// receiver would trim and keep the rest, unjudged.
#[test]
fn bytes_from_before_the_stream_are_dropped() {
    let k = enforcing();
    let (c, s) = to_pod(60200, 8080);
    k.handshake(c, s);
    let overlapping = [b"X".as_slice(), GET].concat();
    assert_eq!(
        k.verdicts(&Tcp::new(c, s).seq(1000).payload(&overlapping)),
        (0, 0)
    );
    assert_eq!(k.total(), 0);
}

/// A first SYN without data must not let a second one with data through.
#[test]
fn data_in_a_retransmitted_syn_is_dropped_too() {
    let k = enforcing();
    let (c, s) = to_pod(60300, 8080);
    k.both(&Tcp::new(c, s).syn(1000));
    assert_eq!(k.verdicts(&Tcp::new(c, s).syn(1000).payload(GET)), (0, 0));
}

/// A half-open entry pushed out by a flood: the connection's next client
/// segment reaching its server is picked up on the enforced path (here,
/// without a socket to say where its stream starts, as `other`: fail
/// closed), not passed.
#[test]
fn a_connection_whose_half_open_entry_was_pushed_out_is_picked_up() {
    const CAPACITY: u32 = 1024;
    let k = enforcing_with_capacity(CAPACITY);
    let (c, s) = to_pod(60400, 8080);
    k.both(&Tcp::new(c, s).syn(1000));
    k.both(&Tcp::new(s, c).syn_ack(5000).ack_seq(1001));
    for i in 0..5 * CAPACITY {
        let (fc, fs) = to_pod(1024 + (i % 60000) as u16, 9000 + (i / 60000) as u16);
        k.both(&Tcp::new(fc, fs).syn(i));
    }
    // As the pod's server receives it (the client's side is remote).
    let get = Tcp::new(c, s).seq(1001).ack_seq(5001).payload(GET).build();
    assert_eq!(k.run("ingress", &get), 0);
    assert_eq!(k.flows(), 1);
}

/// A local socket connecting from a remote client's address and port
/// (IP_TRANSPARENT, which CAP_NET_RAW allows) cannot make the programs
/// forget that client's connection and its verdict.
#[test]
fn a_local_socket_posing_as_a_remote_client_changes_nothing() {
    let k = enforcing();
    let (c, s) = to_pod(60500, 8080);
    assert_eq!(k.open(c, s, GET), (0, 0));
    assert_eq!(k.run("egress", &Tcp::new(c, s).syn(77_000).build()), 1);
    assert_eq!(k.flows(), 1);
    assert_eq!(
        k.verdicts(&Tcp::new(c, s).seq(1001).payload(GET)),
        (0, 0),
        "still blocked"
    );
}

/// What the programs read from a TCP socket (`bpf_tcp_sock`) to know where
/// a client's stream starts means the same on this kernel: the server's
/// `rcv_nxt` moved by `bytes_received` since the SYN, the client's
/// `snd_una` by `bytes_acked`, the SYN counting one. Real sockets on
/// loopback; the sequence numbers read with `TCP_REPAIR`.
#[test]
fn the_socket_counters_the_programs_read_mean_what_they_assume() {
    use lab::traffic::attack::{sequence_numbers, tcp_byte_counters};
    use std::{
        io::{Read as _, Write as _},
        os::fd::AsFd as _,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let (first, _) = sequence_numbers(client.as_fd()).unwrap(); // ISN + 1
    for n in [1usize, 100, 3000] {
        client.write_all(&vec![b'x'; n]).unwrap();
        server.read_exact(&mut vec![0; n]).unwrap();
        server.write_all(b"ok").unwrap();
        client.read_exact(&mut [0; 2]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50)); // the ACKs
        let (_, rcv_nxt) = sequence_numbers(server.as_fd()).unwrap();
        let (_, received) = tcp_byte_counters(server.as_fd()).unwrap();
        assert_eq!(
            rcv_nxt.wrapping_sub(received as u32),
            first,
            "server, after {n}"
        );
        let (snd_una, _) = sequence_numbers(client.as_fd()).unwrap(); // all acked
        let (acked, _) = tcp_byte_counters(client.as_fd()).unwrap();
        assert_eq!(
            snd_una.wrapping_sub(acked as u32).wrapping_add(1),
            first,
            "client, after {n}"
        );
    }
}

/// A client that resets its first request and opens another with a new ISN
/// (the listener's SYN-ACK answers the new one): where its stream starts
/// is where the local server's SYN-ACK says, and bytes before that are
/// never let through unjudged.
#[test]
fn the_servers_syn_ack_says_where_the_stream_starts() {
    let k = enforcing();
    let (c, s) = to_pod(61000, 8443);
    k.both(&Tcp::new(c, s).syn(1000));
    k.both(&Tcp::new(s, c).syn_ack(5000).ack_seq(1001));
    // The second request: its SYN does not rewrite the half-open entry,
    // the server's answer does.
    k.run("ingress", &Tcp::new(c, s).syn(900).build());
    k.run("egress", &Tcp::new(s, c).syn_ack(6000).ack_seq(901).build());
    assert_eq!(
        k.verdicts(&Tcp::new(c, s).seq(901).ack_seq(6001).payload(CLIENT_HELLO)),
        (1, 1),
        "TLS where the server's stream starts"
    );
    let (c, s) = to_pod(61001, 8080);
    k.handshake(c, s);
    assert_eq!(
        k.verdicts(
            &Tcp::new(c, s)
                .seq(900)
                .payload(&[b"x".as_slice(), GET].concat()[..1])
        ),
        (0, 0),
        "a byte before the stream"
    );
}

/// Collects the trace's records, names put back as the agent logs them.
#[derive(Clone, Default)]
struct Records(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = observer::kernel_log::name_numbers(&record.args().to_string());
        self.0.lock().unwrap().push(line);
    }

    fn flush(&self) {}
}

#[test]
fn the_trace_says_why_a_connection_got_its_path_and_verdict() {
    let mut k = kernel_with(|args| {
        args.policy = vec![NO_PLAINTEXT.parse().unwrap()];
        args.kernel_log = Some(observer::config::KernelLog::Debug);
    });
    let records = Records::default();
    let mut trace = k.datapath.trace(records.clone()).expect("AYA_LOGS");
    let (c, s) = (sa(CP, 40500), sa(POD, 8080));
    assert_eq!(k.open(c, s, GET), (0, 0), "the request is blocked");
    trace.flush();
    let lines = records.0.lock().unwrap().clone();
    let path = Path::ApiserverProxyToPod;
    let classified = format!(
        "classified path={path} client=::ffff:{} client_port={} client_roles=control-plane \
         server=::ffff:{} server_port={} server_roles=pod apiserver=0",
        c.ip(),
        c.port(),
        s.ip(),
        s.port()
    );
    let decided = format!(
        "decided path={path} protocol={} verdict={} client=::ffff:{} client_port={} \
         server=::ffff:{} server_port={}",
        Protocol::Http,
        Verdict::Blocked,
        c.ip(),
        c.port(),
        s.ip(),
        s.port()
    );
    // The SYN is seen at both ends (egress, then ingress): classified once
    // (the second sighting finds the half-open entry).
    assert_eq!(lines, vec![classified, decided], "the records");
}

#[test]
fn without_the_trace_the_programs_write_no_record() {
    let mut k = enforcing();
    let records = Records::default();
    let mut trace = k.datapath.trace(records.clone()).expect("AYA_LOGS");
    assert_eq!(k.open(sa(CP, 40501), sa(POD, 8080), GET), (0, 0));
    trace.flush();
    assert_eq!(*records.0.lock().unwrap(), Vec::<String>::new());
}
