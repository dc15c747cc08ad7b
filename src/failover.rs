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
use crate::cluster::{describe_quorum, LocalCluster};

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
    /// `broker.session.timeout.ms` of the cluster (Kafka's default).
    #[arg(long, default_value_t = 9000)]
    session_timeout_ms: u64,
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
    let temp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let overrides = vec![format!(
        "broker.session.timeout.ms={}",
        args.session_timeout_ms
    )];
    let mut cluster =
        LocalCluster::start(args.controllers, args.brokers, &dir, args.port, &overrides)?;
    cluster.wait_serving(Duration::from_secs(120)).await?;
    let bootstrap = cluster.bootstrap();
    let first_broker = bootstrap.split(',').next().unwrap_or_default().to_string();
    let rf = args.brokers.min(3) as i16;
    create_topic(&first_broker, TOPIC, 1, rf).await?;
    println!(
        "sluice bench failover: {} controllers, {} brokers, topic {TOPIC} RF={rf}, broker.session.timeout.ms={}, {} runs",
        args.controllers, args.brokers, args.session_timeout_ms, args.runs
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

        // The active controller.
        let controller = active_controller(&cluster).await?;
        let killed = Instant::now();
        cluster.kill9(controller)?;
        let probe_broker = cluster
            .nodes
            .iter()
            .find(|n| n.role == "broker" && n.id as i32 != leader)
            .map(|n| n.address.clone())
            .unwrap_or(first_broker.clone());
        create_topic(&probe_broker, &format!("failover-probe-{run}"), 1, 1).await?;
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
    let broker_ms = median(&mut broker_gaps);
    let moved_ms = median(&mut leader_moves);
    let controller_ms = median(&mut controller_gaps);
    println!();
    println!(
        "median unavailability after kill -9 of a leader broker: {broker_ms:.0} ms ({:.2} of broker.session.timeout.ms + 1 s); the new leader was in the metadata after {moved_ms:.0} ms",
        broker_ms / (args.session_timeout_ms as f64 + 1000.0)
    );
    println!(
        "median unavailability after kill -9 of the active controller: {controller_ms:.0} ms ({:.2} of 1 s)",
        controller_ms / 1000.0
    );
    cluster.stop_all();
    Ok(())
}

async fn metadata(bootstrap: &str) -> Result<Option<(i32, usize)>> {
    for address in bootstrap.split(',') {
        let Ok(mut client) = crate::client::connect(address).await else {
            continue;
        };
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC))))]));
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

async fn active_controller(cluster: &LocalCluster) -> Result<u16> {
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
