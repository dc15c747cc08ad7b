//! The report folder: results.json, results.csv, charts/*.svg and report.html.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use crate::chart::{self, Slugs};
use crate::csv::to_csv;
use crate::html::{self, Chart};
use crate::machine::Machine;
use crate::measurement::{Measurement, Mode};
use crate::stats::{groups, summarize, Summary};

/// Everything one `sluice compare` run produced.
#[derive(Clone, Debug)]
pub struct Report {
    pub title: String,
    /// The command line that produced it.
    pub command: String,
    /// RFC 3339-ish text given by the caller.
    pub started_at: String,
    pub machine: Machine,
    /// Each mode's cluster settings, printed in the report.
    pub settings: Vec<(Mode, Vec<(String, String)>)>,
    /// Free-text paragraphs, e.g. "replication factor 1: RF 3 did not fit".
    pub notes: Vec<String>,
    pub measurements: Vec<Measurement>,
}

/// Where [`Report::write`] put things.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub html: PathBuf,
    pub json: PathBuf,
    pub csv: PathBuf,
    /// One per (scenario, metric), in the order first seen.
    pub charts: Vec<PathBuf>,
}

/// results.json's shape. Settings become objects rather than nested arrays,
/// so the file reads well and other tools need not know the tuple order.
#[derive(Serialize)]
struct Json<'a> {
    title: &'a str,
    command: &'a str,
    started_at: &'a str,
    machine: &'a Machine,
    settings: Vec<ModeSettings<'a>>,
    notes: &'a [String],
    measurements: &'a [Measurement],
    summaries: &'a [Summary],
}

#[derive(Serialize)]
struct ModeSettings<'a> {
    mode: Mode,
    settings: Vec<Setting<'a>>,
}

#[derive(Serialize)]
struct Setting<'a> {
    name: &'a str,
    value: &'a str,
}

impl Report {
    /// Creates `dir` and `dir/charts/` and writes the report into them,
    /// replacing files of the same names. Charts are named after their
    /// scenario and metric; older charts with other names are left alone.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Written> {
        let charts_dir = dir.join("charts");
        fs::create_dir_all(&charts_dir)
            .with_context(|| format!("creating {}", charts_dir.display()))?;

        let summaries = summarize(&self.measurements);

        let mut slugs = Slugs::default();
        let mut charts = Vec::new();
        let mut chart_paths = Vec::new();
        for group in groups(&self.measurements) {
            let title = chart::title(&group);
            let slug = slugs.unique(&format!("{} {}", group.scenario, group.metric));
            let svg = chart::render(&group).with_context(|| format!("drawing chart {title}"))?;
            let path = charts_dir.join(format!("{slug}.svg"));
            write_file(&path, &svg)?;
            // The page embeds the same text the file holds.
            charts.push(Chart { slug, title, svg });
            chart_paths.push(path);
        }

        let json = dir.join("results.json");
        let mut json_text = serde_json::to_string_pretty(&Json {
            title: &self.title,
            command: &self.command,
            started_at: &self.started_at,
            machine: &self.machine,
            settings: self
                .settings
                .iter()
                .map(|(mode, settings)| ModeSettings {
                    mode: *mode,
                    settings: settings
                        .iter()
                        .map(|(name, value)| Setting { name, value })
                        .collect(),
                })
                .collect(),
            notes: &self.notes,
            measurements: &self.measurements,
            summaries: &summaries,
        })
        .context("encoding results.json")?;
        json_text.push('\n');
        write_file(&json, &json_text)?;

        let csv = dir.join("results.csv");
        write_file(&csv, &to_csv(&self.measurements))?;

        let html = dir.join("report.html");
        write_file(&html, &html::page(self, &summaries, &charts))?;

        Ok(Written {
            html,
            json,
            csv,
            charts: chart_paths,
        })
    }
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::m;

    fn report(measurements: Vec<Measurement>) -> Report {
        Report {
            title: "ZooKeeper <vs> KRaft & friends".into(),
            command: "sluice compare --partitions 10,1000 --runs 3".into(),
            started_at: "2026-11-27T19:45:00Z".into(),
            machine: Machine {
                cores: 2,
                memory_bytes: 8 << 30,
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                kernel: "6.1.0".into(),
            },
            settings: vec![
                (
                    Mode::Zk,
                    vec![("zookeeper.session.timeout.ms".into(), "18000".into())],
                ),
                (
                    Mode::Kraft,
                    vec![(
                        "controller.quorum.voters".into(),
                        "1@a:9093,2@b:9093".into(),
                    )],
                ),
            ],
            notes: vec!["replication factor 1: RF 3 did not fit".into()],
            measurements,
        }
    }

    fn sample() -> Vec<Measurement> {
        let mut out = Vec::new();
        for (partitions, zk, kraft) in [(10, 40.0, 20.0), (1000, 400.0, 100.0)] {
            for run in 1..=3 {
                let jitter = f64::from(run);
                out.push(m(
                    "failover",
                    "elected",
                    Mode::Zk,
                    partitions,
                    run,
                    zk + jitter,
                ));
                out.push(m(
                    "failover",
                    "elected",
                    Mode::Kraft,
                    partitions,
                    run,
                    kraft + jitter,
                ));
            }
        }
        let mut rate = m("produce, acks=all", "throughput", Mode::Zk, 10, 1, 50_000.0);
        rate.unit = "offsets/s".into();
        out.push(rate.clone());
        rate.mode = Mode::Kraft;
        rate.value = 52_000.0;
        out.push(rate);
        out
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn writes_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("nested/report");
        let report = report(sample());
        let written = report.write(&out_dir).unwrap();

        assert_eq!(written.html, out_dir.join("report.html"));
        assert_eq!(written.json, out_dir.join("results.json"));
        assert_eq!(written.csv, out_dir.join("results.csv"));
        assert_eq!(
            written.charts,
            vec![
                out_dir.join("charts/failover-elected.svg"),
                out_dir.join("charts/produce-acks-all-throughput.svg"),
            ]
        );
        for path in [&written.html, &written.json, &written.csv]
            .into_iter()
            .chain(&written.charts)
        {
            assert!(!read(path).is_empty(), "{} is empty", path.display());
        }

        let html = read(&written.html);
        assert_eq!(html.matches("<svg").count(), written.charts.len());
        assert!(html.contains("<h1>ZooKeeper &lt;vs&gt; KRaft &amp; friends</h1>"));
        assert!(html.contains("<title>ZooKeeper &lt;vs&gt; KRaft &amp; friends</title>"));
        assert!(!html.contains("<vs>"));
        assert!(html.contains("<h3>failover — elected</h3>"));
        assert!(html.contains("<h3>produce, acks=all — throughput</h3>"));
        assert!(html.contains("zookeeper.session.timeout.ms"));
        assert!(html.contains("1@a:9093,2@b:9093"));
        assert!(html.contains("RF 3 did not fit"));
        assert!(html.contains("8.0 GiB memory"));
        // Ratios: medians 42/22 at 10 partitions, 402/102 at 1000.
        assert!(html.contains("1.91x") && html.contains("3.94x"), "{html}");
        assert!(!html.contains("<script"));
        // Nothing is fetched: the only URLs are the SVG namespace names.
        assert_eq!(
            html.matches("http").count(),
            html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
        // The embedded chart is the file's text.
        assert!(html.contains(read(&written.charts[0]).trim_end()));

        let csv = read(&written.csv);
        assert_eq!(csv.lines().count(), 1 + report.measurements.len());
        assert!(csv.contains("\"produce, acks=all\",throughput,kraft,10,1,52000,offsets/s"));
    }

    #[test]
    fn json_holds_everything() {
        let dir = tempfile::tempdir().unwrap();
        let report = report(sample());
        let written = report.write(dir.path()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&read(&written.json)).unwrap();

        assert_eq!(json["title"], report.title);
        assert_eq!(json["command"], report.command);
        assert_eq!(json["started_at"], report.started_at);
        assert_eq!(json["machine"]["cores"], 2);
        assert_eq!(json["settings"][1]["mode"], "kraft");
        assert_eq!(
            json["settings"][0]["settings"][0]["name"],
            "zookeeper.session.timeout.ms"
        );
        assert_eq!(json["notes"][0], report.notes[0]);
        let measurements: Vec<Measurement> =
            serde_json::from_value(json["measurements"].clone()).unwrap();
        assert_eq!(measurements, report.measurements);
        let mut summaries: Vec<Summary> =
            serde_json::from_value(json["summaries"].clone()).unwrap();
        let mut expected = summarize(&report.measurements);
        assert_eq!(summaries.len(), 3);
        // serde_json's default float parsing may be off in the last bit, so
        // ratios (not round numbers) are compared with a tolerance.
        for (got, want) in summaries.iter_mut().zip(&mut expected) {
            let (g, w) = (got.ratio.take().unwrap(), want.ratio.take().unwrap());
            assert!((g - w).abs() <= 1e-12 * w.abs(), "{g} vs {w}");
        }
        assert_eq!(summaries, expected);
    }

    #[test]
    fn charts_render_for_awkward_data() {
        let mut measurements = vec![
            // One partition count, both modes.
            m("single", "t", Mode::Zk, 100, 1, 5.0),
            m("single", "t", Mode::Kraft, 100, 1, 6.0),
            // Zeros.
            m("zeros", "t", Mode::Zk, 10, 1, 0.0),
            m("zeros", "t", Mode::Kraft, 10, 1, 0.0),
            m("zeros", "t", Mode::Kraft, 20, 1, 0.0),
            // Only one mode.
            m("kraft only", "t", Mode::Kraft, 10, 1, 1.0),
            m("kraft only", "t", Mode::Kraft, 100, 1, 2.0),
            // Names that slug alike.
            m("a b", "c", Mode::Zk, 1, 1, 1.0),
            m("a", "b c", Mode::Zk, 1, 1, 1.0),
        ];
        measurements.push(m("nan", "t", Mode::Zk, 1, 1, f64::NAN));
        let dir = tempfile::tempdir().unwrap();
        let report = report(measurements);
        let written = report.write(dir.path()).unwrap();
        let names: Vec<String> = written
            .charts
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "single-t.svg",
                "zeros-t.svg",
                "kraft-only-t.svg",
                "a-b-c.svg",
                "a-b-c-2.svg",
                "nan-t.svg"
            ]
        );
        for chart in &written.charts {
            let svg = read(chart);
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        }
        // Every finite run is a dot: 2 + 3 + 2 + 1 + 1, plus one legend
        // dot per mode in each chart with finite values: 2 + 2 + 1 + 1 + 1.
        let dots: usize = written
            .charts
            .iter()
            .map(|c| read(c).matches("<circle").count())
            .sum();
        assert_eq!(dots, 9 + 7);
        let html = read(&written.html);
        assert_eq!(html.matches("<svg").count(), 6);

        // NaN goes into JSON as null and reads back as NaN.
        let json: serde_json::Value = serde_json::from_str(&read(&written.json)).unwrap();
        let back: Vec<Measurement> = serde_json::from_value(json["measurements"].clone()).unwrap();
        assert_eq!(back.len(), report.measurements.len());
        assert!(back.last().unwrap().value.is_nan());
    }

    #[test]
    fn empty_report_says_no_measurements() {
        let dir = tempfile::tempdir().unwrap();
        let mut report = report(Vec::new());
        report.settings.clear();
        report.notes.clear();
        let written = report.write(dir.path()).unwrap();
        assert!(written.charts.is_empty());
        assert!(dir.path().join("charts").is_dir());
        let html = read(&written.html);
        assert!(html.to_lowercase().contains("no measurements"));
        assert!(!html.contains("<svg"));
        assert_eq!(read(&written.csv), format!("{}\n", crate::csv::HEADER));
        let json: serde_json::Value = serde_json::from_str(&read(&written.json)).unwrap();
        assert_eq!(json["measurements"], serde_json::json!([]));
        assert_eq!(json["summaries"], serde_json::json!([]));
    }

    #[test]
    fn write_reports_an_unwritable_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, "x").unwrap();
        let err = report(sample()).write(&file).unwrap_err();
        assert!(format!("{err:#}").contains("creating"), "{err:#}");
    }
}
