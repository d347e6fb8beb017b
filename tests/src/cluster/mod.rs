//! The simulated cluster: network namespaces wired as a node, its pod and
//! the control plane ([`topology`], the lab's one address plan), the real
//! agent as a child process ([`agent`]) and its metrics, a real
//! kube-apiserver ([`kube`]), the deployment files ([`manifests`]), a
//! process of its own on a lab host ([`process`]), and the lab's plan of
//! one connection per path ([`scenario`]).

pub mod agent;
pub mod kube;
pub mod manifests;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod scenario;
pub mod signals;
pub mod topology;

/// Runs `cmd` and returns its stdout; panics with the command line and
/// its stderr if it cannot run or fails.
pub fn checked(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out.stdout
}
