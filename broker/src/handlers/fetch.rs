//! Fetch: whole record batches up to the high watermark, with long polling.
//! A fetch carrying a replica id is a follower's: it reads up to the log
//! end, and its fetch offset tells the leader how far the follower got.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{absent_partition_error, Broker};
use crate::errors::storage_error;
use crate::memory::MemoryLease;
use crate::replica::now_ms;

/// Fetch versions from which topics are named by id.
const TOPIC_IDS_FROM: i16 = 13;

/// A fetch that names no leader epoch (Kafka's NO_PARTITION_LEADER_EPOCH);
/// any other value is checked against the partition's.
const NO_EPOCH: i32 = -1;

/// Fetch versions from which the replica id moved into `replica_state`.
const REPLICA_STATE_FROM: i16 = 15;

/// Answers a fetch, with the lease of the memory its records hold.
pub async fn fetch(
    broker: &Broker,
    request: FetchRequest,
    version: i16,
) -> (FetchResponse, MemoryLease) {
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let deadline = tokio::time::Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let replica_id = if version >= REPLICA_STATE_FROM {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    // `fetch.max.bytes` caps what the client asks for.
    let max_bytes =
        (request.max_bytes.max(0) as usize).min(broker.config.fetch_max_bytes.max(0) as usize);
    // A follower's position is recorded once, at the first read: later reads
    // of a long poll carry the same offset.
    let mut first = true;
    loop {
        // Register for wake-ups before reading, so an append between the read
        // and the wait is not missed.
        let notified = broker.replicas.appended().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        // Read no more than the memory pool lends now; while it lends
        // nothing, the answer carries no records.
        let lease = broker.memory.try_acquire_up_to(max_bytes);
        let (response, bytes, any_error) =
            read_all(broker, &request, version, replica_id, first, lease.bytes());
        first = false;
        if bytes >= min_bytes || any_error || tokio::time::Instant::now() >= deadline {
            return (response, settle(broker, lease, bytes));
        }
        drop((response, lease));
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let lease = broker.memory.try_acquire_up_to(max_bytes);
            let (response, bytes, _) =
                read_all(broker, &request, version, replica_id, false, lease.bytes());
            return (response, settle(broker, lease, bytes));
        }
    }
}

/// Fits a fetch's lease to the `bytes` it read: the rest goes back to the
/// pool. A first batch larger than the lease (served whole, as Kafka does)
/// takes more if the pool has it.
fn settle(broker: &Broker, mut lease: MemoryLease, bytes: usize) -> MemoryLease {
    if bytes > lease.bytes() {
        let more = broker.memory.try_acquire_up_to(bytes - lease.bytes());
        lease.absorb(more);
    } else {
        lease.shrink_to(bytes);
    }
    lease
}

fn read_all(
    broker: &Broker,
    request: &FetchRequest,
    version: i16,
    replica_id: i32,
    record_position: bool,
    max_bytes: usize,
) -> (FetchResponse, usize, bool) {
    let from_follower = replica_id >= 0;
    let mut hw_moved = false;
    let mut isr_changes = Vec::new();
    let image = broker.replicas.image();
    let mut budget = max_bytes;
    let mut total = 0usize;
    let mut any_error = false;
    let read_committed = request.isolation_level == 1;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = if version >= TOPIC_IDS_FROM {
            image.topic_by_id(&topic.topic_id).map(|t| t.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let mut data = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1);
            if read_committed {
                data = data.with_aborted_transactions(Some(Vec::new()));
            }
            let Some(name) = &name else {
                any_error = true;
                partitions.push(data.with_error_code(ResponseError::UnknownTopicId.code()));
                continue;
            };
            let Some(partition) = broker.replicas.partition(name, p.partition) else {
                any_error = true;
                let error = absent_partition_error(broker, name, p.partition);
                partitions.push(data.with_error_code(error.code()));
                continue;
            };
            if version >= TOPIC_IDS_FROM && partition.topic_id != topic.topic_id {
                // The name now belongs to a newer topic than the one asked for.
                any_error = true;
                partitions.push(data.with_error_code(ResponseError::UnknownTopicId.code()));
                continue;
            }
            let mut state = partition.state();
            if state.deleted {
                any_error = true;
                partitions
                    .push(data.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
                continue;
            }
            if state.leader != broker.config.node_id {
                any_error = true;
                partitions.push(data.with_error_code(ResponseError::NotLeaderOrFollower.code()));
                continue;
            }
            if p.current_leader_epoch != NO_EPOCH && p.current_leader_epoch != state.leader_epoch {
                let error = if p.current_leader_epoch < state.leader_epoch {
                    ResponseError::FencedLeaderEpoch
                } else {
                    ResponseError::UnknownLeaderEpoch
                };
                any_error = true;
                partitions.push(data.with_error_code(error.code()));
                continue;
            }
            if from_follower && !state.replicas.contains(&replica_id) {
                // Not (yet) a replica in our view: with an epoch, the follower
                // may know a newer assignment than we do, so it retries.
                let error = if p.current_leader_epoch != NO_EPOCH {
                    ResponseError::UnknownLeaderEpoch
                } else {
                    ResponseError::NotLeaderOrFollower
                };
                any_error = true;
                partitions.push(data.with_error_code(error.code()));
                continue;
            }
            let log_end = state.log.log_end_offset();
            if from_follower
                && record_position
                && p.fetch_offset >= state.log.log_start_offset()
                && p.fetch_offset <= log_end
            {
                let (moved, change) = broker.replicas.record_follower_fetch(
                    &partition,
                    &mut state,
                    replica_id,
                    p.fetch_offset,
                    now_ms(),
                );
                hw_moved |= moved;
                if let Some(change) = change {
                    isr_changes.push((partition.clone(), change));
                }
            }
            let hw = state.log.high_watermark();
            // Followers read up to the log end, consumers up to the high watermark.
            let max_offset = if from_follower { log_end } else { hw };
            data = data
                .with_high_watermark(hw)
                .with_last_stable_offset(hw)
                .with_log_start_offset(state.log.log_start_offset());
            // The log returns a first batch whole even past the limit, so a
            // large message never blocks a consumer (KIP-74).
            let limit = (p.partition_max_bytes.max(0) as usize).min(budget);
            if limit == 0 {
                partitions.push(data.with_records(Some(Bytes::new())));
                continue;
            }
            match state.log.read(p.fetch_offset, limit, max_offset) {
                Ok(read) => {
                    let n = read.records.len();
                    total += n;
                    budget = budget.saturating_sub(n);
                    partitions.push(data.with_records(Some(read.records)));
                }
                Err(e) => {
                    any_error = true;
                    partitions.push(data.with_error_code(storage_error(&e).code()));
                }
            }
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_string(name.unwrap_or_default())))
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    if hw_moved {
        // acks=all producers wait on the high watermark.
        broker.replicas.notify_appended();
    }
    if !isr_changes.is_empty() {
        let replicas = broker.replicas.clone();
        let controller = broker.controller.clone();
        tokio::spawn(async move { replicas.alter_isr(&*controller, isr_changes).await });
    }
    if from_follower {
        metrics::counter!("sluice_replica_fetch_bytes_total").increment(total as u64);
    } else {
        metrics::counter!("sluice_fetch_bytes_total").increment(total as u64);
    }
    (
        FetchResponse::default().with_responses(topics),
        total,
        any_error,
    )
}
