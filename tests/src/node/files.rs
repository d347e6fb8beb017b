//! The node's files: certificates, kubeconfigs, containerd's and the
//! kubelet's configuration, the CNI network, and each daemon's flags.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::{
    APISERVER_PORT, BRIDGE, CLUSTER_CIDR, Images, KUBERNETES_VIP, Mode, NODE_IP, NODE_NAME,
    POD_CIDR, RUN, SERVICE_RANGE,
    pki::{Identity, Pki},
};

/// What the daemons are started with.
pub struct Files {
    pub apiserver_args: Vec<String>,
    pub controller_manager_args: Vec<String>,
    pub scheduler_args: Vec<String>,
    pub containerd_config: PathBuf,
    pub kubelet_args: Vec<String>,
    pub kube_proxy_args: Vec<String>,
}

/// Writes every file into `state` for `mode`.
pub fn write(state: &Path, mode: Mode, images: &Images) -> Result<Files> {
    let pki = Pki::create(&state.join("pki"))?;
    let apiserver_ip = mode.apiserver_ip();
    pki.server(
        "apiserver",
        &[
            apiserver_ip.to_string(),
            KUBERNETES_VIP.to_string(),
            "127.0.0.1".into(),
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ],
    )?;
    let admin = Identity::admin();
    let kubelet = Identity::kubelet(NODE_NAME);
    for who in [&admin, &kubelet, &Identity::apiserver_kubelet_client()] {
        pki.client(who)?;
    }
    let p = |name: &str| pki.path(name).to_string_lossy().into_owned();
    let server = format!("https://{apiserver_ip}:{APISERVER_PORT}");
    let admin_kubeconfig = kubeconfig(state, &pki, &admin, &server)?;
    let kubelet_kubeconfig = kubeconfig(state, &pki, &kubelet, &server)?;
    let s = |path: PathBuf| path.to_string_lossy().into_owned();

    let apiserver_args = vec![
        "--etcd-servers=http://127.0.0.1:2379".into(),
        format!("--bind-address={apiserver_ip}"),
        format!("--advertise-address={apiserver_ip}"),
        format!("--secure-port={APISERVER_PORT}"),
        "--insecure-port=0".into(),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        "--authorization-mode=Node,RBAC".into(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!("--service-cluster-ip-range={SERVICE_RANGE}"),
        format!(
            "--kubelet-client-certificate={}",
            p("apiserver-kubelet-client.crt")
        ),
        format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
        "--kubelet-preferred-address-types=InternalIP".into(),
        "--allow-privileged=true".into(),
    ];
    let controller_manager_args = vec![
        format!("--kubeconfig={}", s(admin_kubeconfig.clone())),
        format!("--service-account-private-key-file={}", p("sa.key")),
        format!("--root-ca-file={}", p("ca.crt")),
        "--use-service-account-credentials=true".into(),
        "--allocate-node-cidrs=true".into(),
        format!("--cluster-cidr={CLUSTER_CIDR}"),
        "--node-cidr-mask-size=24".into(),
        format!("--service-cluster-ip-range={SERVICE_RANGE}"),
        "--leader-elect=false".into(),
        "--port=0".into(),
        "--bind-address=127.0.0.1".into(),
    ];
    let scheduler_args = vec![
        format!("--kubeconfig={}", s(admin_kubeconfig.clone())),
        "--leader-elect=false".into(),
        "--port=0".into(),
        "--bind-address=127.0.0.1".into(),
    ];

    // The bridge CNI: one /24 on the node, the bridge as gateway. No
    // masquerade and no portmap: nothing leaves the machine, and neither
    // would leave iptables rules behind to clean up.
    let cni_dir = state.join("cni");
    std::fs::create_dir_all(&cni_dir)?;
    write_file(
        &cni_dir.join("10-cp-observer.conflist"),
        &format!(
            r#"{{"cniVersion":"0.4.0","name":"cp-observer-node","plugins":[{{"type":"bridge","bridge":"{BRIDGE}","isGateway":true,"ipMasq":false,"hairpinMode":true,"ipam":{{"type":"host-local","dataDir":"{ipam}","ranges":[[{{"subnet":"{POD_CIDR}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}}]}}"#,
            ipam = state.join("cni-ipam").display()
        ),
    )?;
    let containerd_config = state.join("containerd.toml");
    // restrict_oom_score_adj: nothing here may lower oom_score_adj (no
    // CAP_SYS_RESOURCE), and runc fails a sandbox that asks to.
    write_file(
        &containerd_config,
        &format!(
            r#"version = 2
root = "{root}"
state = "{RUN}/containerd"
[grpc]
  address = "{RUN}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
            root = state.join("containerd").display(),
            pause = images.pause,
            cni = cni_dir.display(),
        ),
    )?;

    let kubelet_config = state.join("kubelet.yaml");
    // No disk-based eviction: this machine's disk may be fuller than the
    // defaults allow, and a node under DiskPressure runs no new pod.
    write_file(
        &kubelet_config,
        &format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
readOnlyPort: 0
authentication:
  anonymous: {{ enabled: false }}
  webhook: {{ enabled: false }}
  x509: {{ clientCAFile: {ca} }}
authorization:
  mode: AlwaysAllow
evictionHard: {{ "memory.available": "100Mi", "nodefs.available": "0%", "imagefs.available": "0%" }}
evictionPressureTransitionPeriod: 10s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
"#,
            ca = p("ca.crt"),
        ),
    )?;
    let kubelet_args = vec![
        format!("--config={}", s(kubelet_config)),
        format!("--kubeconfig={}", s(kubelet_kubeconfig)),
        "--container-runtime=remote".into(),
        format!("--container-runtime-endpoint=unix://{RUN}/containerd.sock"),
        format!("--pod-infra-container-image={}", images.pause),
        format!("--node-ip={NODE_IP}"),
        format!("--hostname-override={NODE_NAME}"),
        format!("--root-dir={}", s(state.join("kubelet"))),
        format!("--cert-dir={}", s(state.join("kubelet-pki"))),
        // Lowering its own oom_score_adj needs CAP_SYS_RESOURCE.
        "--oom-score-adj=0".into(),
    ];
    let kube_proxy_args = vec![
        format!("--kubeconfig={}", s(admin_kubeconfig)),
        format!("--hostname-override={NODE_NAME}"),
        "--proxy-mode=iptables".into(),
        format!("--cluster-cidr={CLUSTER_CIDR}"),
        // No nf_conntrack sysctls to write, no oom_score_adj to lower.
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--oom-score-adj=0".into(),
        "--metrics-bind-address=127.0.0.1:10249".into(),
        "--healthz-bind-address=127.0.0.1:10256".into(),
    ];
    Ok(Files {
        apiserver_args,
        controller_manager_args,
        scheduler_args,
        containerd_config,
        kubelet_args,
        kube_proxy_args,
    })
}

/// A kubeconfig for `who` at `server`, `<stem>.kubeconfig` in `state`.
fn kubeconfig(state: &Path, pki: &Pki, who: &Identity, server: &str) -> Result<PathBuf> {
    let path = state.join(format!("{}.kubeconfig", who.stem));
    let p = |name: String| pki.path(&name).display().to_string();
    write_file(
        &path,
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cp-observer-node\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n\
             contexts:\n- name: cp-observer-node\n  context:\n    cluster: cp-observer-node\n    user: {user}\n\
             current-context: cp-observer-node\n",
            ca = p("ca.crt".into()),
            user = who.user,
            crt = p(format!("{}.crt", who.stem)),
            key = p(format!("{}.key", who.stem)),
        ),
    )?;
    Ok(path)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
