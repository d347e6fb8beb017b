//! The benchmark harness, run small (the smoke version CI runs): every row
//! is measured, and under load every connection is one event. Timings
//! themselves are judged by `cargo xtask bench`, never here: these machines
//! are shared and noisy. Needs root and the agent (`CP_OBSERVER_BIN`).

use std::time::Duration;

use lab::bench::{ab, discovery, inplace, load, scale, storm};

#[test]
fn the_kernel_benchmark_harness_measures_every_row() {
    // (`kernel` itself checks that only the proxied requests' heads were
    // copied, three copies each.)
    let rows = lab::bench::kernel::kernel(1000, 3, 50);
    for r in &rows {
        // A difference of two measured rows ("a − b") may be ≤ 0 in noise.
        assert!(
            r.ns.is_finite() && (r.ns > 0.0 || r.what.contains('−')),
            "{r:?}"
        );
    }
    assert_numbers(&lab::bench::kernel::markdown(&rows));
}

#[test]
fn the_ab_harness_measures_every_workload_in_every_mode() {
    let plan = ab::Plan {
        rounds: 1,
        stats_rounds: 1,
        duration: Duration::from_millis(200),
        connection_threads: 2,
        tag: "bsmoke",
    };
    // `run` itself checks that the agent counts the tracked traffic on its
    // path and none of the untracked traffic, and that each hook holds the
    // mode's programs and nothing else.
    let rows = ab::run(&plan);
    for r in &rows {
        for mode in ab::Mode::ALL {
            let samples = &r.samples[mode as usize];
            assert_eq!(samples.len(), plan.rounds, "{mode:?}: {r:?}");
            for s in samples {
                assert!(s.rate > 0.0, "{mode:?}: {r:?}");
                assert!(
                    s.cpu.is_finite() && s.cpu > 0.0,
                    "CPU per work, {mode:?}: {r:?}"
                );
            }
        }
        // The programs' own accounting saw every hook the workload runs,
        // for the agent and the floor.
        for mode in [ab::Mode::Noop, ab::Mode::Agent] {
            let runs = &r.inplace[mode as usize];
            assert_eq!(runs.len(), plan.stats_rounds, "{mode:?}: {r:?}");
            for run in runs {
                for (hook, cost) in run.hooks.iter().enumerate() {
                    let cost = cost.unwrap_or_else(|| panic!("{mode:?}: nothing at hook {hook}"));
                    if ab::exercised(hook) {
                        assert!(cost.runs > 0 && cost.ns > 0, "{mode:?}, hook {hook}: {r:?}");
                    }
                }
            }
        }
        assert!(r.inplace[ab::Mode::None as usize].is_empty(), "{r:?}");
    }
    assert_numbers(&ab::markdown(&rows));
    assert_numbers(&inplace::markdown(&rows));
}

#[test]
fn under_load_every_connection_is_one_event_and_none_is_lost() {
    let plan = load::Plan {
        rate: 2000.0,
        duration: Duration::from_millis(300),
        threads: 2,
        tag: "lsmoke",
    };
    let r = load::run(&plan);
    assert!(r.connections.requests > 0, "{r:?}");
    assert_eq!(r.connections.failed, 0, "{:?}", r.connections.failures);
    assert_eq!(r.events, r.connections.requests, "{r:?}");
    assert_eq!(r.counted, r.connections.requests as f64, "{r:?}");
    assert_eq!(r.other_lines, 0, "{r:?}");
    assert_eq!(r.lost, 0.0, "{r:?}");
    assert!(r.peak_rss_kib > 0, "{r:?}");
    assert_numbers(&load::markdown(&r));
}

#[test]
fn against_a_real_apiserver_the_agent_reaches_its_complete_view_reading_only_its_own() {
    let plan = discovery::Plan {
        sizes: &[2, 5],
        quiet: Duration::from_secs(1),
        cache: false,
        tag: "dsmoke",
    };
    // `run` waits for the complete view (every pod address of the node,
    // every konnectivity agent) and fails on an audit-logged request for
    // all pods or nodes.
    let r = discovery::run(&plan);
    assert_eq!(r.population.pods, discovery::pods(5), "{r:?}");
    assert_eq!(r.rows.len(), plan.sizes.len(), "{r:?}");
    for row in &r.rows {
        assert!(row.complete > Duration::ZERO, "{row:?}");
        assert!(row.peak_rss_kib > 0 && row.steady_rss_kib > 0, "{row:?}");
        assert!(row.bytes_to_complete > 0, "{row:?}");
        let node = discovery::node_name(0);
        assert!(
            row.requests.iter().any(|q| q.resource == "pods"
                && q.verb == "watch"
                && q.uri.contains(&format!("spec.nodeName%3D{node}"))),
            "the audit log shows the watch of the node's pods: {:?}",
            row.requests
        );
    }
    let table = discovery::markdown(&r, "plots");
    assert_numbers(&table);
    assert_plots(&discovery::PLOTS, &table, |dir| discovery::plots(&r, dir));
}

#[test]
fn under_a_storm_every_event_is_printed_or_counted_as_lost() {
    let r = storm::run(&storm::Plan {
        rate: 20_000.0,
        duration: Duration::from_millis(100),
        threads: 1,
        stall_reader: false,
    });
    assert_storm(&r);
    // Fewer events than the ring buffer holds: none may be lost, however
    // slow the reader.
    assert_eq!(r.lost, 0.0, "{r:?}");
    // A test run's event is a real one's but for the process (a test run
    // has none): what the storm's description says.
    let sample = r.sample.as_deref().expect("an event");
    let e: serde_json::Value = serde_json::from_str(sample).expect("JSON");
    assert_eq!(
        (&e["path"], &e["protocol"], &e["action"], &e["verdict"]),
        (
            &"node-to-apiserver".into(),
            &"http".into(),
            &"alert".into(),
            &"alerted".into()
        ),
        "{sample}"
    );
    assert!(
        e["src"].is_string() && e["dst"] == "198.18.0.1:6443",
        "{sample}"
    );
    assert!(e.get("process").is_none(), "{sample}");
}

/// A storm larger than the ring buffer while the agent is stopped: the
/// overflow is counted as lost, never silent.
#[test]
fn a_storm_on_a_stalled_reader_counts_what_it_loses() {
    let r = storm::run(&storm::Plan {
        rate: 50_000.0,
        duration: Duration::from_millis(100),
        threads: 1,
        stall_reader: true,
    });
    assert_storm(&r);
    assert!(r.ring_lost() > 0.0, "the ring buffer overflowed: {r:?}");
    assert!(r.printed > 0, "what the ring held was printed: {r:?}");
}

/// Every event the storm asked for was made, and printed or counted as lost.
fn assert_storm(r: &storm::Report) {
    assert_eq!(r.made, r.asked as f64, "{r:?}");
    assert_eq!(r.counted, r.made, "{r:?}");
    assert_eq!(r.table_full, 0.0, "{r:?}");
    assert_eq!(r.unprinted, 0.0, "{r:?}");
    assert_eq!(r.reader_errors, 0.0, "{r:?}");
    assert!(r.accounted(), "printed + lost + unprinted = made: {r:?}");
    assert!(r.peak_rss_kib > 0, "{r:?}");
    let table = storm::markdown(r);
    assert_eq!(table.lines().count(), 2 + 8, "every row:\n{table}");
    assert_numbers(&table);
}

#[test]
fn the_scale_curves_measure_every_size_and_draw_both_plots() {
    let plan = scale::Plan {
        flows: &[100, 1000],
        prefixes: &[10, 400],
        packets: 200,
    };
    // `run` itself checks that every handshake put its connection in the
    // flow table and that every SYN found both its ends in the trie.
    let report = scale::run(&plan);
    for (points, sizes) in [
        (&report.flows, plan.flows),
        (&report.prefixes, plan.prefixes),
    ] {
        let measured: Vec<u32> = points.iter().map(|p| p.size).collect();
        assert_eq!(measured, sizes);
        for p in points {
            assert!(p.ns > 0.0 && p.floor_ns > 0.0 && p.map_bytes > 0, "{p:?}");
            assert_eq!(p.packets, plan.packets as usize, "{p:?}");
        }
    }
    // The trie takes memory for what it holds, not for its capacity
    // (the same for both sizes).
    let [small, large] = &report.prefixes[..] else {
        panic!("two sizes")
    };
    assert_eq!(small.capacity, large.capacity);
    assert!(large.map_bytes > small.map_bytes, "{small:?} {large:?}");

    let table = scale::markdown(&report, "plots");
    assert_numbers(&table);
    for size in plan.flows.iter().chain(plan.prefixes) {
        assert!(table.contains(&format!("\n| {size} |")), "{size}:\n{table}");
    }
    assert_plots(&scale::PLOTS, &table, |dir| scale::plots(&report, dir));
}

/// `draw` writes the plots `names` into a fresh directory: each is a PNG,
/// and `table` links it in `plots/`.
fn assert_plots<T>(
    names: &[&str],
    table: &str,
    draw: impl FnOnce(&std::path::Path) -> anyhow::Result<T>,
) {
    let dir = std::env::temp_dir().join(format!("cp-observer-bench-plots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let written = draw(&dir);
    let files: Vec<_> = names
        .iter()
        .map(|name| (name, std::fs::read(dir.join(name))))
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    written.expect("the plots are drawn");
    for (name, bytes) in files {
        let bytes = bytes.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{name} is not a PNG"
        );
        assert!(
            table.contains(&format!("](plots/{name})")),
            "{name} is not linked:\n{table}"
        );
    }
}

/// Every figure of a table is a number: no measurement came out empty
/// (a median of nothing) or divided by zero.
fn assert_numbers(table: &str) {
    assert!(
        !table.contains("NaN") && !table.contains("inf"),
        "a figure is not a number:\n{table}"
    );
}
