//! The benchmark harness, run small (the smoke version CI runs): every row
//! is measured, and under load every connection is one event. Timings
//! themselves are judged by `cargo xtask bench`, never here: these machines
//! are shared and noisy. Needs root and the agent (`CP_OBSERVER_BIN`).

use std::time::Duration;

use lab::bench::{ab, inplace, load};

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

/// Every figure of a table is a number: no measurement came out empty
/// (a median of nothing) or divided by zero.
fn assert_numbers(table: &str) {
    assert!(
        !table.contains("NaN") && !table.contains("inf"),
        "a figure is not a number:\n{table}"
    );
}
