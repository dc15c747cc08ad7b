//! `sluice bench`: produce and consume through librdkafka against a running
//! cluster, next to a baseline measured in the same run: the same bytes over
//! a loopback TCP socket to a sink that only appends them to a file.
//!
//! Figures are printed as ratios to the baseline because absolute numbers on
//! a shared machine mean little.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    /// Messages to produce (and then consume).
    #[arg(long, short = 'n', default_value_t = 1_000_000)]
    messages: u64,
    /// Message size in bytes.
    #[arg(long, short = 's', default_value_t = 100)]
    size: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, short = 'p', default_value_t = 3)]
    partitions: i32,
    /// Producer acks: 0, 1 or all.
    #[arg(long, default_value = "1")]
    acks: String,
    /// Producer linger.ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Producer compression.type.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Replication factor of the benchmark topic (-1: the cluster default).
    #[arg(long, default_value_t = -1)]
    replication_factor: i16,
    /// Measure replication's cost: an unreplicated topic with acks=1 (the
    /// baseline) and a topic of this replication factor with acks=all, in
    /// one run.
    #[arg(long, value_name = "RF")]
    compare_replication: Option<i16>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Client-observed unavailability when a leader broker or the active
    /// controller is killed with kill -9, on a local cluster it starts.
    Failover(crate::failover::FailoverArgs),
    /// Offset commits per second through the metadata log, with many
    /// groups and partitions, against OffsetFetch as the baseline.
    Commits(crate::commit_bench::CommitBenchArgs),
    /// How long a new ZooKeeper-mode controller takes to read the cluster
    /// back, at each partition count.
    ControllerReload(crate::reload_bench::ReloadArgs),
}

struct Measured {
    seconds: f64,
    messages: u64,
    bytes: u64,
}

impl Measured {
    fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        Some(BenchCommand::Failover(failover)) => return crate::failover::run(failover).await,
        Some(BenchCommand::Commits(commits)) => return crate::commit_bench::run(commits).await,
        Some(BenchCommand::ControllerReload(reload)) => {
            return crate::reload_bench::run(reload).await
        }
        None => {}
    }
    if let Some(rf) = args.compare_replication {
        return compare_replication(args, rf).await;
    }
    let topic = format!("sluice-bench-{}", std::process::id());
    create_topic(
        &args.bootstrap_server,
        &topic,
        args.partitions,
        args.replication_factor,
    )
    .await?;
    let total_bytes = args.messages * args.size as u64;
    println!(
        "sluice bench: {} messages x {} bytes over {} partitions, acks={}, linger.ms={}, compression={}",
        args.messages, args.size, args.partitions, args.acks, args.linger_ms, args.compression
    );

    let bench = tokio::task::spawn_blocking(move || -> Result<()> {
        // The baseline runs before and after the Kafka phases and its median
        // is used, so a burst of page-cache writeback lands on both sides.
        let mut baselines = vec![baseline_sink(total_bytes, args.size)?];
        let baseline_latency = baseline_round_trip(args.size.max(1) * 1000)?;
        let (produced, latencies) = produce(&args, &topic)?;
        let consumed = consume(&args, &topic)?;
        baselines.push(baseline_sink(total_bytes, args.size)?);
        baselines.push(baseline_sink(total_bytes, args.size)?);
        baselines.sort_by(|a, b| a.mb_per_sec().total_cmp(&b.mb_per_sec()));
        let spread = format!(
            "{:.0}..{:.0}",
            baselines[0].mb_per_sec(),
            baselines[2].mb_per_sec()
        );
        let baseline = baselines.swap_remove(1);
        let pct = |q: f64| percentile(&latencies, q);

        println!();
        println!(
            "{:<34} {:>14} {:>10} {:>12}",
            "", "msgs/s", "MB/s", "vs baseline"
        );
        println!(
            "{:<34} {:>14} {:>10.1} {:>12}   (median of 3 runs, {spread} MB/s)",
            "baseline (TCP sink -> file)",
            "-",
            baseline.mb_per_sec(),
            "1.00"
        );
        for (name, m) in [("produce", &produced), ("consume", &consumed)] {
            println!(
                "{:<34} {:>14.0} {:>10.1} {:>12.2}",
                name,
                m.msgs_per_sec(),
                m.mb_per_sec(),
                m.mb_per_sec() / baseline.mb_per_sec()
            );
        }
        println!();
        println!(
            "produce latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  (baseline round trip of a {}-byte write: p50 {:.3}  p99 {:.3})",
            pct(0.50),
            pct(0.99),
            pct(0.999),
            args.size.max(1) * 1000,
            percentile(&baseline_latency, 0.50),
            percentile(&baseline_latency, 0.99),
        );
        println!(
            "ratios: produce/baseline throughput {:.2}, consume/produce {:.2}, produce p99 / baseline p99 {:.1}",
            produced.mb_per_sec() / baseline.mb_per_sec(),
            consumed.mb_per_sec() / produced.mb_per_sec(),
            pct(0.99) / percentile(&baseline_latency, 0.99).max(1e-6),
        );
        Ok(())
    });
    bench.await?
}

/// Produces and consumes through an unreplicated topic with acks=1, then
/// through a topic of replication factor `rf` with acks=all, and reports
/// the second as ratios of the first.
async fn compare_replication(args: BenchArgs, rf: i16) -> Result<()> {
    let unreplicated = format!("sluice-bench-rf1-{}", std::process::id());
    let replicated = format!("sluice-bench-rf{rf}-{}", std::process::id());
    create_topic(&args.bootstrap_server, &unreplicated, args.partitions, 1).await?;
    create_topic(&args.bootstrap_server, &replicated, args.partitions, rf).await?;
    println!(
        "sluice bench: {} messages x {} bytes over {} partitions, linger.ms={}: RF=1 acks=1 (baseline) vs RF={rf} acks=all",
        args.messages, args.size, args.partitions, args.linger_ms
    );
    let bench = tokio::task::spawn_blocking(move || -> Result<()> {
        let base_args = BenchArgs {
            acks: "1".into(),
            ..args.clone()
        };
        let replicated_args = BenchArgs {
            acks: "all".into(),
            ..args.clone()
        };
        let (base_produced, base_latency) = produce(&base_args, &unreplicated)?;
        let base_consumed = consume(&base_args, &unreplicated)?;
        let (produced, latency) = produce(&replicated_args, &replicated)?;
        let consumed = consume(&replicated_args, &replicated)?;
        println!();
        println!(
            "{:<24} {:>12} {:>9} {:>12} {:>9} {:>9} {:>9}",
            "", "produce/s", "MB/s", "consume/s", "p50 ms", "p99 ms", "p99.9 ms"
        );
        for (name, p, c, l) in [
            ("RF=1 acks=1", &base_produced, &base_consumed, &base_latency),
            (
                &*format!("RF={rf} acks=all"),
                &produced,
                &consumed,
                &latency,
            ),
        ] {
            println!(
                "{:<24} {:>12.0} {:>9.1} {:>12.0} {:>9.2} {:>9.2} {:>9.2}",
                name,
                p.msgs_per_sec(),
                p.mb_per_sec(),
                c.msgs_per_sec(),
                percentile(l, 0.50),
                percentile(l, 0.99),
                percentile(l, 0.999)
            );
        }
        println!();
        println!(
            "ratios (RF={rf} acks=all / RF=1 acks=1): produce throughput {:.2}, consume throughput {:.2}, p50 latency {:.1}x, p99 latency {:.1}x",
            produced.mb_per_sec() / base_produced.mb_per_sec(),
            consumed.mb_per_sec() / base_consumed.mb_per_sec(),
            percentile(&latency, 0.50) / percentile(&base_latency, 0.50).max(1e-6),
            percentile(&latency, 0.99) / percentile(&base_latency, 0.99).max(1e-6),
        );
        Ok(())
    });
    bench.await?
}

/// Creates `topic` (replication factor -1: the cluster's default).
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, rf: i16) -> Result<()> {
    let mut client = crate::client::connect(bootstrap).await?;
    let response = client
        .send(
            CreateTopicsRequest::default()
                .with_topics(vec![CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_num_partitions(partitions)
                    .with_replication_factor(rf)])
                .with_timeout_ms(60_000),
        )
        .await?;
    for t in response.topics {
        if t.error_code != 0 {
            bail!(
                "creating {topic}: error {} {:?}",
                t.error_code,
                t.error_message
            );
        }
    }
    Ok(())
}

/// Streams `total` bytes in message-sized writes (coalesced by a buffer, as a
/// client batches) to a loopback sink that appends them to a file.
fn baseline_sink(total: u64, message_size: usize) -> Result<Measured> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sink = std::thread::spawn(move || -> Result<u64> {
        let (mut socket, _) = listener.accept()?;
        let file = tempfile::tempfile()?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; 1 << 20];
        let mut received = 0u64;
        loop {
            let n = socket.read(&mut buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])?;
            received += n as u64;
        }
        file.flush()?;
        Ok(received)
    });
    let started = Instant::now();
    let mut stream = std::io::BufWriter::with_capacity(1 << 20, TcpStream::connect(addr)?);
    let message = vec![b'x'; message_size.max(1)];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(message.len() as u64) as usize;
        stream.write_all(&message[..n])?;
        sent += n as u64;
    }
    stream.flush()?;
    drop(stream);
    let received = sink
        .join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    Ok(Measured {
        seconds: started.elapsed().as_secs_f64(),
        messages: total / message_size.max(1) as u64,
        bytes: received,
    })
}

/// Round-trip times of `chunk`-byte writes that the sink appends to a file
/// and acknowledges with one byte: the floor under a produce round trip.
fn baseline_round_trip(chunk: usize) -> Result<Vec<f64>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let rounds = 2000;
    let sink = std::thread::spawn(move || -> Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let mut file = tempfile::tempfile()?;
        let mut buf = vec![0u8; chunk];
        for _ in 0..rounds {
            socket.read_exact(&mut buf)?;
            file.write_all(&buf)?;
            socket.write_all(&[1])?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let data = vec![b'y'; chunk];
    let mut ack = [0u8; 1];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        stream.write_all(&data)?;
        stream.read_exact(&mut ack)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    sink.join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Every this many messages carries a send time for the latency figures;
/// timing every message would make the benchmark measure itself.
const LATENCY_SAMPLE_EVERY: u64 = 16;

/// Delivery reports: counts failures and, for sampled messages, records the
/// produce latency. A message's opaque is 0, or 1 + its send time in
/// microseconds since `started`.
struct LatencyContext {
    started: Instant,
    latencies_us: Mutex<Vec<u32>>,
    failed: AtomicU64,
}

impl ClientContext for LatencyContext {}

impl ProducerContext for LatencyContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: usize) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if sent == 0 {
            return;
        }
        let now = self.started.elapsed().as_micros() as usize;
        let us = now.saturating_sub(sent - 1).min(u32::MAX as usize) as u32;
        if let Ok(mut l) = self.latencies_us.lock() {
            l.push(us);
        }
    }
}

fn produce(args: &BenchArgs, topic: &str) -> Result<(Measured, Vec<f64>)> {
    let context = LatencyContext {
        started: Instant::now(),
        latencies_us: Mutex::new(Vec::with_capacity(
            (args.messages / LATENCY_SAMPLE_EVERY) as usize + 1,
        )),
        failed: AtomicU64::new(0),
    };
    let producer: ThreadedProducer<LatencyContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap_server)
        .set("acks", &args.acks)
        .set("linger.ms", args.linger_ms.to_string())
        .set("compression.type", &args.compression)
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(context)
        .context("creating the producer")?;
    let payload = vec![b'p'; args.size];
    let started = Instant::now();
    for i in 0..args.messages {
        let opaque = if i % LATENCY_SAMPLE_EVERY == 0 {
            producer.context().started.elapsed().as_micros() as usize + 1
        } else {
            0
        };
        let mut record =
            BaseRecord::<(), [u8], usize>::with_opaque_to(topic, opaque).payload(&payload[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => bail!("produce failed: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("flushing the producer")?;
    let seconds = started.elapsed().as_secs_f64();
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} messages were not delivered");
    }
    let mut latencies: Vec<f64> = producer
        .context()
        .latencies_us
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?
        .iter()
        .map(|&us| us as f64 / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok((
        Measured {
            seconds,
            messages: args.messages,
            bytes: args.messages * args.size as u64,
        },
        latencies,
    ))
}

fn consume(args: &BenchArgs, topic: &str) -> Result<Measured> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap_server)
        .set("group.id", "sluice-test")
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let (mut messages, mut bytes) = (0u64, 0u64);
    while messages < args.messages {
        if Instant::now() > deadline {
            bail!(
                "consumed only {messages} of {} messages in 10 minutes",
                args.messages
            );
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            messages += 1;
            bytes += m.payload_len() as u64;
        }
    }
    Ok(Measured {
        seconds: started.elapsed().as_secs_f64(),
        messages,
        bytes,
    })
}

/// The q-quantile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
