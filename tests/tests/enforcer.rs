//! The enforcer as the DaemonSet runs it: without `hostPID`, in a PID
//! namespace of its own, the host's processes visible only through the
//! host's procfs mounted at `--host-proc`. A blocked connection whose
//! sockets live in namespaces no path under `/run/netns` names is still
//! reset. Needs root; run through `cargo xtask test`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use lab::{
    cluster::agent::{Agent, HostProc, Pause},
    cluster::scenario::{Lab, Where},
    cluster::topology::{Topology, addrs},
    traffic::{self, is_reset},
};

/// The process ids the agent's own `/proc` lists, and what its
/// `/run/netns` holds: what it could find without `--host-proc`.
fn agent_view(agent: &Agent) -> (Vec<String>, Vec<String>) {
    let root = Path::new("/proc")
        .join(agent.pid().to_string())
        .join("root");
    let names = |dir: PathBuf, digits_only: bool| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| !digits_only || n.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        v.sort();
        v
    };
    (
        names(root.join("proc"), true),
        names(root.join("run/netns"), false),
    )
}

#[test]
fn a_blocked_connection_is_reset_without_host_pid() {
    let lab = Lab::new("t-nohostpid");
    // The lab's control plane and pod, held by processes as on a node
    // (not as root: reading their namespaces takes CAP_SYS_PTRACE).
    let _pauses = [
        Pause::start(lab.ns(Where::ControlPlane)),
        Pause::start(lab.ns(Where::Pod)),
    ];
    let host_proc = HostProc::mount();
    let mut args = Topology::agent_args();
    args.extend(["--policy", "apiserver-proxy-to-pod:plaintext=block"].map(str::to_owned));
    args.extend(host_proc.flag());
    let agent = Agent::start_without_host_pid(&args);
    let (pids, netns) = agent_view(&agent);
    assert_eq!(pids, ["1"], "the agent's /proc shows only itself");
    assert!(
        netns.is_empty(),
        "no namespace is named for the agent: {netns:?}"
    );

    let pod = SocketAddr::new(addrs::POD4.into(), 8080);
    let got = traffic::http_get(lab.ns(Where::ControlPlane), pod);
    let m = agent.scrape();
    let (reset, errors) = (
        m.sum("cp_observer_sockets_reset_total", &[]),
        m.sum("cp_observer_reset_errors_total", &[]),
    );
    assert!(
        got.as_ref().is_err_and(is_reset),
        "the client sees a reset, not {got:?} (sockets reset: {reset}, reset errors: {errors}); \
         agent stderr:\n{}",
        agent.stderr()
    );
    assert!(reset >= 1.0, "the reset is counted");
    assert_eq!(errors, 0.0, "and no error");
    // One end destroyed is enough: its abort resets the peer, the pod's
    // server, whose socket goes too.
    let pod_ns = lab.ns(Where::Pod).name().to_owned();
    lab::eventually(
        std::time::Duration::from_secs(5),
        "the pod's server socket is reset",
        || {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{pod_ns}"))
                .args(["ss", "-Htn", "state", "established", "( sport = :8080 )"])
                .output()
                .expect("ss runs");
            assert!(out.status.success(), "ss failed");
            out.stdout.is_empty()
        },
    );
    // Named by the socket cookie the kernel reported, not by its ends.
    let stderr = agent.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("reset connection"))
        .unwrap_or_else(|| panic!("no reset logged:\n{stderr}"));
    assert!(
        line.contains(" cookie=") && !line.contains(" cookie=0 "),
        "{line}"
    );
}
