//! The storage crate's error type.
//!
//! Each variant names the Kafka error code the broker is expected to answer
//! with; the mapping itself belongs to the broker's handler boundary.

/// Everything the partition log can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The disk said no. Kafka: `KAFKA_STORAGE_ERROR`.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// A record batch failed a structural check (CRC, length, unknown magic).
    /// Kafka: `CORRUPT_MESSAGE`.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),

    /// A well-formed batch that the broker will not accept (old message
    /// format, inconsistent record count, control batch from a client...).
    /// Kafka: `INVALID_RECORD`.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),

    /// A batch larger than `max_message_bytes`. Kafka: `MESSAGE_TOO_LARGE`.
    #[error("record batch of {size} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },

    /// An idempotent producer skipped or reordered sequence numbers.
    /// Kafka: `OUT_OF_ORDER_SEQUENCE_NUMBER`.
    #[error(
        "out of order sequence for producer {producer_id} (epoch {producer_epoch}): \
         expected {expected}, received {received}"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        producer_epoch: i16,
        /// The sequence the log expected next (-1 if any was not acceptable,
        /// e.g. a new epoch must start at 0 and `expected` is then 0).
        expected: i32,
        received: i32,
    },

    /// A producer epoch older than the one the log has seen.
    /// Kafka: `INVALID_PRODUCER_EPOCH` (or `PRODUCER_FENCED`).
    #[error("producer {producer_id} epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },

    /// A read or log-start move outside the log. Kafka: `OFFSET_OUT_OF_RANGE`.
    #[error("offset {offset} is outside the log [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },

    /// A follower append whose first batch overlaps the end of the log.
    /// Kafka: `UNKNOWN_SERVER_ERROR` on the follower (it should truncate).
    #[error(
        "follower batch starting at offset {first_offset} overlaps the log end offset {log_end}"
    )]
    UnexpectedAppendOffset { first_offset: i64, log_end: i64 },

    /// Data already in the log does not parse (found while reading, not on
    /// recovery, which truncates instead). Kafka: `KAFKA_STORAGE_ERROR`.
    #[error("corrupt log data: {0}")]
    CorruptLog(String),

    /// An append failed half way and its partial data could not be cut off:
    /// the log refuses appends until it is reopened (recovery cuts the
    /// partial batch). Kafka: `KAFKA_STORAGE_ERROR`.
    #[error("log refuses appends until reopened: {0}")]
    LogFailed(String),
}
