//! `sluice bench commits`: offset commits through the metadata log.
//!
//! Many groups commit offsets for many partitions at once, each group from
//! its own librdkafka client with synchronous commits, and the figures are
//! set against a baseline measured in the same run: the same clients
//! fetching the same offsets (OffsetFetch), the coordinator's read path,
//! which does not touch the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use kafka_protocol::ResponseError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Clone, Args)]
pub struct CommitBenchArgs {
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    /// Groups committing at the same time, each from its own client.
    #[arg(long, short = 'g', default_value_t = 32)]
    groups: usize,
    /// Partitions of the benchmark topic; each commit covers all of them.
    #[arg(long, short = 'p', default_value_t = 32)]
    partitions: i32,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Controller addresses (host:port, comma-separated), to count the
    /// metadata log entries the commits took; the active one answers.
    #[arg(long)]
    controller: Option<String>,
    /// Groups that hold one committed offset and do nothing else, created
    /// before the run: how commit speed holds up as a cluster's groups add up.
    #[arg(long, default_value_t = 0)]
    idle_groups: usize,
    /// A topic of `partitions` partitions to commit for, made by the
    /// caller; a new one when None.
    #[arg(skip)]
    topic: Option<String>,
}

/// Connections creating the idle groups at once.
const IDLE_GROUP_WRITERS: usize = 32;

impl CommitBenchArgs {
    /// `groups` groups committing for every partition of `topic` (which has
    /// `partitions`), for `seconds` per phase, against `bootstrap`.
    pub fn for_topic(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        groups: usize,
        seconds: u64,
    ) -> Self {
        Self {
            bootstrap_server: bootstrap.to_string(),
            groups,
            partitions,
            seconds,
            controller: None,
            idle_groups: 0,
            topic: Some(topic.to_string()),
        }
    }
}

/// One phase's result: offsets handled, and each request's latency in ms.
pub struct Phase {
    seconds: f64,
    offsets: u64,
    latencies: Vec<f64>,
}

impl Phase {
    pub fn offsets_per_sec(&self) -> f64 {
        self.offsets as f64 / self.seconds
    }
    fn requests_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }
    pub fn percentile(&self, q: f64) -> f64 {
        crate::bench::percentile(&self.latencies, q)
    }
}

/// What a run measured: reading offsets (the baseline), committing them,
/// and the metadata log entries the commits took (when a controller was named).
pub struct CommitFigures {
    pub baseline: Phase,
    pub commits: Phase,
    pub entries: Option<i64>,
}

pub async fn run(args: CommitBenchArgs) -> Result<()> {
    println!(
        "sluice bench commits: {} groups x {} partitions, synchronous commits, {} s per phase",
        args.groups, args.partitions, args.seconds
    );
    let CommitFigures {
        baseline,
        commits,
        entries,
    } = measure(&args).await?;
    println!();
    println!(
        "{:<30} {:>12} {:>12} {:>9} {:>9} {:>9}",
        "", "offsets/s", "requests/s", "p50 ms", "p99 ms", "p99.9 ms"
    );
    for (name, phase) in [
        ("baseline: OffsetFetch", &baseline),
        ("OffsetCommit", &commits),
    ] {
        println!(
            "{:<30} {:>12.0} {:>12.0} {:>9.2} {:>9.2} {:>9.2}",
            name,
            phase.offsets_per_sec(),
            phase.requests_per_sec(),
            phase.percentile(0.50),
            phase.percentile(0.99),
            phase.percentile(0.999)
        );
    }
    println!();
    println!(
        "ratios (commit / fetch): throughput {:.2}, p50 latency {:.1}x, p99 latency {:.1}x",
        commits.offsets_per_sec() / baseline.offsets_per_sec().max(1e-9),
        commits.percentile(0.50) / baseline.percentile(0.50).max(1e-6),
        commits.percentile(0.99) / baseline.percentile(0.99).max(1e-6),
    );
    println!(
        "committed offsets per second: {:.0} ({} in {:.1} s)",
        commits.offsets_per_sec(),
        commits.offsets,
        commits.seconds
    );
    if let Some(entries) = entries {
        println!(
            "metadata log entries during the run: {entries} ({:.0} committed offsets per entry)",
            commits.offsets as f64 / entries.max(1) as f64
        );
    }
    Ok(())
}

/// Runs both phases on a topic of its own.
pub async fn measure(args: &CommitBenchArgs) -> Result<CommitFigures> {
    let topic = match &args.topic {
        Some(topic) => topic.clone(),
        None => {
            let topic = format!("sluice-commit-bench-{}", std::process::id());
            crate::bench::create_topic(&args.bootstrap_server, &topic, args.partitions, -1).await?;
            topic
        }
    };
    if args.idle_groups > 0 {
        create_idle_groups(&args.bootstrap_server, &topic, args.idle_groups).await?;
    }
    let entries_before = log_end(args).await;
    let bench_args = args.clone();
    let (baseline, commits) = tokio::task::spawn_blocking(move || -> Result<(Phase, Phase)> {
        let clients = connect_groups(&bench_args, &topic)?;
        let duration = Duration::from_secs(bench_args.seconds);
        // Every group has offsets before the baseline reads them.
        for (consumer, tpl) in clients.iter() {
            consumer
                .commit(&with_offsets(tpl, 0), CommitMode::Sync)
                .context("first commit")?;
        }
        let baseline = run_phase(&clients, duration, |consumer, tpl, _| {
            consumer
                .committed_offsets(tpl.clone(), Duration::from_secs(30))
                .map(|_| ())
        });
        let commits = run_phase(&clients, duration, |consumer, tpl, round| {
            consumer.commit(&with_offsets(tpl, round), CommitMode::Sync)
        });
        Ok((baseline, commits))
    })
    .await??;
    let entries = match (entries_before, log_end(args).await) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    Ok(CommitFigures {
        baseline,
        commits,
        entries,
    })
}

/// Commits one offset for each of `count` new groups, from
/// IDLE_GROUP_WRITERS connections at once.
async fn create_idle_groups(bootstrap: &str, topic: &str, count: usize) -> Result<()> {
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..IDLE_GROUP_WRITERS.min(count) {
        let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
        writers.spawn(async move {
            let mut cluster = crate::groups::Cluster::connect(&bootstrap).await?;
            let offsets = [((topic.clone(), 0), 0)].into_iter().collect();
            for g in (writer..count).step_by(IDLE_GROUP_WRITERS) {
                let group = format!("{topic}-idle-{g}");
                // The group's coordinator may not have learned of the new
                // topic yet: it answers UNKNOWN_TOPIC_OR_PARTITION meanwhile.
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let refused =
                        crate::groups::commit_as_admin(&mut cluster, &group, &offsets).await?;
                    if refused.is_empty() {
                        break;
                    }
                    let unknown_topic = ResponseError::UnknownTopicOrPartition.code();
                    anyhow::ensure!(
                        refused.keys().all(|&code| code == unknown_topic)
                            && Instant::now() < deadline,
                        "group {group}: commit refused: {refused:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done.context("an idle-group writer panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "created {count} idle groups in {seconds:.1} s ({:.0} groups/s)",
        count as f64 / seconds
    );
    Ok(())
}

/// One client per group, each with the topic's partitions to commit.
fn connect_groups(
    args: &CommitBenchArgs,
    topic: &str,
) -> Result<Vec<(BaseConsumer, TopicPartitionList)>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        tpl.add_partition(topic, p);
    }
    (0..args.groups)
        .map(|g| {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &args.bootstrap_server)
                .set("group.id", format!("{topic}-group-{g}"))
                .set("enable.auto.commit", "false")
                .create()
                .context("creating a consumer")?;
            Ok((consumer, tpl.clone()))
        })
        .collect()
}

fn with_offsets(tpl: &TopicPartitionList, round: u64) -> TopicPartitionList {
    let mut out = tpl.clone();
    for element in tpl.elements() {
        let _ = out.set_partition_offset(
            element.topic(),
            element.partition(),
            Offset::Offset(round as i64),
        );
    }
    out
}

/// Runs `request` from every client on its own thread for `duration`.
fn run_phase<E: std::fmt::Display>(
    clients: &[(BaseConsumer, TopicPartitionList)],
    duration: Duration,
    request: impl Fn(&BaseConsumer, &TopicPartitionList, u64) -> Result<(), E> + Sync,
) -> Phase {
    let started = Instant::now();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let results: Vec<(u64, Vec<f64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .map(|(consumer, tpl)| {
                let request = &request;
                let errors = errors.clone();
                scope.spawn(move || {
                    let mut offsets = 0u64;
                    let mut latencies = Vec::new();
                    let mut round = 1u64;
                    while started.elapsed() < duration {
                        let sent = Instant::now();
                        match request(consumer, tpl, round) {
                            Ok(()) => {
                                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                                offsets += tpl.count() as u64;
                            }
                            Err(e) => {
                                if errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                                    eprintln!("request failed: {e}");
                                }
                            }
                        }
                        round += 1;
                    }
                    (offsets, latencies)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = results
        .iter()
        .flat_map(|(_, l)| l.iter().copied())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let failed = errors.load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        eprintln!("{failed} requests failed");
    }
    Phase {
        seconds,
        offsets: results.iter().map(|(o, _)| o).sum(),
        latencies,
    }
}

/// The metadata log's high watermark, when a controller was named.
async fn log_end(args: &CommitBenchArgs) -> Option<i64> {
    let controllers: Vec<String> = args
        .controller
        .as_deref()?
        .split(',')
        .map(|a| a.trim().to_string())
        .collect();
    let quorum = crate::cluster::describe_quorum(&controllers).await?;
    quorum
        .topics
        .first()?
        .partitions
        .first()
        .map(|p| p.high_watermark)
}
