//! `sluice compare`: ZooKeeper mode against KRaft mode, measured side by
//! side at several partition counts.
//!
//! For each partition count and run, each mode gets a cluster of its own
//! (KRaft: 3 controllers + 3 brokers; ZooKeeper: a 3-server ensemble, 3
//! brokers and a fourth broker that hosts no partitions and is the
//! controller), and every scenario runs on it in turn. The modes alternate
//! within a run, so a noisy neighbour weighs on both. Results go to a
//! report folder (`sluice_report`) and a table of medians and ratios.

mod bed;
mod probe;
mod scenarios;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use sluice_report::{Machine, Measurement, Mode, Report};

use bed::{Bed, Layout, DATA_BROKERS};

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Partition counts to measure at, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000u32, 10000])]
    partitions: Vec<u32>,
    /// The modes to run, comma-separated: zk, kraft (both by default; one
    /// alone gives no ratios, but is quicker when looking into one mode).
    #[arg(long, value_delimiter = ',', default_values_t = ["zk".to_string(), "kraft".to_string()])]
    modes: Vec<String>,
    /// Replicas of each partition, on the three data brokers. A machine
    /// short of memory or disk for 100,000 partitions at 3 may use 1 (the
    /// report says which was used).
    #[arg(long, default_value_t = 3)]
    replication_factor: i16,
    /// Runs of every scenario at each count (a fresh cluster each).
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// The report folder.
    #[arg(long, default_value = "compare-report")]
    out: PathBuf,
    /// Where the clusters keep their data (a temporary directory when omitted).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The first broker port of the clusters started.
    #[arg(long, default_value_t = 19092)]
    port: u16,
    /// The first ZooKeeper client port.
    #[arg(long, default_value_t = 12181)]
    zk_port: u16,
    /// Seconds each phase of the offset-commit scenario runs.
    #[arg(long, default_value_t = 5)]
    commit_seconds: u64,
    /// Failure detection, in ms, for the second runs of controller failover
    /// and broker failure: ZooKeeper's session timeout, KRaft's broker
    /// session and election timeouts.
    #[arg(long, default_value_t = 6000)]
    equalised_detection_ms: u64,
    /// The scenarios to run, comma-separated (all by default). Topic
    /// creation always runs: it makes the partitions the others work on.
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = Step::ALL)]
    scenarios: Vec<Step>,
}

/// Settings both modes run with. Leadership must go back to the preferred
/// replicas between scenarios, so the check runs every 5 s, not every 300.
const COMMON: &[&str] = &["leader.imbalance.check.interval.seconds=5"];

pub async fn run(args: CompareArgs) -> Result<()> {
    if args.partitions.is_empty() || args.partitions.contains(&0) {
        bail!("--partitions needs counts above zero");
    }
    if args.replication_factor < 1 || args.replication_factor > DATA_BROKERS as i16 {
        bail!("--replication-factor must be between 1 and {DATA_BROKERS}");
    }
    let replication_factor = args.replication_factor;
    modes(&args)?;
    let mut notes = Vec::<String>::new();
    // The nodes inherit the open-file limit; they keep within it whatever
    // the partition count (segment files beyond a budget are closed while
    // idle), but more of it spares them reopening files.
    crate::cluster::raise_descriptor_limit_for_nodes();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let started_at = now_rfc3339();
    let measurements = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let outcome = tokio::select! {
        r = experiment(&args, measurements.clone(), failures.clone()) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: the clusters are stopped; the report has what was measured");
            Ok(())
        }
    };
    let measurements = lock(&measurements).clone();
    notes.insert(
        0,
        format!(
            "Replication factor {replication_factor} on {DATA_BROKERS} data brokers. Topics of {} \
             partitions, placed round-robin over the data brokers.",
            bed::TOPIC_PARTITIONS
        ),
    );
    notes.extend(lock(&failures).iter().cloned());
    let report = Report {
        title: "Sluice: ZooKeeper mode against KRaft mode".into(),
        command,
        started_at,
        machine: Machine::detect(),
        settings: settings(&args),
        notes,
        measurements,
    };
    let written = report.write(&args.out)?;
    println!();
    print!(
        "{}",
        sluice_report::table(&sluice_report::summarize(&report.measurements))
    );
    println!(
        "\nreport: {} (data: {}, {})",
        written.html.display(),
        written.json.display(),
        written.csv.display()
    );
    outcome?;
    let failed = lock(&failures).len();
    if failed > 0 {
        bail!("{failed} run(s) failed; see the report's notes");
    }
    Ok(())
}

/// The modes `--modes` names, in the report's order.
fn modes(args: &CompareArgs) -> Result<Vec<Mode>> {
    for name in &args.modes {
        if !Mode::ALL.iter().any(|m| m.label() == name) {
            bail!("--modes takes zk and kraft, not {name:?}");
        }
    }
    let chosen: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| args.modes.iter().any(|name| name == m.label()))
        .collect();
    if chosen.is_empty() {
        bail!("--modes needs at least one mode");
    }
    Ok(chosen)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn experiment(
    args: &CompareArgs,
    measurements: Arc<Mutex<Vec<Measurement>>>,
    failures: Arc<Mutex<Vec<String>>>,
) -> Result<()> {
    let temp = tempfile::tempdir()?;
    let root = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let layout = Layout {
        port: args.port,
        metrics_port: args.port.checked_add(300).context("--port is too high")?,
        zk_port: args.zk_port,
        replication_factor: args.replication_factor,
        common: COMMON.iter().map(|s| s.to_string()).collect(),
    };
    let modes = modes(args)?;
    // Starting the cluster is a step too, for the progress display.
    let steps_per_run = 1 + steps(args).count();
    let mut progress = Progress::new(
        steps_per_run,
        args.partitions.len() * args.runs as usize * modes.len(),
    );
    for &partitions in &args.partitions {
        for run in 1..=args.runs {
            for &mode in &modes {
                let dir = root.join(format!("{}-{partitions}-{run}", mode.label()));
                let position = Position {
                    mode,
                    partitions,
                    run,
                    runs: args.runs,
                };
                let record = |scenario: &str, metric: &str, value: f64, unit: &str| {
                    lock(&measurements).push(Measurement {
                        scenario: scenario.to_string(),
                        metric: metric.to_string(),
                        mode,
                        partitions,
                        run,
                        value,
                        unit: unit.to_string(),
                    });
                };
                let result = one_run(args, &layout, &dir, &position, &mut progress, &record).await;
                if let Err(e) = result {
                    let failure = format!(
                        "{mode} at {partitions} partitions, run {run}, failed: {e:#} (cluster files: {})",
                        dir.display()
                    );
                    eprintln!("\n{failure}");
                    lock(&failures).push(failure);
                    progress.skip_to_run_end();
                }
                if args.data_dir.is_none() {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }
    progress.finish();
    Ok(())
}

struct Position {
    mode: Mode,
    partitions: u32,
    run: u32,
    runs: u32,
}

async fn one_run(
    args: &CompareArgs,
    layout: &Layout,
    dir: &std::path::Path,
    at: &Position,
    progress: &mut Progress,
    record: &dyn Fn(&str, &str, f64, &str),
) -> Result<()> {
    progress.step(at, "starting the cluster");
    let mut bed = Bed::launch(at.mode, layout, dir).await?;

    // Each scenario: its times, then what it cost the coordination store
    // (counted up to the end of the timed part), then the cluster put back.
    let equalised = |scenario: &str| {
        format!(
            "{scenario} (equalised {} s)",
            args.equalised_detection_ms as f64 / 1000.0
        )
    };
    let probe = format!("failover-probe-{}", at.run);
    let probe_equalised = format!("failover-probe-equalised-{}", at.run);
    let mut equalised_cluster = false;
    for step in steps(args) {
        let scenario = match step {
            Step::ControllerFailoverEqualised => equalised("controller failover"),
            Step::BrokerFailureEqualised => equalised("broker failure"),
            _ => step.name().to_string(),
        };
        progress.step(at, &scenario);
        if step.equalised() && !equalised_cluster {
            equalised_cluster = true;
            bed.cluster.stop_all();
            bed.cluster
                .relaunch(&equalised_settings(at.mode, args.equalised_detection_ms))?;
            bed.cluster.wait_serving(Duration::from_secs(900)).await?;
            scenarios::recover(&mut bed, None).await?;
        }
        let before = bed.counters().await;
        let outcome = match step {
            Step::Create => scenarios::create(&mut bed, at.partitions).await?,
            Step::StartUp => scenarios::restart(&mut bed).await?,
            Step::ControllerFailover => scenarios::controller_failover(&mut bed, &probe).await?,
            Step::ControllerFailoverEqualised => {
                scenarios::controller_failover(&mut bed, &probe_equalised).await?
            }
            Step::BrokerFailure | Step::BrokerFailureEqualised => {
                scenarios::broker_failure(&mut bed).await?
            }
            Step::ControlledShutdown => scenarios::controlled_shutdown(&mut bed).await?,
            Step::Commits => {
                for (metric, value, unit) in scenarios::commits(&bed, args.commit_seconds).await? {
                    record(&scenario, &metric, value, unit);
                }
                continue;
            }
        };
        let work = bed.counters().await.since(&before);
        for (metric, ms) in outcome.times {
            record(&scenario, &metric, ms, "ms");
        }
        if step.costed() {
            let cost = format!("cost: {scenario}");
            match at.mode {
                Mode::Zk => {
                    record(&cost, "coordination writes", work.writes, "writes");
                    record(&cost, "ZooKeeper reads", work.reads, "reads");
                    record(&cost, "ZooKeeper watches fired", work.watches, "watches");
                }
                Mode::Kraft => {
                    record(&cost, "coordination writes", work.writes, "writes");
                    record(&cost, "metadata log bytes", work.log_bytes, "bytes");
                }
            }
        }
        scenarios::recover(&mut bed, outcome.stopped).await?;
    }
    bed.cluster.stop_all();
    Ok(())
}

/// The steps `--scenarios` asks for, in the order they run.
fn steps(args: &CompareArgs) -> impl Iterator<Item = Step> + '_ {
    Step::ALL
        .into_iter()
        .filter(|step| *step == Step::Create || args.scenarios.contains(step))
}

/// The scenarios of one run, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Step {
    Create,
    StartUp,
    ControllerFailover,
    BrokerFailure,
    ControlledShutdown,
    Commits,
    ControllerFailoverEqualised,
    BrokerFailureEqualised,
}

impl Step {
    const ALL: [Step; 8] = [
        Step::Create,
        Step::StartUp,
        Step::ControllerFailover,
        Step::BrokerFailure,
        Step::ControlledShutdown,
        Step::Commits,
        Step::ControllerFailoverEqualised,
        Step::BrokerFailureEqualised,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Create => "topic creation",
            Step::StartUp => "start-up",
            Step::ControllerFailover => "controller failover (defaults)",
            Step::BrokerFailure => "broker failure (defaults)",
            Step::ControlledShutdown => "controlled shutdown",
            Step::Commits => "offset commits",
            Step::ControllerFailoverEqualised => "controller failover (equalised)",
            Step::BrokerFailureEqualised => "broker failure (equalised)",
        }
    }

    /// Whether the step runs on the cluster restarted with failure
    /// detection equalised.
    fn equalised(self) -> bool {
        matches!(
            self,
            Step::ControllerFailoverEqualised | Step::BrokerFailureEqualised
        )
    }

    /// Whether the coordination work is counted: the equalised runs do the
    /// same work as the default ones, and commits are measured as a rate.
    fn costed(self) -> bool {
        matches!(
            self,
            Step::Create
                | Step::StartUp
                | Step::ControllerFailover
                | Step::BrokerFailure
                | Step::ControlledShutdown
        )
    }
}

/// The settings that make each mode notice a dead node after `ms`.
fn equalised_settings(mode: Mode, ms: u64) -> Vec<String> {
    match mode {
        Mode::Zk => vec![format!("zookeeper.session.timeout.ms={ms}")],
        Mode::Kraft => vec![
            format!("broker.session.timeout.ms={ms}"),
            format!("controller.quorum.election.timeout.ms={ms}"),
        ],
    }
}

/// Each mode's cluster and the settings that bound its failure handling,
/// as the report prints them.
fn settings(args: &CompareArgs) -> Vec<(Mode, Vec<(String, String)>)> {
    let defaults = crate::settings::Settings::load(None, std::iter::empty(), &[]).ok();
    let default = |key: &str| {
        defaults
            .as_ref()
            .map(|s| s.get(key).to_string())
            .unwrap_or_default()
    };
    let common: Vec<(String, String)> = COMMON
        .iter()
        .filter_map(|s| s.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let equalised = |mode| equalised_settings(mode, args.equalised_detection_ms).join(", ");
    let mut zk = vec![
        (
            "cluster".to_string(),
            format!(
                "3 ZooKeeper servers, {DATA_BROKERS} brokers + 1 broker that hosts no partitions (the controller)"
            ),
        ),
        (
            "zookeeper.session.timeout.ms".into(),
            default("zookeeper.session.timeout.ms"),
        ),
        (
            "controller.socket.timeout.ms".into(),
            default("controller.socket.timeout.ms"),
        ),
    ];
    let mut kraft = vec![
        (
            "cluster".to_string(),
            format!("3 controllers, {DATA_BROKERS} brokers"),
        ),
        (
            "broker.session.timeout.ms".into(),
            default("broker.session.timeout.ms"),
        ),
        (
            "controller.quorum.election.timeout.ms".into(),
            default("controller.quorum.election.timeout.ms"),
        ),
        (
            "broker.heartbeat.interval.ms".into(),
            default("broker.heartbeat.interval.ms"),
        ),
    ];
    for (mode, list) in [(Mode::Zk, &mut zk), (Mode::Kraft, &mut kraft)] {
        list.extend(common.iter().cloned());
        list.push(("equalised runs".into(), equalised(mode)));
    }
    vec![(Mode::Zk, zk), (Mode::Kraft, kraft)]
}

fn now_rfc3339() -> String {
    std::process::Command::new("date")
        .arg("--iso-8601=seconds")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The live progress line: the step, where in the experiment it is, and an
/// estimate of what is left from the steps done so far.
struct Progress {
    steps_per_run: usize,
    total: usize,
    done: usize,
    started: Instant,
    status: Arc<Mutex<(String, Instant)>>,
    ticker: Option<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Progress {
    fn new(steps_per_run: usize, runs: usize) -> Self {
        let status = Arc::new(Mutex::new((String::new(), Instant::now())));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // On a terminal the line is redrawn every second with the step's
        // elapsed time; elsewhere (CI logs) each step is one line.
        let ticker = std::io::stderr().is_terminal().then(|| {
            let (status, stop) = (status.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    let (line, since) = lock(&status).clone();
                    if !line.is_empty() {
                        eprint!("\r\x1b[2K{line} ({}s)", since.elapsed().as_secs());
                        let _ = std::io::stderr().flush();
                    }
                }
            })
        });
        Self {
            steps_per_run,
            total: steps_per_run * runs,
            done: 0,
            started: Instant::now(),
            status,
            ticker,
            stop,
        }
    }

    fn step(&mut self, at: &Position, what: &str) {
        let elapsed = self.started.elapsed();
        let eta = if self.done == 0 {
            "ETA unknown".to_string()
        } else {
            let left = elapsed.as_secs_f64() / self.done as f64 * (self.total - self.done) as f64;
            format!("ETA ~{}", minutes(left))
        };
        let line = format!(
            "[{:>3}/{}] {} · {} partitions · run {}/{} · {what} · {} elapsed, {eta}",
            self.done + 1,
            self.total,
            at.mode,
            at.partitions,
            at.run,
            at.runs,
            minutes(elapsed.as_secs_f64()),
        );
        if self.ticker.is_some() {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        *lock(&self.status) = (line, Instant::now());
        self.done += 1;
    }

    /// A failed run's remaining steps count as done, for the estimate.
    fn skip_to_run_end(&mut self) {
        let into_run = self.done % self.steps_per_run;
        if into_run != 0 {
            self.done += self.steps_per_run - into_run;
        }
    }

    fn finish(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
            eprintln!();
        }
        eprintln!("done in {}", minutes(self.started.elapsed().as_secs_f64()));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn minutes(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        compare: CompareArgs,
    }

    fn steps_of(argv: &[&str]) -> Vec<Step> {
        let parsed =
            Command::try_parse_from(std::iter::once("compare").chain(argv.iter().copied()))
                .expect("arguments parse");
        steps(&parsed.compare).collect()
    }

    #[test]
    fn scenarios_run_in_their_order_after_topic_creation() {
        assert_eq!(steps_of(&[]), Step::ALL.to_vec());
        assert_eq!(
            steps_of(&[
                "--scenarios",
                "broker-failure-equalised,controller-failover"
            ]),
            vec![
                Step::Create,
                Step::ControllerFailover,
                Step::BrokerFailureEqualised
            ]
        );
        assert_eq!(steps_of(&["--scenarios", "create"]), vec![Step::Create]);
        assert!(Command::try_parse_from(["compare", "--scenarios", "failover"]).is_err());
    }
}
