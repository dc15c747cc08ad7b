//! Request handlers: each is a function from a decoded request and the
//! broker's state to a response; none of them touches a socket.

pub(crate) mod admin;
pub(crate) mod configs;
pub(crate) mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::ControllerApi;
use tokio::sync::{watch, Mutex};

use crate::config::BrokerConfig;
use crate::control_plane::{self, ControlPlane};
use crate::fetch_session::FetchSessions;
use crate::group::GroupCoordinator;
use crate::memory::{MemoryLease, MemoryPool};
use crate::replica::ReplicaManager;

/// What a handler produces: a response, or nothing (produce with acks=0).
pub enum Reply {
    Response(Box<ResponseKind>),
    /// A response whose data is leased from the memory pool until written.
    Holding(Box<ResponseKind>, MemoryLease),
    None,
}

/// Everything a request handler may use.
pub struct Broker {
    pub config: BrokerConfig,
    pub replicas: Arc<ReplicaManager>,
    pub controller: Arc<dyn ControllerApi>,
    /// The consumer groups this broker coordinates.
    pub groups: Arc<GroupCoordinator>,
    /// The port the Kafka listener actually bound.
    pub bound_port: u16,
    /// Bounds the memory of requests and fetched data in flight
    /// (`queued.max.request.bytes`).
    pub memory: MemoryPool,
    producer_ids: Mutex<ProducerIdBlock>,
    /// A ZooKeeper-mode node's control plane, which takes the controller's
    /// pushes; KRaft nodes have none.
    control_plane: OnceLock<Arc<dyn ControlPlane>>,
    /// False while a ZooKeeper-mode broker has not yet joined: its listener
    /// is up for the controller's pushes, but its image may still be empty,
    /// and a client told "unknown topic" then drops the topic's partitions.
    clients_admitted: watch::Sender<bool>,
    /// Followers' incremental fetch sessions (KIP-227).
    pub(crate) fetch_sessions: FetchSessions,
}

/// Producer ids this broker may hand out without asking the controller.
#[derive(Default)]
struct ProducerIdBlock {
    next: i64,
    end: i64,
}

const PRODUCER_ID_BLOCK: i64 = 1000;

impl Broker {
    pub fn new(
        config: BrokerConfig,
        replicas: Arc<ReplicaManager>,
        controller: Arc<dyn ControllerApi>,
        groups: Arc<GroupCoordinator>,
        bound_port: u16,
    ) -> Self {
        let memory = MemoryPool::new(usize::try_from(config.queued_max_request_bytes).ok());
        Self {
            config,
            replicas,
            controller,
            groups,
            bound_port,
            memory,
            producer_ids: Mutex::new(ProducerIdBlock::default()),
            control_plane: OnceLock::new(),
            clients_admitted: watch::Sender::new(true),
            fetch_sessions: FetchSessions::default(),
        }
    }

    /// Client requests wait (on their connection) until [`Broker::admit_clients`];
    /// ApiVersions and the controller's pushes are answered meanwhile.
    pub fn hold_clients(&self) {
        self.clients_admitted.send_replace(false);
    }

    pub fn admit_clients(&self) {
        self.clients_admitted.send_replace(true);
    }

    async fn clients_admitted(&self) {
        let mut admitted = self.clients_admitted.subscribe();
        // The sender lives as long as `self`: this cannot fail while we wait.
        let _ = admitted.wait_for(|&admitted| admitted).await;
    }

    /// Routes control requests (a ZooKeeper-mode controller's pushes) to `plane`.
    pub fn set_control_plane(&self, plane: Arc<dyn ControlPlane>) {
        let _ = self.control_plane.set(plane);
    }

    pub(crate) fn takes_control_requests(&self) -> bool {
        self.control_plane.get().is_some()
    }

    pub fn advertised_port(&self) -> u16 {
        if self.config.advertised_port == 0 {
            self.bound_port
        } else {
            self.config.advertised_port
        }
    }

    /// The "controller" clients are told about. Admin clients send
    /// controller-bound requests to it, so it must be a broker they can
    /// reach: the active controller when it is also a broker here, and this
    /// broker otherwise (it forwards them), as Kafka's KRaft brokers do.
    pub fn controller_id_for_clients(&self) -> i32 {
        let image = self.replicas.image();
        match self.controller.active_controller_id() {
            Some(id) if image.brokers.get(&id).is_some_and(|b| !b.fenced) => id,
            _ => self.config.node_id,
        }
    }

    /// The next producer id, taking a new block from the controller when
    /// this broker's block is used up.
    async fn next_producer_id(&self) -> Result<i64, ResponseError> {
        let mut block = self.producer_ids.lock().await;
        self.refill_producer_ids(&mut block).await?;
        let id = block.next;
        block.next += 1;
        Ok(id)
    }

    /// Takes a block of producer ids now, so that idempotent producers can
    /// start while the control plane is unreachable (a ZooKeeper-mode
    /// broker during an ensemble outage), as Kafka's brokers take their
    /// first block at start-up.
    pub async fn reserve_producer_ids(&self) -> Result<(), ResponseError> {
        let mut block = self.producer_ids.lock().await;
        self.refill_producer_ids(&mut block).await
    }

    async fn refill_producer_ids(&self, block: &mut ProducerIdBlock) -> Result<(), ResponseError> {
        if block.next >= block.end {
            let first = self
                .controller
                .allocate_producer_ids(self.config.node_id, PRODUCER_ID_BLOCK)
                .await
                .map_err(|e| crate::errors::controller_error(&e))?;
            block.next = first;
            block.end = first + PRODUCER_ID_BLOCK;
        }
        Ok(())
    }
}

/// The APIs and version ranges this broker serves. Produce is advertised
/// from version 0 as Kafka does (librdkafka reads a higher minimum as "no
/// compression support"), but versions below 3 are refused when used.
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
];

/// The lowest Produce version this broker can decode (record batch v2).
const MIN_DECODABLE_PRODUCE: i16 = 3;

pub fn supports(api_key: ApiKey, version: i16) -> bool {
    SUPPORTED.iter().any(|&(key, min, max)| {
        key == api_key
            && version <= max
            && version
                >= if key == ApiKey::Produce {
                    MIN_DECODABLE_PRODUCE
                } else {
                    min
                }
    })
}

fn api_version_list() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

/// The answer to an ApiVersions request of a version we do not speak: a v0
/// response carrying UNSUPPORTED_VERSION and our ranges, so the client can
/// retry with a version we do.
pub fn api_versions_unsupported() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_version_list())
}

pub async fn dispatch(
    broker: &Broker,
    header: &RequestHeader,
    api_key: ApiKey,
    mut body: Bytes,
    peer: SocketAddr,
    listener: &str,
) -> anyhow::Result<Reply> {
    if !matches!(api_key, ApiKey::ApiVersions | ApiKey::Envelope) {
        broker.clients_admitted().await;
    }
    let version = header.request_api_version;
    let request = RequestKind::decode(api_key, &mut body, version)?;
    let response = match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(
            ApiVersionsResponse::default().with_api_keys(api_version_list()),
        ),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(metadata::metadata(broker, r, version, listener).await)
        }
        RequestKind::Produce(r) => match produce::produce(broker, r, version).await {
            produce::ProduceOutcome::Respond(response) => ResponseKind::Produce(response),
            produce::ProduceOutcome::Silent => return Ok(Reply::None),
            produce::ProduceOutcome::SilentFailure(failure) => {
                anyhow::bail!("acks=0 produce failed ({failure}); closing so the client refreshes its metadata")
            }
        },
        RequestKind::Fetch(r) => {
            let (response, lease) = fetch::fetch(broker, r, version).await;
            return Ok(Reply::Holding(
                Box::new(ResponseKind::Fetch(response)),
                lease,
            ));
        }
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(offsets::list_offsets(broker, r, version))
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(offsets::offset_for_leader_epoch(broker, r))
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(broker, r, version).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(broker, r, version).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(broker, r).await)
        }
        RequestKind::DescribeCluster(r) => {
            ResponseKind::DescribeCluster(admin::describe_cluster(broker, r, version, listener))
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(produce::init_producer_id(broker, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(configs::describe_configs(broker, r, version).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter_configs(broker, r).await,
        ),
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(configs::alter_configs(broker, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(broker, r, version, listener))
        }
        RequestKind::JoinGroup(r) => {
            let client_id = header.client_id.as_deref().unwrap_or_default();
            ResponseKind::JoinGroup(groups::join_group(broker, r, version, client_id, peer).await)
        }
        RequestKind::SyncGroup(r) => {
            ResponseKind::SyncGroup(groups::sync_group(broker, r, version).await)
        }
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(broker, r)),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(groups::leave_group(broker, r, version))
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(broker, r, version).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(broker, r, version).await)
        }
        RequestKind::ListGroups(r) => {
            ResponseKind::ListGroups(groups::list_groups(broker, r, version))
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(broker, r, version))
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(groups::delete_groups(broker, r).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(groups::offset_delete(broker, r).await)
        }
        RequestKind::Envelope(r) => ResponseKind::Envelope(
            control_plane::serve(broker.control_plane.get().map(|p| p.as_ref()), r).await,
        ),
        _ => anyhow::bail!("no handler for {api_key:?}"),
    };
    Ok(Reply::Response(Box::new(response)))
}

/// An error message as clients receive it.
/// The error for a partition this broker does not have open: a storage
/// error when it should host it but its log failed to open (clients retry
/// and refresh metadata), else unknown.
fn absent_partition_error(broker: &Broker, topic: &str, index: i32) -> ResponseError {
    if broker.replicas.offline_error(topic, index).is_some() {
        ResponseError::KafkaStorageError
    } else {
        ResponseError::UnknownTopicOrPartition
    }
}

fn message(text: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(text.into()))
}
