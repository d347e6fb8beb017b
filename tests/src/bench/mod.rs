//! The benchmark harness behind `cargo xtask bench`: the kernel programs'
//! cost per packet ([`kernel`]), the network workloads ([`workload`])
//! measured with and without the agent ([`ab`]), the agent under load
//! ([`load`]) and under a storm of violations ([`storm`]).

pub mod ab;
pub mod kernel;
pub mod load;
pub mod storm;
pub mod workload;
