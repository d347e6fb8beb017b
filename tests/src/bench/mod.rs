//! The benchmark harness behind `cargo xtask bench`: the kernel programs'
//! cost per packet ([`kernel`]), the network workloads ([`workload`])
//! measured with and without the agent ([`ab`]) and in place ([`inplace`]),
//! the agent under load ([`load`]) and under a storm of violations
//! ([`storm`]), the agent's discovery against a large cluster
//! ([`discovery`], with what it asks the apiserver: [`audit`]), and the
//! kernel programs' cost as their tables grow ([`scale`]), drawn by
//! [`plot`].

pub mod ab;
pub mod audit;
pub mod discovery;
pub mod inplace;
pub mod kernel;
pub mod load;
pub mod plot;
pub mod scale;
pub mod storm;
pub mod workload;
