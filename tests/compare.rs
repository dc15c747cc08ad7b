//! `sluice compare` end to end, small: both modes at 100 and 300
//! partitions, one run. What is checked is that every scenario was measured
//! in both modes and the report was written; the times themselves are not
//! asserted (they belong to the machine, not to correctness).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

const SCENARIOS: &[&str] = &[
    "topic creation",
    "start-up",
    "controller failover (defaults)",
    "controller failover (equalised 6 s)",
    "broker failure (defaults)",
    "broker failure (equalised 6 s)",
    "controlled shutdown",
    "offset commits",
];

#[test]
fn a_small_comparison_measures_every_scenario_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    // Base ports whose neighbours are very likely free (brokers +0..+3,
    // controllers +100..+102, metrics +300..+402; ZooKeeper +0..+2,
    // +707.., +1707..), all below Linux's ephemeral range (32768 and up),
    // where an outgoing connection may hold any port.
    let base = 21_000 + (std::process::id() % 2_000) as u16;
    let zk_base = 26_000 + (std::process::id() % 2_000) as u16;
    let output = Command::new(common::BIN)
        .args(["compare", "--partitions", "100,300", "--runs", "1"])
        .args(["--commit-seconds", "2"])
        .args([
            "--port",
            &base.to_string(),
            "--zk-port",
            &zk_base.to_string(),
        ])
        .arg("--out")
        .arg(&out)
        .arg("--data-dir")
        .arg(dir.path().join("clusters"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "sluice compare failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let measurements = results["measurements"].as_array().unwrap();
    for mode in ["zk", "kraft"] {
        for partitions in [100, 300] {
            let here: Vec<&Value> = measurements
                .iter()
                .filter(|m| m["mode"] == mode && m["partitions"] == partitions)
                .collect();
            let timed: BTreeSet<&str> = here
                .iter()
                .filter(|m| !m["scenario"].as_str().unwrap().starts_with("cost: "))
                .inspect(|m| {
                    let value = m["value"].as_f64().unwrap();
                    assert!(value > 0.0, "not a positive figure: {m}");
                })
                .map(|m| m["scenario"].as_str().unwrap())
                .collect();
            let expected: BTreeSet<&str> = SCENARIOS.iter().copied().collect();
            assert_eq!(timed, expected, "{mode} at {partitions} partitions");
            // What each scenario cost the coordination store, from the
            // nodes' counters: creating topics writes to it in both modes.
            let costed: BTreeSet<&str> = here
                .iter()
                .filter_map(|m| m["scenario"].as_str().unwrap().strip_prefix("cost: "))
                .collect();
            assert_eq!(costed.len(), 5, "{mode} at {partitions}: {costed:?}");
            let creation_writes = here
                .iter()
                .find(|m| {
                    m["scenario"] == "cost: topic creation" && m["metric"] == "coordination writes"
                })
                .and_then(|m| m["value"].as_f64())
                .unwrap();
            assert!(
                creation_writes > 0.0,
                "{mode}: topic creation wrote nothing"
            );
        }
    }
    // Controller failover has its three times in each mode.
    let failover_metrics: BTreeSet<&str> = measurements
        .iter()
        .filter(|m| m["scenario"] == "controller failover (defaults)")
        .map(|m| m["metric"].as_str().unwrap())
        .collect();
    assert_eq!(failover_metrics.len(), 3, "{failover_metrics:?}");

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg"), "the report has no chart");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), measurements.len() + 1);
    let charts: Vec<_> = std::fs::read_dir(out.join("charts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!charts.is_empty());
    for chart in charts {
        assert!(
            std::fs::metadata(&chart).unwrap().len() > 0,
            "{chart:?} is empty"
        );
    }
    // The table of medians and ratios went to the terminal.
    assert!(stdout.contains("controller failover"), "{stdout}");
}
