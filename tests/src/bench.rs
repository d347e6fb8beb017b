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

use crate::packets::Tcp;

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
    let untracked = Tcp::new(sa("198.18.0.2:40000"), sa("198.18.16.2:8080"))
        .seq(1001)
        .payload(get)
        .build();
    let (c, s) = (sa("198.18.0.1:40001"), sa("198.18.16.2:8080"));
    for p in [
        Tcp::new(c, s).syn(1000),
        Tcp::new(s, c).syn_ack(5000),
        Tcp::new(c, s).seq(1001).payload(get),
    ] {
        run(&d, "egress", &p.build(), 1);
    }
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

    // The first payload of a new flow: one run per flow, each flow fresh.
    let first = |client: &str, server: SocketAddr, payload: &[u8]| {
        median(
            &(0..new_flows)
                .map(|i| {
                    let c = SocketAddr::new(client.parse().expect("ip"), 20000 + i);
                    run(&d, "egress", &Tcp::new(c, server).syn(1000).build(), 1);
                    let pkt = Tcp::new(c, server).seq(1001).payload(payload).build();
                    let t = run(&d, "egress", &pkt, 1);
                    run(
                        &d,
                        "egress",
                        &Tcp::new(c, server).seq(2000).rst().build(),
                        1,
                    );
                    t
                })
                .collect::<Vec<_>>(),
        )
    };
    // node-to-apiserver/tls: allowed, no event.
    let first_tls = first("198.18.0.2", sa("198.18.0.1:6443"), TLS_CLIENT_HELLO);
    // apiserver-proxy-to-pod/http: alerted by default, one event each.
    let first_http = first("198.18.0.1", sa("198.18.16.2:8080"), get);
    // The floor of the row above: one run costs more than one of many
    // (the kernel reads the clock around each batch).
    let noop_once = median(
        &(0..new_flows)
            .map(|_| run(&d, "noop", &untracked, 1))
            .collect::<Vec<_>>(),
    );
    let noop = batch("noop", &untracked);
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
            ns: batch("egress", &untracked),
            target_ns: Some(40.0),
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
            ns: first_tls - (noop_once - noop),
            target_ns: Some(150.0),
        },
    ]
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
