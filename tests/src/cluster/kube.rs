//! A real control plane for the lab: etcd and kube-apiserver running in the
//! control-plane namespace, so the apiserver's proxy connections come from
//! the control-plane address, as on a real cluster. The binaries come from
//! `cargo xtask test` (`CP_OBSERVER_KUBE_APISERVER`, `CP_OBSERVER_ETCD`,
//! `CP_OBSERVER_KUBECTL`).

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use crate::cluster::{netns::NetNs, topology::addrs};

const TOKEN: &str = "cp-observer-lab-token";
/// The lab node's name.
pub const NODE: &str = "lab-node";

fn binary(var: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests with `cargo xtask test` (it builds and sets it)")
    })
}

/// How to start a control plane: the default is [`ControlPlane::start`]'s
/// way (an empty etcd, the apiserver's usual flags).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// An etcd data directory to start from: copied, the original is left
    /// as it is.
    pub etcd_data: Option<PathBuf>,
    /// Flags added to kube-apiserver's.
    pub apiserver_args: Vec<String>,
}

/// etcd + kube-apiserver; both are killed on drop.
#[derive(Debug)]
pub struct ControlPlane {
    etcd: Child,
    apiserver: Child,
    dir: PathBuf,
    ns: String,
    apiserver_args: Vec<String>,
    /// kubeconfig for the apiserver (reachable from the control-plane and
    /// node namespaces).
    pub kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Starts etcd and the apiserver inside `cp` and waits until the
    /// apiserver answers `/readyz` (bounded).
    pub fn start(cp: &NetNs) -> Self {
        Self::start_with(cp, Options::default())
    }

    /// Like [`Self::start`], as `options` say.
    pub fn start_with(cp: &NetNs, options: Options) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cp-observer-kube-{}-{}",
            cp.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).expect("temp dir");
        let key = rcgen::KeyPair::generate().expect("an ECDSA key");
        std::fs::write(dir.join("sa.key"), key.serialize_pem()).expect("write sa.key");
        std::fs::write(dir.join("sa.pub"), key.public_key_pem()).expect("write sa.pub");
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{TOKEN},admin,admin,system:masters\n"),
        )
        .expect("tokens");
        let server = format!("https://{}:{}", addrs::CP4, addrs::APISERVER_PORT);
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\n\
                 users:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: admin\n\
                 current-context: lab\n"
            ),
        )
        .expect("kubeconfig");
        if let Some(data) = &options.etcd_data {
            crate::cluster::checked(Command::new("cp").arg("-a").arg(data).arg(dir.join("etcd")));
        }
        let etcd = spawn_etcd(&dir, cp.name());
        let apiserver = spawn_apiserver(&dir, cp.name(), &options.apiserver_args);
        let mut cp_plane = Self {
            etcd,
            apiserver,
            dir,
            ns: cp.name().to_owned(),
            apiserver_args: options.apiserver_args,
            kubeconfig,
        };
        cp_plane.wait_ready();
        cp_plane
    }

    /// Waits (bounded) until the apiserver answers `/readyz`.
    fn wait_ready(&mut self) {
        let dir_log = self.dir.clone();
        let what = crate::later(|| {
            format!(
                "kube-apiserver is ready; its log:\n{}",
                std::fs::read_to_string(dir_log.join("apiserver.log")).unwrap_or_default()
            )
        });
        crate::eventually(Duration::from_secs(90), what, || {
            if self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
                return true;
            }
            let exited = self.apiserver.try_wait().expect("wait on kube-apiserver");
            assert!(
                exited.is_none(),
                "kube-apiserver exited with {exited:?}; its log:\n{}",
                self.log()
            );
            false
        });
    }

    /// Stops the apiserver and starts a new one on the same etcd (an
    /// upgrade, say): its watch cache starts afresh, so a client that
    /// resumes a watch from before the restart gets `410 Gone` and must list
    /// again. Waits until the new one is ready.
    pub fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.apiserver = spawn_apiserver(&self.dir, &self.ns, &self.apiserver_args);
        self.wait_ready();
    }

    /// Stops the apiserver, then etcd, and starts both again on the same
    /// data; waits until the apiserver is ready. `between` runs while both
    /// are stopped (with etcd's data directory, e.g. to copy it).
    pub fn restart_all(&mut self, between: impl FnOnce(&std::path::Path)) {
        self.stop_apiserver();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        between(&self.dir.join("etcd"));
        self.etcd = spawn_etcd(&self.dir, &self.ns);
        self.apiserver = spawn_apiserver(&self.dir, &self.ns, &self.apiserver_args);
        self.wait_ready();
    }

    /// The folder of its files (logs, certificates, etcd's data).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The apiserver's process id (`ip netns exec` execs it).
    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver.id()
    }

    /// etcd's process id.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd.id()
    }

    /// Stops the apiserver (the cluster stops answering); etcd stays.
    pub fn stop_apiserver(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
    }

    /// The apiserver's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default()
    }

    /// Runs kubectl against the apiserver from the control-plane namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    /// Like [`Self::kubectl`], feeding `stdin`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl_in(&self.ns, args, stdin)
    }

    /// Runs kubectl from namespace `ns` (the node's reaches the apiserver
    /// too): the apiserver sees that namespace's address as its caller's.
    pub fn kubectl_from(&self, ns: &NetNs, args: &[&str]) -> Output {
        self.kubectl_in(ns.name(), args, None)
    }

    fn kubectl_in(&self, ns: &str, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(binary("CP_OBSERVER_KUBECTL"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout", "10s"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("kubectl finishes")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get --raw PATH`, which must succeed: the body.
    pub fn get_raw(&self, path: &str) -> String {
        self.kubectl_ok(&["get", "--raw", path], None)
    }

    /// Registers the lab node and a pod `web` on it whose IP is the lab pod's.
    pub fn register_lab_objects(&self) {
        let node = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{NODE}"}},
               "spec":{{"podCIDR":"{p4}","podCIDRs":["{p4}","{p6}"]}},
               "status":{{"addresses":[{{"type":"InternalIP","address":"{n4}"}},{{"type":"InternalIP","address":"{n6}"}}],
                          "daemonEndpoints":{{"kubeletEndpoint":{{"Port":10250}}}}}}}}"#,
            p4 = addrs::POD_CIDR4,
            p6 = addrs::POD_CIDR6,
            n4 = addrs::NODE4,
            n6 = addrs::NODE6,
        );
        self.kubectl_ok(&["create", "--validate=false", "-f", "-"], Some(&node));
        // Status is not taken on create: set it through the subresource.
        let status = format!(
            r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{}"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":10250}}}}}}}}"#,
            addrs::NODE4
        );
        self.kubectl_ok(
            &[
                "patch",
                "node",
                NODE,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ],
            None,
        );
        self.create_pod("default", "web", "", addrs::POD4.into());
    }

    /// A konnectivity agent pod at a second address of the pod namespace
    /// (`pod`); returns its address.
    pub fn add_konnectivity_agent(&self, pod: &NetNs) -> std::net::IpAddr {
        let ip = addrs::KONNECTIVITY_AGENT4;
        pod.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        self.create_pod(
            "kube-system",
            "konnectivity-agent-lab",
            "k8s-app=konnectivity-agent",
            ip.into(),
        );
        ip.into()
    }

    /// Creates namespace `name`.
    pub fn create_namespace(&self, name: &str) {
        self.kubectl_ok(&["create", "namespace", name], None);
    }

    /// Deletes pod `namespace/name` at once (no grace period: no kubelet
    /// runs here to confirm a graceful one).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.kubectl_ok(
            &[
                "-n",
                namespace,
                "delete",
                "pod",
                name,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            None,
        );
    }

    /// Agent flags for discovery only: this apiserver, the lab node.
    pub fn discovery_args(&self) -> Vec<String> {
        vec![
            "--kubeconfig".to_owned(),
            self.kubeconfig.display().to_string(),
            "--node-name".to_owned(),
            NODE.to_owned(),
        ]
    }

    /// Creates a pod on the lab node with `labels` (`k=v`, or empty) and
    /// sets its IP through the status subresource.
    pub fn create_pod(&self, namespace: &str, name: &str, labels: &str, ip: std::net::IpAddr) {
        self.create_pod_with(namespace, name, labels, ip, false);
    }

    /// Like [`Self::create_pod`]; with `host_network` the pod is on the
    /// node's network (`spec.hostNetwork`, and `ip` should be the node's).
    pub fn create_pod_with(
        &self,
        namespace: &str,
        name: &str,
        labels: &str,
        ip: std::net::IpAddr,
        host_network: bool,
    ) {
        let labels = labels.split_once('=').map_or(String::new(), |(k, v)| {
            format!(r#","labels":{{"{k}":"{v}"}}"#)
        });
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"{namespace}"{labels}}},
               "spec":{{"nodeName":"{NODE}","hostNetwork":{host_network},"containers":[{{"name":"c","image":"lab/none"}}]}}}}"#
        );
        self.kubectl_ok(&["create", "--validate=false", "-f", "-"], Some(&pod));
        let status = format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#
        );
        self.kubectl_ok(
            &[
                "-n",
                namespace,
                "patch",
                "pod",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ],
            None,
        );
    }
}

/// Starts etcd in namespace `ns` on `dir/etcd` (its log is appended to
/// `dir/etcd.log`).
fn spawn_etcd(dir: &std::path::Path, ns: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(binary("CP_OBSERVER_ETCD"))
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
        .stdout(Stdio::null())
        .stderr(append_log(dir, "etcd.log"))
        .spawn()
        .expect("etcd starts")
}

fn append_log(dir: &std::path::Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
}

/// Starts kube-apiserver in namespace `ns` with the files in `dir` and
/// `extra` flags (its log is appended to `dir/apiserver.log`).
fn spawn_apiserver(dir: &std::path::Path, ns: &str, extra: &[String]) -> Child {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(binary("CP_OBSERVER_KUBE_APISERVER"))
        .args([
            "--etcd-servers=http://127.0.0.1:2379",
            &format!("--bind-address={}", addrs::CP4),
            &format!("--advertise-address={}", addrs::CP4),
            &format!("--secure-port={}", addrs::APISERVER_PORT),
            "--insecure-port=0",
            &format!("--cert-dir={}", d("certs")),
            &format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=AlwaysAllow",
            &format!("--service-account-key-file={}", d("sa.pub")),
            &format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc",
            &format!("--service-cluster-ip-range={}", addrs::SERVICE_RANGE4),
            "--disable-admission-plugins=ServiceAccount",
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-priority-and-fairness=false",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(append_log(dir, "apiserver.log"))
        .spawn()
        .expect("kube-apiserver starts")
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // `ip netns exec` execs the binary: these are the servers themselves.
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
