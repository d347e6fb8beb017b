//! `GET /metrics` (OpenMetrics text) and `GET /healthz`, on a thread and a
//! runtime of their own, so that whatever reaches the port (a flood of
//! scrapes, thousands of idle connections, huge headers) costs that
//! thread and a bounded number of descriptors and bytes, never the event
//! reader's time or the enforcer's descriptors.
//!
//! The limits (README, "Metrics"): at most [`MAX_CONNECTIONS`] open
//! connections (one beyond is closed at once and counted in
//! `cp_observer_metrics_connections_rejected_total`; [`LOCAL_CONNECTIONS`]
//! more are kept for the node itself, so that whoever fills the others
//! cannot fail the kubelet's probes and have the agent restarted), [`HEADER_TIMEOUT`] to
//! send a request's headers (also how long a kept-alive connection may
//! idle), [`CONNECTION_LIFETIME`] for a whole connection, headers of at most
//! [`MAX_HEADER_BYTES`] in at most [`MAX_HEADERS`] fields, request bodies of
//! at most [`MAX_BODY_BYTES`].

use std::{
    net::TcpListener,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, oneshot};

use crate::{
    agent_counters::{AgentCounters, Component},
    supervise::Health,
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Open connections at most. Far below any RLIMIT_NOFILE the agent runs
/// with, so that the enforcer always has descriptors left.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections beyond [`MAX_CONNECTIONS`] kept for the node itself: a
/// peer at the listening address (the kubelet probing the node's address
/// from the host network, or loopback probing loopback). A pod reaching
/// the node's address comes from its own address, never this one.
pub const LOCAL_CONNECTIONS: usize = 16;
/// Time to send a request's headers, counted from the connection's start or
/// the previous response: the header and the keep-alive idle timeout.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection's whole life, for clients that read their answer slowly.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Bytes of a request's headers (hyper answers 431 beyond).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Header fields of a request.
pub const MAX_HEADERS: usize = 32;
/// Bytes of a request body (413 beyond; no route reads one).
pub const MAX_BODY_BYTES: usize = 1024;

/// What the routes read.
#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// The HTTP routes: `/healthz` answers 200 while every supervised part of
/// the agent runs (the server starts once the programs are attached), and
/// 503 naming the part that died otherwise.
pub fn router(registry: Arc<Registry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .with_state(Shared { registry, health })
}

async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    match s.health.report() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(death) => (StatusCode::SERVICE_UNAVAILABLE, format!("{death}\n")),
    }
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics failed: {e}\n"),
        ),
    }
}

/// The running server: dropping `stop` (or sending on it) ends its thread.
#[derive(Debug)]
pub struct Running {
    /// The server's thread, for supervision.
    pub thread: JoinHandle<()>,
    /// Stops the server.
    pub stop: oneshot::Sender<()>,
}

/// Serves `router` on `listener` from a thread of its own, with the limits
/// above; rejected connections and accept errors go to `counters`.
pub fn spawn(
    listener: TcpListener,
    router: Router,
    counters: Arc<AgentCounters>,
) -> std::io::Result<Running> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("metrics-server".into())
        .spawn(move || runtime.block_on(serve(listener, router, counters, stopped)))?;
    Ok(Running { thread, stop })
}

async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    counters: Arc<AgentCounters>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let local_permits = Arc::new(Semaphore::new(LOCAL_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was
                // accepted: wait a little rather than spin.
                counters.error(Component::MetricsServer);
                tracing::warn!("metrics server: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let from_here = stream
            .local_addr()
            .is_ok_and(|local| local.ip() == peer.ip());
        let permit = permits.clone().try_acquire_owned().or_else(|e| {
            if from_here {
                local_permits.clone().try_acquire_owned()
            } else {
                Err(e)
            }
        });
        let Ok(permit) = permit else {
            let n = counters
                .metrics_connections_rejected
                .fetch_add(1, Ordering::Relaxed);
            // Counted always; logged once in a while, not once per attempt.
            if n.is_multiple_of(1000) {
                tracing::warn!(
                    rejected = n + 1,
                    "metrics server: {MAX_CONNECTIONS} connections open, closing new ones"
                );
            }
            drop(stream);
            continue;
        };
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        tokio::spawn(async move {
            // A client's protocol error or timeout is no error of the agent.
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
                Err(_) => tracing::debug!("metrics connection: lifetime over"),
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{SocketAddr, TcpStream},
    };

    use super::*;

    /// Connects to `to` from `from` (any port).
    fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
        s.connect(&to.into()).unwrap();
        s.into()
    }

    /// Whoever holds every ordinary slot (a pod reaching the node's
    /// address comes from another address), a probe from the listening
    /// address itself is still answered.
    #[test]
    fn a_probe_from_the_node_is_answered_while_others_hold_every_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(AgentCounters::default());
        let running = spawn(
            listener,
            router(Arc::new(Registry::default()), Arc::new(Health::default())),
            counters.clone(),
        )
        .unwrap();
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS + 8)
            .map(|_| connect_from([127, 0, 0, 2], addr))
            .collect();
        // The server has taken them all in (the extra ones closed).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counters
            .metrics_connections_rejected
            .load(Ordering::Relaxed)
            < 8
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the server never filled up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut probe = connect_from([127, 0, 0, 1], addr);
        probe
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        probe.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(held);
        drop(running.stop);
        running.thread.join().unwrap();
    }
}
