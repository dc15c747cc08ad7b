//! The write probe: one acknowledged write (acks=all) to each of many
//! partitions, sent the way the Java producer sends, one Produce request per
//! leader carrying a batch for every partition it leads.
//!
//! librdkafka puts one partition in each Produce request, and a broker, as
//! Kafka's do, answers one request per connection at a time. With acks=all
//! each answer waits for the followers, so a librdkafka probe of P
//! partitions takes P/3 replication round trips, one after the other: at
//! 100,000 partitions that was hours, and the probe measured itself rather
//! than the cluster. Batching per leader makes it a few round trips.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{MetadataRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_broker::KafkaClient;
use tokio::task::JoinSet;

use super::bed::Partition;

/// Partitions in one Produce request: about 400 KB of batches, well under
/// a producer's default max.request.size of 1 MB.
const PARTITIONS_PER_REQUEST: usize = 5000;
/// How long a leader may hold a request waiting for its followers.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait before asking again after a round that got nothing.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Writes one record to each of `partitions` and waits until every one is
/// acknowledged by its leader with acks=all. Each round learns the leaders
/// from Metadata (any server in `bootstrap`), sends every leader its
/// partitions at once, and keeps for the next round what was refused.
pub async fn write_each(
    bootstrap: &str,
    partitions: Vec<Partition>,
    limit: Duration,
) -> Result<()> {
    let servers: Vec<&str> = bootstrap.split(',').map(str::trim).collect();
    let total = partitions.len();
    let mut pending: BTreeSet<Partition> = partitions.into_iter().collect();
    let batch = probe_batch()?;
    let deadline = Instant::now() + limit;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{} of {total} writes acknowledged within {limit:?}",
                total - pending.len()
            );
        }
        let acked = match tokio::time::timeout(left, one_round(&servers, &pending, &batch)).await {
            Ok(acked) => acked,
            Err(_) => continue, // out of time: the check above reports it
        };
        if acked.is_empty() {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        for key in acked {
            pending.remove(&key);
        }
    }
    Ok(())
}

/// One round: where each pending partition is led, then one Produce per
/// leader (split at `PARTITIONS_PER_REQUEST`), all leaders at once.
/// Returns the partitions acknowledged.
async fn one_round(
    servers: &[&str],
    pending: &BTreeSet<Partition>,
    batch: &Bytes,
) -> Vec<Partition> {
    let Some((leaders, endpoints)) = leaders_of(servers, pending).await else {
        return Vec::new();
    };
    let mut by_leader: BTreeMap<i32, Vec<Partition>> = BTreeMap::new();
    for key in pending {
        if let Some(&leader) = leaders.get(key) {
            by_leader.entry(leader).or_default().push(key.clone());
        }
    }
    let mut sends = JoinSet::new();
    for (leader, keys) in by_leader {
        let Some(address) = endpoints.get(&leader).cloned() else {
            continue;
        };
        let batch = batch.clone();
        sends.spawn(async move { produce_to(&address, keys, batch).await });
    }
    let mut acked = Vec::new();
    while let Some(result) = sends.join_next().await {
        if let Ok(keys) = result {
            acked.extend(keys);
        }
    }
    acked
}

/// The live leader of each partition in `wanted` and every broker's
/// address, from the first server in `servers` that answers Metadata.
async fn leaders_of(
    servers: &[&str],
    wanted: &BTreeSet<Partition>,
) -> Option<(HashMap<Partition, i32>, HashMap<i32, String>)> {
    let topics: BTreeSet<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
    let request = MetadataRequest::default().with_topics(Some(
        topics
            .iter()
            .map(|t| {
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
            })
            .collect(),
    ));
    for server in servers {
        let Ok(mut client) = KafkaClient::connect(server, "sluice-compare-probe").await else {
            continue;
        };
        let Ok(response) = client.send(request.clone()).await else {
            continue;
        };
        let endpoints = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        let mut leaders = HashMap::new();
        for topic in response.topics {
            let Some(name) = topic.name else { continue };
            for p in topic.partitions {
                if p.error_code == 0 && p.leader_id.0 >= 0 {
                    leaders.insert((name.0.to_string(), p.partition_index), p.leader_id.0);
                }
            }
        }
        return Some((leaders, endpoints));
    }
    None
}

/// Sends `keys` to the broker at `address` in requests of at most
/// `PARTITIONS_PER_REQUEST` partitions, one after the other on one
/// connection; returns those it acknowledged (error code 0). A failed
/// connection ends the attempt with what was acknowledged so far.
async fn produce_to(address: &str, keys: Vec<Partition>, batch: Bytes) -> Vec<Partition> {
    let mut acked = Vec::new();
    let Ok(mut client) = KafkaClient::connect(address, "sluice-compare-probe").await else {
        return acked;
    };
    client.set_request_timeout(ACK_TIMEOUT + Duration::from_secs(10));
    for request in produce_requests(&keys, &batch) {
        let Ok(response) = client.send(request).await else {
            break;
        };
        for topic in response.responses {
            for p in topic.partition_responses {
                if p.error_code == 0 {
                    acked.push((topic.name.0.to_string(), p.index));
                }
            }
        }
    }
    acked
}

/// The Produce requests (acks=all) that carry `batch` to each of `keys`,
/// at most `PARTITIONS_PER_REQUEST` partitions each.
fn produce_requests(keys: &[Partition], batch: &Bytes) -> Vec<ProduceRequest> {
    keys.chunks(PARTITIONS_PER_REQUEST)
        .map(|chunk| {
            let mut topics: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
            for (topic, index) in chunk {
                topics.entry(topic.as_str()).or_default().push(
                    PartitionProduceData::default()
                        .with_index(*index)
                        .with_records(Some(batch.clone())),
                );
            }
            ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(ACK_TIMEOUT.as_millis() as i32)
                .with_topic_data(
                    topics
                        .into_iter()
                        .map(|(name, partition_data)| {
                            TopicProduceData::default()
                                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                                .with_partition_data(partition_data)
                        })
                        .collect(),
                )
        })
        .collect()
}

/// The record every partition gets: one small value, no key, in a batch of
/// its own (the leader assigns its offset).
fn probe_batch() -> Result<Bytes> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: now_ms,
        key: None,
        value: Some(Bytes::from_static(b"probe")),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        std::iter::once(&record),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .context("encoding the probe's record batch")?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn every_partition_is_in_exactly_one_request_of_bounded_size() {
        let keys: Vec<Partition> = (0..120)
            .flat_map(|t| (0..100).map(move |p| (format!("topic-{t}"), p)))
            .collect();
        let batch = probe_batch().unwrap();
        let requests = produce_requests(&keys, &batch);
        assert_eq!(requests.len(), 3, "12,000 partitions in requests of 5,000");
        let mut seen = BTreeSet::new();
        for request in &requests {
            assert_eq!(
                request.acks, -1,
                "the probe waits for every in-sync replica"
            );
            let mut in_request = 0;
            for topic in &request.topic_data {
                for p in &topic.partition_data {
                    in_request += 1;
                    assert!(
                        seen.insert((topic.name.0.to_string(), p.index)),
                        "{}/{} sent twice",
                        topic.name.0,
                        p.index
                    );
                }
            }
            assert!(in_request <= PARTITIONS_PER_REQUEST);
        }
        assert_eq!(seen, keys.into_iter().collect::<BTreeSet<_>>());
    }

    #[test]
    fn the_probe_record_is_one_valid_batch() {
        let mut batch = probe_batch().unwrap();
        let decoded = RecordBatchDecoder::decode(&mut batch).unwrap();
        assert_eq!(decoded.records.len(), 1);
        assert_eq!(decoded.records[0].value.as_deref(), Some(&b"probe"[..]));
    }
}
