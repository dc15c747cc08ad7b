//! A broker's side of a remote controller quorum: [`RemoteController`]
//! sends what the broker asks of the active controller over the controller
//! listener, and [`follow_metadata_log`] keeps the broker's image in step
//! with the committed metadata log, as a Raft observer would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    alter_partition_request, broker_registration_request, create_partitions_request,
    create_topics_request, delete_topics_request, fetch_request, fetch_snapshot_request,
    incremental_alter_configs_request, AllocateProducerIdsRequest, AlterPartitionRequest,
    BrokerHeartbeatRequest, BrokerId, BrokerRegistrationRequest, CreatePartitionsRequest,
    CreateTopicsRequest, DeleteTopicsRequest, DescribeQuorumRequest, EnvelopeRequest, FetchRequest,
    FetchSnapshotRequest, IncrementalAlterConfigsRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::{
    self as api, BoxFuture, ConfigChange, ControllerApi, ControllerError, CreatedTopic, GroupWrite,
    GroupWriteOutcome, GroupWriteRequest, GroupWriter, HeartbeatReply, IsrChange, NewPartitions,
    NewTopic, PartitionState, TopicRef,
};
use sluice_metadata::{ConfigResource, MetadataImage, MetadataLoader, Publisher, Uuid};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::controller_service::METADATA_TOPIC;
use crate::errors::controller_error_from_code;
use crate::kafka_client::{ClientError, KafkaClient};
use crate::lifecycle::ImageWatch;

const CLIENT_ID: &str = "sluice-broker";

/// Connections to the active controller kept for reuse. A controller
/// connection carries one request at a time, so busy group coordinators
/// (one offset commit per request) need many; fewer would mean a new
/// connection and version handshake per commit under load.
const MAX_IDLE_CONNECTIONS: usize = 64;

/// The active controller, reached over the network.
pub struct RemoteController {
    cluster_id: String,
    /// Each controller's id and address (`controller.quorum.voters`).
    voters: Vec<(i32, String)>,
    /// Connections to the active controller, reused between calls.
    idle: Mutex<Vec<(i32, KafkaClient)>>,
    leader: Mutex<Option<i32>>,
    timeout: Duration,
}

fn not_controller(text: impl Into<String>) -> ControllerError {
    ControllerError::NotController(text.into())
}

impl RemoteController {
    pub fn new(cluster_id: String, voters: Vec<(i32, String)>, timeout: Duration) -> Self {
        Self {
            cluster_id,
            voters,
            idle: Mutex::new(Vec::new()),
            leader: Mutex::new(None),
            timeout,
        }
    }

    fn leader_hint(&self) -> Option<i32> {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_leader(&self, leader: Option<i32>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// Asks the controllers in turn who leads the quorum.
    async fn find_leader(&self) -> Option<i32> {
        for (id, address) in &self.voters {
            let Ok(mut client) = KafkaClient::connect(address, CLIENT_ID).await else {
                continue;
            };
            client.set_request_timeout(Duration::from_secs(2));
            match client.send(DescribeQuorumRequest::default()).await {
                Ok(r) if r.error_code == 0 => {
                    let leader = r
                        .topics
                        .first()
                        .and_then(|t| t.partitions.first())
                        .map(|p| p.leader_id.0);
                    if leader.is_some() {
                        self.give_back(*id, client);
                        return leader;
                    }
                }
                Ok(_) | Err(_) => continue,
            }
        }
        None
    }

    fn give_back(&self, id: i32, client: KafkaClient) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push((id, client));
        }
    }

    async fn connection(&self) -> Result<(i32, KafkaClient), ControllerError> {
        let leader = match self.leader_hint() {
            Some(id) => id,
            None => {
                let id = self
                    .find_leader()
                    .await
                    .ok_or_else(|| not_controller("no controller knows a quorum leader"))?;
                self.set_leader(Some(id));
                id
            }
        };
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|(id, _)| *id == leader);
            if let Some(pair) = idle.pop() {
                return Ok(pair);
            }
        }
        let address = self
            .voters
            .iter()
            .find(|(id, _)| *id == leader)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| not_controller(format!("controller {leader} is not a known voter")))?;
        let client = KafkaClient::connect(&address, CLIENT_ID)
            .await
            .map_err(|e| {
                self.set_leader(None);
                not_controller(e.to_string())
            })?;
        Ok((leader, client))
    }

    /// Sends a request to the active controller, finding it again and
    /// retrying while the answer is NOT_CONTROLLER or the connection fails,
    /// until the request timeout.
    async fn call<R: Request + Clone>(
        &self,
        request: R,
        top_error: impl Fn(&R::Response) -> i16,
    ) -> Result<R::Response, ControllerError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut last = not_controller("no attempt made");
        while tokio::time::Instant::now() < deadline {
            match self.connection().await {
                Ok((id, mut client)) => match client.send(request.clone()).await {
                    Ok(response) if top_error(&response) == ResponseError::NotController.code() => {
                        self.set_leader(None);
                        last = not_controller(format!("controller {id} is no longer active"));
                    }
                    Ok(response) => {
                        self.give_back(id, client);
                        return Ok(response);
                    }
                    Err(e @ ClientError::Timeout(_)) => {
                        // The request may still take effect; do not resend it.
                        self.set_leader(None);
                        return Err(ControllerError::Timeout)
                            .inspect_err(|_| debug!(error = %e, "controller request timed out"));
                    }
                    Err(e) => {
                        self.set_leader(None);
                        last = not_controller(e.to_string());
                    }
                },
                Err(e) => last = e,
            }
            // Short: a new leader is usually elected within a second.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn error_of(code: i16, message: Option<&StrBytes>) -> Option<ControllerError> {
    (code != 0).then(|| controller_error_from_code(code, message.map_or("", |m| m.as_str())))
}

impl ControllerApi for RemoteController {
    fn active_controller_id(&self) -> Option<i32> {
        self.leader_hint()
    }

    fn write_group(
        &self,
        writer: GroupWriter,
        write: GroupWrite,
    ) -> BoxFuture<'_, Result<GroupWriteOutcome, ControllerError>> {
        Box::pin(async move {
            let request = EnvelopeRequest::default()
                .with_request_data(Bytes::from(GroupWriteRequest { writer, write }.encode()))
                .with_client_host_address(Bytes::new());
            let response = self.call(request, |r| r.error_code).await?;
            let data = response.response_data.unwrap_or_default();
            if response.error_code != 0 {
                // A refused write carries its reason as text.
                let message = String::from_utf8_lossy(&data);
                return Err(controller_error_from_code(response.error_code, &message));
            }
            GroupWriteOutcome::decode(&data).map_err(|e| {
                ControllerError::Internal(format!("the controller's answer is not valid: {e}"))
            })
        })
    }

    fn create_topics(
        &self,
        topics: Vec<NewTopic>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<CreatedTopic, ControllerError>>> {
        Box::pin(async move {
            let count = topics.len();
            let request = CreateTopicsRequest::default()
                .with_timeout_ms(self.timeout.as_millis() as i32)
                .with_validate_only(validate_only)
                .with_topics(
                    topics
                        .iter()
                        .map(|t| {
                            create_topics_request::CreatableTopic::default()
                                .with_name(name(&t.name))
                                .with_num_partitions(t.num_partitions)
                                .with_replication_factor(t.replication_factor)
                                .with_assignments(
                                    t.assignments
                                        .iter()
                                        .map(|(p, replicas)| {
                                            create_topics_request::CreatableReplicaAssignment::default()
                                                .with_partition_index(*p)
                                                .with_broker_ids(replicas.iter().map(|&b| BrokerId(b)).collect())
                                        })
                                        .collect(),
                                )
                                .with_configs(
                                    t.configs
                                        .iter()
                                        .map(|(k, v)| {
                                            create_topics_request::CreatableTopicConfig::default()
                                                .with_name(StrBytes::from_string(k.clone()))
                                                .with_value(Some(StrBytes::from_string(v.clone())))
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            let response = match self
                .call(request, |r| r.topics.first().map_or(0, |t| t.error_code))
                .await
            {
                Ok(r) => r,
                Err(e) => return vec![Err(e); count],
            };
            topics
                .iter()
                .map(|t| {
                    let r = response
                        .topics
                        .iter()
                        .find(|r| r.name.as_str() == t.name)
                        .ok_or_else(|| ControllerError::Internal("no answer for topic".into()))?;
                    if let Some(e) = error_of(r.error_code, r.error_message.as_ref()) {
                        return Err(e);
                    }
                    Ok(CreatedTopic {
                        topic_id: r.topic_id,
                        num_partitions: r.num_partitions,
                        replication_factor: r.replication_factor,
                    })
                })
                .collect()
        })
    }

    fn delete_topics(
        &self,
        topics: Vec<TopicRef>,
    ) -> BoxFuture<'_, Vec<Result<(String, Uuid), ControllerError>>> {
        Box::pin(async move {
            let count = topics.len();
            let request = DeleteTopicsRequest::default()
                .with_timeout_ms(self.timeout.as_millis() as i32)
                .with_topics(
                    topics
                        .iter()
                        .map(|t| match t {
                            TopicRef::Name(n) => delete_topics_request::DeleteTopicState::default()
                                .with_name(Some(name(n))),
                            TopicRef::Id(id) => delete_topics_request::DeleteTopicState::default()
                                .with_name(None)
                                .with_topic_id(*id),
                        })
                        .collect(),
                );
            let response = match self
                .call(request, |r| r.responses.first().map_or(0, |t| t.error_code))
                .await
            {
                Ok(r) => r,
                Err(e) => return vec![Err(e); count],
            };
            let mut answers = response.responses.into_iter();
            (0..count)
                .map(|_| {
                    let r = answers
                        .next()
                        .ok_or_else(|| ControllerError::Internal("no answer for topic".into()))?;
                    if let Some(e) = error_of(r.error_code, r.error_message.as_ref()) {
                        return Err(e);
                    }
                    Ok((
                        r.name.map(|n| n.0.to_string()).unwrap_or_default(),
                        r.topic_id,
                    ))
                })
                .collect()
        })
    }

    fn create_partitions(
        &self,
        requests: Vec<NewPartitions>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async move {
            let count = requests.len();
            let request = CreatePartitionsRequest::default()
                .with_timeout_ms(self.timeout.as_millis() as i32)
                .with_validate_only(validate_only)
                .with_topics(
                    requests
                        .iter()
                        .map(|r| {
                            create_partitions_request::CreatePartitionsTopic::default()
                                .with_name(name(&r.topic))
                                .with_count(r.count)
                                .with_assignments(r.assignments.as_ref().map(|a| {
                                    a.iter()
                                        .map(|replicas| {
                                            create_partitions_request::CreatePartitionsAssignment::default()
                                                .with_broker_ids(replicas.iter().map(|&b| BrokerId(b)).collect())
                                        })
                                        .collect()
                                }))
                        })
                        .collect(),
                );
            let response = match self
                .call(request, |r| r.results.first().map_or(0, |t| t.error_code))
                .await
            {
                Ok(r) => r,
                Err(e) => return vec![Err(e); count],
            };
            requests
                .iter()
                .map(|req| {
                    let r = response
                        .results
                        .iter()
                        .find(|r| r.name.as_str() == req.topic)
                        .ok_or_else(|| ControllerError::Internal("no answer for topic".into()))?;
                    match error_of(r.error_code, r.error_message.as_ref()) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    }
                })
                .collect()
        })
    }

    fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, Vec<ConfigChange>)>,
        validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        Box::pin(async move {
            const SET: i8 = 0;
            const DELETE: i8 = 1;
            let count = changes.len();
            let resources = changes
                .iter()
                .map(|(resource, entries)| {
                    let (kind, resource_name) = match resource {
                        ConfigResource::Topic(t) => (2, t.clone()),
                        ConfigResource::Broker(id) => {
                            (4, id.map(|i| i.to_string()).unwrap_or_default())
                        }
                    };
                    incremental_alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(kind)
                        .with_resource_name(StrBytes::from_string(resource_name))
                        .with_configs(
                            entries
                                .iter()
                                .map(|c| {
                                    incremental_alter_configs_request::AlterableConfig::default()
                                        .with_name(StrBytes::from_string(c.name.clone()))
                                        .with_config_operation(if c.value.is_some() {
                                            SET
                                        } else {
                                            DELETE
                                        })
                                        .with_value(c.value.clone().map(StrBytes::from_string))
                                })
                                .collect(),
                        )
                })
                .collect();
            let request = IncrementalAlterConfigsRequest::default()
                .with_validate_only(validate_only)
                .with_resources(resources);
            let response = match self
                .call(request, |r| r.responses.first().map_or(0, |t| t.error_code))
                .await
            {
                Ok(r) => r,
                Err(e) => return vec![Err(e); count],
            };
            let mut answers = response.responses.into_iter();
            (0..count)
                .map(|_| match answers.next() {
                    Some(r) => match error_of(r.error_code, r.error_message.as_ref()) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    },
                    None => Err(ControllerError::Internal("no answer for resource".into())),
                })
                .collect()
        })
    }

    fn register_broker(
        &self,
        request: api::BrokerRegistrationRequest,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async move {
            let kafka = BrokerRegistrationRequest::default()
                .with_broker_id(BrokerId(request.broker_id))
                .with_cluster_id(StrBytes::from_string(self.cluster_id.clone()))
                .with_incarnation_id(request.incarnation_id)
                .with_rack(request.rack.map(StrBytes::from_string))
                .with_listeners(
                    request
                        .endpoints
                        .iter()
                        .map(|e| {
                            broker_registration_request::Listener::default()
                                .with_name(StrBytes::from_string(e.listener.clone()))
                                .with_host(StrBytes::from_string(e.host.clone()))
                                .with_port(e.port)
                        })
                        .collect(),
                );
            let r = self.call(kafka, |r| r.error_code).await?;
            match error_of(r.error_code, None) {
                Some(e) => Err(e),
                None => Ok(r.broker_epoch),
            }
        })
    }

    fn allocate_producer_ids(
        &self,
        broker_id: i32,
        _count: i64,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async move {
            let request = AllocateProducerIdsRequest::default().with_broker_id(BrokerId(broker_id));
            let r = self.call(request, |r| r.error_code).await?;
            match error_of(r.error_code, None) {
                Some(e) => Err(e),
                None => Ok(r.producer_id_start.0),
            }
        })
    }

    fn broker_heartbeat(
        &self,
        heartbeat: api::BrokerHeartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, ControllerError>> {
        Box::pin(async move {
            let request = heartbeat_request(&heartbeat);
            let r = self.call(request, |r| r.error_code).await?;
            match error_of(r.error_code, None) {
                Some(e) => Err(e),
                None => Ok(HeartbeatReply {
                    is_caught_up: r.is_caught_up,
                    is_fenced: r.is_fenced,
                    should_shutdown: r.should_shut_down,
                }),
            }
        })
    }

    fn alter_partition(
        &self,
        broker_id: i32,
        broker_epoch: i64,
        changes: Vec<IsrChange>,
    ) -> BoxFuture<'_, Vec<Result<PartitionState, ControllerError>>> {
        Box::pin(async move {
            let count = changes.len();
            let mut topics: Vec<alter_partition_request::TopicData> = Vec::new();
            for c in &changes {
                let partition = alter_partition_request::PartitionData::default()
                    .with_partition_index(c.partition)
                    .with_leader_epoch(c.leader_epoch)
                    .with_partition_epoch(c.partition_epoch)
                    .with_new_isr_with_epochs(
                        c.new_isr
                            .iter()
                            .map(|&b| {
                                let epoch = c
                                    .broker_epochs
                                    .iter()
                                    .find(|(id, _)| *id == b)
                                    .map_or(-1, |(_, epoch)| *epoch);
                                alter_partition_request::BrokerState::default()
                                    .with_broker_id(BrokerId(b))
                                    .with_broker_epoch(epoch)
                            })
                            .collect(),
                    );
                match topics.iter_mut().find(|t| t.topic_id == c.topic_id) {
                    Some(t) => t.partitions.push(partition),
                    None => topics.push(
                        alter_partition_request::TopicData::default()
                            .with_topic_id(c.topic_id)
                            .with_partitions(vec![partition]),
                    ),
                }
            }
            let request = AlterPartitionRequest::default()
                .with_broker_id(BrokerId(broker_id))
                .with_broker_epoch(broker_epoch)
                .with_topics(topics);
            let response = match self.call(request, |r| r.error_code).await {
                Ok(r) => r,
                Err(e) => return vec![Err(e); count],
            };
            if let Some(e) = error_of(response.error_code, None) {
                return vec![Err(e); count];
            }
            changes
                .iter()
                .map(|c| {
                    let p = response
                        .topics
                        .iter()
                        .filter(|t| t.topic_id == c.topic_id)
                        .flat_map(|t| t.partitions.iter())
                        .find(|p| p.partition_index == c.partition)
                        .ok_or_else(|| {
                            ControllerError::Internal("no answer for partition".into())
                        })?;
                    if let Some(e) = error_of(p.error_code, None) {
                        return Err(e);
                    }
                    Ok(PartitionState {
                        leader: p.leader_id.0,
                        leader_epoch: p.leader_epoch,
                        isr: p.isr.iter().map(|b| b.0).collect(),
                        partition_epoch: p.partition_epoch,
                    })
                })
                .collect()
        })
    }
}

/// Follows the committed metadata log from the controllers: fetches
/// entries after the image's offset (long polling), applies them in order
/// through a loader whose publishers see every change, and loads a snapshot
/// when the entries it needs are no longer kept. Runs until `stop`.
///
/// Like a KRaft observer it follows the quorum's leader. Every voter serves
/// the committed entries it has, so the broker keeps learning during an
/// election, but a voter that knows no leader may be cut off from the
/// quorum (or its quorum loop may have stopped) and its log frozen: the
/// broker leaves it for the leader it names, or else for the next voter.
pub fn follow_metadata_log(
    node_id: i32,
    voters: Vec<(i32, String)>,
    publishers: Vec<Arc<dyn Publisher>>,
    mut stop: watch::Receiver<bool>,
) -> FollowedMetadata {
    // The image is shown once every publisher has acted on it.
    let applied = Arc::new(ImageWatch::new());
    let image_rx = applied.subscribe();
    let (replayed_tx, replayed) = watch::channel(0u64);
    let mut publishers = publishers;
    publishers.push(applied);
    tokio::spawn(async move {
        let mut loader = match MetadataLoader::with_publisher_thread(publishers.clone()) {
            Ok(loader) => loader,
            Err(e) => {
                warn!(error = %e, "cannot start the metadata publisher thread; publishing inline");
                MetadataLoader::new(publishers)
            }
        };
        let mut next_voter = 0usize;
        loop {
            if voters.is_empty() || *stop.borrow() {
                return;
            }
            let index = next_voter % voters.len();
            let (voter_id, address) = &voters[index];
            next_voter = index + 1;
            let session = follow_from(node_id, *voter_id, address, &mut loader, &replayed_tx);
            let ended = tokio::select! {
                ended = session => ended,
                _ = stop.wait_for(|s| *s) => return,
            };
            match ended {
                Ok(SessionEnd::Leader(leader)) => {
                    if let Some(i) = voters.iter().position(|(id, _)| *id == leader) {
                        debug!(from = voter_id, to = leader, "following the quorum leader");
                        next_voter = i;
                        continue;
                    }
                    warn!(leader, "the quorum leader is not a configured voter");
                }
                Ok(SessionEnd::NoLeader) => {
                    info!(
                        controller = voter_id,
                        "the controller knows no quorum leader; following another"
                    );
                }
                Err(e) => {
                    debug!(controller = %address, error = %e, "metadata fetch interrupted")
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    FollowedMetadata {
        applied: image_rx,
        replayed,
    }
}

/// What [`follow_metadata_log`] shows of its progress.
pub struct FollowedMetadata {
    /// The image every publisher has acted on: what the broker serves.
    pub applied: watch::Receiver<Arc<MetadataImage>>,
    /// The offset of the newest entry received and replayed, which the
    /// publishers may still be acting on.
    pub replayed: watch::Receiver<u64>,
}

/// Kafka's BrokerHeartbeat, with Sluice's replayed offset as a tagged field.
fn heartbeat_request(heartbeat: &api::BrokerHeartbeat) -> BrokerHeartbeatRequest {
    let mut request = BrokerHeartbeatRequest::default()
        .with_broker_id(BrokerId(heartbeat.broker_id))
        .with_broker_epoch(heartbeat.broker_epoch)
        .with_current_metadata_offset(heartbeat.metadata_offset as i64)
        .with_want_fence(heartbeat.want_fence)
        .with_want_shut_down(heartbeat.want_shutdown);
    request.unknown_tagged_fields.insert(
        api::METADATA_REPLAYED_OFFSET_TAG,
        Bytes::copy_from_slice(&(heartbeat.metadata_replayed_offset as i64).to_be_bytes()),
    );
    request
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("controller answered error code {0}")]
    Kafka(i16),
    #[error("bad metadata records: {0}")]
    Records(String),
}

/// Why a follower left a voter in good order.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// The voter is not the leader; this one is.
    Leader(i32),
    /// The voter knows no leader.
    NoLeader,
}

/// Fetches from the voter `voter_id` at `address` while it is the quorum
/// leader (or says nothing of leaders), applying what it serves.
async fn follow_from(
    node_id: i32,
    voter_id: i32,
    address: &str,
    loader: &mut MetadataLoader,
    replayed: &watch::Sender<u64>,
) -> Result<SessionEnd, FollowError> {
    const MAX_BYTES: i32 = 8 * 1024 * 1024;
    let mut client = KafkaClient::connect(address, CLIENT_ID).await?;
    client.set_request_timeout(Duration::from_secs(10));
    loop {
        replayed.send_replace(loader.image().offset);
        let from = loader.image().offset as i64 + 1;
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(node_id))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(MAX_BYTES)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(name(METADATA_TOPIC))
                .with_partitions(vec![fetch_request::FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(from)
                    .with_partition_max_bytes(MAX_BYTES)])]);
        let response = client.send_version(request, 12).await?;
        let Some(p) = response
            .responses
            .into_iter()
            .next()
            .and_then(|t| t.partitions.into_iter().next())
        else {
            return Err(FollowError::Kafka(response.error_code));
        };
        // What this voter serves is committed whoever leads; where to fetch
        // next is decided once it is applied.
        let leader = p.current_leader.leader_id.0;
        let end = if leader < 0 {
            Some(SessionEnd::NoLeader)
        } else if leader != voter_id {
            Some(SessionEnd::Leader(leader))
        } else {
            None
        };
        if p.error_code == ResponseError::OffsetOutOfRange.code() && p.snapshot_id.end_offset > 0 {
            let end_offset = p.snapshot_id.end_offset;
            let data = fetch_snapshot(&mut client, end_offset).await?;
            let offset = (end_offset - 1) as u64;
            match loader.load_snapshot(offset, &data) {
                Ok(()) => info!(
                    offset,
                    bytes = data.len(),
                    "loaded metadata snapshot from the controller"
                ),
                Err(e) => return Err(FollowError::Records(e.to_string())),
            }
            continue;
        }
        if p.error_code != 0 {
            return Err(FollowError::Kafka(p.error_code));
        }
        // The source's high watermark is one past its last committed entry.
        let committed = (p.high_watermark - 1).max(0) as u64;
        if let Some(mut records) = p.records.filter(|r| !r.is_empty()) {
            let sets = RecordBatchDecoder::decode_all(&mut records)
                .map_err(|e| FollowError::Records(e.to_string()))?;
            for set in sets {
                for record in set.records {
                    let offset = record.offset as u64;
                    if offset <= loader.image().offset {
                        continue;
                    }
                    let data = record.value.unwrap_or_default();
                    if let Err(e) = loader.load_entry(offset, &data) {
                        // The controllers applied this entry; if this broker
                        // cannot, it is a bug, and the entry is skipped whole.
                        warn!(offset, error = %e, "metadata entry does not replay here; skipped");
                        loader.skip_entry(offset);
                    }
                }
            }
        }
        loader.set_committed_offset(committed);
        if let Some(end) = end {
            return Ok(end);
        }
    }
}

async fn fetch_snapshot(client: &mut KafkaClient, end_offset: i64) -> Result<Bytes, FollowError> {
    let mut data = Vec::new();
    loop {
        let request = FetchSnapshotRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_bytes(8 * 1024 * 1024)
            .with_topics(vec![fetch_snapshot_request::TopicSnapshot::default()
                .with_name(name(METADATA_TOPIC))
                .with_partitions(vec![
                    fetch_snapshot_request::PartitionSnapshot::default()
                        .with_partition(0)
                        .with_snapshot_id(
                            fetch_snapshot_request::SnapshotId::default()
                                .with_end_offset(end_offset)
                                .with_epoch(0),
                        )
                        .with_position(data.len() as i64),
                ])]);
        let response = client.send_version(request, 0).await?;
        let p = response
            .topics
            .into_iter()
            .next()
            .and_then(|t| t.partitions.into_iter().next())
            .ok_or(FollowError::Kafka(response.error_code))?;
        if p.error_code != 0 {
            return Err(FollowError::Kafka(p.error_code));
        }
        if p.unaligned_records.is_empty() && (data.len() as i64) < p.size {
            return Err(FollowError::Records("empty snapshot chunk".into()));
        }
        data.extend_from_slice(&p.unaligned_records);
        if data.len() as i64 >= p.size {
            return Ok(Bytes::from(data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller_service::replayed_offset_of;
    use bytes::BytesMut;
    use kafka_protocol::protocol::{Decodable, Encodable};

    #[test]
    fn the_replayed_offset_crosses_the_wire_in_every_heartbeat_version() {
        let heartbeat = api::BrokerHeartbeat {
            broker_id: 3,
            broker_epoch: 42,
            metadata_offset: 100,
            metadata_replayed_offset: 123_456,
            want_fence: false,
            want_shutdown: false,
        };
        for version in 0..=1 {
            let mut buf = BytesMut::new();
            heartbeat_request(&heartbeat)
                .encode(&mut buf, version)
                .unwrap();
            let decoded = BrokerHeartbeatRequest::decode(&mut buf.freeze(), version).unwrap();
            assert_eq!(decoded.current_metadata_offset, 100);
            assert_eq!(replayed_offset_of(&decoded), 123_456, "version {version}");
        }
        // A heartbeat without it (another broker's) reads as 0.
        assert_eq!(replayed_offset_of(&BrokerHeartbeatRequest::default()), 0);
    }
}
