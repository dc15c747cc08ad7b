//! kill -9 under an acks=all producer: every acknowledged message survives
//! the restart, exactly once and in order, and offsets never go back.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;

/// partition -> [(offset, sequence number)] of every acknowledged message.
type Acked = Arc<Mutex<BTreeMap<i32, Vec<(i64, u64)>>>>;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start();
    let out = server.cli(&["create", "durable", "--partitions", &PARTITIONS.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");

    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let producer = producer.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Enqueue a window in order, as an application would, then
                // collect the delivery reports.
                let mut window = Vec::new();
                for _ in 0..50 {
                    let partition = (seq % PARTITIONS as u64) as i32;
                    let payload = seq.to_string();
                    let mut record = FutureRecord::<(), _>::to("durable")
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

    let count = |acked: &Acked| acked.lock().unwrap().values().map(Vec::len).sum::<usize>();
    wait_until(|| count(&acked) >= 3000, Duration::from_secs(60));
    server.kill9();
    let acked_before_kill = count(&acked);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    wait_until(
        || count(&acked) >= acked_before_kill + 3000,
        Duration::from_secs(90),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", server.bootstrap())
        .set("group.id", "sluice-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    for (&partition, messages) in &acked {
        let (_, high) = consumer
            .fetch_watermarks("durable", partition, Duration::from_secs(10))
            .unwrap();
        let max_acked = messages.iter().map(|(o, _)| *o).max().unwrap();
        assert!(
            high > max_acked,
            "partition {partition}: high watermark {high} went behind acked offset {max_acked}"
        );

        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("durable", partition, Offset::Beginning)
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
        // Every acknowledged message is at the offset it was acknowledged with.
        for (offset, seq) in messages {
            assert_eq!(
                log.get(offset),
                Some(seq),
                "partition {partition}: acked message {seq} at offset {offset}"
            );
        }
        // Once, and in order: sequence numbers rise strictly along the log.
        let seqs: Vec<u64> = log.values().copied().collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "partition {partition}: duplicates or reordering"
        );
    }
}

fn wait_until(mut condition: impl FnMut() -> bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
