//! `cp-observer run`: validate everything, attach, serve, shut down cleanly.
//!
//! Order matters for "bad input leaves nothing attached": settings, cgroup,
//! kernel features and the metrics socket are all checked before the
//! programs are loaded, and the programs are attached last.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    agent_counters::AgentCounters,
    cgroup,
    config::{KernelLog, RunArgs, Settings},
    discovery,
    ebpf::{Attachment, Datapath, Loaded},
    enforce, events, features, flows, kernel_log, kubelet, metrics, pin, server,
};
use observer_common::policy::Verdict;

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args)?;
    let cgroup = cgroup::resolve(settings.cgroup.as_deref())?;
    enforce::check_host_proc(&settings.host_proc)?;
    features::check()?;
    if settings.control_plane.is_empty()
        && settings.apiservers.is_empty()
        && settings.apiserver_vips.is_empty()
    {
        tracing::warn!(
            "no --control-plane, --apiserver or --apiserver-vip: only kubelet-read-only can be seen"
        );
    }
    let listener = TcpListener::bind(settings.metrics_addr)
        .with_context(|| format!("cannot listen on --metrics-addr {}", settings.metrics_addr))?;
    listener
        .set_nonblocking(true)
        .context("cannot make the metrics socket non-blocking")?;

    let discovery = discovery_target(&settings)?;
    let Loaded {
        mut datapath,
        counters,
        mut flows,
        events,
        mut addresses,
    } = Datapath::load(&settings)?;
    let trace = match settings.kernel_log {
        KernelLog::Off => None,
        KernelLog::Debug => Some(datapath.trace(kernel_log::Forward)?),
    };
    let how = datapath.attach(&cgroup)?;
    info!(
        cgroup = %cgroup.display(),
        pins = ?settings.pin_dir,
        adopted = how == Attachment::Adopted,
        metrics = %settings.metrics_addr,
        control_plane = ?settings.control_plane.iter().map(ToString::to_string).collect::<Vec<_>>(),
        pod_cidrs = ?settings.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        node_ips = ?settings.node_ips,
        "attached"
    );

    let agent_counters = Arc::new(AgentCounters::default());
    // Adopted connections were judged under the previous agent's policy:
    // judge them again under this one.
    let flows_snapshot = if how == Attachment::Adopted {
        flows.apply_policy(&settings.policy)
    } else {
        Vec::new()
    };
    let (blocked, enforcer) = enforce::spawn(agent_counters.clone(), settings.host_proc.clone())
        .context("cannot start the enforcer")?;
    let (stop_expiry, stop_rx) = std::sync::mpsc::channel();
    let enforced = observer_common::path::Path::ALL.map(|p| settings.policy.enforces(p));
    let expiry = flows::spawn_expiry(
        flows,
        settings.flow_idle_timeout,
        enforced,
        agent_counters.clone(),
        blocked.clone(),
        stop_rx,
    );
    // Connections blocked while no agent ran were dropped by the kernel but
    // not reset: reset them now.
    for (key, flow) in flows_snapshot {
        if flow.verdict == Verdict::Blocked as u8 {
            blocked.push(enforce::Target::of_flow(
                &key,
                &flow,
                "blocked before this agent",
            ));
        }
    }
    let discovery_status = Arc::new(discovery::Status::default());
    let kubelet_status = Arc::new(kubelet::Status::default());
    // The kubelet to check: this node's first address (discovery may learn it).
    let kubelet_addr = Arc::new(std::sync::Mutex::new(
        settings
            .node_ips
            .first()
            .map(|ip| SocketAddr::new(*ip, settings.ports.kubelet)),
    ));
    let (stop_check, stop_check_rx) = std::sync::mpsc::channel();
    let checker = kubelet_ca(&settings).map(|ca| {
        let addr = kubelet_addr.clone();
        kubelet::spawn(
            move || *addr.lock().expect("lock"),
            ca,
            settings.kubelet_check_interval,
            kubelet_status.clone(),
            stop_check_rx,
        )
    });
    let registry = Arc::new(metrics::registry(
        counters,
        agent_counters,
        discovery_status.clone(),
        kubelet_status.clone(),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let flags = settings.clone();
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let pods = discovery::PodIndex::default();
        let printer = tokio::spawn(events::run(events, blocked, pods.clone()));
        let tracer = trace.map(kernel_log::spawn).transpose()?;
        let watcher = match discovery {
            Some((config, target)) => {
                let client = kube::Client::try_from(config).map_err(|e| {
                    std::io::Error::other(format!("discovery: cannot make a client: {e}"))
                })?;
                Some(tokio::spawn(discovery::run(
                    client,
                    target,
                    discovery_status,
                    pods,
                    move |cluster: &discovery::Cluster| {
                        let effective = cluster.fill(&flags);
                        *kubelet_addr.lock().expect("lock") = effective
                            .node_ips
                            .first()
                            .map(|ip| SocketAddr::new(*ip, effective.ports.kubelet));
                        if let Err(e) = addresses.apply(&effective) {
                            tracing::warn!("discovery: cannot update the address maps: {e}");
                        }
                    },
                )))
            }
            None => None,
        };
        let served = axum::serve(listener, server::router(registry))
            .with_graceful_shutdown(shutdown_signal())
            .await;
        printer.abort();
        if let Some(t) = tracer {
            t.abort();
        }
        if let Some(w) = watcher {
            w.abort();
        }
        served
    });
    // Without pins the programs detach with `datapath`; with pins they
    // keep counting and dropping blocked payload until the next agent
    // adopts them (or `cp-observer cleanup`).
    drop(datapath);
    drop(stop_expiry);
    let _ = expiry.join();
    drop(stop_check);
    if let Some(c) = checker {
        let _ = c.join();
    }
    // The printer (and its sender) went with the runtime.
    drop(runtime);
    match enforcer.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("the enforcer failed: {e}"),
        Err(_) => tracing::error!("the enforcer panicked"),
    }
    match &settings.pin_dir {
        Some(dir) => {
            info!(pins = %dir.display(), "stopped; programs stay attached through the pins")
        }
        None => info!("detached; bye"),
    }
    served.context("metrics server failed")
}

/// The CA for the kubelet certificate check: `--kubelet-ca`, else the
/// in-cluster service-account CA when present; `None` turns the check off.
fn kubelet_ca(settings: &Settings) -> Option<std::path::PathBuf> {
    settings.kubelet_ca.clone().or_else(|| {
        let p = Path::new(kubelet::IN_CLUSTER_CA);
        p.exists().then(|| p.to_owned())
    })
}

/// The discovery configuration, read (and checked) before anything is
/// loaded: `None` when discovery is off.
fn discovery_target(
    settings: &Settings,
) -> anyhow::Result<Option<(kube::Config, discovery::Target)>> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let Some(d) = &settings.discovery else {
        return Ok(None);
    };
    if d.kubeconfig.is_none() && !in_cluster {
        return Ok(None);
    }
    let Some(node) = d.node_name.clone() else {
        bail!(
            "discovery needs this node's name: pass --node-name or set NODE_NAME (or pass --no-discovery)"
        );
    };
    let config = match &d.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {} cannot be read", path.display()))?;
            let options = kube::config::KubeConfigOptions::default();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(kube::Config::from_custom_kubeconfig(kc, &options))
                .with_context(|| format!("--kubeconfig {} is not usable", path.display()))?
        }
        None => kube::Config::incluster().context("the in-cluster configuration is not usable")?,
    };
    Ok(Some((
        config,
        discovery::Target {
            node,
            konnectivity_selector: d.konnectivity_selector.clone(),
        },
    )))
}

/// `cp-observer cleanup`: detaches the pinned programs and removes the pins.
pub fn cleanup(pin_dir: &Path) -> anyhow::Result<()> {
    let n = pin::cleanup(pin_dir)
        .with_context(|| format!("cannot clean up --pin-dir {}", pin_dir.display()))?;
    info!(pins = n, dir = %pin_dir.display(), "removed; pinned programs detached");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}
