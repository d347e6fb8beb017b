//! The benchmark harness behind `cargo xtask bench`: the kernel programs'
//! cost per packet ([`kernel`]), the network workloads ([`workload`])
//! measured with and without the agent ([`ab`]), the agent under load
//! ([`load`]), and the kernel programs' cost as their tables grow
//! ([`scale`]), drawn by [`plot`].

pub mod ab;
pub mod kernel;
pub mod load;
pub mod plot;
pub mod scale;
pub mod workload;
