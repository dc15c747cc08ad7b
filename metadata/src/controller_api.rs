//! What a broker asks of the active controller.
//!
//! The broker holds an `Arc<dyn ControllerApi>`: in combined mode the
//! controller in the same process; later a client for a remote quorum. Each
//! call returns once its records are committed to the metadata log (or with
//! the reason they were not).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::records::{ConfigResource, Endpoint, GroupRecord, TopicOffsets};

/// The first four bytes of a connection to a controller listener that
/// carries Raft messages between controllers rather than Kafka requests. As
/// a Kafka size prefix they would claim a 1.3 GB request, which no listener
/// accepts, so the two cannot be confused.
pub const STREAM_MAGIC: [u8; 4] = *b"SLRF";

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A topic's dynamic configs: name -> value.
pub type TopicConfig = std::collections::BTreeMap<String, String>;

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
    /// The request carries a broker epoch older than the broker's current registration.
    #[error("broker {broker_id} is not registered with epoch {broker_epoch}")]
    StaleBrokerEpoch { broker_id: i32, broker_epoch: i64 },
    /// The sender's leader epoch is not the partition's current one.
    #[error("{0}")]
    FencedLeaderEpoch(String),
    /// The partition epoch in an ISR change is not the current one.
    #[error("{0}")]
    InvalidUpdateVersion(String),
    /// A proposed in-sync replica is fenced or not a replica of the partition.
    #[error("{0}")]
    IneligibleReplica(String),
    /// The sender is not the partition's leader.
    #[error("{0}")]
    NotLeader(String),
    /// The sender does not coordinate the group (any more).
    #[error("{0}")]
    NotCoordinator(String),
    /// The group's generation is not the one the write is based on.
    #[error("{0}")]
    IllegalGeneration(String),
    #[error("{0}")]
    UnknownMemberId(String),
    #[error("{0}")]
    GroupIdNotFound(String),
    #[error("{0}")]
    NonEmptyGroup(String),
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

/// The BrokerHeartbeat tagged field carrying
/// [`BrokerHeartbeat::metadata_replayed_offset`] (an i64, big-endian): a
/// Sluice extension, far from Kafka's own tags; other controllers ignore it.
pub const METADATA_REPLAYED_OFFSET_TAG: i32 = 10_000;

/// A broker's periodic heartbeat (Kafka's BrokerHeartbeat).
#[derive(Clone, Debug)]
pub struct BrokerHeartbeat {
    pub broker_id: i32,
    pub broker_epoch: i64,
    /// The highest metadata offset the broker has applied.
    pub metadata_offset: u64,
    /// The highest metadata offset the broker has received and replayed
    /// into the image it is applying (never below `metadata_offset`; 0 when
    /// unknown). Ahead of `metadata_offset`, the broker is busy applying an
    /// entry (a leadership change over 100,000 partitions takes seconds),
    /// not stuck behind a stale source. Sent as a tagged field of Kafka's
    /// BrokerHeartbeat, [`METADATA_REPLAYED_OFFSET_TAG`].
    pub metadata_replayed_offset: u64,
    /// True while the broker is starting and wants to stay fenced.
    pub want_fence: bool,
    /// True when the broker is shutting down and wants its leaderships moved.
    pub want_shutdown: bool,
}

/// The controller's answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// The broker has applied the metadata log far enough to serve.
    pub is_caught_up: bool,
    pub is_fenced: bool,
    /// Controlled shutdown is complete: the broker leads nothing and may exit.
    pub should_shutdown: bool,
}

/// A leader's request to change a partition's ISR (Kafka's AlterPartition).
#[derive(Clone, Debug)]
pub struct IsrChange {
    pub topic_id: Uuid,
    pub partition: i32,
    /// The leader epoch the sender leads under.
    pub leader_epoch: i32,
    /// The partition epoch the sender's view is based on.
    pub partition_epoch: i32,
    pub new_isr: Vec<i32>,
    /// Members of `new_isr` with the broker epoch of the registration whose
    /// fetches showed them in sync (KIP-903; AlterPartition v3's
    /// `NewIsrWithEpochs`). The controller refuses to add a replica whose
    /// broker has registered again since: it may have lost what it had
    /// fetched. A member not listed, or at -1, is not checked.
    pub broker_epochs: Vec<(i32, i64)>,
}

/// A partition's state after a committed ISR change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionState {
    pub leader: i32,
    pub leader_epoch: i32,
    pub isr: Vec<i32>,
    pub partition_epoch: i32,
}

/// One config change: `None` deletes the dynamic value.
#[derive(Clone, Debug)]
pub struct ConfigChange {
    pub name: String,
    pub value: Option<String>,
}

/// The broker writing a group's state: it must coordinate the group in the
/// controller's image, under this registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupWriter {
    pub broker_id: i32,
    pub broker_epoch: i64,
}

/// A change a group coordinator commits to the metadata log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupWrite {
    /// A completed generation, or the empty group every member left.
    /// Refused unless the committed generation is still
    /// `expected_generation` (0: the group has none), so two coordinators
    /// can never both move a group on.
    Membership {
        expected_generation: i32,
        group: GroupRecord,
    },
    /// Offsets committed by a member of `generation`, or by a client
    /// outside group management (generation -1).
    CommitOffsets {
        group_id: String,
        generation: i32,
        member_id: String,
        offsets: Vec<TopicOffsets>,
    },
    /// A rebalance began in a group whose committed `generation` has no
    /// members: the group is in use again, so its offsets' retention counts
    /// from `at_ms` (Kafka expires nothing of a group that is rebalancing;
    /// expiry runs on the controller, which sees only committed state).
    /// Refused when the group is no longer at `generation` (it was expired
    /// or deleted meanwhile): the rebalance then starts a new group.
    RebalanceStarted {
        group_id: String,
        generation: i32,
        at_ms: i64,
    },
    /// Removes an empty group and all its offsets.
    DeleteGroup { group_id: String },
    DeleteOffsets {
        group_id: String,
        partitions: Vec<(String, i32)>,
    },
    /// Removes the group's offsets that are past `retention_ms` at `now_ms`,
    /// and the group once nothing is left and it has been empty `grace_ms`,
    /// judged on the state the write lands on (a commit just before it
    /// counts). A ZooKeeper-mode coordinator expires what it stores this
    /// way; KRaft's controller expires on its own image.
    ExpireOffsets {
        group_id: String,
        now_ms: i64,
        retention_ms: i64,
        grace_ms: i64,
    },
}

impl GroupWrite {
    pub fn group_id(&self) -> &str {
        match self {
            GroupWrite::Membership { group, .. } => &group.group_id,
            GroupWrite::CommitOffsets { group_id, .. }
            | GroupWrite::RebalanceStarted { group_id, .. }
            | GroupWrite::DeleteGroup { group_id }
            | GroupWrite::DeleteOffsets { group_id, .. }
            | GroupWrite::ExpireOffsets { group_id, .. } => group_id,
        }
    }
}

/// A group write as a broker sends it to a remote controller, in an
/// Envelope request on the controller listener: Kafka has no request for
/// writing a group's state to the metadata log, so the payload is this, as
/// JSON like the log's own records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupWriteRequest {
    pub writer: GroupWriter,
    pub write: GroupWrite,
}

impl GroupWriteRequest {
    pub fn encode(&self) -> Vec<u8> {
        // Plain data with string keys always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl GroupWriteOutcome {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A committed group write.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupWriteOutcome {
    /// The metadata log entry the write committed in (or the latest entry,
    /// when there was nothing to write). An image this far along shows it.
    pub log_offset: u64,
    /// Partitions of a CommitOffsets that were not committed because the
    /// topic or partition does not exist.
    pub unknown_partitions: Vec<(String, i32)>,
}

/// Committed metadata entries as a controller serves them to brokers that
/// follow the log (observers).
pub trait MetadataLogSource: Send + Sync {
    /// Committed entries with an offset of at least `from`, in order, up to
    /// about `max_bytes` (at least one when any is there). `None` when
    /// entries from `from` on are no longer kept: load the snapshot.
    fn read_entries(&self, from: u64, max_bytes: usize) -> Option<Vec<(u64, Bytes)>>;
    /// The offset of the last committed entry this node has applied.
    fn last_offset(&self) -> u64;
    /// This node's whole image as snapshot records, with its offset.
    fn snapshot(&self) -> (u64, Vec<u8>);
    /// Resolves when an entry after `offset` has been applied, or after `max_wait`.
    fn wait_beyond(&self, offset: u64, max_wait: std::time::Duration) -> BoxFuture<'_, ()>;
    /// The quorum's leader as this node knows it, with its term, or `None`
    /// when it knows none (an election is on, it is cut off from the other
    /// voters, or its quorum loop has stopped): its log may then be frozen,
    /// and a follower of the log should go to the leader (as KRaft's
    /// observers do).
    fn quorum_leader(&self) -> Option<QuorumLeader>;
}

/// A quorum leader and its term (Kafka's leader id and epoch of the metadata log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumLeader {
    pub leader_id: i32,
    pub term: i32,
}

/// One voter's or observer's replication state, for DescribeQuorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaProgress {
    pub node_id: i32,
    /// The last offset known to be replicated to this node (-1 unknown).
    pub log_end_offset: i64,
}

/// The quorum as its leader sees it (Kafka's DescribeQuorum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumDescription {
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub high_watermark: i64,
    pub voters: Vec<ReplicaProgress>,
    pub observers: Vec<ReplicaProgress>,
}

pub trait ControllerApi: Send + Sync {
    /// The node id of the active controller, when one is known.
    fn active_controller_id(&self) -> Option<i32>;

    /// The quorum's state; `NotController` on a node that is not the leader.
    fn describe_quorum(&self) -> Result<QuorumDescription, ControllerError> {
        Err(ControllerError::NotController(
            "this node does not run a controller".into(),
        ))
    }

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

    /// The dynamic configs of `topics` as the metadata store holds them now,
    /// one answer per topic in order, so a broker shows a change another
    /// broker has already acknowledged. `None` means this broker's image is
    /// the answer: KRaft mode, where changes reach brokers through the log
    /// (and Kafka too answers from the image). ZooKeeper mode reads the
    /// config znodes, as Kafka's ZooKeeper-mode brokers did.
    fn stored_topic_configs(
        &self,
        _topics: Vec<String>,
    ) -> BoxFuture<'_, Option<Vec<Result<TopicConfig, ControllerError>>>> {
        Box::pin(async { None })
    }

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

    /// Keeps the broker's session alive and moves it between fenced,
    /// unfenced and shutting down.
    fn broker_heartbeat(
        &self,
        heartbeat: BrokerHeartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, ControllerError>>;

    /// Commits ISR changes asked for by the partitions' leader; one result
    /// per change, in order.
    fn alter_partition(
        &self,
        broker_id: i32,
        broker_epoch: i64,
        changes: Vec<IsrChange>,
    ) -> BoxFuture<'_, Vec<Result<PartitionState, ControllerError>>>;

    /// Commits a change to a consumer group on behalf of its coordinator.
    fn write_group(
        &self,
        writer: GroupWriter,
        write: GroupWrite,
    ) -> BoxFuture<'_, Result<GroupWriteOutcome, ControllerError>>;
}
