//! Benchmarks of the kernel programs with BPF_PROG_TEST_RUN: the cost per
//! packet of each kind the datapath sees, against a no-op program at the
//! same hook (the floor). `cargo xtask bench` prints them and writes
//! BENCHMARKS.md; the test suite runs a tiny version to keep the harness
//! honest.

use std::net::{IpAddr, SocketAddr};

use observer::ebpf::{Datapath, Loaded};

use crate::{
    cluster::topology::addrs::{self, CP4, NODE4, POD4},
    kernel::{
        self, filter_slot,
        packets::{Tcp, handshake},
    },
};

/// One measured packet kind.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was measured.
    pub what: &'static str,
    /// Program run.
    pub program: &'static str,
    /// Median of the batches, nanoseconds per packet.
    pub ns: f64,
    /// Target, if the README's Benchmarks section sets one.
    pub target_ns: Option<f64>,
}

/// A request as the apiserver proxies `kubectl get --raw
/// .../pods/web:8080/proxy/metrics` to a pod (352 bytes).
const PROXIED_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: 198.18.16.2:8080\r\n\
    User-Agent: kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd\r\n\
    Accept: application/json, */*\r\nAccept-Encoding: gzip\r\n\
    Kubectl-Command: kubectl get\r\nKubectl-Session: 0d1c1b83-4f5e-4c6f-9b0a-1f3c1e2b4a5d\r\n\
    X-Forwarded-For: 198.18.0.2\r\n\
    X-Forwarded-Uri: /api/v1/namespaces/default/pods/web:8080/proxy/metrics\r\n\r\n";

/// The first 16 bytes of a TLS ClientHello: all detection reads.
const TLS_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xf1, 0x01, 0x00, 0x00, 0xed, 0x03, 0x03, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
];

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// The median of `values` (the mean of the middle two for an even count;
/// NaN for none). Every benchmark here reports medians through this.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Measures every kind: `repeat` runs per batch, `batches` batches,
/// `new_flows` distinct flows for the first-payload case.
pub fn kernel(repeat: u32, batches: usize, new_flows: u16) -> Vec<Row> {
    let Loaded {
        datapath: mut d,
        mut heads,
        ..
    } = kernel::load(|_| {});
    d.load_extra("noop").expect("the no-op program loads");
    let get = b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n";
    let pod = sa(POD4, 8080);
    let untracked_from = sa(NODE4, 40000);
    let untracked = Tcp::new(untracked_from, pod).seq(1001).payload(get).build();
    let (c, s) = (sa(CP4, 40001), pod);
    for p in handshake(c, s, 1000) {
        kernel::run(&d, "egress", &p.build());
    }
    kernel::run(&d, "egress", &Tcp::new(c, s).seq(1001).payload(get).build());
    let known = Tcp::new(c, s).seq(1001).payload(get).build();
    let untracked_syn = Tcp::new(sa(NODE4, 40002), pod).syn(1000).build();
    let batch = |prog, pkt: &[u8]| {
        median(
            &(0..batches)
                .map(|_| kernel::time(&d, prog, pkt, repeat))
                .collect::<Vec<_>>(),
        )
    };
    let untracked_ns = batch("egress", &untracked);
    // The same untracked packet once a half-open SYN hashed to its slot, as
    // for some slots during a SYN flood: it also looks in `HALF_OPEN`.
    let twin = (1024..u16::MAX)
        .map(|port| sa(CP4, port))
        .find(|c| filter_slot(*c, pod) == filter_slot(untracked_from, pod))
        .expect("some port shares the slot");
    kernel::run(&d, "egress", &Tcp::new(twin, pod).syn(7).build());
    let untracked_marked = batch("egress", &untracked);

    // The request heads copied, read after each connection as the agent
    // would (a full ring would make later copies cheap failures); the
    // known flow's above are not counted.
    while heads.next().is_some() {}
    let mut copies = 0;
    let mut fresh = |client: IpAddr, server: SocketAddr, payload: &[u8]| {
        fresh(&d, client, server, payload, new_flows, || {
            while heads.next().is_some() {
                copies += 1;
            }
        })
    };
    // node-to-apiserver/tls: allowed, no event.
    let apiserver = sa(CP4, addrs::APISERVER_PORT);
    let [syn, promote, first_tls, second_tls] = fresh(NODE4.into(), apiserver, TLS_CLIENT_HELLO);
    // Plaintext HTTP with a proxied request's head (alerted by default,
    // one event each): on node-to-apiserver nothing is copied; on
    // apiserver-proxy-to-pod the head is, at the decision (what detection
    // kept, and the segment) and for the second payload (still within the
    // first KiB).
    let [_, _, first_plain, second_plain] = fresh(NODE4.into(), apiserver, PROXIED_HEAD);
    let [_, _, first_http, second_http] = fresh(CP4.into(), pod, PROXIED_HEAD);
    assert_eq!(
        copies,
        3 * u64::from(new_flows),
        "only the proxied requests are copied, three times each"
    );
    // The floor of the rows above: one run costs more than one of many
    // (the kernel reads the clock around each batch).
    let noop_once = median(
        &(0..new_flows)
            .map(|_| kernel::time(&d, "noop", &untracked, 1))
            .collect::<Vec<_>>(),
    );
    let noop = batch("noop", &untracked);
    let once = noop_once - noop;
    // The same with the kernel trace on (`--kernel-log debug`): what the
    // trace costs when asked for. Off, the verifier removed it from the
    // programs measured above.
    // Its records are read after each connection, as the agent would: a
    // full ring would make every later record a cheap failed reservation.
    let Loaded {
        datapath: mut traced,
        ..
    } = kernel::load(|args| args.kernel_log = Some(observer::config::KernelLog::Debug));
    let mut records = traced.trace(Discard).expect("the trace's ring buffer");
    let [traced_syn, _, traced_http, _] =
        self::fresh(&traced, CP4.into(), pod, get, new_flows, || records.flush());
    vec![
        Row {
            what: "no-op program (floor)",
            program: "noop",
            ns: noop,
            target_ns: None,
        },
        Row {
            what: "untracked packet",
            program: "egress",
            ns: untracked_ns,
            target_ns: Some(40.0),
        },
        Row {
            what: "untracked packet in a slot a half-open SYN marked (SYN flood)",
            program: "egress",
            ns: untracked_marked,
            target_ns: None,
        },
        Row {
            what: "untracked SYN (classified, not tracked)",
            program: "egress",
            ns: batch("egress", &untracked_syn),
            target_ns: None,
        },
        Row {
            what: "packet of a known tracked flow",
            program: "egress",
            ns: batch("egress", &known),
            target_ns: None,
        },
        Row {
            what: "SYN of a tracked connection (half-open entry), one run",
            program: "egress",
            ns: syn,
            target_ns: None,
        },
        Row {
            what: "ACK completing the handshake (into the flow table), one run",
            program: "egress",
            ns: promote,
            target_ns: None,
        },
        Row {
            what: "first payload packet of a new flow (TLS, allowed), one run",
            program: "egress",
            ns: first_tls,
            target_ns: None,
        },
        Row {
            what: "second payload packet of a new flow (TLS, decided), one run: a tracked packet's floor in one run",
            program: "egress",
            ns: second_tls,
            target_ns: None,
        },
        Row {
            what: "first payload packet of a new flow (TLS), its own cost: detection and decision (first − second)",
            program: "egress",
            ns: first_tls - second_tls,
            target_ns: None,
        },
        Row {
            what: "first payload packet of a new flow (HTTP, alert event, head not copied: node-to-apiserver), one run",
            program: "egress",
            ns: first_plain,
            target_ns: None,
        },
        Row {
            what: "first payload packet of a new flow (HTTP, alert event, head copied: apiserver-proxy-to-pod), one run",
            program: "egress",
            ns: first_http,
            target_ns: None,
        },
        Row {
            what: "request-head copy at the decision, paid by violating connections only (copied − not copied)",
            program: "egress",
            ns: first_http - first_plain,
            target_ns: None,
        },
        Row {
            what: "request-head copy of a later segment within the first KiB (second payload: copied − not copied)",
            program: "egress",
            ns: second_http - second_plain,
            target_ns: None,
        },
        Row {
            what: "SYN of a tracked connection, one run, with --kernel-log debug",
            program: "egress",
            ns: traced_syn,
            target_ns: None,
        },
        Row {
            what: "first payload packet of a new flow (HTTP, alert event), one run, with --kernel-log debug",
            program: "egress",
            ns: traced_http,
            target_ns: None,
        },
        Row {
            what: "no-op program, one run (floor of the rows above)",
            program: "noop",
            ns: noop_once,
            target_ns: None,
        },
        Row {
            what: "first payload packet of a new flow (TLS), net of the one-run clock overhead",
            program: "egress",
            ns: first_tls - once,
            target_ns: Some(150.0),
        },
    ]
}

/// One run per fresh connection of `client` to `server`, for what happens
/// once per connection: its SYN (a half-open entry), the ACK that completes
/// its handshake (into the flow table), and its first payload (detection,
/// decision); then its second payload, the same work as any tracked
/// packet's, measured the same way (one run, as cold); the medians over
/// `new_flows` connections. `after_each` runs
/// after each connection, outside the measurements.
fn fresh(
    d: &Datapath,
    client: IpAddr,
    server: SocketAddr,
    payload: &[u8],
    new_flows: u16,
    mut after_each: impl FnMut(),
) -> [f64; 4] {
    let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for i in 0..new_flows {
        let c = SocketAddr::new(client, 20000 + i);
        let [syn, syn_ack, ack] = handshake(c, server, 1000);
        times[0].push(kernel::time(d, "egress", &syn.build(), 1));
        kernel::run(d, "ingress", &syn_ack.build());
        times[1].push(kernel::time(d, "egress", &ack.build(), 1));
        let pkt = Tcp::new(c, server).seq(1001).payload(payload).build();
        times[2].push(kernel::time(d, "egress", &pkt, 1));
        let second = 1001 + payload.len() as u32;
        let pkt = Tcp::new(c, server).seq(second).payload(payload).build();
        times[3].push(kernel::time(d, "egress", &pkt, 1));
        let end = second + payload.len() as u32;
        kernel::run(d, "egress", &Tcp::new(c, server).seq(end).rst().build());
        after_each();
    }
    times.map(|t| median(&t))
}

/// Reads trace records and drops them.
struct Discard;

impl log::Log for Discard {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, _: &log::Record<'_>) {}

    fn flush(&self) {}
}

/// The table as Markdown.
pub fn markdown(rows: &[Row]) -> String {
    let mut out =
        String::from("| packet | program | ns/packet | target | met |\n|---|---|---:|---:|---|\n");
    for r in rows {
        let (target, met) = match r.target_ns {
            Some(t) => (format!("≤ {t:.0}"), if r.ns <= t { "yes" } else { "no" }),
            None => ("—".to_owned(), "—"),
        };
        out.push_str(&format!(
            "| {} | `{}` | {:.1} | {} | {} |\n",
            r.what, r.program, r.ns, target, met
        ));
    }
    out
}
