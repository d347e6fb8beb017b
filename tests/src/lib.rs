//! The lab: a throwaway simulated Kubernetes node and control plane made of
//! network namespaces, the traffic that crosses it, the kernel programs run
//! on crafted packets, and the benchmark harness. The `cp-observer-lab` and
//! `cp-observer-bench` programs and the integration tests (`tests/*.rs`) are
//! built on it. One folder per part:
//!
//! - [`cluster`]: the namespaces and their address plan, the real agent as
//!   a child process and its metrics, a real kube-apiserver, the
//!   deployment files, and the lab's plan of one connection per path;
//! - [`traffic`]: the servers and clients that talk across the lab, and the
//!   attacks;
//! - [`kernel`]: crafted packets for the kernel programs under
//!   `BPF_PROG_TEST_RUN`;
//! - [`bench`]: the benchmarks (`cargo xtask bench`).
//!
//! Everything made here is removed by `Drop` guards, and the programs also
//! remove it on Ctrl-C. Addresses come from 198.18.0.0/15 (RFC 2544
//! benchmarking range) and live only inside namespaces the lab creates.

pub mod bench;
pub mod cluster;
pub mod kernel;
pub mod traffic;
