//! One SVG chart per (scenario, metric): the value against the partition
//! count, each run a dot, each mode's medians joined by a line.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::measurement::Mode;
use crate::stats::{stats, Group};

const WIDTH: u32 = 800;
const HEIGHT: u32 = 480;

/// Colour-blind-safe (Okabe–Ito) colours; ZooKeeper's dots are also hollow
/// and KRaft's filled, so the modes differ in more than colour.
fn colour(mode: Mode) -> RGBColor {
    match mode {
        Mode::Zk => RGBColor(213, 94, 0),
        Mode::Kraft => RGBColor(0, 114, 178),
    }
}

/// Lowercase ASCII, every run of other characters turned into one '-',
/// no '-' at either end; "chart" if nothing is left.
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    // Long titles would make unwieldy file names.
    out.truncate(80);
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() {
        "chart".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Hands out slugs that are unique among those already handed out, by
/// appending "-2", "-3", ... to repeats.
#[derive(Default)]
pub(crate) struct Slugs {
    taken: HashSet<String>,
}

impl Slugs {
    pub(crate) fn unique(&mut self, text: &str) -> String {
        let base = slug(text);
        let mut candidate = base.clone();
        let mut n = 1;
        while !self.taken.insert(candidate.clone()) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        candidate
    }
}

/// One axis. Positions are computed in "plot space" — log10 of the value on
/// a log axis — so log and linear axes share one code path; the axis is
/// itself the plotters coordinate, so it also places ticks and labels them.
#[derive(Clone)]
struct Axis {
    log: bool,
    /// The visible range, in plot space.
    range: Range<f64>,
    /// Tick positions, as values (not plot space).
    ticks: Vec<f64>,
}

impl Axis {
    /// An axis covering `values` (all finite), log when `log` is asked for
    /// and every value is positive. A single value, or none, still gets a
    /// non-empty range.
    fn new(values: &[f64], log: bool) -> Axis {
        let log = log && !values.is_empty() && values.iter().all(|v| *v > 0.0);
        let plot: Vec<f64> = values
            .iter()
            .map(|v| if log { v.log10() } else { *v })
            .collect();
        let min = plot.iter().copied().fold(f64::INFINITY, f64::min);
        let max = plot.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let range = if plot.is_empty() {
            0.0..1.0
        } else if log {
            if max - min < 1e-9 {
                // One value: show a factor of two either side.
                (min - 0.3)..(max + 0.3)
            } else {
                let pad = (max - min) * 0.08;
                (min - pad)..(max + pad)
            }
        } else {
            // A linear axis includes zero, so the distance from zero is
            // not exaggerated; padding goes only on the sides away from it.
            let (lo, hi) = (min.min(0.0), max.max(0.0));
            let pad = (hi - lo) * 0.08;
            if pad > 0.0 {
                let lo = if lo < 0.0 { lo - pad } else { lo };
                let hi = if hi > 0.0 { hi + pad } else { hi };
                lo..hi
            } else {
                // Everything is zero.
                0.0..1.0
            }
        };
        let mut axis = Axis {
            log,
            range,
            ticks: Vec::new(),
        };
        axis.ticks = axis.nice_ticks();
        axis
    }

    fn position(&self, value: f64) -> f64 {
        if self.log {
            value.log10()
        } else {
            value
        }
    }

    fn value_at(&self, position: f64) -> f64 {
        if self.log {
            10f64.powf(position)
        } else {
            position
        }
    }

    fn span(&self) -> f64 {
        self.range.end - self.range.start
    }

    fn nice_ticks(&self) -> Vec<f64> {
        let (lo, hi) = (self.range.start, self.range.end);
        if !self.log {
            return linear_ticks(lo, hi, 6);
        }
        let decades = hi - lo;
        if decades < 1.0 {
            // Less than a decade: evenly spaced values read better than
            // powers of ten, of which there may be none in range.
            return linear_ticks(self.value_at(lo), self.value_at(hi), 5)
                .into_iter()
                .filter(|v| *v > 0.0)
                .collect();
        }
        let mantissas: &[f64] = if decades <= 2.5 {
            &[1.0, 2.0, 5.0]
        } else if decades <= 4.0 {
            &[1.0, 3.0]
        } else {
            &[1.0]
        };
        let every = (decades / 8.0).ceil().max(1.0) as i32;
        let mut ticks = Vec::new();
        let first = lo.floor() as i32;
        for exponent in (first..=hi.ceil() as i32).filter(|e| (e - first) % every == 0) {
            for m in mantissas {
                let value = m * 10f64.powi(exponent);
                if (lo..=hi).contains(&value.log10()) {
                    ticks.push(value);
                }
            }
        }
        ticks
    }

    /// The partition counts themselves are the best ticks when there are few.
    fn with_ticks_at(mut self, values: &[f64]) -> Axis {
        if !values.is_empty() && values.len() <= 8 {
            self.ticks = values.to_vec();
        }
        self
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, position: &f64, limit: (i32, i32)) -> i32 {
        let fraction = (position - self.range.start) / self.span();
        // `as` saturates (NaN becomes 0), so odd input cannot panic here.
        limit.0 + (f64::from(limit.1 - limit.0) * fraction).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only bold grid lines: the ticks. Light lines would clutter a log axis.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.iter().map(|v| self.position(*v)).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, position: &f64) -> String {
        tick_label(self.value_at(*position))
    }
}

/// About `target` evenly spaced round values (1, 2 or 5 times a power of
/// ten apart) within lo..=hi.
fn linear_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return vec![lo];
    }
    let rough = span / target as f64;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| span / step <= target as f64)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// "10,000", "0.25", "2e9": short, and exact enough for a tick.
fn tick_label(value: f64) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    if value.abs() >= 1e7 {
        return format!("{value:e}");
    }
    let rounded = value.round();
    // Log ticks come back from 10^x with a little float noise.
    if (value - rounded).abs() <= 1e-9 * value.abs().max(1.0) {
        return crate::table::format_value(rounded, "");
    }
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The chart's title, as shown above the chart and in the report.
pub(crate) fn title(group: &Group<'_>) -> String {
    format!("{} — {}", group.scenario, group.metric)
}

/// Renders the group's chart as SVG text.
pub(crate) fn render(group: &Group<'_>) -> anyhow::Result<String> {
    // Dots need finite values; NaN and infinity are left out of the chart
    // (they are still in the JSON and CSV).
    let points: Vec<(Mode, u32, f64)> = group
        .measurements
        .iter()
        .filter(|m| m.value.is_finite())
        .map(|m| (m.mode, m.partitions, m.value))
        .collect();
    let mut partitions: Vec<u32> = points.iter().map(|p| p.1).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let partitions: Vec<f64> = partitions.into_iter().map(f64::from).collect();
    let values: Vec<f64> = points.iter().map(|p| p.2).collect();

    let x = Axis::new(&partitions, true).with_ticks_at(&partitions);
    let y = Axis::new(&values, true);
    let x_desc = if x.log {
        "partitions (log scale)".to_owned()
    } else {
        "partitions".to_owned()
    };
    let unit = if group.unit.is_empty() {
        String::new()
    } else {
        format!(" ({})", group.unit)
    };
    let y_desc = format!(
        "{}{unit}{}",
        group.metric,
        if y.log { ", log scale" } else { "" }
    );

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title(group), ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(88)
            .build_cartesian_2d(x.clone(), y.clone())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .bold_line_style(BLACK.mix(0.12))
            .draw()?;

        let mut any_series = false;
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let ours: Vec<(u32, f64)> = points
                .iter()
                .filter(|p| p.0 == mode)
                .map(|p| (p.1, p.2))
                .collect();
            if ours.is_empty() {
                continue;
            }
            any_series = true;
            let colour = colour(mode);
            // Nudge the modes apart sideways so dots at one partition count
            // do not hide each other.
            let nudge = x.span() * 0.012 * if i == 0 { -1.0 } else { 1.0 };
            let at = |partitions: u32, value: f64| {
                (x.position(f64::from(partitions)) + nudge, y.position(value))
            };
            let dot_style = match mode {
                Mode::Zk => colour.stroke_width(2),
                Mode::Kraft => colour.filled(),
            };
            chart.draw_series(
                ours.iter()
                    .map(|&(p, v)| Circle::new(at(p, v), 4, dot_style)),
            )?;

            let mut by_partitions: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for &(p, v) in &ours {
                by_partitions.entry(p).or_default().push(v);
            }
            let medians: Vec<(f64, f64)> = by_partitions
                .iter()
                .filter_map(|(p, vs)| stats(vs).map(|s| at(*p, s.median)))
                .collect();
            let line = colour.stroke_width(2);
            chart
                .draw_series(LineSeries::new(medians.iter().copied(), line))?
                .label(mode.to_string())
                // The legend shows the line and the dot, as drawn.
                .legend(move |(lx, ly)| {
                    EmptyElement::at((lx, ly))
                        + PathElement::new(vec![(0, 0), (20, 0)], line)
                        + Circle::new((10, 0), 4, dot_style)
                });
            // A short bar at each median, so a lone partition count (no line
            // to draw) still shows where the median is.
            let half = x.span() * 0.012;
            chart.draw_series(
                medians.iter().map(|&(px, py)| {
                    PathElement::new(vec![(px - half, py), (px + half, py)], line)
                }),
            )?;
        }
        if any_series {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measurement::Measurement;
    use crate::stats::groups;
    use crate::test_support::m;

    fn svg_of(measurements: &[Measurement]) -> String {
        let groups = groups(measurements);
        assert_eq!(groups.len(), 1);
        render(&groups[0]).unwrap()
    }

    /// Text of the SVG's <text> elements.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let start = t.find('>')? + 1;
                let end = t.find("</text>")?;
                Some(t[start..end].trim().to_owned())
            })
            .collect()
    }

    /// Dots drawn for runs: every circle but the one per mode in the legend.
    fn circles(svg: &str) -> usize {
        let legend = ["ZooKeeper", "KRaft"]
            .iter()
            .filter(|name| texts(svg).contains(&name.to_string()))
            .count();
        svg.matches("<circle").count() - legend
    }

    #[test]
    fn slugs_are_lowercase_ascii_and_collapsed() {
        assert_eq!(
            slug("Controller-failover (defaults) new controller in charge"),
            "controller-failover-defaults-new-controller-in-charge"
        );
        assert_eq!(slug("  --Ünïcode & más!!  "), "n-code-m-s");
        assert_eq!(slug("???"), "chart");
        assert_eq!(slug(""), "chart");
        assert!(slug(&"x ".repeat(100)).len() <= 80);
        assert!(!slug(&"x ".repeat(100)).ends_with('-'));
    }

    #[test]
    fn slugs_are_unique() {
        let mut slugs = Slugs::default();
        assert_eq!(slugs.unique("A b"), "a-b");
        assert_eq!(slugs.unique("a-b"), "a-b-2");
        assert_eq!(slugs.unique("A  B!"), "a-b-3");
        // A name that happens to equal a numbered one is not reused either.
        assert_eq!(slugs.unique("a b 2"), "a-b-2-2");
        assert_eq!(slugs.unique("other"), "other");
    }

    #[test]
    fn log_ticks_cover_decades() {
        let axis = Axis::new(&[10.0, 100_000.0], true);
        assert!(axis.log);
        assert!(axis.ticks.contains(&10.0) && axis.ticks.contains(&100_000.0));
        let narrow = Axis::new(&[120.0, 130.0], true);
        assert!(narrow.ticks.len() >= 2, "{:?}", narrow.ticks);
        assert!(narrow
            .ticks
            .iter()
            .all(|t| (narrow.range.start..=narrow.range.end).contains(&t.log10())));
    }

    #[test]
    fn axes_fall_back_to_linear() {
        let zeros = Axis::new(&[0.0, 0.0], true);
        assert!(!zeros.log);
        assert!(zeros.range.end > zeros.range.start);
        let negative = Axis::new(&[-5.0, 3.0], true);
        assert!(!negative.log);
        assert!(negative.range.start < -5.0 && negative.range.end > 3.0);
        let empty = Axis::new(&[], true);
        assert!(empty.range.end > empty.range.start);
    }

    #[test]
    fn tick_labels() {
        assert_eq!(tick_label(199.99999999999997), "200");
        assert_eq!(tick_label(10_000.0), "10,000");
        assert_eq!(tick_label(0.30000000000000004), "0.3");
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(2e9), "2e9");
    }

    #[test]
    fn chart_has_title_both_modes_and_every_run() {
        let svg = svg_of(&[
            m("failover <fast>", "elected", Mode::Zk, 10, 1, 40.0),
            m("failover <fast>", "elected", Mode::Zk, 10, 2, 45.0),
            m("failover <fast>", "elected", Mode::Kraft, 10, 1, 20.0),
            m("failover <fast>", "elected", Mode::Zk, 1000, 1, 400.0),
            m("failover <fast>", "elected", Mode::Kraft, 1000, 1, 100.0),
        ]);
        assert!(svg.starts_with("<svg"), "{svg}");
        let texts = texts(&svg);
        assert!(
            texts.contains(&"failover &lt;fast&gt; — elected".to_owned()),
            "{texts:?}"
        );
        assert!(texts.contains(&"ZooKeeper".to_owned()), "{texts:?}");
        assert!(texts.contains(&"KRaft".to_owned()), "{texts:?}");
        assert!(
            texts.contains(&"elected (ms), log scale".to_owned()),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"partitions (log scale)".to_owned()),
            "{texts:?}"
        );
        // The x ticks are the partition counts.
        assert!(texts.contains(&"10".to_owned()) && texts.contains(&"1,000".to_owned()));
        assert_eq!(circles(&svg), 5);
    }

    #[test]
    fn chart_with_one_partition_count() {
        let svg = svg_of(&[
            m("s", "t", Mode::Zk, 100, 1, 5.0),
            m("s", "t", Mode::Kraft, 100, 1, 7.0),
        ]);
        assert_eq!(circles(&svg), 2);
        assert!(texts(&svg).contains(&"100".to_owned()));
    }

    #[test]
    fn chart_with_zeros_is_linear() {
        let svg = svg_of(&[
            m("s", "t", Mode::Zk, 10, 1, 0.0),
            m("s", "t", Mode::Kraft, 10, 1, 0.0),
            m("s", "t", Mode::Kraft, 100, 1, 3.0),
        ]);
        assert_eq!(circles(&svg), 3);
        let texts = texts(&svg);
        assert!(texts.contains(&"t (ms)".to_owned()), "{texts:?}");
    }

    #[test]
    fn chart_with_only_zeros_or_only_one_mode() {
        let zeros = svg_of(&[m("s", "t", Mode::Zk, 10, 1, 0.0)]);
        assert_eq!(circles(&zeros), 1);
        let one_mode = svg_of(&[
            m("s", "t", Mode::Kraft, 10, 1, 2.0),
            m("s", "t", Mode::Kraft, 20, 1, 3.0),
        ]);
        let texts = texts(&one_mode);
        assert!(texts.contains(&"KRaft".to_owned()));
        assert!(!texts.contains(&"ZooKeeper".to_owned()));
        assert_eq!(circles(&one_mode), 2);
    }

    #[test]
    fn chart_with_no_finite_values_or_partition_zero() {
        let svg = svg_of(&[
            m("s", "t", Mode::Zk, 10, 1, f64::NAN),
            m("s", "t", Mode::Kraft, 10, 1, f64::INFINITY),
        ]);
        assert_eq!(circles(&svg), 0);
        let svg = svg_of(&[
            m("s", "t", Mode::Zk, 0, 1, 1.0),
            m("s", "t", Mode::Zk, 4, 1, 2.0),
        ]);
        assert_eq!(circles(&svg), 2);
        assert!(texts(&svg).contains(&"partitions".to_owned()));
    }
}
