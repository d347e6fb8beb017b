//! The lab: a throwaway simulated Kubernetes node and control plane made of
//! network namespaces, the traffic that crosses it, the kernel programs run
//! on crafted packets, and the benchmark harness. The `cp-observer-lab` and
//! `cp-observer-bench` programs (`src/bin/`) and the integration tests
//! (`tests/*.rs`) are built on it. One folder per part:
//!
//! - [`cluster`]: the namespaces and their one address plan
//!   ([`cluster::topology`]), the real agent as a child process and its
//!   metrics, a real kube-apiserver, the deployment files, and the lab's
//!   plan of one connection per path ([`cluster::scenario`]);
//! - [`traffic`]: the one client/server stack every test and benchmark
//!   uses, TLS material, and the attacks;
//! - [`kernel`]: the kernel programs loaded for the lab's address plan and
//!   run on crafted packets with `BPF_PROG_TEST_RUN`;
//! - [`bench`](mod@bench): the benchmarks behind `cargo xtask bench`.
//!
//! [`eventually`] is the one way to wait for state that settles
//! asynchronously. Everything made here is removed by `Drop` guards, and
//! the programs also remove it on Ctrl-C. Addresses come from
//! 198.18.0.0/15 (RFC 2544 benchmarking range) and live only inside
//! namespaces the lab creates.

pub mod bench;
pub mod cluster;
pub mod kernel;
pub mod node;
pub mod traffic;

use std::{
    fmt,
    time::{Duration, Instant},
};

/// Polls `check` until it is done, and panics with `what` if `deadline`
/// (from now) passes first: for state that settles asynchronously (the
/// agent's start, its metrics and events, the kernel freeing programs).
/// `check` returns `bool`, or `Option<T>` to hand back the `T` it found.
/// The pause between polls grows from 10 ms to 200 ms.
pub fn eventually<D: Done>(
    deadline: Duration,
    what: impl fmt::Display,
    mut check: impl FnMut() -> D,
) -> D::Output {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(found) = check().done() {
            return found;
        }
        assert!(
            Instant::now() < end,
            "{what}: still not so after {deadline:?}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// What an [`eventually`] check returns: whether it is done, and with what.
pub trait Done {
    /// What [`eventually`] returns.
    type Output;
    /// `Some` once done.
    fn done(self) -> Option<Self::Output>;
}

impl Done for bool {
    type Output = ();
    fn done(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Done for Option<T> {
    type Output = T;
    fn done(self) -> Option<T> {
        self
    }
}

/// A message made only when shown: for an [`eventually`] that fails, the
/// state at that moment (e.g. the agent's stderr by then).
pub fn later<F: Fn() -> String>(message: F) -> impl fmt::Display {
    struct Later<F>(F);
    impl<F: Fn() -> String> fmt::Display for Later<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&(self.0)())
        }
    }
    Later(message)
}
