//! The OpenMetrics view of the kernel's counters (README, "Metrics").
//!
//! The kernel's per-CPU maps are the source of truth; they are read at each
//! scrape, so the agent keeps no second copy that could drift. Every label
//! combination is exported from the start (zeros included) so that
//! `increase()` sees the first connection of a series.

use std::sync::Arc;

use observer_common::{
    counters::{Direction, DropReason, ResetFailure, Stat, byte_index, connection_index},
    enums::Label,
    path::Path,
    policy::{Verdict, violation_index},
    protocol::Protocol,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    agent_counters::{AgentCounters, Component},
    ebpf::Counters,
};

/// Encodes into `m` one counter per (path, protocol, `T`) that `index`
/// gives an entry of `values` for, labelled with all three.
fn per_path_and_protocol<T: Label>(
    m: &mut MetricEncoder,
    values: &[u64],
    index: impl Fn(u8, u8, T) -> Option<u32>,
) -> Result<(), std::fmt::Error> {
    for path in Path::ALL {
        for protocol in Protocol::ALL {
            for &t in T::VALUES {
                if let Some(i) = index(path as u8, protocol as u8, t) {
                    let labels = [path.label(), protocol.label(), t.label()];
                    ConstCounter::new(values[i as usize]).encode(m.encode_family(&labels)?)?;
                }
            }
        }
    }
    Ok(())
}

/// Builds the registry served on `/metrics`.
pub fn registry(
    counters: Counters,
    agent: Arc<AgentCounters>,
    discovery: Arc<crate::discovery::Status>,
    kubelet: Arc<crate::kubelet::Status>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(DatapathCollector {
        counters,
        agent,
        discovery,
        kubelet,
    }));
    registry
}

/// Reads the kernel maps at scrape time.
#[derive(Debug)]
struct DatapathCollector {
    counters: Counters,
    agent: Arc<AgentCounters>,
    discovery: Arc<crate::discovery::Status>,
    kubelet: Arc<crate::kubelet::Status>,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.counters;
        // A map that cannot be read leaves its families out of this scrape:
        // zeros would read as a counter reset. The error is logged and
        // counted (`cp_observer_agent_errors_total{component="metrics"}`).
        let read = |map: &str, values: Result<Vec<u64>, aya::maps::MapError>| {
            values
                .inspect_err(|e| {
                    self.agent.error(Component::Metrics);
                    tracing::warn!("cannot read map {map}, its metrics are left out: {e}");
                })
                .ok()
        };
        if let Some(connections) = read("CONNECTIONS", c.connections()) {
            let mut m = encoder.encode_descriptor(
                "cp_observer_connections",
                "Tracked connections by control-plane path, detected protocol and verdict.",
                None,
                MetricType::Counter,
            )?;
            per_path_and_protocol(&mut m, &connections, |path, protocol, verdict: Verdict| {
                Some(connection_index(path, protocol, verdict as u8))
            })?;
        }
        if let Some(violations) = read("VIOLATIONS", c.violations()) {
            let mut m = encoder.encode_descriptor(
                "cp_observer_policy_violations",
                "Connections the policy alerted on or blocked (action as configured: under --dry-run a block is counted as block, and not enforced).",
                None,
                MetricType::Counter,
            )?;
            per_path_and_protocol(&mut m, &violations, violation_index)?;
        }
        if let Some(bytes) = read("BYTES", c.bytes()) {
            let mut m = encoder.encode_descriptor(
                "cp_observer_bytes",
                "Payload bytes of tracked connections, as received (rx) or sent (tx) by the node.",
                None,
                MetricType::Counter,
            )?;
            for path in Path::ALL {
                for dir in Direction::ALL {
                    let v = bytes[byte_index(path as u8, dir) as usize];
                    let labels = [path.label(), dir.label()];
                    ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        let expired = self
            .agent
            .flows_expired
            .load(std::sync::atomic::Ordering::Relaxed);
        // The table's own count, pinned with it: not counters minus what
        // this agent expired, which restarts with the agent.
        ConstGauge::new(i64::try_from(c.flow_entries()).unwrap_or(i64::MAX)).encode(
            encoder.encode_descriptor(
                "cp_observer_flow_table_entries",
                "Connections in the kernel flow table now.",
                None,
                MetricType::Gauge,
            )?,
        )?;
        if let Some(stats) = read("STATS", c.stats()) {
            encode_stats(&mut encoder, &stats)?;
        }
        ConstGauge::new(i64::from(c.flow_capacity)).encode(encoder.encode_descriptor(
            "cp_observer_flow_table_capacity",
            "Capacity of the kernel flow table (--flow-table-capacity).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(expired).encode(encoder.encode_descriptor(
            "cp_observer_flows_expired",
            "Flow entries removed after --flow-idle-timeout without a FIN or RST seen.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(
            self.agent
                .sockets_reset
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .encode(encoder.encode_descriptor(
            "cp_observer_sockets_reset",
            "Sockets of blocked connections destroyed (their peers get a RST).",
            None,
            MetricType::Counter,
        )?)?;
        let mut m = encoder.encode_descriptor(
            "cp_observer_reset_errors",
            "Connections the agent had to reset and could not, by reason.",
            None,
            MetricType::Counter,
        )?;
        for reason in ResetFailure::ALL {
            ConstCounter::new(
                self.agent.reset_errors[reason as usize].load(std::sync::atomic::Ordering::Relaxed),
            )
            .encode(m.encode_family(&[reason.label()])?)?;
        }
        ConstGauge::new(
            i64::try_from(
                self.agent
                    .local_apiserver_processes
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .unwrap_or(i64::MAX),
        )
        .encode(encoder.encode_descriptor(
            "cp_observer_local_apiserver_processes",
            "Processes taken for the apiserver running on this node (they hold its listener on a node address): their connections are the control plane's.",
            None,
            MetricType::Gauge,
        )?)?;
        let mut m = encoder.encode_descriptor(
            "cp_observer_agent_errors",
            "Errors of the agent's own parts, by component (each is also a log line); a part that died makes /healthz fail and the agent exit.",
            None,
            MetricType::Counter,
        )?;
        for component in Component::ALL {
            ConstCounter::new(self.agent.errors(component))
                .encode(m.encode_family(&[("component", component.name())])?)?;
        }
        ConstCounter::new(
            self.agent
                .events_unprinted
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .encode(encoder.encode_descriptor(
            "cp_observer_events_unprinted",
            "Violation events read from the ring buffer but not printed (a record this build cannot decode, or lines standard output refused), each also logged; with cp_observer_events_lost_total, every event the kernel made is printed or counted.",
            None,
            MetricType::Counter,
        )?)?;
        let mut m = encoder.encode_descriptor(
            "cp_observer_kube_events",
            "Kubernetes Events about violations on the apiserver proxy to this node's pods, by what became of them: published, rate-limited (per pod, as the kubelet), queue-full (dropped, the publisher behind), failed (the apiserver refused or did not answer; each also logged).",
            None,
            MetricType::Counter,
        )?;
        for outcome in crate::agent_counters::KubeEventOutcome::ALL {
            ConstCounter::new(self.agent.kube_events(outcome))
                .encode(m.encode_family(&[("result", outcome.name())])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "cp_observer_plaintext_proxy_requests",
            "Violating plaintext connections whose request head was summarised, by path and the product of their User-Agent (at most 32 products, the rest as `other`; the callers' addresses are in the events, never in labels).",
            None,
            MetricType::Counter,
        )?;
        for (path, product, n) in self.agent.plaintext_requests() {
            ConstCounter::new(n).encode(
                m.encode_family(&[path.label(), ("user_agent_product", product.as_str())])?,
            )?;
        }
        ConstCounter::new(
            self.agent
                .metrics_connections_rejected
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .encode(encoder.encode_descriptor(
            "cp_observer_metrics_connections_rejected",
            "Connections to the metrics port closed at once because the server had its maximum open.",
            None,
            MetricType::Counter,
        )?)?;

        let d = &self.discovery;
        ConstCounter::new(d.errors.load(std::sync::atomic::Ordering::Relaxed)).encode(
            encoder.encode_descriptor(
                "cp_observer_discovery_errors",
                "Failed watches of the cluster (the last configuration stays in force).",
                None,
                MetricType::Counter,
            )?,
        )?;
        ConstCounter::new(d.updates.load(std::sync::atomic::Ordering::Relaxed)).encode(
            encoder.encode_descriptor(
                "cp_observer_discovery_updates",
                "Times discovery wrote a new view of the cluster to the kernel maps.",
                None,
                MetricType::Counter,
            )?,
        )?;

        let mut m = encoder.encode_descriptor(
            "cp_observer_discovery_overflow",
            "Entries of discovered views that did not fit in a kernel address map (map full or refused), by map; the apiserver entries are written first.",
            None,
            MetricType::Counter,
        )?;
        for (map, n) in crate::ebpf::Unwritten::MAPS.iter().zip(&d.overflow) {
            ConstCounter::new(n.load(std::sync::atomic::Ordering::Relaxed))
                .encode(m.encode_family(&[("map", *map)])?)?;
        }
        ConstGauge::new(i64::from(
            d.degraded.load(std::sync::atomic::Ordering::Relaxed),
        ))
        .encode(encoder.encode_descriptor(
            "cp_observer_discovery_degraded",
            "1 while the last discovered view is only partly in the kernel's maps (see cp_observer_discovery_overflow), else 0.",
            None,
            MetricType::Gauge,
        )?)?;

        let mut m = encoder.encode_descriptor(
            "cp_observer_discovered",
            "What discovery found in its last view of the cluster, and the addresses of this node's pods that events can name (kind `pods`); 0 without discovery.",
            None,
            MetricType::Gauge,
        )?;
        let pods = [("pods", &d.pods)];
        for (kind, n) in crate::discovery::Cluster::KINDS
            .iter()
            .copied()
            .zip(&d.found)
            .chain(pods)
        {
            let n = i64::try_from(n.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(m.encode_family(&[("kind", kind)])?)?;
        }

        let k = &self.kubelet;
        let load = |a: &std::sync::atomic::AtomicI64| a.load(std::sync::atomic::Ordering::Relaxed);
        ConstGauge::new(load(&k.verified)).encode(encoder.encode_descriptor(
            "cp_observer_kubelet_serving_cert_verified",
            "1 when the kubelet's serving certificate verifies against the cluster CA for the node's address, 0 when not, -1 when not checked.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(load(&k.expiry)).encode(encoder.encode_descriptor(
            "cp_observer_kubelet_serving_cert_expiry_timestamp_seconds",
            "notAfter of the kubelet's serving certificate (0 when unknown).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(k.errors.load(std::sync::atomic::Ordering::Relaxed))
            .encode(encoder.encode_descriptor(
            "cp_observer_kubelet_serving_cert_check_errors",
            "Kubelet certificate checks that could not reach the kubelet or read its certificate.",
            None,
            MetricType::Counter,
        )?)?;

        let mut m = encoder.encode_descriptor(
            "cp_observer_build_info",
            "Always 1; the version label names the running build.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(m.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

/// The families read from the `STATS` map.
fn encode_stats(encoder: &mut DescriptorEncoder, stats: &[u64]) -> Result<(), std::fmt::Error> {
    let stat = |s: Stat| stats[s as usize];
    ConstCounter::new(stat(Stat::FlowTableFull) + stat(Stat::EventsLost)).encode(encoder.encode_descriptor(
        "cp_observer_events_lost",
        "Connections not tracked (flow table full, paths without a block rule) plus violation events dropped (ring buffer full).",
        None,
        MetricType::Counter,
    )?)?;
    ConstCounter::new(stat(Stat::FlowTableFull)).encode(encoder.encode_descriptor(
        "cp_observer_flow_table_full",
        "Connections on paths without a block rule left untracked because the flow table was full, once each (they stay untracked) (on paths with one they are refused: cp_observer_dropped_segments{reason=\"table-full\"}).",
        None,
        MetricType::Counter,
    )?)?;
    ConstCounter::new(stat(Stat::HalfOpen)).encode(encoder.encode_descriptor(
        "cp_observer_half_open",
        "SYNs that opened a half-open entry; only completed handshakes enter the flow table, so a spoofed-SYN flood shows here and not there.",
        None,
        MetricType::Counter,
    )?)?;
    ConstCounter::new(stat(Stat::HeadsLost)).encode(encoder.encode_descriptor(
        "cp_observer_request_heads_lost",
        "Copies of violating requests' heads not made: their ring buffer was full, or the connection had used its 32 KiB of it; those violations are reported with the request as far as it was seen.",
        None,
        MetricType::Counter,
    )?)?;
    let mut m = encoder.encode_descriptor(
        "cp_observer_dropped_segments",
        "Segments dropped on paths with a block rule by the stream rules, by reason (see the README's threat model).",
        None,
        MetricType::Counter,
    )?;
    for reason in DropReason::ALL {
        ConstCounter::new(stats[reason.index() as usize])
            .encode(m.encode_family(&[reason.label()])?)?;
    }
    ConstCounter::new(stat(Stat::SegmentsDropped)).encode(encoder.encode_descriptor(
        "cp_observer_blocked_segments",
        "Payload segments of blocked connections dropped in the kernel.",
        None,
        MetricType::Counter,
    )?)?;
    ConstCounter::new(stat(Stat::ReadErrors)).encode(encoder.encode_descriptor(
        "cp_observer_datapath_read_errors",
        "Packets the kernel programs could not read; they were passed untouched.",
        None,
        MetricType::Counter,
    )?)?;
    Ok(())
}
