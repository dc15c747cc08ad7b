//! The data plane of Sluice: the Kafka wire server, the request handlers and
//! the replica manager that keeps this broker's partition logs.

pub mod config;
pub mod control_plane;
pub mod controller_client;
pub mod controller_service;
mod errors;
pub mod fetch_session;
pub mod fetcher;
pub mod group;
mod handlers;
pub mod isr;
pub mod kafka_client;
pub mod lifecycle;
pub mod local_controller;
pub mod memory;
#[cfg(test)]
mod memory_tests;
#[cfg(test)]
mod metadata_follow_tests;
pub mod replica;
#[cfg(test)]
mod replication_tests;
pub mod server;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod test_alloc;

pub use config::BrokerConfig;
pub use fetcher::start_replication;
pub use group::{GroupConfig, GroupCoordinator};
pub use handlers::Broker;
pub use kafka_client::{ClientError, KafkaClient};
pub use replica::ReplicaManager;
