//! PNG line charts of benchmark curves, for BENCHMARKS.md.
//!
//! ```no_run
//! use lab::bench::plot::{self, Axis, Series};
//! plot::lines(
//!     "benchmarks/example.png".as_ref(),
//!     "Cost against size",
//!     &Axis::log("entries"),
//!     &Axis::linear("ns per packet"),
//!     &[Series::new("agent", vec![(1e3, 80.0), (1e4, 95.0), (1e5, 140.0)])],
//! )?;
//! # anyhow::Ok(())
//! ```
//!
//! Text is drawn with DejaVu Sans from Debian's `fonts-dejavu-core`
//! (which `cargo xtask bench` and `cargo xtask test` install): a font read
//! from the system, nothing bundled.

use std::{ops::Range, path::Path, sync::OnceLock};

use anyhow::{Context as _, anyhow};
use plotters::{
    coord::{
        Shift,
        ranged1d::{AsRangedCoord, ValueFormatter},
    },
    prelude::*,
    style::{FontStyle, register_font},
};

/// The font all text is drawn with.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Size of the image, pixels.
const SIZE: (u32, u32) = (900, 560);

/// The family name the font is registered under.
const FAMILY: &str = "sans-serif";

/// An axis of a chart: its label, and whether its scale is logarithmic.
#[derive(Clone, Debug)]
pub struct Axis {
    /// The label, with its unit.
    pub label: String,
    /// Logarithmic scale (for sizes that grow by factors); its values
    /// must be positive.
    pub log: bool,
}

impl Axis {
    /// A linear axis; a linear y axis starts at 0.
    pub fn linear(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            log: false,
        }
    }

    /// A logarithmic axis.
    pub fn log(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            log: true,
        }
    }
}

/// One line of a chart: its name in the legend and its points (x, y),
/// drawn in the order given, each marked with a dot.
#[derive(Clone, Debug)]
pub struct Series {
    /// The name in the legend.
    pub name: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name`.
    pub fn new(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.to_owned(),
            points,
        }
    }
}

/// Draws `series` as lines on one chart titled `title`, with labelled axes
/// and a legend, and writes it to `path` as a PNG (its directory must
/// exist). Fails on no points, a non-finite value, or a value ≤ 0 on a
/// logarithmic axis, naming it.
pub fn lines(
    path: &Path,
    title: &str,
    x: &Axis,
    y: &Axis,
    series: &[Series],
) -> anyhow::Result<()> {
    font()?;
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let xs = extent(points().map(|p| p.0), x).context("x")?;
    let ys = extent(points().map(|p| p.1), y).context("y")?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let draw = |root: &DrawingArea<BitMapBackend<'_>, Shift>| match (x.log, y.log) {
        (false, false) => chart(root, title, x, y, series, xs.clone(), ys.clone()),
        (true, false) => chart(
            root,
            title,
            x,
            y,
            series,
            xs.clone().log_scale(),
            ys.clone(),
        ),
        (false, true) => chart(
            root,
            title,
            x,
            y,
            series,
            xs.clone(),
            ys.clone().log_scale(),
        ),
        (true, true) => chart(
            root,
            title,
            x,
            y,
            series,
            xs.clone().log_scale(),
            ys.clone().log_scale(),
        ),
    };
    draw(&root).with_context(|| format!("drawing {}", path.display()))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

/// Registers [`FONT`] once.
fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|e| {
                format!(
                    "cannot read the charts' font {FONT} (Debian package fonts-dejavu-core, \
                     which `cargo xtask bench` installs): {e}"
                )
            })?;
            // Registered fonts live as long as the process.
            register_font(FAMILY, FontStyle::Normal, Vec::leak(bytes))
                .map_err(|_| format!("{FONT} is not a font plotters can read"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The range the axis shows for `values`, with a margin; from 0 on a
/// linear axis whose values are all ≥ 0.
fn extent(values: impl Iterator<Item = f64>, axis: &Axis) -> anyhow::Result<Range<f64>> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        anyhow::ensure!(v.is_finite(), "{}: {v} is not a number", axis.label);
        anyhow::ensure!(
            !axis.log || v > 0.0,
            "{}: {v} on a logarithmic axis",
            axis.label
        );
        lo = lo.min(v);
        hi = hi.max(v);
    }
    anyhow::ensure!(lo <= hi, "{}: no points", axis.label);
    Ok(if axis.log {
        lo / 1.5..hi * 1.5
    } else {
        let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
        let lo = if lo >= 0.0 { 0.0 } else { lo - span * 0.1 };
        lo..hi + span * 0.1
    })
}

/// Series colours, in order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn chart<X, Y>(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    x: &Axis,
    y: &Axis,
    series: &[Series],
    xs: X,
    ys: Y,
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(xs, ys)?;
    chart
        .configure_mesh()
        .x_desc(&x.label)
        .y_desc(&y.label)
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .x_label_formatter(&|v| compact(*v))
        .y_label_formatter(&|v| compact(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (s, colour) in series.iter().zip(COLOURS.iter().cycle()) {
        let style = colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A tick label: 1.5, 250, 10k, 1.2M.
fn compact(v: f64) -> String {
    let (v, unit) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let digits = if v.fract().abs() < 1e-9 || v.abs() >= 10.0 {
        0
    } else {
        1
    };
    format!("{v:.digits$}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(compact(1000.0), "1k");
        assert_eq!(compact(262_144.0), "262k");
        assert_eq!(compact(65_536.0), "66k");
        assert_eq!(compact(1.5), "1.5");
        assert_eq!(compact(120.0), "120");
        assert_eq!(compact(2_500_000.0), "2.5M");
    }

    #[test]
    fn a_log_axis_refuses_what_it_cannot_show() {
        let e = extent([1.0, 0.0].into_iter(), &Axis::log("flows")).unwrap_err();
        assert!(e.to_string().contains("flows: 0"), "{e}");
        assert!(extent(std::iter::empty(), &Axis::linear("ns")).is_err());
        assert_eq!(
            extent([10.0, 20.0].into_iter(), &Axis::linear("ns")).unwrap(),
            0.0..21.0
        );
    }
}
