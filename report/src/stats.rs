//! Medians and ranges per scenario, metric, partition count and mode.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::measurement::{Measurement, Mode};

/// The spread of a few runs. Medians, not means: with three to five runs
/// one slow outlier (a GC pause, a busy disk) would drag a mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many values went in (NaN not counted).
    pub runs: usize,
}

/// Median, min and max of `values`, ignoring NaN; `None` when nothing is left.
/// The median of an even count is the mean of the two middle values.
pub fn stats(values: &[f64]) -> Option<Stats> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some(Stats {
        median,
        min: sorted[0],
        max: sorted[n - 1],
        runs: n,
    })
}

/// One row of the comparison: a scenario's metric at one partition count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub partitions: u32,
    pub zk: Option<Stats>,
    pub kraft: Option<Stats>,
    /// ZooKeeper median / KRaft median; `None` if either is missing or the
    /// KRaft median is 0.
    pub ratio: Option<f64>,
}

impl Summary {
    pub fn stats(&self, mode: Mode) -> Option<&Stats> {
        match mode {
            Mode::Zk => self.zk.as_ref(),
            Mode::Kraft => self.kraft.as_ref(),
        }
    }
}

/// One row per (scenario, metric, partitions): (scenario, metric) pairs in
/// the order first seen, partition counts ascending within each.
pub fn summarize(measurements: &[Measurement]) -> Vec<Summary> {
    let mut rows = Vec::new();
    for group in groups(measurements) {
        let mut by_partitions: BTreeMap<u32, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for m in &group.measurements {
            let (zk, kraft) = by_partitions.entry(m.partitions).or_default();
            match m.mode {
                Mode::Zk => zk.push(m.value),
                Mode::Kraft => kraft.push(m.value),
            }
        }
        for (partitions, (zk, kraft)) in by_partitions {
            let zk = stats(&zk);
            let kraft = stats(&kraft);
            let ratio = match (&zk, &kraft) {
                (Some(zk), Some(kraft)) if kraft.median != 0.0 => Some(zk.median / kraft.median),
                _ => None,
            };
            rows.push(Summary {
                scenario: group.scenario.to_owned(),
                metric: group.metric.to_owned(),
                unit: group.unit.to_owned(),
                partitions,
                zk,
                kraft,
                ratio,
            });
        }
    }
    rows
}

/// The measurements of one (scenario, metric) pair: one table section, one chart.
pub(crate) struct Group<'a> {
    pub scenario: &'a str,
    pub metric: &'a str,
    /// The first-seen unit; a metric is expected to keep one unit.
    pub unit: &'a str,
    pub measurements: Vec<&'a Measurement>,
}

/// Measurements grouped by (scenario, metric), in the order first seen.
pub(crate) fn groups(measurements: &[Measurement]) -> Vec<Group<'_>> {
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    for m in measurements {
        let key = (m.scenario.as_str(), m.metric.as_str());
        let i = *index.entry(key).or_insert_with(|| {
            groups.push(Group {
                scenario: &m.scenario,
                metric: &m.metric,
                unit: &m.unit,
                measurements: Vec::new(),
            });
            groups.len() - 1
        });
        groups[i].measurements.push(m);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::m;

    #[test]
    fn stats_of_odd_count() {
        let s = stats(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            s,
            Stats {
                median: 3.0,
                min: 1.0,
                max: 5.0,
                runs: 3
            }
        );
    }

    #[test]
    fn stats_of_even_count_is_mean_of_middle_two() {
        let s = stats(&[10.0, 1.0, 4.0, 2.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!((s.min, s.max, s.runs), (1.0, 10.0, 4));
    }

    #[test]
    fn stats_of_nothing() {
        assert_eq!(stats(&[]), None);
        assert_eq!(stats(&[f64::NAN, f64::NAN]), None);
    }

    #[test]
    fn stats_ignore_nan() {
        let s = stats(&[f64::NAN, 7.0, 1.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (4.0, 1.0, 7.0, 2));
    }

    #[test]
    fn summarize_groups_in_first_seen_order_with_partitions_ascending() {
        let input = vec![
            m("failover", "elected", Mode::Zk, 1000, 1, 300.0),
            m("create", "all created", Mode::Kraft, 10, 1, 5.0),
            m("failover", "elected", Mode::Kraft, 10, 1, 20.0),
            m("failover", "elected", Mode::Zk, 10, 1, 40.0),
            m("failover", "elected", Mode::Kraft, 1000, 1, 100.0),
            m("failover", "elected", Mode::Zk, 1000, 2, 500.0),
            m("failover", "elected", Mode::Zk, 1000, 3, 400.0),
            m("failover", "fenced", Mode::Zk, 10, 1, 1.0),
        ];
        let rows = summarize(&input);
        let keys: Vec<(&str, &str, u32)> = rows
            .iter()
            .map(|r| (r.scenario.as_str(), r.metric.as_str(), r.partitions))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("failover", "elected", 10),
                ("failover", "elected", 1000),
                ("create", "all created", 10),
                ("failover", "fenced", 10),
            ]
        );
        assert_eq!(rows[0].ratio, Some(2.0));
        let big = &rows[1];
        assert_eq!(big.zk.as_ref().unwrap().median, 400.0);
        assert_eq!(big.zk.as_ref().unwrap().runs, 3);
        assert_eq!(big.kraft.as_ref().unwrap().median, 100.0);
        assert_eq!(big.ratio, Some(4.0));
        assert_eq!(big.unit, "ms");
    }

    #[test]
    fn ratio_needs_both_modes_and_a_nonzero_kraft_median() {
        let input = vec![
            m("a", "x", Mode::Kraft, 1, 1, 5.0),
            m("b", "x", Mode::Zk, 1, 1, 5.0),
            m("c", "x", Mode::Zk, 1, 1, 5.0),
            m("c", "x", Mode::Kraft, 1, 1, 0.0),
            m("d", "x", Mode::Zk, 1, 1, 0.0),
            m("d", "x", Mode::Kraft, 1, 1, 2.0),
        ];
        let rows = summarize(&input);
        assert_eq!(rows.len(), 4);
        assert!(rows[0].zk.is_none() && rows[0].kraft.is_some());
        assert_eq!(rows[0].ratio, None);
        assert!(rows[1].zk.is_some() && rows[1].kraft.is_none());
        assert_eq!(rows[1].ratio, None);
        assert_eq!(rows[2].ratio, None, "KRaft median 0");
        assert_eq!(rows[3].ratio, Some(0.0));
    }

    #[test]
    fn summarize_nothing() {
        assert!(summarize(&[]).is_empty());
    }
}
