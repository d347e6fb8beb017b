//! The benchmark harness, run small (the smoke version CI runs): every row
//! is measured, and under load every connection is one event. Timings
//! themselves are judged by `cargo xtask bench`, never here: these machines
//! are shared and noisy. Needs root and the agent (`CP_OBSERVER_BIN`).

use std::time::Duration;

use lab::bench::{ab, load, scale};

#[test]
fn the_kernel_benchmark_harness_measures_every_row() {
    let rows = lab::bench::kernel::kernel(1000, 3, 50);
    for r in &rows {
        assert!(r.ns > 0.0, "{r:?}");
    }
    assert_numbers(&lab::bench::kernel::markdown(&rows));
}

#[test]
fn the_ab_harness_measures_every_workload_in_every_mode() {
    let plan = ab::Plan {
        rounds: 1,
        duration: Duration::from_millis(200),
        connection_threads: 2,
        tag: "bsmoke",
    };
    // `run` itself checks that the agent counts the tracked traffic on its
    // path and none of the untracked traffic.
    let rows = ab::run(&plan);
    for r in &rows {
        for mode in ab::Mode::ALL {
            let samples = &r.samples[mode as usize];
            assert!(samples.iter().all(|v| *v > 0.0), "{mode:?}: {r:?}");
        }
    }
    assert_numbers(&ab::markdown(&rows));
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
    let dir = std::env::temp_dir().join(format!("cp-observer-bench-plots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let written = scale::plots(&report, &dir);
    let files: Vec<_> = scale::PLOTS
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
