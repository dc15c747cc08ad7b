//! Durable bytes for Sluice: partition logs made of segments of Kafka v2
//! record batches, with sparse indexes, crash recovery, retention,
//! truncation, leader-epoch tracking and idempotent-producer state.
//!
//! The hot path never decodes individual records: batches are validated by
//! their 61-byte header and CRC, offsets are assigned by patching the header.

pub mod batch;
mod error;
pub mod fs;
pub mod index;
pub mod leader_epoch;
pub mod log;
pub mod open_files;
pub mod producer_state;
pub mod segment;

pub use error::StorageError;
pub use log::cleaner::{CleanOutput, CleanPlan, CleanStats};
pub use log::{
    sync_dir, wall_clock_ms, write_atomic, AppendInfo, LogConfig, PartitionLog, PendingCheckpoint,
    ReadResult,
};

#[cfg(feature = "raft-store")]
pub mod raft_store;

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: sluice_test_alloc::TrackingAllocator = sluice_test_alloc::TrackingAllocator;
#[cfg(test)]
mod test_rng;
