//! `cp-observer run`: validate everything, attach, serve, shut down cleanly.
//!
//! Order matters for "bad input leaves nothing attached": settings, cgroup,
//! kernel features, the metrics socket and the Kubernetes client are all
//! checked before the programs are loaded, and the programs are attached
//! last. Then every task and thread is watched ([`crate::supervise`]).

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    agent_counters::{AgentCounters, Component},
    cgroup,
    config::{KernelLog, RunArgs, Settings},
    discovery,
    ebpf::{Attachment, Carry, Datapath, Loaded},
    enforce, events, features, flows, kernel_log, kube_events, kubelet,
    local_apiserver::{self, LocalApiserver},
    metrics, pin, server,
    supervise::{Health, Watched},
};
use observer_common::policy::Verdict;

/// Runs the agent until SIGTERM or SIGINT (then `Ok`), or until a part of
/// it dies (then its [`crate::supervise::Death`], after an orderly stop: the caller exits
/// non-zero and the DaemonSet restarts the agent).
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args)?;
    let cgroup = cgroup::resolve(settings.cgroup.as_deref())?;
    enforce::check_host_proc(&settings.host_proc)?;
    features::check()?;
    // With discovery on, the apiserver fills these in (found on a real
    // node: the warning named a state that lasted milliseconds).
    if settings.discovery.is_none()
        && settings.control_plane.is_empty()
        && settings.apiservers.is_empty()
        && settings.apiserver_vips.is_empty()
    {
        tracing::warn!(
            "no --control-plane, --apiserver or --apiserver-vip, and --no-discovery: only kubelet-read-only can be seen"
        );
    }
    let agent_counters = Arc::new(AgentCounters::default());
    // Descriptors are what the metrics server's clients and the enforcer's
    // namespaces compete for: take all the hard limit allows.
    match crate::sys::raise_nofile_limit() {
        Ok(n) => tracing::debug!(limit = n, "open descriptors"),
        Err(e) => {
            agent_counters.error(Component::MetricsServer);
            tracing::warn!("cannot raise RLIMIT_NOFILE to its hard limit: {e}");
        }
    }
    let listener = TcpListener::bind(settings.metrics_addr)
        .with_context(|| format!("cannot listen on --metrics-addr {}", settings.metrics_addr))?;
    listener
        .set_nonblocking(true)
        .context("cannot make the metrics socket non-blocking")?;
    // The event reader, the kernel trace and discovery; the metrics server
    // has a runtime of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut signals = {
        let _in = runtime.enter();
        Signals::install()?
    };
    // The client is made before anything is loaded, so that its error is
    // reported as what it is and leaves nothing attached.
    let discovery = match discovery_target(&settings)? {
        Some((config, target)) => {
            let _in = runtime.enter();
            let client = kube::Client::try_from(config)
                .context("discovery: cannot make a Kubernetes client from the configuration")?;
            Some((client, target))
        }
        None => None,
    };

    let Loaded {
        mut datapath,
        counters,
        mut flows,
        events,
        heads,
        mut addresses,
        apiserver_tasks,
    } = Datapath::load(&settings)?;
    // The apiserver running on this node, if any: known before the
    // programs are attached when its endpoints are (the flags, or no
    // discovery to wait for); else at discovery's first view.
    let endpoints = (discovery.is_none() || !settings.apiservers.is_empty())
        .then(|| settings.apiservers.clone());
    let mut local_apiserver = LocalApiserver::new(
        apiserver_tasks,
        settings.host_proc.clone(),
        endpoints,
        agent_counters.clone(),
    )
    .context("cannot open a sock_diag socket to find the local apiserver")?;
    local_apiserver.refresh();
    let trace = match settings.kernel_log {
        KernelLog::Off => None,
        KernelLog::Debug => Some(datapath.trace(kernel_log::Forward)?),
    };
    // With discovery, the previous agent's view stays until this one's
    // first: the maps are fresh, and the old programs are replaced now.
    let how = datapath.attach(
        &cgroup,
        discovery.is_some().then_some(Carry {
            addresses: &mut addresses,
            tasks: local_apiserver.tasks_mut(),
        }),
    )?;
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

    let mut watched = Watched::default();
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
    watched.thread(Component::FlowExpiry, expiry);
    watched.thread(Component::Enforcer, enforcer);
    let (apiserver_endpoints, endpoints_rx) = std::sync::mpsc::channel();
    let local_thread = local_apiserver::spawn(local_apiserver, endpoints_rx)
        .context("cannot start the local apiserver's watch")?;
    watched.thread(Component::LocalApiserver, local_thread);
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
    if let Some(ca) = kubelet_ca(&settings) {
        let addr = kubelet_addr.clone();
        let checker = kubelet::spawn(
            move || *addr.lock().expect("lock"),
            ca,
            settings.kubelet_check_interval,
            kubelet_status.clone(),
            stop_check_rx,
        );
        watched.thread(Component::KubeletCheck, checker);
    }
    let registry = Arc::new(metrics::registry(
        counters,
        agent_counters.clone(),
        discovery_status.clone(),
        kubelet_status.clone(),
    ));
    let health = Arc::new(Health::default());
    let server = server::spawn(
        listener,
        server::router(registry, health.clone()),
        agent_counters.clone(),
    )
    .context("cannot start the metrics server")?;
    watched.thread(Component::MetricsServer, server.thread);

    let (stop_reader, reader_stop) = tokio::sync::oneshot::channel();
    {
        let _in = runtime.enter();
        let pods = discovery::PodIndex::default();
        // Kubernetes Events need the client and the pods' names: discovery.
        let publisher = match &discovery {
            Some((client, target)) => {
                let (publisher, publish) =
                    kube_events::start(client.clone(), &target.node, agent_counters.clone());
                watched.task(
                    Component::KubeEvents,
                    tokio::spawn(async move {
                        publish.await;
                        Ok(())
                    }),
                );
                publisher
            }
            None => kube_events::Publisher::disabled(agent_counters.clone()),
        };
        let reader = events::run(
            events,
            heads,
            blocked,
            pods.clone(),
            publisher,
            agent_counters.clone(),
            reader_stop,
        );
        watched.task(
            Component::EventReader,
            tokio::spawn(async move {
                reader
                    .await
                    .map_err(|e| format!("reading the ring buffer EVENTS failed: {e}"))
            }),
        );
        if let Some(trace) = trace {
            let tracer =
                kernel_log::spawn(trace).context("cannot read the kernel programs' trace")?;
            watched.task(Component::KernelLog, tracer);
        }
        if let Some((client, target)) = discovery {
            let flags = settings.clone();
            let apiserver_endpoints = apiserver_endpoints.clone();
            let counters = agent_counters.clone();
            let watcher = discovery::run(
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
                    if apiserver_endpoints
                        .send(effective.apiservers.clone())
                        .is_err()
                    {
                        // Its thread is gone: supervision reports why.
                        counters.error(Component::LocalApiserver);
                        tracing::warn!(
                            "local apiserver: its watch is gone, new endpoints not passed"
                        );
                    }
                    addresses.apply(&effective)
                },
            );
            watched.task(
                Component::Discovery,
                tokio::spawn(async move {
                    watcher.await;
                    Ok(())
                }),
            );
        }
    }

    let death = runtime.block_on(async {
        tokio::select! {
            () = signals.recv() => None,
            death = watched.first_death() => Some(death),
        }
    });
    if let Some(death) = &death {
        agent_counters.error(death.component);
        health.fail(death.clone());
        tracing::error!(component = %death.component, "{death}: stopping (to be restarted)");
        // The tests' fault injection: hold here to see /healthz fail.
        fail::fail_point!("agent-exit");
    }
    // The event reader prints what it holds for request heads, then the
    // rest stops. (A send fails only when the reader has ended already:
    // how it ended was reported then.)
    let _ = stop_reader.send(());
    runtime.block_on(watched.finish_task(
        Component::EventReader,
        std::time::Duration::from_secs(2),
        &agent_counters,
    ));
    watched.abort_tasks();
    // Without pins the programs detach with `datapath`; with pins they
    // keep counting and dropping blocked payload until the next agent
    // adopts them (or `cp-observer cleanup`).
    drop(datapath);
    drop(stop_expiry);
    watched.join(Component::FlowExpiry, &agent_counters);
    drop(stop_check);
    watched.join(Component::KubeletCheck, &agent_counters);
    // The event reader (and its sender to the enforcer) goes with the
    // runtime, as does discovery's sender of apiserver endpoints.
    drop(runtime);
    watched.join(Component::Enforcer, &agent_counters);
    drop(apiserver_endpoints);
    watched.join(Component::LocalApiserver, &agent_counters);
    // Last, so that /healthz tells why until the end.
    drop(server.stop);
    watched.join(Component::MetricsServer, &agent_counters);
    match &settings.pin_dir {
        Some(dir) => {
            info!(pins = %dir.display(), "stopped; programs stay attached through the pins")
        }
        None => info!("detached; bye"),
    }
    match death {
        Some(death) => Err(death.into()),
        None => Ok(()),
    }
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
            konnectivity_namespace: d.konnectivity_namespace.clone(),
        },
    )))
}

/// `cp-observer cleanup`: detaches the pinned programs and removes the pins.
///
/// With `then_wait`, it then waits for SIGTERM or SIGINT: run by the
/// `deploy/cleanup` DaemonSet, a pod that is Running has cleaned its node.
pub fn cleanup(pin_dir: &Path, then_wait: bool) -> anyhow::Result<()> {
    let n = pin::cleanup(pin_dir)
        .with_context(|| format!("cannot clean up --pin-dir {}", pin_dir.display()))?;
    info!(pins = n, dir = %pin_dir.display(), "removed; pinned programs detached");
    if then_wait {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime to wait for SIGTERM")?;
        runtime.block_on(async {
            let mut signals = Signals::install()?;
            info!("cleaned; waiting for SIGTERM");
            signals.recv().await;
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

/// SIGTERM and SIGINT, installed before anything is attached.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside a runtime).
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// Waits for either.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM: shutting down"),
            _ = self.int.recv() => info!("SIGINT: shutting down"),
        }
    }
}
