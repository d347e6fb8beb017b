//! Types and pure logic shared by the kernel programs (`observer-ebpf`) and the
//! agent (`cp-observer`).
//!
//! Everything here is `no_std`, allocation-free and written so that the BPF
//! verifier accepts it: fixed-size arrays, constant loop bounds, no slices of
//! run-time length. The same functions run in the kernel and in host unit
//! tests, so the classification a test checks is the one the kernel makes.
#![no_std]

// First: the modules after it declare their enums with its macro.
#[macro_use]
pub mod enums;

pub mod config;
pub mod counters;
pub mod event;
pub mod flow;
pub mod head;
pub mod path;
pub mod policy;
pub mod protocol;

/// Implements [`aya::Pod`] for map key and value types, only in userspace.
#[cfg(feature = "user")]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: the type is #[repr(C)], made only of integers and arrays of
            // integers, has no implicit padding (asserted next to its definition),
            // so every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
#[cfg(feature = "user")]
user_pod!(
    config::Addr,
    config::Ports,
    config::Endpoint,
    event::Event,
    flow::FlowKey,
    flow::Connect,
    flow::Flow,
    head::HeadChunk,
);
