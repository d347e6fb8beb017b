//! The deployment files work, not just parse: both overlays render with
//! `kubectl kustomize`, a real kube-apiserver accepts them
//! (`kubectl apply --dry-run=server`), the config they carry is one the
//! agent accepts, and the agent does its whole job — load, attach, block and
//! reset — with exactly the capabilities the DaemonSet grants. Needs root.

use std::{net::SocketAddr, time::Duration};

use lab::cluster::manifests::{find, kustomize};
use lab::{
    cluster::agent::{Agent, HostProc, Pause},
    cluster::kube::ControlPlane,
    cluster::scenario::{Lab, Where},
    cluster::topology::{Topology, addrs},
    eventually,
    traffic::{self, is_reset},
};
use observer_common::{path::Path, protocol::Protocol};
use serde_yaml::Value;

/// `kubectl kustomize` of an overlay.
fn render(overlay: &str) -> (String, Vec<Value>) {
    kustomize(&format!("deploy/overlays/{overlay}"))
}

/// The capabilities the DaemonSet adds.
fn capabilities(docs: &[Value]) -> Vec<String> {
    let c =
        &find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(c["privileged"], Value::Bool(false), "never privileged");
    assert_eq!(c["capabilities"]["drop"][0], "ALL");
    c["capabilities"]["add"]
        .as_sequence()
        .expect("added capabilities")
        .iter()
        .map(|v| v.as_str().expect("a name").to_owned())
        .collect()
}

/// The agent's settings from the rendered ConfigMap.
fn settings(docs: &[Value]) -> observer::config::Settings {
    let toml = find(docs, "ConfigMap")["data"]["cp-observer.toml"]
        .as_str()
        .expect("the config file")
        .to_owned();
    let path = std::env::temp_dir().join(format!("cp-observer-deploy-{}.toml", std::process::id()));
    std::fs::write(&path, toml).expect("temp file");
    let args = observer::cli::RunArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let s = observer::config::Settings::from_args(&args).expect("the shipped config is valid");
    let _ = std::fs::remove_file(path);
    s
}

#[test]
fn overlays_render_and_carry_a_valid_config() {
    use observer_common::{path::Path, policy::Action, protocol::Protocol};
    for overlay in ["observe", "enforce"] {
        let (_, docs) = render(overlay);
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
        ] {
            find(&docs, kind);
        }
        let ds = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
        assert_eq!(
            ds["tolerations"][0]["operator"], "Exists",
            "runs on every node"
        );
        assert_eq!(
            ds["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        assert_eq!(
            ds["containers"][0]["readinessProbe"]["httpGet"]["path"],
            "/healthz"
        );
        // Reads, and one write: Events (kube_events), in events.k8s.io only.
        let strings = |v: &Value| -> Vec<String> {
            v.as_sequence()
                .expect("a list")
                .iter()
                .map(|s| s.as_str().expect("a string").to_owned())
                .collect()
        };
        let writes: Vec<(Vec<String>, Vec<String>, Vec<String>)> =
            find(&docs, "ClusterRole")["rules"]
                .as_sequence()
                .expect("rules")
                .iter()
                .map(|r| {
                    (
                        strings(&r["apiGroups"]),
                        strings(&r["resources"]),
                        strings(&r["verbs"]),
                    )
                })
                .filter(|(_, _, verbs)| *verbs != ["get", "list", "watch"])
                .collect();
        assert_eq!(
            writes,
            [(
                vec!["events.k8s.io".to_owned()],
                vec!["events".to_owned()],
                vec!["create".to_owned(), "patch".to_owned()]
            )],
            "{overlay}: get, list, watch, and create and patch on events.k8s.io Events, nothing else"
        );
        let caps = capabilities(&docs);
        let want: &[&str] = if overlay == "enforce" {
            &["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
        } else {
            &["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"]
        };
        assert_eq!(caps, want, "{overlay}");
        let s = settings(&docs);
        assert_eq!(
            s.host_proc,
            std::path::Path::new("/host/proc"),
            "{overlay}: the DaemonSet's mount of the host's /proc, not the container's"
        );
        let blocks = s.policy.action(Path::ApiserverProxyToPod, Protocol::Http) == Action::Block;
        assert_eq!(blocks, overlay == "enforce", "{overlay}");
    }
}

#[test]
fn a_real_apiserver_accepts_the_rendered_manifests() {
    let lab = Lab::for_real_control_plane("t-deploy");
    let cp = ControlPlane::start(&lab.topo.cp);
    // Namespaced objects are checked against their namespace: create it.
    cp.kubectl_ok(&["create", "namespace", "cp-observer"], None);
    for overlay in ["observe", "enforce"] {
        let (text, _) = render(overlay);
        let out = cp.kubectl_stdin(
            &["apply", "--validate=false", "--dry-run=server", "-f", "-"],
            Some(&text),
        );
        assert!(
            out.status.success(),
            "{overlay}: the apiserver refused the manifests: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The lab's agent flags, plus the overlay's policy (from its rendered
/// config) spelled out as one rule per (path, protocol), and the host's
/// procfs where the DaemonSet mounts it.
fn agent_args(docs: &[Value], host_proc: &HostProc) -> Vec<String> {
    let policy = settings(docs).policy;
    let mut args = Topology::agent_args();
    args.extend(host_proc.flag());
    for path in Path::ALL {
        for protocol in Protocol::ALL {
            let action = policy.action(path, protocol).name();
            args.push("--policy".to_owned());
            args.push(format!("{}:{}={action}", path.name(), protocol.name()));
        }
    }
    args
}

/// The lab as a DaemonSet without hostPID sees it: the agent in PID and
/// mount namespaces of its own, the host's procfs mounted for it, the
/// lab's namespaces held by pause processes (user 65535) and named by no
/// path it sees (as with a runtime that pins none under /var/run/netns).
fn daemonset_lab(tag: &str) -> (Lab, [Pause; 2], HostProc) {
    let lab = Lab::new(tag);
    let pauses = [
        Pause::start(lab.ns(Where::ControlPlane)),
        Pause::start(lab.ns(Where::Pod)),
    ];
    (lab, pauses, HostProc::mount())
}

/// The agent with each overlay's capabilities and nothing else does its
/// job: observing, it loads, attaches, pins and counts; enforcing, it also
/// blocks and resets.
#[test]
fn the_daemonset_capabilities_are_enough() {
    let (lab, _pauses, host_proc) = daemonset_lab("t-caps");
    let pod = |port| SocketAddr::new(addrs::POD4.into(), port);
    for overlay in ["observe", "enforce"] {
        let (_, docs) = render(overlay);
        let caps = capabilities(&docs);
        let args = agent_args(&docs, &host_proc);
        let agent =
            Agent::try_start_without_host_pid(Some(&caps), &args).unwrap_or_else(|e| panic!("{e}"));
        let plain = traffic::http_get(lab.ns(Where::ControlPlane), pod(8080));
        // A request line the signatures do not list is plaintext too.
        let unlisted = traffic::raw(
            lab.ns(Where::ControlPlane),
            pod(8080),
            b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        if overlay == "enforce" {
            for got in [plain.map(|_| ()), unlisted.map(|_| ())] {
                let err = got.expect_err("blocked");
                assert!(
                    is_reset(&err),
                    "reset with {caps:?}, got {err:?}; agent stderr:\n{}",
                    agent.stderr()
                );
            }
        } else {
            assert!(plain.expect("observed, not blocked").status.contains("200"));
            unlisted.expect("observed, not blocked");
        }
        traffic::https_get(lab.ns(Where::ControlPlane), pod(8443), &lab.tls).expect("TLS passes");
        let m = agent.scrape();
        assert_eq!(
            m.sum(
                "cp_observer_connections_total",
                &[("path", "apiserver-proxy-to-pod")]
            ),
            3.0,
            "{overlay}"
        );
        assert_eq!(
            m.sum("cp_observer_reset_errors_total", &[]),
            0.0,
            "{overlay}"
        );
    }
}

/// Whether the agent's error says it lacks a permission: the kernel's
/// `EPERM` or `EACCES` (the verifier refusing a program without
/// `CAP_PERFMON`), or the agent's own word that a feature probe failed for
/// want of root or capabilities (the probes' `bpf_prog_load` failure
/// carries no errno).
fn lacks_permission(stderr: &str) -> bool {
    [
        "Operation not permitted",
        "Permission denied",
        "(is this root, or CAP_BPF and CAP_NET_ADMIN?)",
    ]
    .iter()
    .any(|e| stderr.contains(e))
}

/// And each of them is needed, in each overlay: without it the agent either
/// cannot load or attach (it says so and exits) or, enforcing, cannot reset a
/// blocked connection (the failure is counted).
#[test]
fn each_daemonset_capability_is_needed() {
    let (lab, _pauses, host_proc) = daemonset_lab("t-capmin");
    for overlay in ["observe", "enforce"] {
        let (_, docs) = render(overlay);
        let caps = capabilities(&docs);
        let args = agent_args(&docs, &host_proc);
        for missing in &caps {
            if overlay == "observe" && missing == "SYS_PTRACE" {
                // Needed only where the apiserver runs on the node, to read
                // its /proc/<pid>/fd: tests/tests/node.rs shows it on a
                // real control-plane node (without it, the apiserver's
                // proxy request there is on no path). Not checked here.
                eprintln!("observe without SYS_PTRACE: checked by tests/tests/node.rs, not here");
                continue;
            }
            let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
            let agent = match Agent::try_start_without_host_pid(Some(&fewer), &args) {
                Ok(agent) => agent,
                // Refused to start for want of a permission: needed. Any
                // other failure is not this test's to excuse.
                Err(exited) if lacks_permission(&exited.stderr) => continue,
                Err(exited) => panic!("without {missing}, not for a permission: {exited}"),
            };
            assert_eq!(
                overlay, "enforce",
                "the observing agent ran without {missing}: not needed"
            );
            let pod = SocketAddr::new(addrs::POD4.into(), 8080);
            // Blocked but not reset: the client either times out or, if the
            // pod's server gives up first, sees a close — never a response.
            if let Ok(x) = traffic::http_get(lab.ns(Where::ControlPlane), pod) {
                assert_eq!(
                    x.received, 0,
                    "without {missing} the request got a response: {x:?}"
                );
            }
            eventually(
                Duration::from_secs(5),
                format!("the enforcing agent fails to reset connections without {missing}"),
                || agent.scrape().sum("cp_observer_reset_errors_total", &[]) >= 1.0,
            );
        }
    }
}
