//! An acks=all idempotent producer that remembers every acknowledged
//! message, and the check that each one can be read back at its offset,
//! once and in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// partition -> [(offset, sequence number)] of every acknowledged message.
pub type Acked = Arc<Mutex<BTreeMap<i32, Vec<(i64, u64)>>>>;

pub struct AckedWriter {
    pub acked: Acked,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl AckedWriter {
    /// Writes sequence numbers round-robin over `partitions`, in windows of
    /// 50, until stopped.
    pub fn spawn(bootstrap: &str, topic: &str, partitions: i32) -> Self {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "120000")
            .create()
            .expect("producer");
        let acked: Acked = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let topic = topic.to_string();
        let task = {
            let acked = acked.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut window = Vec::new();
                    for _ in 0..50 {
                        let partition = (seq % partitions as u64) as i32;
                        let payload = seq.to_string();
                        let mut record = FutureRecord::<(), _>::to(&topic)
                            .partition(partition)
                            .payload(&payload);
                        let delivery = loop {
                            match producer.send_result(record) {
                                Ok(d) => break Some(d),
                                Err((
                                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                    back,
                                )) => {
                                    record = back;
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                Err(_) => break None,
                            }
                        };
                        if let Some(d) = delivery {
                            window.push((seq, d));
                        }
                        seq += 1;
                    }
                    for (seq, delivery) in window {
                        if let Ok(Ok(d)) = delivery.await {
                            acked
                                .lock()
                                .unwrap()
                                .entry(d.partition)
                                .or_default()
                                .push((d.offset, seq));
                        }
                    }
                }
            })
        };
        Self { acked, stop, task }
    }

    /// The highest sequence number acknowledged so far.
    pub fn max_seq(&self) -> u64 {
        self.acked
            .lock()
            .unwrap()
            .values()
            .flat_map(|v| v.iter().map(|(_, seq)| *seq))
            .max()
            .unwrap_or(0)
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().values().map(Vec::len).sum()
    }

    /// Waits until `more` further messages are acknowledged.
    pub fn wait_for_more(&self, more: usize, limit: Duration) {
        let target = self.count() + more;
        wait_until(|| self.count() >= target, limit);
    }

    pub async fn stop(self) -> BTreeMap<i32, Vec<(i64, u64)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer task");
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// A consumer that follows the topic from the beginning while the test
/// runs, recording each partition's offsets in the order it saw them.
pub struct TailingReader {
    stop: Arc<AtomicBool>,
    max_seq: Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<BTreeMap<i32, Vec<i64>>>,
}

impl TailingReader {
    pub fn spawn(bootstrap: &str, topic: &str, partitions: i32) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sluice-tail")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let max_seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let max_seq = max_seq.clone();
            std::thread::spawn(move || {
                let mut seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        seen.entry(m.partition()).or_default().push(m.offset());
                        let seq = m
                            .payload()
                            .and_then(|p| std::str::from_utf8(p).ok())
                            .and_then(|p| p.parse::<u64>().ok())
                            .unwrap_or(0);
                        max_seq.fetch_max(seq, Ordering::Relaxed);
                    }
                }
                seen
            })
        };
        Self {
            stop,
            max_seq,
            thread,
        }
    }

    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(Ordering::Relaxed)
    }

    /// Stops reading; returns each partition's offsets in the order read.
    pub fn stop(self) -> BTreeMap<i32, Vec<i64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("reader thread")
    }
}

/// Reads every partition back from the beginning and checks that each
/// acknowledged message is at its acknowledged offset, that no sequence
/// number appears twice or out of order, and that the high watermark is
/// past every acknowledged offset. Returns each partition's log as
/// offset -> sequence number.
pub fn verify(
    bootstrap: &str,
    topic: &str,
    acked: &BTreeMap<i32, Vec<(i64, u64)>>,
) -> BTreeMap<i32, BTreeMap<i64, u64>> {
    let mut logs = BTreeMap::new();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-verify")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    for (&partition, messages) in acked {
        let max_acked = messages.iter().map(|(o, _)| *o).max().unwrap_or(-1);
        // Right after a leader change the new leader's high watermark may
        // trail until its followers fetch again; it must get there soon.
        let deadline = Instant::now() + Duration::from_secs(30);
        let high = loop {
            let high = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(30))
                .map_or(-1, |(_, high)| high);
            if high > max_acked || Instant::now() >= deadline {
                break high;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            high > max_acked,
            "partition {partition}: high watermark {high} is behind acknowledged offset {max_acked}"
        );
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut log: BTreeMap<i64, u64> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while log.len() < high as usize && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let seq: u64 = std::str::from_utf8(m.payload().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                log.insert(m.offset(), seq);
            }
        }
        for (offset, seq) in messages {
            assert_eq!(
                log.get(offset),
                Some(seq),
                "partition {partition}: acknowledged message {seq} at offset {offset}"
            );
        }
        let seqs: Vec<u64> = log.values().copied().collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: duplicates or reordering"
        );
        logs.insert(partition, log);
    }
    logs
}

pub fn wait_until(mut condition: impl FnMut() -> bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
