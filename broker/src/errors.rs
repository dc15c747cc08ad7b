//! Maps the typed errors of the storage and controller crates to the Kafka
//! error codes clients act on.

use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::ControllerError;
use sluice_storage::StorageError;

pub fn controller_error(e: &ControllerError) -> ResponseError {
    match e {
        ControllerError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        ControllerError::InvalidTopic(_) => ResponseError::InvalidTopicException,
        ControllerError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        ControllerError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        ControllerError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        ControllerError::InvalidConfig(_) => ResponseError::InvalidConfig,
        ControllerError::InvalidRequest(_) => ResponseError::InvalidRequest,
        ControllerError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        ControllerError::UnknownTopicId(_) => ResponseError::UnknownTopicId,
        ControllerError::BrokerNotAvailable(_) => ResponseError::BrokerNotAvailable,
        ControllerError::NotController(_) => ResponseError::NotController,
        ControllerError::Timeout => ResponseError::RequestTimedOut,
        ControllerError::StaleBrokerEpoch { .. } => ResponseError::StaleBrokerEpoch,
        ControllerError::FencedLeaderEpoch(_) => ResponseError::FencedLeaderEpoch,
        ControllerError::InvalidUpdateVersion(_) => ResponseError::InvalidUpdateVersion,
        ControllerError::IneligibleReplica(_) => ResponseError::IneligibleReplica,
        ControllerError::NotLeader(_) => ResponseError::NotLeaderOrFollower,
        ControllerError::NotCoordinator(_) => ResponseError::NotCoordinator,
        ControllerError::IllegalGeneration(_) => ResponseError::IllegalGeneration,
        ControllerError::UnknownMemberId(_) => ResponseError::UnknownMemberId,
        ControllerError::GroupIdNotFound(_) => ResponseError::GroupIdNotFound,
        ControllerError::NonEmptyGroup(_) => ResponseError::NonEmptyGroup,
        ControllerError::Internal(_) => ResponseError::UnknownServerError,
    }
}

pub fn storage_error(e: &StorageError) -> ResponseError {
    match e {
        StorageError::CorruptBatch(_) => ResponseError::CorruptMessage,
        StorageError::InvalidRecord(_) => ResponseError::InvalidRecord,
        StorageError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        StorageError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        _ => ResponseError::KafkaStorageError,
    }
}

/// The inverse of [`controller_error`]: what a remote controller's error
/// code means, with its message.
pub fn controller_error_from_code(code: i16, message: &str) -> ControllerError {
    let text = message.to_string();
    match ResponseError::try_from_code(code) {
        Some(ResponseError::TopicAlreadyExists) => ControllerError::TopicAlreadyExists(text),
        Some(ResponseError::InvalidTopicException) => ControllerError::InvalidTopic(text),
        Some(ResponseError::InvalidPartitions) => ControllerError::InvalidPartitions(text),
        Some(ResponseError::InvalidReplicationFactor) => {
            ControllerError::InvalidReplicationFactor(text)
        }
        Some(ResponseError::InvalidReplicaAssignment) => {
            ControllerError::InvalidReplicaAssignment(text)
        }
        Some(ResponseError::InvalidConfig) => ControllerError::InvalidConfig(text),
        Some(ResponseError::InvalidRequest) => ControllerError::InvalidRequest(text),
        Some(ResponseError::UnknownTopicOrPartition) => ControllerError::UnknownTopic(text),
        Some(ResponseError::BrokerNotAvailable) => ControllerError::BrokerNotAvailable(text),
        Some(ResponseError::NotController) => ControllerError::NotController(text),
        Some(ResponseError::RequestTimedOut) => ControllerError::Timeout,
        Some(ResponseError::StaleBrokerEpoch) => ControllerError::StaleBrokerEpoch {
            broker_id: -1,
            broker_epoch: -1,
        },
        Some(ResponseError::FencedLeaderEpoch) => ControllerError::FencedLeaderEpoch(text),
        Some(ResponseError::InvalidUpdateVersion) => ControllerError::InvalidUpdateVersion(text),
        Some(ResponseError::IneligibleReplica) => ControllerError::IneligibleReplica(text),
        Some(ResponseError::NotLeaderOrFollower) => ControllerError::NotLeader(text),
        Some(ResponseError::NotCoordinator) => ControllerError::NotCoordinator(text),
        Some(ResponseError::IllegalGeneration) => ControllerError::IllegalGeneration(text),
        Some(ResponseError::UnknownMemberId) => ControllerError::UnknownMemberId(text),
        Some(ResponseError::GroupIdNotFound) => ControllerError::GroupIdNotFound(text),
        Some(ResponseError::NonEmptyGroup) => ControllerError::NonEmptyGroup(text),
        other => ControllerError::Internal(format!(
            "controller error {}: {text}",
            other.map_or_else(|| code.to_string(), |e| format!("{e:?}"))
        )),
    }
}
