//! The benchmark harness, run small (the smoke version CI runs): every row
//! is measured, and under load every connection is one event. Timings
//! themselves are judged by `cargo xtask bench`, never here: these machines
//! are shared and noisy. Needs root and the agent (`CP_OBSERVER_BIN`).

use std::time::Duration;

use lab::bench::{ab, load};

#[test]
fn the_kernel_benchmark_harness_measures_every_row() {
    let rows = lab::bench::kernel::kernel(1000, 3, 50);
    assert_eq!(rows.len(), 11);
    for r in &rows {
        assert!(r.ns > 0.0, "{r:?}");
    }
    let table = lab::bench::kernel::markdown(&rows);
    assert!(
        table.contains("first payload packet of a new flow"),
        "{table}"
    );
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
    assert_eq!(rows.len(), ab::Workload::ALL.len() * ab::Traffic::ALL.len());
    for r in &rows {
        for mode in ab::Mode::ALL {
            let samples = &r.samples[mode as usize];
            assert_eq!(samples.len(), plan.rounds, "{r:?}");
            assert!(samples.iter().all(|v| *v > 0.0), "{mode:?}: {r:?}");
        }
    }
    let tables = ab::markdown(&rows);
    for w in ab::Workload::ALL {
        assert!(tables.contains(w.title()), "{tables}");
    }
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
    assert!(r.events_match());
    assert!(r.peak_rss_kib > 0, "{r:?}");
    let table = load::markdown(&r);
    assert!(table.contains("events lost"), "{table}");
}
