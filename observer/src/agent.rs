//! `cp-observer run`: validate everything, attach, serve, shut down cleanly.
//!
//! Order matters for "bad input leaves nothing attached": settings, cgroup,
//! kernel version and the metrics socket are all checked before the
//! programs are loaded, and the programs are attached last.

use std::{net::TcpListener, sync::Arc};

use anyhow::{Context as _, bail};
use aya::util::KernelVersion;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    cgroup,
    cli::RunArgs,
    config::Settings,
    ebpf::{Datapath, Loaded},
    enforce, events, flows, metrics, server,
};

/// Oldest kernel the programs are written for (bpf_link cgroup attach, BTF).
const MIN_KERNEL: (u8, u8) = (5, 8);

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args)?;
    let cgroup = cgroup::resolve(settings.cgroup.as_deref())?;
    check_kernel()?;
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

    let Loaded {
        mut datapath,
        counters,
        flows,
        events,
    } = Datapath::load(&settings)?;
    datapath.attach(&cgroup)?;
    info!(
        cgroup = %cgroup.display(),
        metrics = %settings.metrics_addr,
        control_plane = ?settings.control_plane.iter().map(ToString::to_string).collect::<Vec<_>>(),
        pod_cidrs = ?settings.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        node_ips = ?settings.node_ips,
        "attached"
    );

    let counters = Arc::new(counters);
    let (stop_expiry, stop_rx) = std::sync::mpsc::channel();
    let expiry = flows::spawn_expiry(flows, settings.flow_idle_timeout, counters.clone(), stop_rx);
    let (blocked, enforcer) = enforce::spawn(counters.clone());
    let registry = Arc::new(metrics::registry(counters));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let printer = tokio::spawn(events::run(events, blocked));
        let served = axum::serve(listener, server::router(registry))
            .with_graceful_shutdown(shutdown_signal())
            .await;
        printer.abort();
        served
    });
    // Detach before reporting anything else: the programs go with `datapath`.
    drop(datapath);
    drop(stop_expiry);
    let _ = expiry.join();
    // The printer (and its sender) went with the runtime.
    drop(runtime);
    let _ = enforcer.join();
    info!("detached; bye");
    served.context("metrics server failed")
}

fn check_kernel() -> anyhow::Result<()> {
    let v = KernelVersion::current().context("cannot read the kernel version")?;
    let (major, minor) = MIN_KERNEL;
    if v < KernelVersion::new(major, minor, 0) {
        bail!("kernel {v:?} is too old: cp-observer needs Linux {major}.{minor} or newer");
    }
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
