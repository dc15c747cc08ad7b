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
