//! Host-side stub. The kernel programs live in `main.rs` and are built for
//! `bpfel-unknown-none` by `observer/build.rs`; this library only exists so
//! that `observer` can name this crate as a build dependency, which makes
//! cargo rebuild the programs when this crate or `observer-common` change.
#![no_std]
