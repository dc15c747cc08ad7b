//! Produce and InitProducerId.

use std::time::Duration;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::ResponseError;
use tracing::debug;

use super::{absent_partition_error, message, Broker};
use crate::errors::storage_error;
use crate::replica::now_ms;

/// The outcome of appending to one partition.
struct Appended {
    partition: i32,
    result: Result<(i64, i64, i64), (ResponseError, Option<String>)>,
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
    let mut waits = Vec::new();
    for topic in &request.topic_data {
        let name = topic.name.0.as_str();
        let mut results = Vec::with_capacity(topic.partition_data.len());
        for data in &topic.partition_data {
            let result = append(broker, name, data.index, data.records.as_deref(), acks);
            if let Ok((_, last_offset, _)) = &result.result {
                if acks == -1 {
                    waits.push((name.to_string(), data.index, *last_offset));
                }
            }
            results.push(result);
        }
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
    // acks=all: the ISR must reach each batch before we answer.
    let timeout = Duration::from_millis(request.timeout_ms.max(0) as u64);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut late = Vec::new();
    for (topic, partition, last_offset) in waits {
        if let Err(error) =
            wait_for_high_watermark(broker, &topic, partition, last_offset + 1, deadline).await
        {
            late.push((topic, partition, error));
        }
    }

    let responses = topics
        .into_iter()
        .map(|(name, results)| {
            let partitions = results
                .into_iter()
                .map(|a| {
                    let late = late
                        .iter()
                        .find(|(t, p, _)| t == name.0.as_str() && *p == a.partition)
                        .map(|(_, _, error)| *error);
                    let response = PartitionProduceResponse::default().with_index(a.partition);
                    match a.result {
                        Ok(_) if late.is_some() => response
                            .with_error_code(late.map_or(0, |e| e.code()))
                            .with_base_offset(-1),
                        Ok((base_offset, _, log_start)) => response
                            .with_base_offset(base_offset)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(log_start),
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
    match state.log.append_as_leader(records, epoch, now_ms()) {
        Ok(info) => {
            if !info.duplicate {
                metrics::counter!("sluice_messages_in_total")
                    .increment((info.last_offset - info.base_offset + 1) as u64);
            }
            broker.replicas.update_high_watermark(&mut state);
            Appended {
                partition: index,
                result: Ok((
                    info.base_offset,
                    info.last_offset,
                    state.log.log_start_offset(),
                )),
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

/// Waits until the high watermark of a partition this broker leads reaches
/// `target` (Kafka's DelayedProduce): then the answer is success, or
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank below
/// `min.insync.replicas` meanwhile. Leadership lost while waiting answers
/// NOT_LEADER_OR_FOLLOWER; the deadline, REQUEST_TIMED_OUT.
async fn wait_for_high_watermark(
    broker: &Broker,
    topic: &str,
    index: i32,
    target: i64,
    deadline: tokio::time::Instant,
) -> Result<(), ResponseError> {
    loop {
        let notified = broker.replicas.appended().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(partition) = broker.replicas.partition(topic, index) else {
            return Err(ResponseError::NotLeaderOrFollower);
        };
        {
            let state = partition.state();
            if state.deleted || state.leader != broker.config.node_id {
                return Err(ResponseError::NotLeaderOrFollower);
            }
            if state.log.high_watermark() >= target {
                let in_sync = state.maximal_isr().len();
                drop(state);
                return if in_sync >= min_insync_replicas(broker, topic) {
                    Ok(())
                } else {
                    Err(ResponseError::NotEnoughReplicasAfterAppend)
                };
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(ResponseError::RequestTimedOut);
        }
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
