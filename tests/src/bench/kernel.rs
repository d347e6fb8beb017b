//! Benchmarks of the kernel programs with BPF_PROG_TEST_RUN: the cost per
//! packet of each kind the datapath sees, against a no-op program at the
//! same hook (the floor). `cargo xtask bench` prints them and writes
//! BENCHMARKS.md; the test suite runs a tiny version to keep the harness
//! honest.

use std::net::SocketAddr;

use aya::programs::{TestRun as _, TestRunOptions};
use observer::{
    cli::RunArgs,
    config::Settings,
    ebpf::{Datapath, Loaded},
};

use crate::kernel::packets::Tcp;

/// One measured packet kind.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was measured.
    pub what: &'static str,
    /// Program run.
    pub program: &'static str,
    /// Median of the batches, nanoseconds per packet.
    pub ns: f64,
    /// Target, if the issue sets one.
    pub target_ns: Option<f64>,
}

/// The first 16 bytes of a TLS ClientHello: all detection reads.
const TLS_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xf1, 0x01, 0x00, 0x00, 0xed, 0x03, 0x03, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
];

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("an address")
}

fn run(d: &Datapath, prog: &'static str, packet: &[u8], repeat: u32) -> f64 {
    let p = d.program(prog).expect("program");
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    // The kernel reports the mean duration of one run.
    r.duration.as_nanos() as f64
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
    let args = RunArgs {
        control_plane: vec!["198.18.0.1".parse().expect("cidr")],
        apiserver: vec![sa("198.18.0.1:6443")],
        node_ip: vec!["198.18.0.2".parse().expect("ip")],
        pod_cidr: vec!["198.18.16.0/24".parse().expect("cidr")],
        no_pin: true,
        ..RunArgs::default()
    };
    let Loaded {
        datapath: mut d, ..
    } = Datapath::load(&Settings::from_args(&args).expect("settings")).expect("load (root)");
    d.load_extra("noop").expect("the no-op program loads");
    let get = b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n";
    let untracked_from = sa("198.18.0.2:40000");
    let untracked = Tcp::new(untracked_from, sa("198.18.16.2:8080"))
        .seq(1001)
        .payload(get)
        .build();
    let (c, s) = (sa("198.18.0.1:40001"), sa("198.18.16.2:8080"));
    for p in handshake(c, s) {
        run(&d, "egress", &p.build(), 1);
    }
    run(
        &d,
        "egress",
        &Tcp::new(c, s).seq(1001).payload(get).build(),
        1,
    );
    let known = Tcp::new(c, s).seq(1001).payload(get).build();
    let untracked_syn = Tcp::new(sa("198.18.0.2:40002"), sa("198.18.16.2:8080"))
        .syn(1000)
        .build();
    let batch = |prog, pkt: &[u8]| {
        median(
            &(0..batches)
                .map(|_| run(&d, prog, pkt, repeat))
                .collect::<Vec<_>>(),
        )
    };
    let untracked_ns = batch("egress", &untracked);
    // The same untracked packet once a half-open SYN hashed to its slot, as
    // for some slots during a SYN flood: it also looks in `HALF_OPEN`.
    let twin = (1024..u16::MAX)
        .map(|port| sa(&format!("198.18.0.1:{port}")))
        .find(|c| slot(*c, sa("198.18.16.2:8080")) == slot(untracked_from, sa("198.18.16.2:8080")))
        .expect("some port shares the slot");
    run(
        &d,
        "egress",
        &Tcp::new(twin, sa("198.18.16.2:8080")).syn(7).build(),
        1,
    );
    let untracked_marked = batch("egress", &untracked);

    // One run per fresh connection, for what happens once per connection:
    // its SYN (a half-open entry), the ACK that completes its handshake
    // (into the flow table), and its first payload (detection, decision).
    let fresh = |client: &str, server: SocketAddr, payload: &[u8]| {
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for i in 0..new_flows {
            let c = SocketAddr::new(client.parse().expect("ip"), 20000 + i);
            let [syn, syn_ack, ack] = handshake(c, server);
            times[0].push(run(&d, "egress", &syn.build(), 1));
            run(&d, "ingress", &syn_ack.build(), 1);
            times[1].push(run(&d, "egress", &ack.build(), 1));
            let pkt = Tcp::new(c, server).seq(1001).payload(payload).build();
            times[2].push(run(&d, "egress", &pkt, 1));
            let end = 1001 + payload.len() as u32;
            run(&d, "egress", &Tcp::new(c, server).seq(end).rst().build(), 1);
        }
        times.map(|t| median(&t))
    };
    // node-to-apiserver/tls: allowed, no event.
    let [syn, promote, first_tls] = fresh("198.18.0.2", sa("198.18.0.1:6443"), TLS_CLIENT_HELLO);
    // apiserver-proxy-to-pod/http: alerted by default, one event each.
    let [_, _, first_http] = fresh("198.18.0.1", sa("198.18.16.2:8080"), get);
    // The floor of the rows above: one run costs more than one of many
    // (the kernel reads the clock around each batch).
    let noop_once = median(
        &(0..new_flows)
            .map(|_| run(&d, "noop", &untracked, 1))
            .collect::<Vec<_>>(),
    );
    let noop = batch("noop", &untracked);
    let once = noop_once - noop;
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
            what: "first payload packet of a new flow (HTTP, alert event), one run",
            program: "egress",
            ns: first_http,
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

/// SYN, SYN-ACK and the handshake's last ACK of `c` → `s` (ISNs 1000, 5000).
fn handshake(c: SocketAddr, s: SocketAddr) -> [Tcp; 3] {
    [
        Tcp::new(c, s).syn(1000),
        Tcp::new(s, c).syn_ack(5000).ack_seq(1001),
        Tcp::new(c, s).seq(1001).ack_seq(5001),
    ]
}

/// The `FLOW_FILTER` slot of a connection.
fn slot(a: SocketAddr, b: SocketAddr) -> u32 {
    let addr = |s: SocketAddr| observer::roles::addr(s.ip());
    observer_common::flow::filter_slot(&addr(a), a.port(), &addr(b), b.port())
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
