//! Scale curves of the kernel programs (BPF_PROG_TEST_RUN of the release
//! object): the cost of a tracked connection's packet against the number of
//! connections in the flow table, and the cost of a SYN against the number
//! of prefixes in the role trie. A big table or trie is cold: its lookups
//! miss the caches. So each point runs many different packets (different
//! connections, different addresses), each once, and the no-op program runs
//! on each packet just before: the point is the median of each, and the
//! programs' own cost is the difference.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::MapInfo;
use ipnet::IpNet;
use observer::{
    cli::RunArgs,
    config::{DEFAULT_FLOW_TABLE_CAPACITY, DEFAULT_ROLE_TRIE_CAPACITY, Settings},
    ebpf::{Datapath, Loaded},
};
use observer_common::counters::Stat;

use super::{
    kernel::median,
    plot::{self, Axis, Series},
};
use crate::{
    cluster::topology::{
        Topology,
        addrs::{APISERVER_PORT, CP4, CP6, POD_CIDR4, POD_CIDR6},
    },
    kernel::{self, packets::Tcp},
};

/// The sizes of the two curves and how many packets measure each point.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Connections in the flow table, one point each.
    pub flows: &'static [u32],
    /// Prefixes in the role trie, one point each (at least the lab's own).
    pub prefixes: &'static [u32],
    /// Packets run per point, each once (at most [`MAX_PACKETS`]).
    pub packets: u32,
}

impl Plan {
    /// The sizes issue 16 asks for.
    pub const FULL: Self = Self {
        flows: &[1_000, 10_000, 65_536, 262_144],
        prefixes: &[10, 1_000, 10_000, 100_000],
        packets: 20_000,
    };
}

/// Most packets a point can run: SYNs need distinct client ports (twice
/// as many, for the warm run).
pub const MAX_PACKETS: u32 = 30_000;

/// Both curves must stay within this factor of their smallest size's cost
/// (the programs' own cost, over the no-op program's).
pub const TARGET_FACTOR: f64 = 2.0;

/// One point of a curve.
#[derive(Clone, Debug)]
pub struct Point {
    /// Connections in the flow table, or prefixes in the role trie.
    pub size: u32,
    /// The capacity the map was loaded with.
    pub capacity: u32,
    /// Kernel memory of the map(s), bytes (`memlock` in their fdinfo).
    pub map_bytes: u64,
    /// The agent's program, median ns of one run.
    pub ns: f64,
    /// The no-op program on the same packets, median ns of one run.
    pub floor_ns: f64,
    /// The same work with warm caches (one connection's packet repeated,
    /// SYNs between one pair of addresses): the agent's program over the
    /// no-op program's, median ns of one run. What is left of the growth
    /// here is the size's, not the caches'.
    pub warm_net_ns: f64,
    /// Packets run.
    pub packets: usize,
    /// How long the point took, filling included.
    pub took: Duration,
}

impl Point {
    /// The program's own cost: over the no-op program's.
    pub fn net_ns(&self) -> f64 {
        self.ns - self.floor_ns
    }
}

/// Both curves.
#[derive(Clone, Debug)]
pub struct Report {
    /// Packet of a tracked connection against connections in the flow table.
    pub flows: Vec<Point>,
    /// SYN against prefixes in the role trie.
    pub prefixes: Vec<Point>,
}

/// Measures both curves. Panics when a point does not measure what it
/// says: a connection missing from the flow table after the handshakes, a
/// prefix missing from the trie, a SYN that opened no half-open entry.
pub fn run(plan: &Plan) -> Report {
    assert!(
        plan.packets > 0 && plan.packets <= MAX_PACKETS,
        "packets per point: 1 to {MAX_PACKETS}"
    );
    Report {
        flows: plan
            .flows
            .iter()
            .map(|n| flow_point(*n, plan.packets))
            .collect(),
        prefixes: plan
            .prefixes
            .iter()
            .map(|n| trie_point(*n, plan.packets))
            .collect(),
    }
}

/// The `i`th connection of the flow table: a pod of the lab's pod ranges
/// to the apiserver (path pod-to-apiserver), IPv4 and IPv6 in turn.
fn connection(i: u32) -> (SocketAddr, SocketAddr) {
    let k = i / 2;
    if i.is_multiple_of(2) {
        let [a, b, c, _] = first(POD_CIDR4).octets();
        let pod = Ipv4Addr::new(a, b, c, 2 + (k % 250) as u8);
        let port = 10_000 + (k / 250) as u16;
        (sa(pod, port), sa(CP4, APISERVER_PORT))
    } else {
        let net = u128::from(first6(POD_CIDR6));
        (
            sa(Ipv6Addr::from(net + 2 + u128::from(k)), 10_000),
            sa(CP6, APISERVER_PORT),
        )
    }
}

/// The first 16 bytes of a TLS ClientHello (allowed on every path: no event).
const TLS_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xf1, 0x01, 0x00, 0x00, 0xed, 0x03, 0x03, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
];

/// `n` connections in the flow table, each opened by its handshake and
/// decided by its first payload through the programs, as on a node; then a
/// random sample of them, each connection's first payload again (a packet
/// of a known, decided connection), cycled through until `packets` ran.
fn flow_point(n: u32, packets: u32) -> Point {
    let started = Instant::now();
    let capacity = n.max(DEFAULT_FLOW_TABLE_CAPACITY);
    // Whole: the maps' descriptors stay open for `map_bytes`.
    let loaded = load(|args| args.flow_table_capacity = Some(capacity));
    let (d, counters) = (&loaded.datapath, &loaded.counters);
    let payload = |(c, s): (SocketAddr, SocketAddr)| {
        Tcp::new(c, s).seq(1001).payload(TLS_CLIENT_HELLO).build()
    };
    for i in 0..n {
        let (c, s) = connection(i);
        let [syn, syn_ack, ack] = kernel::packets::handshake(c, s, 1000);
        kernel::run(d, "egress", &syn.build());
        kernel::run(d, "ingress", &syn_ack.build());
        kernel::run(d, "egress", &ack.build());
        kernel::run(d, "egress", &payload((c, s)));
    }
    assert_eq!(
        counters.flow_entries(),
        u64::from(n),
        "every handshake put its connection in the flow table"
    );
    let mut order: Vec<u32> = (0..n).collect();
    Rng(u64::from(n)).shuffle(&mut order);
    order.truncate(packets as usize);
    let sample: Vec<Vec<u8>> = order.iter().map(|i| payload(connection(*i))).collect();
    let (ns, floor_ns) = measure(d, sample.iter().cycle().take(packets as usize));
    let (warm, warm_floor) = measure(d, std::iter::repeat_n(&sample[0], packets as usize));
    assert_eq!(
        counters.flow_entries(),
        u64::from(n),
        "the measured packets changed no connection"
    );
    Point {
        size: n,
        capacity,
        map_bytes: map_bytes(d, "FLOWS") + map_bytes(d, "HALF_OPEN"),
        ns,
        floor_ns,
        warm_net_ns: warm - warm_floor,
        packets: packets as usize,
        took: started.elapsed(),
    }
}

/// What the generated prefixes are, in turn.
const KINDS: u32 = 4;

/// The `i`th generated prefix and whether it is a pod range (else a
/// konnectivity agent, control plane), spread over its range the way
/// addresses are handed out: pod ranges /24 in 10.0.0.0/8 and /64 in
/// fd00:10:244::/48, konnectivity agents /32 in 100.64.0.0/10 and /128 in
/// fd00:64::/96, the four kinds in turn.
fn prefix(i: u32) -> (IpNet, bool) {
    let k = i / KINDS;
    assert!(k < 1 << 16, "at most {} generated prefixes", KINDS << 16);
    // Odd multipliers: distinct `k` give distinct, scattered indexes.
    let idx16 = k.wrapping_mul(40_503) & 0xffff;
    let idx = k.wrapping_mul(2_654_435_761);
    let net = |ip: IpAddr, len: u8| IpNet::new(ip, len).expect("a valid prefix length");
    match i % KINDS {
        0 => (
            net(Ipv4Addr::from(0x0a00_0000 | idx16 << 8).into(), 24),
            true,
        ),
        1 => (
            net(
                Ipv6Addr::new(0xfd00, 0x10, 0x244, idx16 as u16, 0, 0, 0, 0).into(),
                64,
            ),
            true,
        ),
        2 => (
            net(Ipv4Addr::from(0x6440_0000 | (idx & 0x3f_ffff)).into(), 32),
            false,
        ),
        _ => (
            net(
                Ipv6Addr::from(0xfd00_0064_0000_0000_0000_0000_0000_0000u128 | u128::from(idx))
                    .into(),
                128,
            ),
            false,
        ),
    }
}

/// The role trie with `n` prefixes (the lab's own, and generated pod ranges
/// and konnectivity agents: [`prefix`]); then `packets` SYNs, each of a new
/// connection from a random control-plane address (a konnectivity agent, or
/// the lab's control plane) to a random address in a random pod range,
/// IPv4 and IPv6 in turn: path apiserver-proxy-to-pod, two trie lookups,
/// and a half-open entry each.
fn trie_point(n: u32, packets: u32) -> Point {
    let started = Instant::now();
    let base = Topology::run_args(&[]);
    let own = trie_entries(&base);
    assert!(
        n >= own,
        "the lab's address plan alone makes {own} prefixes"
    );
    let generated: Vec<(IpNet, bool)> = (0..n - own).map(prefix).collect();
    let capacity = n.max(DEFAULT_ROLE_TRIE_CAPACITY);
    let adjust = |args: &mut RunArgs| {
        for (net, pod) in &generated {
            let list = if *pod {
                &mut args.pod_cidr
            } else {
                &mut args.control_plane
            };
            list.push(net.to_string().parse().expect("a CIDR parses"));
        }
        args.role_trie_capacity = Some(capacity);
    };
    let mut args = base.clone();
    adjust(&mut args);
    assert_eq!(trie_entries(&args), n, "one trie entry a prefix");
    let loaded = load(adjust);
    let (d, counters) = (&loaded.datapath, &loaded.counters);
    // Clients and servers by family (0: IPv4, 1: IPv6).
    let family = |net: &IpNet| usize::from(net.addr().is_ipv6());
    let mut clients: [Vec<IpNet>; 2] = Default::default();
    let mut pods: [Vec<IpNet>; 2] = Default::default();
    for c in args.control_plane.iter().map(|c| c.0) {
        clients[family(&c)].push(c);
    }
    for p in args.pod_cidr.iter().map(|c| c.0) {
        pods[family(&p)].push(p);
    }
    let mut rng = Rng(u64::from(n));
    let syn = |(client, server): (IpAddr, IpAddr), j: u32| {
        Tcp::new(sa(client, 1024 + j as u16), sa(server, 8080))
            .syn(1000)
            .build()
    };
    let ends: Vec<(IpAddr, IpAddr)> = (0..packets)
        .map(|j| {
            let f = (j % 2) as usize;
            let client = rng.pick(&clients[f]).addr();
            let pod = rng.pick(&pods[f]);
            (client, rng.host(pod))
        })
        .collect();
    let syns: Vec<Vec<u8>> = ends.iter().zip(0..).map(|(e, j)| syn(*e, j)).collect();
    let (ns, floor_ns) = measure(d, syns.iter());
    // Other client ports than above: new connections too.
    let warm: Vec<Vec<u8>> = (0..packets)
        .map(|j| syn(ends[0], MAX_PACKETS + j))
        .collect();
    let (warm, warm_floor) = measure(d, warm.iter());
    assert_eq!(
        counters.stat(Stat::HalfOpen).expect("the STATS map"),
        2 * u64::from(packets),
        "every SYN was classified (both ends found in the trie) and opened a half-open entry"
    );
    Point {
        size: n,
        capacity,
        map_bytes: map_bytes(d, "ROLES"),
        ns,
        floor_ns,
        warm_net_ns: warm - warm_floor,
        packets: packets as usize,
        took: started.elapsed(),
    }
}

/// The programs loaded for the lab, with what `adjust` changes, and the
/// no-op program.
fn load(adjust: impl FnOnce(&mut RunArgs)) -> Loaded {
    let mut loaded = kernel::load(adjust);
    loaded
        .datapath
        .load_extra("noop")
        .expect("the no-op program loads");
    loaded
}

/// The role trie entries `args` make.
fn trie_entries(args: &RunArgs) -> u32 {
    let roomy = RunArgs {
        role_trie_capacity: Some(u32::MAX),
        ..args.clone()
    };
    let settings = Settings::from_args(&roomy).expect("valid settings");
    observer::roles::role_entries(&settings).len() as u32
}

/// Runs the no-op program then the agent's egress program once on each
/// packet: the median ns of one run of each (agent, no-op).
fn measure<'a>(d: &Datapath, packets: impl Iterator<Item = &'a Vec<u8>>) -> (f64, f64) {
    let (mut agent, mut noop) = (Vec::new(), Vec::new());
    for p in packets {
        noop.push(kernel::time(d, "noop", p, 1));
        agent.push(kernel::time(d, "egress", p, 1));
    }
    (median(&agent), median(&noop))
}

/// Kernel memory of the map `name` of the loaded programs: `memlock` in
/// the fdinfo of this process's descriptor of it.
fn map_bytes(d: &Datapath, name: &str) -> u64 {
    let ids = d
        .program("egress")
        .expect("the egress program")
        .info()
        .expect("the egress program's info")
        .map_ids()
        .expect("the egress program's maps")
        .unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|id| MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some(name)))
        .unwrap_or_else(|| panic!("the egress program uses no map {name}"));
    let wanted = format!("map_id:\t{id}");
    for fd in std::fs::read_dir("/proc/self/fdinfo").expect("/proc/self/fdinfo") {
        let Ok(text) = std::fs::read_to_string(fd.expect("an fdinfo entry").path()) else {
            continue; // closed meanwhile
        };
        if text.lines().any(|l| l == wanted) {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no memlock in the fdinfo of map {name}:\n{text}"));
        }
    }
    panic!("no descriptor of map {name} (id {id}) in this process")
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn first(cidr: &str) -> Ipv4Addr {
    match cidr.parse::<IpNet>().expect("the lab's CIDR parses") {
        IpNet::V4(n) => n.network(),
        IpNet::V6(_) => panic!("{cidr} is not IPv4"),
    }
}

fn first6(cidr: &str) -> Ipv6Addr {
    match cidr.parse::<IpNet>().expect("the lab's CIDR parses") {
        IpNet::V6(n) => n.network(),
        IpNet::V4(_) => panic!("{cidr} is not IPv6"),
    }
}

/// A small deterministic generator (splitmix64): the same packets each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }

    /// A random address of `net` other than its first and last (the
    /// address itself for a /32 or /128).
    fn host(&mut self, net: &IpNet) -> IpAddr {
        let bits = u32::from(net.max_prefix_len() - net.prefix_len());
        if bits < 2 {
            return net.network();
        }
        // Host bits beyond 64 stay 0: a /64 has room enough.
        let hosts = (1u64.checked_shl(bits).unwrap_or(0)).wrapping_sub(2);
        let offset = 1 + self.next() % hosts;
        match net {
            IpNet::V4(n) => Ipv4Addr::from(u32::from(n.network()) + offset as u32).into(),
            IpNet::V6(n) => Ipv6Addr::from(u128::from(n.network()) + u128::from(offset)).into(),
        }
    }
}

/// The file names of the plots [`plots`] writes, in the order of the curves.
pub const PLOTS: [&str; 2] = ["flow-table.png", "role-trie.png"];

/// Writes both curves as PNG line charts into `dir` ([`PLOTS`]): the
/// agent's program, the no-op program, their difference, and the
/// difference with warm caches, ns against the size (log scale). Returns the files written.
pub fn plots(report: &Report, dir: &Path) -> anyhow::Result<[PathBuf; 2]> {
    let chart = |file: &str, title: &str, x: &str, points: &[Point]| {
        let line = |name: &str, y: fn(&Point) -> f64| {
            Series::new(
                name,
                points.iter().map(|p| (f64::from(p.size), y(p))).collect(),
            )
        };
        let path = dir.join(file);
        plot::lines(
            &path,
            title,
            &Axis::log(x),
            &Axis::linear("ns per run (median of one run each)"),
            &[
                line("agent's egress program", |p| p.ns),
                line("no-op program (floor)", |p| p.floor_ns),
                line("agent − no-op", Point::net_ns),
                line("agent − no-op, warm caches", |p| p.warm_net_ns),
            ],
        )?;
        anyhow::Ok(path)
    };
    Ok([
        chart(
            PLOTS[0],
            "Packet of a tracked connection vs connections in the flow table",
            "connections in the flow table",
            &report.flows,
        )?,
        chart(
            PLOTS[1],
            "SYN vs prefixes in the role trie",
            "prefixes in the role trie",
            &report.prefixes,
        )?,
    ])
}

/// The two tables as Markdown, each followed by its plot's image, whose
/// path is `plot_dir` (relative to the document) and the name in [`PLOTS`].
pub fn markdown(report: &Report, plot_dir: &str) -> String {
    let table = |what: &str, map: &str, points: &[Point], plot: &str| {
        let mut out = format!(
            "| {what} | capacity | {map} memory | agent ns | no-op ns | agent − no-op | × smallest | \
             agent − no-op, warm caches |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        );
        let smallest = points.first().map_or(f64::NAN, Point::net_ns);
        for p in points {
            out.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} |\n",
                p.size,
                p.capacity,
                size(p.map_bytes),
                p.ns,
                p.floor_ns,
                p.net_ns(),
                p.net_ns() / smallest,
                p.warm_net_ns,
            ));
        }
        out.push_str(&verdict(points));
        out.push_str(&format!("\n![{what}]({plot_dir}/{plot})\n\n"));
        out
    };
    format!(
        "{}{}",
        table(
            "connections in the flow table",
            "FLOWS + HALF_OPEN",
            &report.flows,
            PLOTS[0]
        ),
        table(
            "prefixes in the role trie",
            "ROLES",
            &report.prefixes,
            PLOTS[1]
        ),
    )
}

/// Bytes in KiB or MiB.
fn size(bytes: u64) -> String {
    let kib = bytes as f64 / 1024.0;
    if kib < 1024.0 {
        format!("{kib:.1} KiB")
    } else {
        format!("{:.1} MiB", kib / 1024.0)
    }
}

/// Whether the curve stays within [`TARGET_FACTOR`] of its smallest size.
fn verdict(points: &[Point]) -> String {
    let (Some(first), Some(worst)) = (
        points.first(),
        points
            .iter()
            .max_by(|a, b| a.net_ns().total_cmp(&b.net_ns())),
    ) else {
        return String::new();
    };
    let factor = worst.net_ns() / first.net_ns();
    format!(
        "\nTarget: within {TARGET_FACTOR}× of {} from {} to {}: the most is {factor:.2}× (at {}): {}.\n",
        first.size,
        first.size,
        points.last().map_or(0, |p| p.size),
        worst.size,
        if factor <= TARGET_FACTOR {
            "met"
        } else {
            "missed"
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_prefixes_are_distinct_and_of_their_kind() {
        let n = 40_000;
        let nets: std::collections::BTreeSet<IpNet> = (0..n).map(|i| prefix(i).0).collect();
        assert_eq!(nets.len(), n as usize);
        assert_eq!(prefix(0).0.to_string(), "10.0.0.0/24");
        assert_eq!(prefix(1).0.prefix_len(), 64);
        assert!(!prefix(2).1 && prefix(2).0.prefix_len() == 32);
        assert!(!prefix(3).1 && prefix(3).0.prefix_len() == 128);
    }

    #[test]
    fn connections_are_distinct() {
        let all: std::collections::BTreeSet<_> = (0..300_000).map(connection).collect();
        assert_eq!(all.len(), 300_000);
    }

    #[test]
    fn hosts_stay_inside_their_range() {
        let mut rng = Rng(1);
        for net in ["10.1.2.0/24", "fd00:10:244:7::/64", "100.64.0.9/32"] {
            let net: IpNet = net.parse().unwrap();
            for _ in 0..1000 {
                assert!(net.contains(&rng.host(&net)), "{net}");
            }
        }
    }
}
