//! The metadata model of a Sluice cluster: versioned records, the immutable
//! [`MetadataImage`] built by replaying them in log order, and the
//! [`MetadataDelta`] that carries one batch of changes from an image to the next.
//!
//! Nothing here performs I/O. The controller writes records to the Raft log;
//! every node replays the committed ones through a delta.

pub mod configs;
pub mod control_requests;
pub mod controller_api;
mod delta;
mod groups;
mod image;
pub mod loader;
mod records;
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: sluice_test_alloc::TrackingAllocator = sluice_test_alloc::TrackingAllocator;

pub use delta::{LocalChanges, MetadataDelta, ReplayError};
pub use groups::{group_coordinator, offset_records, CommittedOffset, GroupImage, GroupMap};
pub use image::{BrokerRegistration, MetadataImage, PartitionRegistration, TopicImage};
pub use loader::{LoadError, MetadataLoader, Publisher};
pub use records::{
    decode_batch, encode_batch, BrokerRecord, ConfigRecord, ConfigResource, Endpoint,
    GroupMemberRecord, GroupRecord, MetadataRecord, OffsetCommitRecord, PartitionOffset,
    PartitionRecord, ProducerIdsRecord, RecordDecodeError, RemoveGroupRecord, RemoveOffsetsRecord,
    RemoveTopicRecord, TopicOffsets, TopicRecord,
};
pub use uuid::Uuid;

/// Leader value meaning "no leader", as in Kafka.
pub const NO_LEADER: i32 = -1;
