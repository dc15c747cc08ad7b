//! `sluice bench failover`: how long clients wait when a node dies.
//!
//! Starts a local cluster, keeps an acks=all idempotent producer writing to
//! a replicated partition, and in each run:
//! - kills the partition's leader broker with kill -9 and measures the time
//!   from the kill until a message sent after it is acknowledged (the
//!   producer's unavailability), then restarts the broker and waits until it
//!   is back in the ISR;
//! - kills the active controller with kill -9 and measures the time until a
//!   topic can be created again (metadata unavailability), then restarts it.
//!
//! Reported next to what bounds them: `broker.session.timeout.ms` for the
//! broker, the Raft election timeout for the controller.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::bench::create_topic;
use crate::cluster::{describe_quorum, Coordination, LocalCluster, Spec};

#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Kill-and-recover rounds; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 3)]
    controllers: u16,
    #[arg(long, default_value_t = 3)]
    brokers: u16,
    /// The first broker port of the cluster started for the benchmark.
    #[arg(long, default_value_t = 19092)]
    port: u16,
    /// Where the cluster keeps its data (a temporary directory when omitted).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `broker.session.timeout.ms` of the KRaft cluster (Kafka's default).
    #[arg(long, default_value_t = 9000)]
    session_timeout_ms: u64,
    /// `kraft`: a KRaft cluster alone. `zk`: a ZooKeeper-mode cluster (three
    /// ZooKeeper servers), then the same runs on a KRaft cluster as the
    /// baseline, reported side by side as ratios.
    #[arg(long, value_enum, default_value_t = FailoverMode::Kraft)]
    mode: FailoverMode,
    /// `zookeeper.session.timeout.ms` of the ZooKeeper-mode cluster (Kafka's default).
    #[arg(long, default_value_t = 18000)]
    zk_session_timeout_ms: u64,
    /// The first ZooKeeper client port, in ZooKeeper mode.
    #[arg(long, default_value_t = 12181)]
    zk_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailoverMode {
    Kraft,
    Zk,
}

/// The medians of one mode's runs, in ms.
struct Medians {
    /// Kill -9 of the leader broker until a message sent after it is acknowledged.
    broker_ms: f64,
    /// Until the new leader was in the metadata.
    moved_ms: f64,
    /// Kill -9 of the controller until a topic could be created again.
    controller_ms: f64,
}

const TOPIC: &str = "failover-bench";

/// Acknowledgement times, as offsets from the producer's start.
struct AckContext {
    started: Instant,
    /// (sent at, acknowledged at), both since `started`.
    acks: Mutex<Vec<(Duration, Duration)>>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        if result.is_ok() {
            let acked = self.started.elapsed();
            if let Ok(mut acks) = self.acks.lock() {
                acks.push((Duration::from_micros(sent_us as u64), acked));
            }
        }
    }
}

pub async fn run(args: FailoverArgs) -> Result<()> {
    match args.mode {
        FailoverMode::Kraft => {
            let kraft = run_mode(&args, FailoverMode::Kraft).await?;
            println!(
                "median unavailability after kill -9 of a leader broker: {:.0} ms ({:.2} of broker.session.timeout.ms + 1 s); the new leader was in the metadata after {:.0} ms",
                kraft.broker_ms,
                kraft.broker_ms / (args.session_timeout_ms as f64 + 1000.0),
                kraft.moved_ms
            );
            println!(
                "median unavailability after kill -9 of the active controller: {:.0} ms ({:.2} of 1 s)",
                kraft.controller_ms,
                kraft.controller_ms / 1000.0
            );
        }
        FailoverMode::Zk => {
            let zk = run_mode(&args, FailoverMode::Zk).await?;
            let kraft = run_mode(&args, FailoverMode::Kraft).await?;
            let mut table = crate::table::Table::new(&[
                "median (ms)",
                "ZooKeeper",
                "KRaft",
                "ZooKeeper / KRaft",
            ]);
            for (what, z, k) in [
                (
                    "leader broker killed: produce resumed",
                    zk.broker_ms,
                    kraft.broker_ms,
                ),
                (
                    "leader broker killed: new leader in metadata",
                    zk.moved_ms,
                    kraft.moved_ms,
                ),
                (
                    "controller killed: topic created",
                    zk.controller_ms,
                    kraft.controller_ms,
                ),
            ] {
                table.row(vec![
                    what.to_string(),
                    format!("{z:.0}"),
                    format!("{k:.0}"),
                    format!("{:.2}", z / k),
                ]);
            }
            println!();
            println!(
                "zookeeper.session.timeout.ms={}, broker.session.timeout.ms={}",
                args.zk_session_timeout_ms, args.session_timeout_ms
            );
            print!("{}", table.render());
        }
    }
    Ok(())
}

/// Runs the kill-and-recover rounds on a fresh cluster of `mode`.
async fn run_mode(args: &FailoverArgs, mode: FailoverMode) -> Result<Medians> {
    let temp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .map(|d| d.join(format!("{mode:?}").to_lowercase()))
        .unwrap_or_else(|| temp.path().to_path_buf());
    let (coordination, overrides) = match mode {
        FailoverMode::Kraft => (
            Coordination::KRaft {
                controllers: args.controllers,
            },
            vec![format!(
                "broker.session.timeout.ms={}",
                args.session_timeout_ms
            )],
        ),
        FailoverMode::Zk => (
            Coordination::ZooKeeper {
                servers: 3,
                first_port: args.zk_port,
            },
            vec![format!(
                "zookeeper.session.timeout.ms={}",
                args.zk_session_timeout_ms
            )],
        ),
    };
    let mut cluster = LocalCluster::launch(&Spec {
        coordination,
        brokers: args.brokers,
        dir,
        port: args.port,
        metrics_port: None,
        overrides,
    })?;
    cluster.wait_serving(Duration::from_secs(120)).await?;
    let bootstrap = cluster.bootstrap();
    let first_broker = bootstrap.split(',').next().unwrap_or_default().to_string();
    let rf = args.brokers.min(3) as i16;
    create_topic(&first_broker, TOPIC, 1, rf).await?;
    println!(
        "sluice bench failover ({mode:?}): {} brokers, topic {TOPIC} RF={rf}, {} runs",
        args.brokers, args.runs
    );

    let context = AckContext {
        started: Instant::now(),
        acks: Mutex::new(Vec::new()),
    };
    let producer: Arc<ThreadedProducer<AckContext>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("message.timeout.ms", "120000")
            .create_with_context(context)
            .context("creating the producer")?,
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let producer = producer.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let payload = [b'f'; 100];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = producer.context().started.elapsed().as_micros() as usize;
                let record = BaseRecord::<(), [u8], usize>::with_opaque_to(TOPIC, sent)
                    .partition(0)
                    .payload(&payload[..]);
                let _ = producer.send(record);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let mut broker_gaps = Vec::new();
    let mut leader_moves = Vec::new();
    let mut controller_gaps = Vec::new();
    for run in 1..=args.runs {
        wait_for_full_isr(
            &first_broker,
            args.brokers.min(3) as usize,
            Duration::from_secs(120),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;

        // A leader broker.
        let leader = partition_leader(&bootstrap).await?;
        let survivor = cluster
            .nodes
            .iter()
            .find(|n| n.role == "broker" && n.id as i32 != leader)
            .map(|n| n.address.clone())
            .unwrap_or(first_broker.clone());
        let killed_at = producer.context().started.elapsed();
        let killed = Instant::now();
        cluster.kill9(leader as u16)?;
        let moved = wait_for_new_leader(&survivor, leader, Duration::from_secs(120)).await?;
        let moved_after = killed.elapsed();
        let gap = wait_for_ack_sent_after(&producer, killed_at, Duration::from_secs(120)).await?;
        broker_gaps.push(gap);
        leader_moves.push(moved_after);
        cluster.restart(leader as u16)?;
        cluster
            .wait_serving_node(leader as u16, Duration::from_secs(120))
            .await?;

        // The active controller: in ZooKeeper mode a broker, so the probe
        // goes to another, and its topic has two replicas, so one is alive
        // whichever broker the placement picked.
        let controller = active_controller(&cluster).await?;
        let killed = Instant::now();
        cluster.kill9(controller)?;
        let probe_broker = cluster
            .nodes
            .iter()
            .find(|n| n.role == "broker" && n.id != controller)
            .map(|n| n.address.clone())
            .unwrap_or(first_broker.clone());
        let probe = format!("failover-probe-{run}");
        create_topic(&probe_broker, &probe, 1, rf.min(2)).await?;
        wait_for_any_leader(&probe_broker, &probe, Duration::from_secs(120)).await?;
        let controller_gap = killed.elapsed();
        controller_gaps.push(controller_gap);
        cluster.restart(controller)?;
        cluster
            .wait_serving_node(controller, Duration::from_secs(120))
            .await?;
        println!(
            "run {run}: broker {leader} killed -> broker {moved} leads after {:.0} ms, produce resumed after {:.0} ms; controller {controller} killed -> topic created after {:.0} ms",
            moved_after.as_secs_f64() * 1000.0,
            gap.as_secs_f64() * 1000.0,
            controller_gap.as_secs_f64() * 1000.0
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.join();

    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let medians = Medians {
        broker_ms: median(&mut broker_gaps),
        moved_ms: median(&mut leader_moves),
        controller_ms: median(&mut controller_gaps),
    };
    cluster.stop_all();
    Ok(medians)
}

async fn metadata(bootstrap: &str) -> Result<Option<(i32, usize)>> {
    topic_metadata(bootstrap, TOPIC).await
}

/// Partition 0 of `topic`: its leader and ISR size, from the first broker that answers.
async fn topic_metadata(bootstrap: &str, topic: &str) -> Result<Option<(i32, usize)>> {
    for address in bootstrap.split(',') {
        let Ok(mut client) = crate::client::connect(address).await else {
            continue;
        };
        let request =
            MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]));
        let Ok(response) = client.send(request).await else {
            continue;
        };
        let p = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == 0);
        return Ok(p.map(|p| (p.leader_id.0, p.isr_nodes.len())));
    }
    Ok(None)
}

async fn partition_leader(bootstrap: &str) -> Result<i32> {
    match metadata(bootstrap).await? {
        Some((leader, _)) if leader >= 0 => Ok(leader),
        _ => bail!("partition 0 of {TOPIC} has no leader"),
    }
}

async fn wait_for_full_isr(bootstrap: &str, size: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((leader, isr)) = metadata(bootstrap).await? {
            if leader >= 0 && isr >= size {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the ISR of {TOPIC} did not fill up within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the broker at `address` names a leader for partition 0 other
/// than `old`, and returns it.
async fn wait_for_new_leader(address: &str, old: i32, limit: Duration) -> Result<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((leader, _)) = metadata(address).await? {
            if leader >= 0 && leader != old {
                return Ok(leader);
            }
        }
        if Instant::now() > deadline {
            bail!("no new leader within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until partition 0 of `topic` has a leader.
async fn wait_for_any_leader(address: &str, topic: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some((leader, _)) = topic_metadata(address, topic).await? {
            if leader >= 0 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{topic} got no leader within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time from `killed_at` until a message sent after it is acknowledged.
async fn wait_for_ack_sent_after(
    producer: &ThreadedProducer<AckContext>,
    killed_at: Duration,
    limit: Duration,
) -> Result<Duration> {
    let deadline = Instant::now() + limit;
    loop {
        let first = producer
            .context()
            .acks
            .lock()
            .map_err(|_| anyhow::anyhow!("ack lock poisoned"))?
            .iter()
            .filter(|(sent, _)| *sent > killed_at)
            .map(|(_, acked)| *acked)
            .min();
        if let Some(acked) = first {
            return Ok(acked - killed_at);
        }
        if Instant::now() > deadline {
            bail!("no write was acknowledged within {limit:?} of the kill");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The active controller: the quorum leader in KRaft mode, the broker
/// holding `/controller` in ZooKeeper mode.
async fn active_controller(cluster: &LocalCluster) -> Result<u16> {
    if let Some(connect) = &cluster.zookeeper_connect {
        let view = sluice_zk::inspect::read_cluster(connect, Duration::from_secs(10)).await?;
        return view
            .controller
            .map(|id| id as u16)
            .context("no broker holds /controller");
    }
    let addresses: Vec<String> = cluster
        .controller_addresses()
        .into_iter()
        .map(|(_, address)| address)
        .collect();
    describe_quorum(&addresses)
        .await
        .and_then(|r| {
            r.topics
                .first()?
                .partitions
                .first()
                .map(|p| p.leader_id.0 as u16)
        })
        .context("no controller knows the quorum leader")
}
