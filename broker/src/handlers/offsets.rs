//! ListOffsets and OffsetForLeaderEpoch.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use kafka_protocol::ResponseError;

use super::{absent_partition_error, Broker};
use crate::errors::storage_error;
use crate::replica::PartitionState;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub fn list_offsets(
    broker: &Broker,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    // The leader epoch is part of the answer from v4 on.
    let with_epoch = version >= 4;
    // A follower (replica id >= 0) may see up to the log end; others up to
    // the high watermark, as in Kafka.
    let from_follower = request.replica_id.0 >= 0;
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    let name = topic.name.0.as_str();
                    let found = on_leader(
                        broker,
                        name,
                        p.partition_index,
                        p.current_leader_epoch,
                        |state| {
                            lookup(state, p.timestamp, from_follower)
                                .map(|(offset, ts)| (offset, ts, state.leader_epoch))
                        },
                    );
                    match found {
                        Ok((offset, timestamp, epoch)) => response
                            .with_offset(offset)
                            .with_timestamp(timestamp)
                            .with_leader_epoch(if with_epoch { epoch } else { -1 }),
                        Err(error) => response.with_error_code(error.code()),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// (offset, timestamp) for one ListOffsets query.
fn lookup(
    state: &PartitionState,
    timestamp: i64,
    from_follower: bool,
) -> Result<(i64, i64), ResponseError> {
    let log = &state.log;
    Ok(match timestamp {
        LATEST if from_follower => (log.log_end_offset(), -1),
        LATEST => (log.high_watermark(), -1),
        EARLIEST | EARLIEST_LOCAL => (log.log_start_offset(), -1),
        LATEST_TIERED => (-1, -1),
        MAX_TIMESTAMP => {
            // A client learns only of records below the high watermark.
            let end = if from_follower {
                log.log_end_offset()
            } else {
                log.high_watermark()
            };
            match log
                .max_timestamp_below(end)
                .map_err(|e| storage_error(&e))?
            {
                Some((ts, offset)) => (offset, ts),
                None => (-1, -1),
            }
        }
        ts if ts < 0 => return Err(ResponseError::InvalidRequest),
        ts => match log
            .offset_for_timestamp(ts)
            .map_err(|e| storage_error(&e))?
        {
            Some((offset, found)) if offset < log.high_watermark() => (offset, found),
            _ => (-1, -1),
        },
    })
}

/// Runs `f` on a partition this broker leads, once the caller's view of the
/// leader epoch has been checked against it.
fn on_leader<T>(
    broker: &Broker,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
    f: impl FnOnce(&PartitionState) -> Result<T, ResponseError>,
) -> Result<T, ResponseError> {
    let partition = broker
        .replicas
        .partition(topic, partition)
        .ok_or_else(|| absent_partition_error(broker, topic, partition))?;
    let state = partition.state();
    if let Some(error) = leader_check(broker, &state, current_leader_epoch) {
        return Err(error);
    }
    f(&state)
}

fn leader_check(
    broker: &Broker,
    state: &PartitionState,
    current_leader_epoch: i32,
) -> Option<ResponseError> {
    if state.deleted {
        return Some(ResponseError::UnknownTopicOrPartition);
    }
    if state.leader != broker.config.node_id {
        return Some(ResponseError::NotLeaderOrFollower);
    }
    if current_leader_epoch >= 0 && current_leader_epoch < state.leader_epoch {
        return Some(ResponseError::FencedLeaderEpoch);
    }
    if current_leader_epoch > state.leader_epoch {
        return Some(ResponseError::UnknownLeaderEpoch);
    }
    None
}

pub fn offset_for_leader_epoch(
    broker: &Broker,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let response = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let name = topic.topic.0.as_str();
                    let found =
                        on_leader(broker, name, p.partition, p.current_leader_epoch, |state| {
                            // The current epoch ends at the log end, even before
                            // the leader has appended anything in it.
                            Ok(if p.leader_epoch == state.leader_epoch {
                                (state.leader_epoch, state.log.log_end_offset())
                            } else {
                                state.log.end_offset_for_epoch(p.leader_epoch)
                            })
                        });
                    match found {
                        Ok((epoch, end)) => response.with_leader_epoch(epoch).with_end_offset(end),
                        Err(error) => response.with_error_code(error.code()),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
