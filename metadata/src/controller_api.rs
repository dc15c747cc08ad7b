//! What a broker asks of the active controller.
//!
//! The broker holds an `Arc<dyn ControllerApi>`: in combined mode the
//! controller in the same process; later a client for a remote quorum. Each
//! call returns once its records are committed to the metadata log (or with
//! the reason they were not).

use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

use crate::records::{ConfigResource, Endpoint};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the controller refused or could not carry out a request; the broker
/// maps each to the Kafka error code clients expect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    #[error("Topic '{0}' already exists.")]
    TopicAlreadyExists(String),
    #[error("{0}")]
    InvalidTopic(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("This server does not host this topic: {0}")]
    UnknownTopic(String),
    #[error("This server does not host this topic ID: {0}")]
    UnknownTopicId(Uuid),
    #[error("{0}")]
    BrokerNotAvailable(String),
    #[error("The active controller is not available: {0}")]
    NotController(String),
    #[error("The controller did not commit the change in time")]
    Timeout,
    #[error("{0}")]
    Internal(String),
}

#[derive(Clone, Debug, Default)]
pub struct NewTopic {
    pub name: String,
    /// -1: the cluster default (`num.partitions`).
    pub num_partitions: i32,
    /// -1: the cluster default (`default.replication.factor`).
    pub replication_factor: i16,
    /// Explicit (partition, replicas) assignments; when given, the two counts above must be -1.
    pub assignments: Vec<(i32, Vec<i32>)>,
    pub configs: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedTopic {
    pub topic_id: Uuid,
    pub num_partitions: i32,
    pub replication_factor: i16,
}

#[derive(Clone, Debug)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

#[derive(Clone, Debug)]
pub struct NewPartitions {
    pub topic: String,
    /// The total partition count wanted.
    pub count: i32,
    /// Replicas for each new partition, when the caller chooses them.
    pub assignments: Option<Vec<Vec<i32>>>,
}

#[derive(Clone, Debug)]
pub struct BrokerRegistrationRequest {
    pub broker_id: i32,
    pub incarnation_id: Uuid,
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
}

/// One config change: `None` deletes the dynamic value.
#[derive(Clone, Debug)]
pub struct ConfigChange {
    pub name: String,
    pub value: Option<String>,
}

pub trait ControllerApi: Send + Sync {
    /// The node id of the active controller, when one is known.
    fn active_controller_id(&self) -> Option<i32>;

    fn create_topics(
        &self,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<CreatedTopic, ControllerError>>>;

    /// Returns the deleted topic's name and id for each request, in order.
    fn delete_topics(
        &self,
        topics: Vec<TopicRef>,
    ) -> BoxFuture<'_, Vec<Result<(String, Uuid), ControllerError>>>;

    fn create_partitions(
        &self,
        requests: Vec<NewPartitions>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>>;

    /// Incremental config changes for each resource.
    fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, Vec<ConfigChange>)>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>>;

    /// Returns the broker epoch of this registration.
    fn register_broker(
        &self,
        request: BrokerRegistrationRequest,
    ) -> BoxFuture<'_, Result<i64, ControllerError>>;

    /// Hands out `count` producer ids; returns the first.
    fn allocate_producer_ids(
        &self,
        broker_id: i32,
        count: i64,
    ) -> BoxFuture<'_, Result<i64, ControllerError>>;
}
