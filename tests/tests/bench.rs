//! The benchmark harness, run small (the smoke version CI runs): every row
//! is measured, and under load every connection is one event. Timings
//! themselves are judged by `cargo xtask bench`, never here: these machines
//! are shared and noisy. Needs root and the agent (`CP_OBSERVER_BIN`).

use std::time::Duration;

use lab::bench::{ab, discovery, load};

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
    assert_numbers(&discovery::markdown(&r));
}

/// Every figure of a table is a number: no measurement came out empty
/// (a median of nothing) or divided by zero.
fn assert_numbers(table: &str) {
    assert!(
        !table.contains("NaN") && !table.contains("inf"),
        "a figure is not a number:\n{table}"
    );
}
