//! `sluice bench controller-reload`: how long a new ZooKeeper-mode
//! controller takes to read the cluster back, by partition count.
//!
//! Starts a ZooKeeper-mode cluster (three ZooKeeper servers), and for each
//! partition count creates topics up to it, then moves the controller by
//! deleting `/controller` (every broker races for it again, and the winner
//! reloads every broker, topic and partition state from ZooKeeper). The
//! winner logs how long the reload took; reported per count, with the
//! smallest count as the baseline. KRaft has no such step: its standby
//! controllers have replayed the metadata log already.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::bench::create_topic;
use crate::cluster::{Coordination, LocalCluster, Spec};

#[derive(Debug, Clone, Args)]
pub struct ReloadArgs {
    /// Partition counts to measure at, in rising order; repeatable.
    #[arg(long = "partitions", default_values_t = [1000u32, 10000])]
    partitions: Vec<u32>,
    /// Controller moves per count; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 3)]
    brokers: u16,
    /// The first broker port of the cluster started for the benchmark.
    #[arg(long, default_value_t = 19092)]
    port: u16,
    /// The first ZooKeeper client port.
    #[arg(long, default_value_t = 12181)]
    zk_port: u16,
}

/// Partitions per topic the benchmark creates.
const TOPIC_PARTITIONS: u32 = 100;
const RELOAD_LINE: &str = "controller reloaded the cluster from ZooKeeper";

pub async fn run(args: ReloadArgs) -> Result<()> {
    let temp = tempfile::tempdir()?;
    let mut cluster = LocalCluster::launch(&Spec {
        coordination: Coordination::ZooKeeper {
            servers: 3,
            first_port: args.zk_port,
        },
        brokers: args.brokers,
        dir: temp.path().to_path_buf(),
        port: args.port,
        metrics_port: None,
        overrides: Vec::new(),
    })?;
    cluster.wait_serving(Duration::from_secs(120)).await?;
    let bootstrap = cluster.bootstrap();
    let connect = cluster
        .zookeeper_connect
        .clone()
        .context("a ZooKeeper-mode cluster has a connect string")?;
    let first_broker = bootstrap.split(',').next().unwrap_or_default().to_string();
    let mut created = 0;
    let mut results: Vec<(u32, f64)> = Vec::new();
    for &count in &args.partitions {
        while created < count {
            let topic = format!("reload-{}", created / TOPIC_PARTITIONS);
            let partitions = TOPIC_PARTITIONS.min(count - created);
            create_topic(&first_broker, &topic, partitions as i32, 1).await?;
            created += partitions;
        }
        let mut times = Vec::new();
        for _ in 0..args.runs {
            times.push(move_controller(&cluster, &connect, count).await?);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{count} partitions: controller reload took {median:.0} ms (median of {})",
            times.len()
        );
        results.push((count, median));
    }
    cluster.stop_all();

    let mut table = crate::table::Table::new(&[
        "partitions",
        "reload (ms)",
        "ms per 1k partitions",
        "vs the first",
    ]);
    let base = results.first().map_or(1.0, |(_, ms)| ms.max(1.0));
    for (count, ms) in &results {
        table.row(vec![
            count.to_string(),
            format!("{ms:.0}"),
            format!("{:.1}", ms / (*count as f64 / 1000.0)),
            format!("{:.2}", ms / base),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// Deletes `/controller` and returns how long the new controller's reload
/// took, as it logged it.
async fn move_controller(cluster: &LocalCluster, connect: &str, partitions: u32) -> Result<f64> {
    let before = reload_lines(cluster)?;
    sluice_zk::inspect::delete_controller(connect, Duration::from_secs(10)).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let lines = reload_lines(cluster)?;
        if let Some(line) = lines.iter().find(|l| !before.contains(l)) {
            let reloaded: u32 = field(line, "partitions").unwrap_or(0.0) as u32;
            if reloaded >= partitions {
                return field(line, "ms").context("the reload line has no ms");
            }
        }
        if Instant::now() > deadline {
            bail!("no controller reloaded {partitions} partitions within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every reload line in the brokers' logs.
fn reload_lines(cluster: &LocalCluster) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for node in &cluster.nodes {
        let text = std::fs::read_to_string(&node.log).unwrap_or_default();
        lines.extend(
            text.lines()
                .filter(|l| l.contains(RELOAD_LINE))
                .map(str::to_string),
        );
    }
    Ok(lines)
}

/// The number after ` name=` in a log line.
fn field(line: &str, name: &str) -> Option<f64> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
