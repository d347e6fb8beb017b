//! The lab: a throwaway simulated Kubernetes node and control plane made of
//! network namespaces, the servers and clients that talk across it, and a
//! handle on the real agent process. The `cp-observer-lab` program and the
//! integration tests (`tests/*.rs`) are both built on it.
//!
//! Everything made here is removed by `Drop` guards, and the lab program
//! also removes it on Ctrl-C. Addresses come from 198.18.0.0/15 (RFC 2544
//! benchmarking range) and live only inside namespaces the lab creates.

pub mod ab;
pub mod agent;
pub mod attack;
pub mod bench;
pub mod kube;
pub mod load;
pub mod manifests;
pub mod metrics;
pub mod netns;
pub mod packets;
pub mod scenario;
pub mod signals;
pub mod tls;
pub mod topology;
pub mod traffic;
pub mod workload;
