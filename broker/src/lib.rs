//! The data plane of Sluice: the Kafka wire server, the request handlers and
//! the replica manager that keeps this broker's partition logs.

pub mod config;
mod errors;
mod handlers;
pub mod replica;
pub mod server;

pub use config::BrokerConfig;
pub use handlers::Broker;
pub use replica::ReplicaManager;
