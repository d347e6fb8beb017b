//! The kernel programs without a network: loaded as the lab's agent would
//! load them, and run on crafted packets ([`packets`]) with
//! `BPF_PROG_TEST_RUN`. Needs root (loading BPF).

pub mod packets;

use std::{net::SocketAddr, time::Duration};

use aya::programs::{TestRun as _, TestRunOptions};
use observer::{
    cli::RunArgs,
    config::Settings,
    ebpf::{Datapath, Loaded},
};

use crate::cluster::topology::Topology;

/// The programs and maps configured for the lab's address plan
/// ([`Topology::run_args`]), with what `adjust` changes; nothing pinned, so
/// each caller gets a fresh kernel state.
pub fn load(adjust: impl FnOnce(&mut RunArgs)) -> Loaded {
    let mut args = Topology::run_args(&[]);
    adjust(&mut args);
    let settings = Settings::from_args(&args).expect("valid settings");
    Datapath::load(&settings).expect("the programs load (root needed)")
}

/// Runs program `name` `repeat` times on `packet` (Ethernet header
/// first): what it returned, and the kernel's mean duration of one run.
fn test_run(d: &Datapath, name: &'static str, packet: &[u8], repeat: u32) -> (u32, Duration) {
    let r = d
        .program(name)
        .expect("the program exists")
        .test_run(TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    (r.return_value, r.duration)
}

/// Runs program `name` once on `packet`: what it returns (1 passes, 0 drops).
pub fn run(d: &Datapath, name: &'static str, packet: &[u8]) -> u32 {
    test_run(d, name, packet, 1).0
}

/// Runs program `name` `repeat` times on `packet`: the kernel's mean
/// duration of one run, in nanoseconds.
pub fn time(d: &Datapath, name: &'static str, packet: &[u8], repeat: u32) -> f64 {
    test_run(d, name, packet, repeat).1.as_nanos() as f64
}

/// The `FLOW_FILTER` slot of the connection between `a` and `b`.
pub fn filter_slot(a: SocketAddr, b: SocketAddr) -> u32 {
    let addr = |s: SocketAddr| observer_common::config::Addr::from(s.ip());
    observer_common::flow::filter_slot(&addr(a), a.port(), &addr(b), b.port())
}
