//! The benchmark harness behind `cargo xtask bench`: the kernel programs'
//! cost per packet ([`kernel`]), the network workloads ([`workload`])
//! measured with and without the agent ([`ab`]), and the agent under load
//! ([`load`]).

pub mod ab;
pub mod inplace;
pub mod kernel;
pub mod load;
pub mod workload;
