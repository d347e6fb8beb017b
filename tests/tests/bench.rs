//! The benchmark harness, run small (the smoke version CI runs): every row
//! is measured. Timings themselves are judged by `cargo xtask bench`, never
//! here: these machines are shared and noisy. Needs root.

#[test]
fn the_kernel_benchmark_harness_measures_every_row() {
    let rows = lab::bench::kernel(1000, 3, 50);
    assert_eq!(rows.len(), 8);
    for r in &rows {
        assert!(r.ns > 0.0, "{r:?}");
    }
    let table = lab::bench::markdown(&rows);
    assert!(
        table.contains("first payload packet of a new flow"),
        "{table}"
    );
}
