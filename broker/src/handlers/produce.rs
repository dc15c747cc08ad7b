//! Produce and InitProducerId.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
    TopicName,
};
use kafka_protocol::ResponseError;
use tracing::debug;

use super::{absent_partition_error, message, Broker};
use crate::errors::storage_error;
use crate::replica::{now_ms, Partition};

/// The outcome of appending to one partition.
struct Appended {
    partition: i32,
    result: Result<Written, (ResponseError, Option<String>)>,
}

/// A batch in a partition's log, and the leadership it was written under:
/// an acks=all wait is only good for that leadership (Kafka's
/// DelayedProduce keeps the same).
struct Written {
    base_offset: i64,
    last_offset: i64,
    log_start: i64,
    replica: Arc<Partition>,
    leader_epoch: i32,
}

/// What a produce request gets back.
pub enum ProduceOutcome {
    Respond(ProduceResponse),
    /// acks=0 and every append succeeded: no answer at all.
    Silent,
    /// acks=0 and an append failed: there is no answer to carry the error,
    /// so Kafka closes the connection and the client refreshes its metadata.
    SilentFailure(String),
}

pub async fn produce(broker: &Broker, request: ProduceRequest, _version: i16) -> ProduceOutcome {
    let acks = request.acks;
    if request.transactional_id.is_some() {
        // Transactions need a transaction coordinator Sluice does not have yet.
        return ProduceOutcome::Respond(every_partition_fails(
            &request,
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactions are not supported by this broker",
        ));
    }
    if !(-1..=1).contains(&acks) {
        return ProduceOutcome::Respond(every_partition_fails(
            &request,
            ResponseError::InvalidRequiredAcks,
            "acks must be -1, 0 or 1",
        ));
    }

    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in &request.topic_data {
        let name = topic.name.0.as_str();
        let results = topic
            .partition_data
            .iter()
            .map(|data| append(broker, name, data.index, data.records.as_deref(), acks))
            .collect::<Vec<_>>();
        topics.push((topic.name.clone(), results));
    }
    broker.replicas.notify_appended();

    if acks == 0 {
        let failed = topics.iter().find_map(|(name, results)| {
            results.iter().find_map(|a| match &a.result {
                Err((error, _)) => Some(format!("{}-{}: {error:?}", name.0, a.partition)),
                Ok(_) => None,
            })
        });
        return match failed {
            Some(failure) => ProduceOutcome::SilentFailure(failure),
            None => ProduceOutcome::Silent,
        };
    }
    if acks == -1 {
        // acks=all: the ISR must reach each batch before we answer.
        let timeout = Duration::from_millis(request.timeout_ms.max(0) as u64);
        let deadline = tokio::time::Instant::now() + timeout;
        await_replication(broker, &mut topics, deadline).await;
    }

    let responses = topics
        .into_iter()
        .map(|(name, results)| {
            let partitions = results
                .into_iter()
                .map(|a| {
                    let response = PartitionProduceResponse::default().with_index(a.partition);
                    match a.result {
                        Ok(written) => response
                            .with_base_offset(written.base_offset)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(written.log_start),
                        Err((error, text)) => response
                            .with_error_code(error.code())
                            .with_base_offset(-1)
                            .with_log_start_offset(-1)
                            .with_error_message(text.and_then(message)),
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partitions)
        })
        .collect();
    ProduceOutcome::Respond(ProduceResponse::default().with_responses(responses))
}

fn append(broker: &Broker, topic: &str, index: i32, records: Option<&[u8]>, acks: i16) -> Appended {
    let fail = |error: ResponseError, text: Option<String>| Appended {
        partition: index,
        result: Err((error, text)),
    };
    let Some(partition) = broker.replicas.partition(topic, index) else {
        return fail(absent_partition_error(broker, topic, index), None);
    };
    let Some(records) = records else {
        return fail(
            ResponseError::InvalidRecord,
            Some("the request carries no records".into()),
        );
    };
    let mut state = partition.state();
    if state.deleted {
        return fail(ResponseError::UnknownTopicOrPartition, None);
    }
    if state.leader != broker.config.node_id {
        return fail(ResponseError::NotLeaderOrFollower, None);
    }
    if acks == -1 {
        // Kafka checks the committed ISR before appending.
        let min_isr = min_insync_replicas(broker, topic);
        if state.isr.len() < min_isr {
            return fail(
                ResponseError::NotEnoughReplicas,
                Some(format!(
                    "the ISR of {topic}-{index} has {} replicas, fewer than min.insync.replicas={min_isr}",
                    state.isr.len()
                )),
            );
        }
    }
    let epoch = state.leader_epoch;
    let now = now_ms();
    let appended = if state.log.append_may_sync(records.len(), now) {
        // A roll or flush.messages fsyncs: other tasks move off this worker.
        crate::replica::may_block(|| state.log.append_as_leader(records, epoch, now))
    } else {
        state.log.append_as_leader(records, epoch, now)
    };
    match appended {
        Ok(info) => {
            if !info.duplicate {
                metrics::counter!("sluice_messages_in_total")
                    .increment((info.last_offset - info.base_offset + 1) as u64);
            }
            broker.replicas.update_high_watermark(&mut state);
            let log_start = state.log.log_start_offset();
            drop(state);
            Appended {
                partition: index,
                result: Ok(Written {
                    base_offset: info.base_offset,
                    last_offset: info.last_offset,
                    log_start,
                    replica: partition,
                    leader_epoch: epoch,
                }),
            }
        }
        Err(e) => {
            debug!(topic, partition = index, error = %e, "append refused");
            fail(storage_error(&e), Some(e.to_string()))
        }
    }
}

/// `min.insync.replicas` of a topic: its own setting, else the broker's.
fn min_insync_replicas(broker: &Broker, topic: &str) -> usize {
    broker
        .replicas
        .image()
        .topic_config(topic)
        .and_then(|c| c.get("min.insync.replicas"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(broker.config.min_insync_replicas.max(1) as usize)
}

/// Waits until the high watermark passes every written batch of an acks=all
/// request (Kafka's DelayedProduce). Each partition completes on its own,
/// all under one deadline: success, or NOT_ENOUGH_REPLICAS_AFTER_APPEND if
/// the ISR shrank below `min.insync.replicas` meanwhile. A partition whose
/// leadership changed since the append (another leader epoch, or the replica
/// deleted or replaced) fails at once with NOT_LEADER_OR_FOLLOWER: its batch
/// may have been truncated, and whatever now sits at its offsets is someone
/// else's. What is still waiting at the deadline gets REQUEST_TIMED_OUT.
async fn await_replication(
    broker: &Broker,
    topics: &mut [(TopicName, Vec<Appended>)],
    deadline: tokio::time::Instant,
) {
    // (topic, partition) positions still waiting; an answer, once known, stays.
    let mut pending: Vec<(usize, usize)> = topics
        .iter()
        .enumerate()
        .flat_map(|(t, (_, results))| {
            results
                .iter()
                .enumerate()
                .filter(|(_, a)| a.result.is_ok())
                .map(move |(p, _)| (t, p))
        })
        .collect();
    loop {
        // Registered before checking, so a change between the check and the
        // wait is not missed.
        let notified = broker.replicas.appended().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        pending.retain(|&(t, p)| {
            let (name, results) = &mut topics[t];
            let appended = &mut results[p];
            let Ok(written) = &appended.result else {
                return false;
            };
            match replication_state(broker, name.0.as_str(), written) {
                Replication::Pending => true,
                Replication::Done => false,
                Replication::Failed(error) => {
                    let text = (error == ResponseError::NotLeaderOrFollower).then(|| {
                        "leadership changed while the batch waited for the in-sync replicas; \
                         it may have been truncated"
                            .to_string()
                    });
                    appended.result = Err((error, text));
                    false
                }
            }
        });
        if pending.is_empty() {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    for (t, p) in pending {
        topics[t].1[p].result = Err((ResponseError::RequestTimedOut, None));
    }
}

enum Replication {
    Pending,
    Done,
    Failed(ResponseError),
}

/// Where one written batch of an acks=all request stands.
fn replication_state(broker: &Broker, topic: &str, written: &Written) -> Replication {
    let replica = &written.replica;
    let current = broker.replicas.partition(topic, replica.index);
    if !current.is_some_and(|p| Arc::ptr_eq(&p, replica)) {
        // Deleted, or replaced by a replica of a newer topic of that name.
        return Replication::Failed(ResponseError::NotLeaderOrFollower);
    }
    let state = replica.state();
    if state.deleted
        || state.leader != broker.config.node_id
        || state.leader_epoch != written.leader_epoch
    {
        return Replication::Failed(ResponseError::NotLeaderOrFollower);
    }
    if state.log.high_watermark() <= written.last_offset {
        return Replication::Pending;
    }
    let in_sync = state.maximal_isr().len();
    drop(state);
    if in_sync >= min_insync_replicas(broker, topic) {
        Replication::Done
    } else {
        Replication::Failed(ResponseError::NotEnoughReplicasAfterAppend)
    }
}

fn every_partition_fails(
    request: &ProduceRequest,
    error: ResponseError,
    text: &str,
) -> ProduceResponse {
    let responses = request
        .topic_data
        .iter()
        .map(|topic| {
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(
                    topic
                        .partition_data
                        .iter()
                        .map(|p| {
                            PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(error.code())
                                .with_base_offset(-1)
                                .with_error_message(message(text))
                        })
                        .collect(),
                )
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

pub async fn init_producer_id(
    broker: &Broker,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default();
    if request.transactional_id.is_some() {
        return response
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    // Without a transactional id Kafka hands out a fresh id every time, even
    // to a producer that names its old one (KIP-360): an id this broker did
    // not issue must never be adopted.
    match broker.next_producer_id().await {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(error) => response
            .with_error_code(error.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
