//! The summary as text: numbers scaled to their unit, and an aligned table
//! for the terminal. The HTML report uses the same cells.

use crate::stats::{Stats, Summary};

/// How the numbers of one table row are shown. One scale per row, so both
/// modes of a row read in the same unit ("850 ms" next to "1.2 s" would hide
/// which is larger).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scale {
    divisor: f64,
    decimals: usize,
    suffix: String,
}

impl Scale {
    /// Picks a scale for `values` measured in `unit`.
    pub(crate) fn for_values(unit: &str, values: impl IntoIterator<Item = f64>) -> Scale {
        let finite: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        let largest = finite.iter().fold(0.0_f64, |acc, v| acc.max(v.abs()));
        // Decimals follow the smallest non-zero value, so it keeps its
        // digits next to a large one ("0.8 s" beside "14.0 s" would hide
        // a 760–840 ms spread).
        let smallest = finite
            .iter()
            .map(|v| v.abs())
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let smallest = if smallest.is_finite() { smallest } else { 0.0 };
        let integral = finite.iter().all(|v| v.fract() == 0.0);
        let scale = |divisor: f64, decimals: usize, suffix: &str| Scale {
            divisor,
            decimals,
            suffix: suffix.to_owned(),
        };
        const KIB: f64 = 1024.0;
        match unit {
            "ms" if largest >= 10_000.0 && smallest >= 1_000.0 => scale(1000.0, 1, "s"),
            "ms" if smallest >= 10.0 || smallest == 0.0 => scale(1.0, 0, "ms"),
            "ms" if smallest >= 1.0 => scale(1.0, 1, "ms"),
            "ms" => scale(1.0, 2, "ms"),
            "bytes" | "B" if largest >= KIB * KIB * KIB => scale(KIB * KIB * KIB, 1, "GiB"),
            "bytes" | "B" if largest >= KIB * KIB => scale(KIB * KIB, 1, "MiB"),
            "bytes" | "B" if largest >= KIB => scale(KIB, 1, "KiB"),
            "bytes" | "B" => scale(1.0, 0, unit),
            rate if rate.ends_with("/s") && (smallest >= 10.0 || smallest == 0.0) => {
                scale(1.0, 0, unit)
            }
            _ if integral => scale(1.0, 0, unit),
            _ => scale(1.0, plain_decimals(smallest), unit),
        }
    }

    /// The number alone, e.g. "1,234" or "12.5".
    pub(crate) fn number(&self, value: f64) -> String {
        if !value.is_finite() {
            return value.to_string();
        }
        let text = format!("{:.*}", self.decimals, value / self.divisor);
        group_thousands(&text)
    }

    /// The number and its unit, e.g. "1,234 ms".
    pub(crate) fn with_unit(&self, value: f64) -> String {
        join_unit(self.number(value), &self.suffix)
    }

    /// "median (min–max) unit", or "median unit" when there is no spread.
    pub(crate) fn stats_cell(&self, stats: Option<&Stats>) -> String {
        let Some(s) = stats else {
            return MISSING.to_owned();
        };
        let (median, min, max) = (
            self.number(s.median),
            self.number(s.min),
            self.number(s.max),
        );
        if min == max {
            join_unit(median, &self.suffix)
        } else {
            join_unit(format!("{median} ({min}–{max})"), &self.suffix)
        }
    }
}

/// Shown where a mode has no value.
pub(crate) const MISSING: &str = "—";

fn plain_decimals(magnitude: f64) -> usize {
    if magnitude >= 100.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else {
        2
    }
}

fn join_unit(number: String, unit: &str) -> String {
    if unit.is_empty() {
        number
    } else {
        format!("{number} {unit}")
    }
}

/// "1234567.5" → "1,234,567.5"; leaves the sign and decimals alone.
fn group_thousands(text: &str) -> String {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text),
    };
    let (int, frac) = match rest.find('.') {
        Some(dot) => rest.split_at(dot),
        None => (rest, ""),
    };
    let mut grouped = String::with_capacity(text.len() + int.len() / 3);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}{frac}")
}

/// One value in its unit, scaled sensibly: "850 ms", "12.3 s", "45,000 offsets/s",
/// "1.5 MiB".
pub fn format_value(value: f64, unit: &str) -> String {
    Scale::for_values(unit, [value]).with_unit(value)
}

/// A ratio such as "2.35x"; the missing mark when there is none.
pub(crate) fn ratio_cell(ratio: Option<f64>) -> String {
    match ratio {
        None => MISSING.to_owned(),
        Some(r) if !r.is_finite() => format!("{r}x"),
        Some(r) => format!("{:.*}x", plain_decimals(r.abs()), r),
    }
}

/// A summary row as display text.
pub(crate) struct Row {
    pub scenario: String,
    pub metric: String,
    pub partitions: String,
    pub zk: String,
    pub kraft: String,
    pub ratio: String,
}

pub(crate) fn rows(summaries: &[Summary]) -> Vec<Row> {
    summaries
        .iter()
        .map(|s| {
            let values = [&s.zk, &s.kraft]
                .into_iter()
                .flatten()
                .flat_map(|st| [st.median, st.min, st.max]);
            let scale = Scale::for_values(&s.unit, values);
            Row {
                scenario: s.scenario.clone(),
                metric: s.metric.clone(),
                partitions: group_thousands(&s.partitions.to_string()),
                zk: scale.stats_cell(s.zk.as_ref()),
                kraft: scale.stats_cell(s.kraft.as_ref()),
                ratio: ratio_cell(s.ratio),
            }
        })
        .collect()
}

pub(crate) const HEADERS: [&str; 6] = [
    "Scenario",
    "Metric",
    "Partitions",
    "ZooKeeper median (min–max)",
    "KRaft median (min–max)",
    "ZooKeeper/KRaft",
];

/// An aligned plain-text table of `summaries` for a terminal. A scenario or
/// metric is printed once, on the first row of its run of rows.
pub fn table(summaries: &[Summary]) -> String {
    if summaries.is_empty() {
        return "no measurements\n".to_owned();
    }
    let mut lines: Vec<[String; 6]> = vec![HEADERS.map(str::to_owned)];
    let mut previous: Option<(&str, &str)> = None;
    for (row, summary) in rows(summaries).into_iter().zip(summaries) {
        let same_scenario = previous.is_some_and(|(s, _)| s == summary.scenario);
        let same_metric = same_scenario && previous.is_some_and(|(_, m)| m == summary.metric);
        previous = Some((&summary.scenario, &summary.metric));
        lines.push([
            if same_scenario {
                String::new()
            } else {
                row.scenario
            },
            if same_metric {
                String::new()
            } else {
                row.metric
            },
            row.partitions,
            row.zk,
            row.kraft,
            row.ratio,
        ]);
    }

    // Widths in chars, not bytes: the cells hold "–" and "—".
    let mut widths = [0usize; 6];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // Text columns read best left-aligned, numbers right-aligned.
    let right_aligned = [false, false, true, true, true, true];

    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let mut text = String::new();
        for (col, cell) in line.iter().enumerate() {
            if col > 0 {
                text.push_str("  ");
            }
            let pad = " ".repeat(widths[col] - cell.chars().count());
            if right_aligned[col] {
                text.push_str(&pad);
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&pad);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measurement::Mode;
    use crate::stats::summarize;
    use crate::test_support::m;

    #[test]
    fn values_scale_by_unit() {
        assert_eq!(format_value(850.4, "ms"), "850 ms");
        assert_eq!(format_value(3.26, "ms"), "3.3 ms");
        assert_eq!(format_value(12_345.0, "ms"), "12.3 s");
        assert_eq!(format_value(45_000.7, "offsets/s"), "45,001 offsets/s");
        assert_eq!(format_value(1_572_864.0, "bytes"), "1.5 MiB");
        assert_eq!(format_value(512.0, "bytes"), "512 bytes");
        assert_eq!(format_value(1_234_567.0, "requests"), "1,234,567 requests");
        assert_eq!(format_value(0.5, "ratio"), "0.50 ratio");
        assert_eq!(format_value(-1234.0, "ms"), "-1,234 ms");
        assert_eq!(format_value(f64::INFINITY, "ms"), "inf ms");
        assert_eq!(format_value(0.0, "ms"), "0 ms");
        assert_eq!(format_value(0.25, "ms"), "0.25 ms");
    }

    #[test]
    fn thousands() {
        assert_eq!(group_thousands("1"), "1");
        assert_eq!(group_thousands("999"), "999");
        assert_eq!(group_thousands("1000"), "1,000");
        assert_eq!(group_thousands("100000.25"), "100,000.25");
        assert_eq!(group_thousands("-1000000"), "-1,000,000");
    }

    #[test]
    fn a_row_uses_one_scale_for_both_modes() {
        let rows = summarize(&[
            m("s", "t", Mode::Zk, 10, 1, 25_000.0),
            m("s", "t", Mode::Kraft, 10, 1, 2_000.0),
            m("s", "t", Mode::Kraft, 10, 2, 2_400.0),
            // Seconds would round 800–1,000 ms to "0.8–1.0 s": stay in ms.
            m("s", "t", Mode::Zk, 20, 1, 25_000.0),
            m("s", "t", Mode::Kraft, 20, 1, 800.0),
            m("s", "t", Mode::Kraft, 20, 2, 1_000.0),
        ]);
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].contains(" 25.0 s "), "{text}");
        assert!(lines[2].contains(" 2.2 (2.0–2.4) s "), "{text}");
        assert!(lines[2].ends_with("11.4x"), "{text}");
        assert!(lines[3].contains(" 25,000 ms "), "{text}");
        assert!(lines[3].contains(" 900 (800–1,000) ms "), "{text}");
        assert!(lines[3].ends_with("27.8x"), "{text}");
    }

    #[test]
    fn table_is_aligned_and_groups_repeats() {
        let rows = summarize(&[
            m("failover & more", "elected", Mode::Zk, 10, 1, 40.0),
            m("failover & more", "elected", Mode::Kraft, 10, 1, 20.0),
            m("failover & more", "elected", Mode::Zk, 10000, 1, 4000.0),
            m("failover & more", "fenced", Mode::Kraft, 10, 1, 3.0),
        ]);
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("Scenario"));
        assert!(lines[1].chars().all(|c| c == '-'));
        assert!(lines[2].starts_with("failover & more  elected"), "{text}");
        // Repeated scenario and metric are left blank.
        assert!(lines[3].starts_with("                 "), "{text}");
        assert!(lines[3].contains("10,000"), "{text}");
        assert!(
            lines[3].ends_with(MISSING),
            "no KRaft value, no ratio: {text}"
        );
        assert!(lines[4].contains("fenced"), "{text}");
        assert!(lines[2].ends_with("2.00x"), "{text}");
        // The partitions column is right-aligned: both numbers end in the same column.
        let end = |line: &str, needle: &str| {
            let byte = line.find(needle).unwrap() + needle.len();
            line[..byte].chars().count()
        };
        assert_eq!(end(lines[2], " 10 "), end(lines[3], "10,000 "));
    }

    #[test]
    fn empty_table_says_so() {
        assert_eq!(table(&[]), "no measurements\n");
    }
}
