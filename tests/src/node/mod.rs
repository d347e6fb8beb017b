//! A real node on this machine: etcd, kube-apiserver, controller-manager
//! and scheduler (the control plane), a kubelet on containerd with the
//! bridge CNI, and kube-proxy in iptables mode (the node), so the shipped
//! DaemonSet runs as users run it. `cargo xtask cluster up|down|status`
//! drives it through the `cp-observer-cluster` program; the node tests
//! (`tests/node*.rs`) bring it up and down themselves.
//!
//! Two [`Mode`]s: the control plane in a network namespace of its own,
//! reached over a veth pair as if it were another machine, or the
//! apiserver on the node itself (a control-plane node), where its
//! connections come from the node's own addresses.
//!
//! Everything lives in [`STATE`] and [`RUN`], the network namespace
//! [`CONTROL_PLANE_NETNS`], the bridge [`BRIDGE`] and kube-proxy's iptables
//! chains; [`Node::down`] removes all of it. Addresses come from
//! 198.19.0.0/16 (RFC 2544's benchmarking range, like the lab's).

mod daemons;
mod files;
mod pki;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
pub use daemons::Daemons;

/// The node's name (kubelet's and kube-proxy's `--hostname-override`).
pub const NODE_NAME: &str = "cpo-node";
/// The node's address (the host end of the veth pair).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The control plane's address in its own namespace.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// The control plane's network namespace.
pub const CONTROL_PLANE_NETNS: &str = "cpo-cp";
/// The host's end of the veth pair to the control plane.
const VETH: &str = "cpo-cp0";
/// The apiserver's port.
pub const APISERVER_PORT: u16 = 6443;
/// The cluster's pod range (controller-manager hands out /24s of it).
pub const CLUSTER_CIDR: &str = "198.19.128.0/17";
/// This node's pod range: the first /24, as controller-manager allocates it.
pub const POD_CIDR: &str = "198.19.128.0/24";
/// The bridge CNI's bridge, the pods' gateway.
pub const BRIDGE: &str = "cpo-br0";
/// Service addresses; the first is the `kubernetes` VIP.
pub const SERVICE_RANGE: &str = "198.19.96.0/24";
/// The `kubernetes` service VIP.
pub const KUBERNETES_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 96, 1);
/// Persistent state: certificates, configuration, etcd, containerd's and
/// kubelet's roots, the logs.
pub const STATE: &str = "/var/lib/cp-observer-node";
/// Runtime state: containerd's socket and state.
pub const RUN: &str = "/run/cp-observer-node";

/// Where the control plane runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// In a network namespace of its own: its connections to the node come
    /// from [`CONTROL_PLANE_IP`], as from another machine.
    Remote,
    /// On the node itself (a control-plane node, a single-node cluster):
    /// the apiserver listens on [`NODE_IP`], and its connections to pods
    /// and to the kubelet come from the node's own addresses.
    Local,
}

impl Mode {
    /// The apiserver's address in this mode.
    pub fn apiserver_ip(self) -> Ipv4Addr {
        match self {
            Self::Remote => CONTROL_PLANE_IP,
            Self::Local => NODE_IP,
        }
    }

    /// The network namespace the control plane runs in (`None`: the host's).
    fn netns(self) -> Option<&'static str> {
        match self {
            Self::Remote => Some(CONTROL_PLANE_NETNS),
            Self::Local => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Remote => "remote",
            Self::Local => "local",
        }
    }
}

/// The programs the node runs, from the environment `cargo xtask` sets.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The Kubernetes build: `kube-apiserver`, `kubelet`, ... and `pause`.
    pub kube: PathBuf,
    /// etcd.
    pub etcd: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
}

/// The container images, as docker-archive tarballs to import and the
/// names the kubelet will know them by.
#[derive(Clone, Debug)]
pub struct Images {
    /// The folder of the tarballs; every `*.tar` in it is imported.
    pub dir: PathBuf,
    /// cp-observer, built from `deploy/Dockerfile`.
    pub agent: String,
    /// A second build of cp-observer, for a rolling update.
    pub agent_next: String,
    /// A plain-HTTP web server on 8080 (busybox httpd).
    pub web: String,
    /// An HTTPS server on 8443.
    pub tls: String,
    /// The sandbox (pause) image.
    pub pause: String,
}

fn env_path(var: &str) -> Result<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).with_context(|| {
        format!("{var} is not set: run through `cargo xtask` (it builds and sets it)")
    })
}

fn env_string(var: &str) -> Result<String> {
    std::env::var(var).with_context(|| {
        format!("{var} is not set: run through `cargo xtask` (it builds and sets it)")
    })
}

impl Binaries {
    /// From `CP_OBSERVER_KUBE_DIR`, `CP_OBSERVER_ETCD`, `CP_OBSERVER_KUBECTL`.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            kube: env_path("CP_OBSERVER_KUBE_DIR")?,
            etcd: env_path("CP_OBSERVER_ETCD")?,
            kubectl: env_path("CP_OBSERVER_KUBECTL")?,
        })
    }

    fn kube(&self, name: &str) -> PathBuf {
        self.kube.join(name)
    }
}

impl Images {
    /// From `CP_OBSERVER_NODE_IMAGES` and `CP_OBSERVER_IMAGE_{AGENT,AGENT_NEXT,WEB,TLS,PAUSE}`.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            dir: env_path("CP_OBSERVER_NODE_IMAGES")?,
            agent: env_string("CP_OBSERVER_IMAGE_AGENT")?,
            agent_next: env_string("CP_OBSERVER_IMAGE_AGENT_NEXT")?,
            web: env_string("CP_OBSERVER_IMAGE_WEB")?,
            tls: env_string("CP_OBSERVER_IMAGE_TLS")?,
            pause: env_string("CP_OBSERVER_IMAGE_PAUSE")?,
        })
    }
}

/// The daemons, in start order.
const CONTROL_PLANE: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];
const NODE: [&str; 3] = ["containerd", "kubelet", "kube-proxy"];

/// The node, up or down. Made by [`Node::up`] or [`Node::existing`].
#[derive(Debug)]
pub struct Node {
    mode: Mode,
    binaries: Binaries,
    daemons: Daemons,
}

impl Node {
    /// Brings the node up in `mode` (a file test and a status check if it
    /// already is, in that mode), with `images` imported. Waits until the
    /// node is Ready.
    pub fn up(mode: Mode, binaries: Binaries, images: &Images) -> Result<Self> {
        let state = Path::new(STATE);
        if let Some(node) = Self::existing(binaries.clone())? {
            if node.mode == mode && node.healthy().is_ok() {
                node.import(images)?;
                return Ok(node);
            }
            eprintln!(
                "cluster: a node in {} mode is there; taking it down first",
                node.mode.name()
            );
            node.down()?;
        }
        let started = Instant::now();
        std::fs::create_dir_all(state).with_context(|| format!("cannot create {STATE}"))?;
        std::fs::create_dir_all(RUN).with_context(|| format!("cannot create {RUN}"))?;
        std::fs::write(state.join("mode"), mode.name())?;
        let node = Self {
            mode,
            binaries,
            daemons: Daemons::new(&state.join("logs"))?,
        };
        node.network()?;
        let files = files::write(state, mode, images)?;
        node.start_control_plane(&files)?;
        node.start_node(&files, images)?;
        node.wait_ready()?;
        eprintln!(
            "cluster: node {NODE_NAME} Ready ({} mode) in {:.0?}",
            mode.name(),
            started.elapsed()
        );
        Ok(node)
    }

    /// The node that is up, if any (its mode from the state folder).
    pub fn existing(binaries: Binaries) -> Result<Option<Self>> {
        let mode = match std::fs::read_to_string(Path::new(STATE).join("mode")) {
            Ok(m) if m.trim() == "remote" => Mode::Remote,
            Ok(m) if m.trim() == "local" => Mode::Local,
            Ok(m) => bail!("{STATE}/mode says `{m}`: neither remote nor local"),
            Err(_) => return Ok(None),
        };
        Ok(Some(Self {
            mode,
            binaries,
            daemons: Daemons::new(&Path::new(STATE).join("logs"))?,
        }))
    }

    /// The mode it runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The daemons (for their logs).
    pub fn daemons(&self) -> &Daemons {
        &self.daemons
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        Path::new(STATE).join("admin.kubeconfig")
    }

    /// Fails naming the first daemon that is not running.
    pub fn healthy(&self) -> Result<()> {
        for name in CONTROL_PLANE.iter().chain(&NODE) {
            self.daemons.check(name)?;
        }
        Ok(())
    }

    /// What is running, the kubeconfig, and how to reach the agent.
    pub fn status(&self) -> String {
        let mut out = format!(
            "node {NODE_NAME} ({} mode), state in {STATE}\n",
            self.mode.name()
        );
        for name in CONTROL_PLANE.iter().chain(&NODE) {
            let state = self
                .daemons
                .running(name)
                .map_or("not running".to_owned(), |pid| {
                    format!("running, pid {pid}")
                });
            out += &format!(
                "  {name:<24} {state}  (log {})\n",
                self.daemons.log(name).display()
            );
        }
        out += &format!(
            "kubeconfig: {}\n  kubectl --kubeconfig {} get pods -A\n\
             agent metrics (once deployed): curl http://{NODE_IP}:9090/metrics\n",
            self.kubeconfig().display(),
            self.kubeconfig().display()
        );
        out
    }

    /// The host's side: forwarding, the control plane's namespace and its
    /// veth pair, routes both ways.
    fn network(&self) -> Result<()> {
        write_sysctl("net/ipv4/ip_forward", "1")?;
        // kube-proxy's rules must see traffic between pods on the bridge.
        write_sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
        run(Command::new("ip").args(["netns", "add", CONTROL_PLANE_NETNS]))?;
        run(Command::new("ip").args([
            "link",
            "add",
            VETH,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            CONTROL_PLANE_NETNS,
        ]))?;
        run(Command::new("ip").args(["addr", "add", &format!("{NODE_IP}/24"), "dev", VETH]))?;
        run(Command::new("ip").args(["link", "set", VETH, "up"]))?;
        let in_ns = |args: &[&str]| {
            run(Command::new("ip")
                .args(["netns", "exec", CONTROL_PLANE_NETNS, "ip"])
                .args(args))
        };
        in_ns(&[
            "addr",
            "add",
            &format!("{CONTROL_PLANE_IP}/24"),
            "dev",
            "eth0",
        ])?;
        in_ns(&["link", "set", "eth0", "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        // Pods and service VIPs are behind the node.
        in_ns(&["route", "add", "default", "via", &NODE_IP.to_string()])?;
        Ok(())
    }

    fn start_control_plane(&self, files: &files::Files) -> Result<()> {
        let ns = self.mode.netns();
        let state = Path::new(STATE);
        self.daemons.start(
            "etcd",
            ns,
            &self.binaries.etcd,
            [
                "--data-dir",
                &state.join("etcd").to_string_lossy(),
                "--listen-client-urls",
                "http://127.0.0.1:2379",
                "--advertise-client-urls",
                "http://127.0.0.1:2379",
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
            ],
        )?;
        self.daemons.start(
            "kube-apiserver",
            ns,
            &self.binaries.kube("kube-apiserver"),
            &files.apiserver_args,
        )?;
        self.wait(
            "kube-apiserver answers /readyz",
            Duration::from_secs(120),
            || {
                self.daemons.check("etcd")?;
                self.daemons.check("kube-apiserver")?;
                Ok(self.kubectl(&["get", "--raw", "/readyz"])?.status.success())
            },
        )?;
        self.daemons.start(
            "kube-controller-manager",
            ns,
            &self.binaries.kube("kube-controller-manager"),
            &files.controller_manager_args,
        )?;
        self.daemons.start(
            "kube-scheduler",
            ns,
            &self.binaries.kube("kube-scheduler"),
            &files.scheduler_args,
        )?;
        Ok(())
    }

    fn start_node(&self, files: &files::Files, images: &Images) -> Result<()> {
        self.daemons.start(
            "containerd",
            None,
            Path::new("/usr/bin/containerd"),
            ["--config", &files.containerd_config.to_string_lossy()],
        )?;
        self.wait("containerd answers", Duration::from_secs(30), || {
            self.daemons.check("containerd")?;
            Ok(self.ctr(&["version"])?.status.success())
        })?;
        self.import(images)?;
        self.daemons.start(
            "kubelet",
            None,
            &self.binaries.kube("kubelet"),
            &files.kubelet_args,
        )?;
        self.daemons.start(
            "kube-proxy",
            None,
            &self.binaries.kube("kube-proxy"),
            &files.kube_proxy_args,
        )?;
        Ok(())
    }

    /// Imports every docker-archive tarball of `images` into containerd's
    /// `k8s.io` namespace (where the kubelet finds them).
    pub fn import(&self, images: &Images) -> Result<()> {
        let mut tars: Vec<PathBuf> = std::fs::read_dir(&images.dir)
            .with_context(|| format!("cannot read {}", images.dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        tars.sort();
        for tar in tars {
            let out = self.ctr(&["images", "import", &tar.to_string_lossy()])?;
            if !out.status.success() {
                bail!(
                    "ctr could not import {}: {}",
                    tar.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    /// Waits until the node is Ready and kube-proxy has written the
    /// `kubernetes` VIP's rules.
    fn wait_ready(&self) -> Result<()> {
        self.wait(
            &format!("node {NODE_NAME} is Ready"),
            Duration::from_secs(120),
            || {
                self.healthy()?;
                let out = self.kubectl(&[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])?;
                Ok(out.status.success() && out.stdout == b"True")
            },
        )?;
        self.wait(
            "kube-proxy translates the kubernetes VIP",
            Duration::from_secs(60),
            || {
                self.daemons.check("kube-proxy")?;
                let out = Command::new("iptables-save").args(["-t", "nat"]).output()?;
                Ok(String::from_utf8_lossy(&out.stdout).contains(&format!("{KUBERNETES_VIP}/32")))
            },
        )?;
        // The default service account, which every pod needs, comes from
        // controller-manager shortly after it starts.
        self.wait(
            "the default service account exists",
            Duration::from_secs(60),
            || {
                Ok(self
                    .kubectl(&["-n", "default", "get", "serviceaccount", "default"])?
                    .status
                    .success())
            },
        )
    }

    /// Runs kubectl as the cluster admin, from the host.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_stdin(args, None)
    }

    /// Like [`Self::kubectl`], feeding `stdin`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        use std::io::Write as _;
        let mut child = Command::new(&self.binaries.kubectl)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["--request-timeout", "30s"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", self.binaries.kubectl.display()))?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .context("kubectl's stdin")?
                .write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// kubectl that must succeed: its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl_stdin(args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr` against the node's containerd, in the `k8s.io` namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        Command::new("ctr")
            .args([
                "--address",
                &format!("{RUN}/containerd.sock"),
                "--namespace",
                "k8s.io",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ctr")
    }

    /// `kubectl apply -k` of `deploy/<dir>` of the repository at `repo`
    /// (`overlays/observe`, `overlays/enforce`, `cleanup`), with its image
    /// set to `image` (a kustomization of our own beside the state, whose
    /// only change is `images:`), then waits until the DaemonSet's pod runs
    /// `image` and is ready.
    pub fn deploy(&self, repo: &Path, dir: &str, image: &str) -> Result<()> {
        let kustomization = self.kustomization(repo, dir, image)?;
        self.kubectl_ok(&["apply", "-k", &kustomization.to_string_lossy()], None)?;
        self.wait_daemonset(app(dir), image)
    }

    /// `kubectl delete -k` of what [`Self::deploy`] applied, waiting until
    /// its pods are gone.
    pub fn undeploy(&self, repo: &Path, dir: &str, image: &str) -> Result<()> {
        let kustomization = self.kustomization(repo, dir, image)?;
        self.kubectl_ok(
            &[
                "delete",
                "-k",
                &kustomization.to_string_lossy(),
                "--wait=true",
                "--timeout=120s",
            ],
            None,
        )?;
        let selector = format!("app.kubernetes.io/name={}", app(dir));
        self.wait(
            &format!("the pods of {dir} are gone"),
            Duration::from_secs(120),
            || {
                let out =
                    self.kubectl_ok(&["get", "pods", "-A", "-l", &selector, "-o", "name"], None)?;
                Ok(out.trim().is_empty())
            },
        )
    }

    fn kustomization(&self, repo: &Path, dir: &str, image: &str) -> Result<PathBuf> {
        let source = repo.join("deploy").join(dir);
        let source = source
            .canonicalize()
            .with_context(|| format!("no kustomization {}", source.display()))?;
        let (name, tag) = image
            .rsplit_once(':')
            .with_context(|| format!("image `{image}` has no tag"))?;
        let ours = Path::new(STATE).join("deploy").join(dir);
        std::fs::create_dir_all(&ours)?;
        // kustomize takes only relative paths to other kustomizations.
        let up = "../".repeat(ours.components().count() - 1);
        let source = format!(
            "{up}{}",
            source.display().to_string().trim_start_matches('/')
        );
        std::fs::write(
            ours.join("kustomization.yaml"),
            format!(
                "# Written by cp-observer's `cluster`: deploy/{dir}, with the image built here.\n\
                 apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources:\n  - {source}\nimages:\n  - name: cp-observer\n    newName: {name}\n    newTag: \"{tag}\"\n",
            ),
        )?;
        Ok(ours)
    }

    /// Waits until the one pod of DaemonSet `app` (in namespace `app`)
    /// runs `image` and is ready, and no other is left.
    pub fn wait_daemonset(&self, app: &str, image: &str) -> Result<()> {
        let selector = format!("app.kubernetes.io/name={app}");
        self.wait(&format!("the {app} DaemonSet runs {image}, ready"), Duration::from_secs(180), || {
            let out = self.kubectl_ok(
                &[
                    "-n",
                    app,
                    "get",
                    "pods",
                    "-l",
                    &selector,
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.deletionTimestamp}|{.spec.containers[0].image}|{.status.containerStatuses[0].ready}{\"\\n\"}{end}",
                ],
                None,
            )?;
            let pods: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
            Ok(pods.len() == 1 && pods[0] == format!("|{image}|true"))
        })
        .with_context(|| self.agent_diagnosis())
    }

    /// The agent's pods and their recent logs (for error messages).
    pub fn agent_diagnosis(&self) -> String {
        let pods = self
            .kubectl_ok(&["-n", "cp-observer", "get", "pods", "-o", "wide"], None)
            .unwrap_or_else(|e| format!("{e:#}"));
        let describe = self
            .kubectl_ok(&["-n", "cp-observer", "describe", "pods"], None)
            .unwrap_or_else(|e| format!("{e:#}"));
        let logs = self
            .kubectl_ok(
                &[
                    "-n",
                    "cp-observer",
                    "logs",
                    "-l",
                    "app.kubernetes.io/name=cp-observer",
                    "--tail=40",
                ],
                None,
            )
            .unwrap_or_else(|e| format!("{e:#}"));
        format!(
            "pods:\n{pods}\n{describe}\nlogs:\n{logs}\nkubelet:\n{}",
            self.daemons.tail("kubelet", 20)
        )
    }

    /// Polls `check` every 250 ms until it is true; fails after `deadline`
    /// naming `what`, or at once with the check's own error.
    pub fn wait(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            if check().with_context(|| format!("while waiting until {what}"))? {
                return Ok(());
            }
            if Instant::now() >= end {
                bail!("{what}: still not so after {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Takes everything down: the pods (through the kubelet, so the CNI
    /// releases their addresses), the daemons, leftover containers, the
    /// network namespaces, kube-proxy's rules, the cgroups, the state.
    /// Goes on past errors and reports the first.
    pub fn down(self) -> Result<()> {
        let mut first: Option<anyhow::Error> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                eprintln!("cluster down: {e:#}");
                first.get_or_insert(e);
            }
        };
        if self.daemons.running("kubelet").is_some()
            && self.daemons.running("kube-apiserver").is_some()
        {
            // Workloads first, the kubelet tears their sandboxes down.
            let _ = self.kubectl(&[
                "delete",
                "daemonsets,deployments,replicasets,pods",
                "--all",
                "--all-namespaces",
                "--grace-period=2",
                "--timeout=60s",
                "--wait=true",
            ]);
        }
        for name in ["kube-proxy", "kubelet"] {
            self.daemons.stop(name, Duration::from_secs(10));
        }
        if self.daemons.running("containerd").is_some() {
            note(self.remove_containers());
        }
        self.daemons.stop("containerd", Duration::from_secs(10));
        note(remove_kube_chains());
        for name in CONTROL_PLANE.iter().rev() {
            self.daemons.stop(name, Duration::from_secs(10));
        }
        note(remove_networks());
        note(remove_kubepods_cgroups());
        note(unmount_under(&[Path::new(STATE), Path::new(RUN)]));
        for dir in [STATE, RUN] {
            if let Err(e) = std::fs::remove_dir_all(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                note(Err(
                    anyhow::Error::new(e).context(format!("cannot remove {dir}"))
                ));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Kills and removes every container left in containerd's `k8s.io`
    /// namespace (the kubelet is gone: nobody else will).
    fn remove_containers(&self) -> Result<()> {
        let list = self.ctr(&["containers", "list", "--quiet"])?;
        for id in String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|l| !l.is_empty())
        {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
            let out = self.ctr(&["containers", "delete", id])?;
            if !out.status.success() {
                bail!(
                    "cannot remove container {id}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }
}

/// The DaemonSet (and its namespace) of `deploy/<dir>`.
fn app(dir: &str) -> &'static str {
    if dir == "cleanup" {
        "cp-observer-cleanup"
    } else {
        "cp-observer"
    }
}

/// The control plane's namespace (with its veth pair), the pods' network
/// namespaces the CNI left (`cni-*`), and the bridge.
fn remove_networks() -> Result<()> {
    let list = Command::new("ip").args(["netns", "list"]).output()?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name == CONTROL_PLANE_NETNS || name.starts_with("cni-") {
            run(Command::new("ip").args(["netns", "delete", name]))?;
        }
    }
    for link in [BRIDGE, VETH] {
        if Path::new("/sys/class/net").join(link).exists() {
            run(Command::new("ip").args(["link", "delete", link]))?;
        }
    }
    Ok(())
}

/// The iptables chains of kube-proxy and the kubelet (`KUBE-*`) and the
/// rules that jump to them, in every table, IPv4 and IPv6. (`kube-proxy
/// --cleanup` leaves the kubelet's, and fails without `ipset`.)
fn remove_kube_chains() -> Result<()> {
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        let out = Command::new(save)
            .output()
            .with_context(|| format!("cannot run {save}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("KUBE-") {
            continue;
        }
        let kept: String = text
            .lines()
            .filter(|l| !(l.starts_with(":KUBE-") || (l.starts_with("-A ") && l.contains("KUBE-"))))
            .map(|l| format!("{l}\n"))
            .collect();
        use std::io::Write as _;
        let mut child = Command::new(restore)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {restore}"))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(kept.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{restore} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// The kubelet's `kubepods` cgroups in every hierarchy, deepest first.
fn remove_kubepods_cgroups() -> Result<()> {
    fn remove(dir: &Path) -> Result<()> {
        for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
            if entry.file_type()?.is_dir() {
                remove(&entry.path())?;
            }
        }
        std::fs::remove_dir(dir).with_context(|| format!("cannot remove cgroup {}", dir.display()))
    }
    let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
    for entry in std::fs::read_dir("/sys/fs/cgroup")?.filter_map(Result::ok) {
        hierarchies.push(entry.path());
    }
    for root in hierarchies {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_name().to_string_lossy().starts_with("kubepods") && entry.path().is_dir()
            {
                remove(&entry.path())?;
            }
        }
    }
    Ok(())
}

/// Unmounts everything mounted under `dirs`, deepest first (lazily: a
/// mount still busy goes once it is free).
fn unmount_under(dirs: &[&Path]) -> Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| dirs.iter().any(|d| Path::new(p).starts_with(d)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for point in points {
        run(Command::new("umount").args(["--lazy", point]))?;
    }
    Ok(())
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `cmd`; fails with its stderr.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
