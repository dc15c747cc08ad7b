//! The controller listener: what brokers and admin tools ask of a
//! controller, over the Kafka protocol, plus the Raft streams between
//! controllers (handed to the quorum).
//!
//! - Broker lifecycle: BrokerRegistration, BrokerHeartbeat, AlterPartition,
//!   AllocateProducerIds. Only the active controller accepts them; the others
//!   answer NOT_CONTROLLER.
//! - Admin requests brokers forward: CreateTopics, DeleteTopics,
//!   CreatePartitions, IncrementalAlterConfigs.
//! - The metadata log for brokers that follow it: Fetch of partition 0 of
//!   `__cluster_metadata` returns committed entries as record batches (one
//!   record per entry, its offset the entry's), and FetchSnapshot returns
//!   the whole image when the entries asked for are no longer kept. Any
//!   controller serves these, so brokers keep learning while a leader is
//!   being elected.
//! - DescribeQuorum: the leader, its term and each voter's progress.
//! - Envelope: a group coordinator's write to the metadata log (a
//!   generation, committed offsets, a deletion), as JSON.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    alter_partition_response, describe_quorum_response, fetch_response, fetch_snapshot_response,
    AllocateProducerIdsRequest, AllocateProducerIdsResponse, AlterPartitionRequest,
    AlterPartitionResponse, ApiKey, ApiVersionsRequest, ApiVersionsResponse,
    BrokerHeartbeatRequest, BrokerHeartbeatResponse, BrokerId, BrokerRegistrationRequest,
    BrokerRegistrationResponse, DescribeQuorumRequest, DescribeQuorumResponse, EnvelopeRequest,
    EnvelopeResponse, FetchRequest, FetchResponse, FetchSnapshotRequest, FetchSnapshotResponse,
    RequestHeader, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::{
    self as api, BoxFuture, ControllerApi, ControllerError, GroupWriteRequest, IsrChange,
    MetadataLogSource,
};
use sluice_metadata::Endpoint;
use tokio::net::tcp::OwnedReadHalf;

use crate::errors::controller_error;
use crate::handlers::{admin, configs, Reply};
use crate::server::Service;

/// The name brokers fetch the metadata log under, as in Kafka.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// Takes over a Raft stream from another controller.
pub type StreamAcceptor =
    Arc<dyn Fn(OwnedReadHalf, SocketAddr) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct ControllerService {
    pub node_id: i32,
    pub cluster_id: String,
    pub controller: Arc<dyn ControllerApi>,
    pub log: Arc<dyn MetadataLogSource>,
    pub raft_streams: StreamAcceptor,
    /// The controllers' addresses, for DescribeQuorum's node list.
    pub voters: Vec<(i32, String, u16)>,
    pub max_request_bytes: usize,
    pub max_connections: usize,
    /// Snapshots handed out, kept so each can be fetched in chunks.
    snapshots: Mutex<SnapshotCache>,
}

/// Snapshots handed to brokers that fell behind the kept entries, by
/// offset. A broker reads one in chunks over several requests, so a
/// snapshot stays while it is being read, even after another broker that
/// caught up later was handed a newer one; and a snapshot still recent
/// enough is handed to the next broker too, rather than encoding the whole
/// image once per broker.
#[derive(Default)]
struct SnapshotCache {
    /// offset -> (encoded image, last read).
    entries: BTreeMap<u64, (Bytes, Instant)>,
}

/// A snapshot nobody has read for this long is dropped.
const SNAPSHOT_IDLE: Duration = Duration::from_secs(60);
/// At most this many snapshots are kept (the least recently read goes).
const MAX_SNAPSHOTS: usize = 4;

impl SnapshotCache {
    fn get(&mut self, offset: u64) -> Option<Bytes> {
        let (bytes, used) = self.entries.get_mut(&offset)?;
        *used = Instant::now();
        Some(bytes.clone())
    }

    fn newest(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    fn insert(&mut self, offset: u64, bytes: Bytes) {
        let now = Instant::now();
        self.entries
            .retain(|_, (_, used)| now.duration_since(*used) < SNAPSHOT_IDLE);
        while self.entries.len() >= MAX_SNAPSHOTS {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(&offset, _)| offset);
            match oldest {
                Some(offset) => self.entries.remove(&offset),
                None => break,
            };
        }
        self.entries.insert(offset, (bytes, now));
    }
}

fn supported() -> Vec<(ApiKey, i16, i16)> {
    fn range<R: Request>(key: ApiKey) -> (ApiKey, i16, i16) {
        (key, R::VERSIONS.min, R::VERSIONS.max)
    }
    vec![
        range::<ApiVersionsRequest>(ApiKey::ApiVersions),
        range::<BrokerRegistrationRequest>(ApiKey::BrokerRegistration),
        range::<BrokerHeartbeatRequest>(ApiKey::BrokerHeartbeat),
        (ApiKey::AlterPartition, 0, 3),
        range::<AllocateProducerIdsRequest>(ApiKey::AllocateProducerIds),
        range::<DescribeQuorumRequest>(ApiKey::DescribeQuorum),
        (ApiKey::Fetch, 12, 12),
        (ApiKey::FetchSnapshot, 0, 0),
        (ApiKey::CreateTopics, 2, 7),
        (ApiKey::DeleteTopics, 1, 6),
        (ApiKey::CreatePartitions, 0, 3),
        (ApiKey::IncrementalAlterConfigs, 0, 1),
        range::<EnvelopeRequest>(ApiKey::Envelope),
    ]
}

fn api_versions() -> Vec<ApiVersion> {
    supported()
        .into_iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

impl ControllerService {
    pub fn new(
        node_id: i32,
        cluster_id: String,
        controller: Arc<dyn ControllerApi>,
        log: Arc<dyn MetadataLogSource>,
        raft_streams: StreamAcceptor,
        voters: Vec<(i32, String, u16)>,
    ) -> Self {
        Self {
            node_id,
            cluster_id,
            controller,
            log,
            raft_streams,
            voters,
            max_request_bytes: 104_857_600,
            max_connections: 10_000,
            snapshots: Mutex::new(SnapshotCache::default()),
        }
    }

    fn snapshots(&self) -> MutexGuard<'_, SnapshotCache> {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The offset of a snapshot a follower whose entries are gone can load
    /// and go on from: the newest one kept, if the entries after it are
    /// still there, or else a new one of the whole image.
    fn snapshot_for_follower(&self) -> u64 {
        let newest = self.snapshots().newest();
        if let Some(offset) = newest {
            if self.log.read_entries(offset + 1, 1).is_some() {
                return offset;
            }
        }
        // Encoded outside the lock: the image may be large.
        let (offset, bytes) = self.log.snapshot();
        self.snapshots().insert(offset, Bytes::from(bytes));
        offset
    }

    async fn handle(
        &self,
        api_key: ApiKey,
        version: i16,
        mut body: Bytes,
    ) -> anyhow::Result<ResponseKind> {
        let request = RequestKind::decode(api_key, &mut body, version)?;
        Ok(match request {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(
                ApiVersionsResponse::default().with_api_keys(api_versions()),
            ),
            RequestKind::BrokerRegistration(r) => {
                ResponseKind::BrokerRegistration(self.register(r).await)
            }
            RequestKind::BrokerHeartbeat(r) => {
                ResponseKind::BrokerHeartbeat(self.heartbeat(r).await)
            }
            RequestKind::AlterPartition(r) => {
                ResponseKind::AlterPartition(self.alter_partition(r).await)
            }
            RequestKind::AllocateProducerIds(r) => {
                ResponseKind::AllocateProducerIds(self.allocate_producer_ids(r).await)
            }
            RequestKind::DescribeQuorum(r) => ResponseKind::DescribeQuorum(self.describe_quorum(r)),
            RequestKind::Fetch(r) => ResponseKind::Fetch(self.fetch_log(r).await),
            RequestKind::FetchSnapshot(r) => ResponseKind::FetchSnapshot(self.fetch_snapshot(r)),
            RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(
                admin::forwarded_create_topics(self.controller.as_ref(), r).await,
            ),
            RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(
                admin::delete_topics_with(self.controller.as_ref(), r, version).await,
            ),
            RequestKind::CreatePartitions(r) => ResponseKind::CreatePartitions(
                admin::create_partitions_with(self.controller.as_ref(), r).await,
            ),
            RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
                configs::incremental_alter_configs_with(self.controller.as_ref(), r).await,
            ),
            RequestKind::Envelope(r) => ResponseKind::Envelope(self.write_group(r).await),
            _ => anyhow::bail!("no handler for {api_key:?} on the controller listener"),
        })
    }

    /// A group coordinator's write, carried in an Envelope (see
    /// [`GroupWriteRequest`]): the outcome as JSON, or an error code with
    /// its reason as text.
    async fn write_group(&self, r: EnvelopeRequest) -> EnvelopeResponse {
        let refused = |e: &ControllerError| {
            EnvelopeResponse::default()
                .with_error_code(controller_error(e).code())
                .with_response_data(Some(Bytes::from(e.to_string())))
        };
        let request = match GroupWriteRequest::decode(&r.request_data) {
            Ok(request) => request,
            Err(e) => {
                return refused(&ControllerError::InvalidRequest(format!(
                    "not a group write: {e}"
                )))
            }
        };
        match self
            .controller
            .write_group(request.writer, request.write)
            .await
        {
            Ok(outcome) => {
                EnvelopeResponse::default().with_response_data(Some(Bytes::from(outcome.encode())))
            }
            Err(e) => refused(&e),
        }
    }

    async fn register(&self, r: BrokerRegistrationRequest) -> BrokerRegistrationResponse {
        if r.cluster_id.as_str() != self.cluster_id {
            return BrokerRegistrationResponse::default()
                .with_error_code(ResponseError::InconsistentClusterId.code())
                .with_broker_epoch(-1);
        }
        let request = api::BrokerRegistrationRequest {
            broker_id: r.broker_id.0,
            incarnation_id: r.incarnation_id,
            endpoints: r
                .listeners
                .iter()
                .map(|l| Endpoint {
                    listener: l.name.to_string(),
                    host: l.host.to_string(),
                    port: l.port,
                })
                .collect(),
            rack: r.rack.as_ref().map(|s| s.to_string()),
        };
        match self.controller.register_broker(request).await {
            Ok(epoch) => BrokerRegistrationResponse::default().with_broker_epoch(epoch),
            Err(e) => BrokerRegistrationResponse::default()
                .with_error_code(controller_error(&e).code())
                .with_broker_epoch(-1),
        }
    }

    async fn heartbeat(&self, r: BrokerHeartbeatRequest) -> BrokerHeartbeatResponse {
        let heartbeat = api::BrokerHeartbeat {
            broker_id: r.broker_id.0,
            broker_epoch: r.broker_epoch,
            metadata_offset: r.current_metadata_offset.max(0) as u64,
            metadata_replayed_offset: replayed_offset_of(&r),
            want_fence: r.want_fence,
            want_shutdown: r.want_shut_down,
        };
        match self.controller.broker_heartbeat(heartbeat).await {
            Ok(reply) => BrokerHeartbeatResponse::default()
                .with_is_caught_up(reply.is_caught_up)
                .with_is_fenced(reply.is_fenced)
                .with_should_shut_down(reply.should_shutdown),
            Err(e) => BrokerHeartbeatResponse::default()
                .with_error_code(controller_error(&e).code())
                .with_is_fenced(true),
        }
    }

    async fn alter_partition(&self, r: AlterPartitionRequest) -> AlterPartitionResponse {
        let mut changes = Vec::new();
        for t in &r.topics {
            for p in &t.partitions {
                let (new_isr, broker_epochs) = if p.new_isr_with_epochs.is_empty() {
                    (p.new_isr.iter().map(|b| b.0).collect(), Vec::new())
                } else {
                    let members = &p.new_isr_with_epochs;
                    (
                        members.iter().map(|b| b.broker_id.0).collect(),
                        members
                            .iter()
                            .map(|b| (b.broker_id.0, b.broker_epoch))
                            .collect(),
                    )
                };
                changes.push(IsrChange {
                    topic_id: t.topic_id,
                    partition: p.partition_index,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    new_isr,
                    broker_epochs,
                });
            }
        }
        let results = self
            .controller
            .alter_partition(r.broker_id.0, r.broker_epoch, changes.clone())
            .await;
        if let Some(Err(
            e @ (ControllerError::NotController(_) | ControllerError::StaleBrokerEpoch { .. }),
        )) = results.first()
        {
            return AlterPartitionResponse::default().with_error_code(controller_error(e).code());
        }
        let mut topics: Vec<alter_partition_response::TopicData> = Vec::new();
        for (change, result) in changes.iter().zip(results) {
            let partition = match result {
                Ok(state) => alter_partition_response::PartitionData::default()
                    .with_partition_index(change.partition)
                    .with_leader_id(BrokerId(state.leader))
                    .with_leader_epoch(state.leader_epoch)
                    .with_isr(state.isr.iter().map(|&b| BrokerId(b)).collect())
                    .with_partition_epoch(state.partition_epoch),
                Err(e) => alter_partition_response::PartitionData::default()
                    .with_partition_index(change.partition)
                    .with_error_code(controller_error(&e).code()),
            };
            match topics.iter_mut().find(|t| t.topic_id == change.topic_id) {
                Some(t) => t.partitions.push(partition),
                None => topics.push(
                    alter_partition_response::TopicData::default()
                        .with_topic_id(change.topic_id)
                        .with_partitions(vec![partition]),
                ),
            }
        }
        AlterPartitionResponse::default().with_topics(topics)
    }

    async fn allocate_producer_ids(
        &self,
        r: AllocateProducerIdsRequest,
    ) -> AllocateProducerIdsResponse {
        const BLOCK: i32 = 1000;
        match self
            .controller
            .allocate_producer_ids(r.broker_id.0, i64::from(BLOCK))
            .await
        {
            Ok(first) => AllocateProducerIdsResponse::default()
                .with_producer_id_start(first.into())
                .with_producer_id_len(BLOCK),
            Err(e) => {
                AllocateProducerIdsResponse::default().with_error_code(controller_error(&e).code())
            }
        }
    }

    fn describe_quorum(&self, _r: DescribeQuorumRequest) -> DescribeQuorumResponse {
        let description = match self.controller.describe_quorum() {
            Ok(d) => d,
            Err(e) => {
                return DescribeQuorumResponse::default()
                    .with_error_code(controller_error(&e).code())
                    .with_error_message(Some(StrBytes::from_string(e.to_string())))
            }
        };
        let state = |p: &api::ReplicaProgress| {
            describe_quorum_response::ReplicaState::default()
                .with_replica_id(BrokerId(p.node_id))
                .with_log_end_offset(p.log_end_offset)
                .with_last_fetch_timestamp(-1)
                .with_last_caught_up_timestamp(-1)
        };
        let partition = describe_quorum_response::PartitionData::default()
            .with_partition_index(0)
            .with_leader_id(BrokerId(description.leader_id))
            .with_leader_epoch(description.leader_epoch)
            .with_high_watermark(description.high_watermark)
            .with_current_voters(description.voters.iter().map(state).collect())
            .with_observers(description.observers.iter().map(state).collect());
        let nodes = self
            .voters
            .iter()
            .map(|(id, host, port)| {
                describe_quorum_response::Node::default()
                    .with_node_id(BrokerId(*id))
                    .with_listeners(vec![describe_quorum_response::Listener::default()
                        .with_name(StrBytes::from_static_str("CONTROLLER"))
                        .with_host(StrBytes::from_string(host.clone()))
                        .with_port(*port)])
            })
            .collect();
        DescribeQuorumResponse::default()
            .with_topics(vec![describe_quorum_response::TopicData::default()
                .with_topic_name(StrBytes::from_static_str(METADATA_TOPIC).into())
                .with_partitions(vec![partition])])
            .with_nodes(nodes)
    }

    /// Serves committed metadata entries from the fetch offset on, waiting
    /// up to `max_wait_ms` for one when there is none yet.
    async fn fetch_log(&self, r: FetchRequest) -> FetchResponse {
        let Some(p) = r
            .topics
            .first()
            .filter(|t| t.topic.as_str() == METADATA_TOPIC)
            .and_then(|t| t.partitions.first())
        else {
            return FetchResponse::default().with_error_code(ResponseError::InvalidRequest.code());
        };
        let from = p.fetch_offset.max(1) as u64;
        let max_bytes = (r.max_bytes.max(1) as usize).min(p.partition_max_bytes.max(1) as usize);
        if self.log.last_offset() < from {
            let wait = Duration::from_millis(r.max_wait_ms.clamp(0, 30_000) as u64);
            self.log.wait_beyond(from - 1, wait).await;
        }
        // Who leads, as this voter knows it: a voter cut off from the quorum
        // (or whose quorum loop stopped) knows none, and its log is frozen,
        // so the follower goes elsewhere.
        let current_leader = match self.log.quorum_leader() {
            Some(l) => fetch_response::LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(l.leader_id))
                .with_leader_epoch(l.term),
            None => fetch_response::LeaderIdAndEpoch::default(),
        };
        let mut data = fetch_response::PartitionData::default()
            .with_partition_index(0)
            .with_high_watermark(self.log.last_offset() as i64 + 1)
            .with_log_start_offset(-1)
            .with_last_stable_offset(-1)
            .with_current_leader(current_leader);
        match self.log.read_entries(from, max_bytes) {
            Some(entries) => match encode_entries(&entries) {
                Ok(records) => data = data.with_records(Some(records)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode metadata entries");
                    data = data.with_error_code(ResponseError::UnknownServerError.code());
                }
            },
            None => {
                let offset = self.snapshot_for_follower();
                data = data
                    .with_error_code(ResponseError::OffsetOutOfRange.code())
                    .with_snapshot_id(
                        fetch_response::SnapshotId::default()
                            .with_end_offset(offset as i64 + 1)
                            .with_epoch(0),
                    );
            }
        }
        FetchResponse::default().with_responses(vec![
            fetch_response::FetchableTopicResponse::default()
                .with_topic(StrBytes::from_static_str(METADATA_TOPIC).into())
                .with_partitions(vec![data]),
        ])
    }

    fn fetch_snapshot(&self, r: FetchSnapshotRequest) -> FetchSnapshotResponse {
        let Some(p) = r.topics.first().and_then(|t| t.partitions.first()) else {
            return FetchSnapshotResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code());
        };
        let cached = u64::try_from(p.snapshot_id.end_offset - 1)
            .ok()
            .and_then(|offset| self.snapshots().get(offset))
            .map(|bytes| (p.snapshot_id.end_offset as u64 - 1, bytes));
        let mut partition = fetch_snapshot_response::PartitionSnapshot::default()
            .with_index(0)
            .with_snapshot_id(
                fetch_snapshot_response::SnapshotId::default()
                    .with_end_offset(p.snapshot_id.end_offset)
                    .with_epoch(p.snapshot_id.epoch),
            );
        match cached {
            Some((_, bytes)) if p.position >= 0 && p.position as usize <= bytes.len() => {
                let start = p.position as usize;
                let end = (start + r.max_bytes.max(1) as usize).min(bytes.len());
                partition = partition
                    .with_size(bytes.len() as i64)
                    .with_position(p.position)
                    .with_unaligned_records(bytes.slice(start..end));
            }
            Some(_) => {
                partition = partition.with_error_code(ResponseError::PositionOutOfRange.code())
            }
            None => partition = partition.with_error_code(ResponseError::SnapshotNotFound.code()),
        }
        FetchSnapshotResponse::default().with_topics(vec![
            fetch_snapshot_response::TopicSnapshot::default()
                .with_name(StrBytes::from_static_str(METADATA_TOPIC).into())
                .with_partitions(vec![partition]),
        ])
    }
}

/// One record batch holding one record per entry, at the entry's offset.
fn encode_entries(entries: &[(u64, Bytes)]) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::new();
    if entries.is_empty() {
        return Ok(buf.freeze());
    }
    let records: Vec<Record> = entries
        .iter()
        .map(|(offset, data)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: *offset as i64,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(data.clone()),
            headers: Default::default(),
        })
        .collect();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    Ok(buf.freeze())
}

impl Service for ControllerService {
    fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    fn max_connections(&self) -> usize {
        self.max_connections
    }

    fn supports(&self, api_key: ApiKey, version: i16) -> bool {
        supported()
            .iter()
            .any(|&(key, min, max)| key == api_key && (min..=max).contains(&version))
    }

    fn api_versions_unsupported(&self) -> ApiVersionsResponse {
        ApiVersionsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_api_keys(api_versions())
    }

    fn dispatch<'a>(
        &'a self,
        header: &'a RequestHeader,
        api_key: ApiKey,
        body: Bytes,
        _peer: SocketAddr,
        _listener: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Reply>> {
        Box::pin(async move {
            let response = self
                .handle(api_key, header.request_api_version, body)
                .await?;
            Ok(Reply::Response(Box::new(response)))
        })
    }

    fn accept_stream(
        &self,
        reader: OwnedReadHalf,
        peer: SocketAddr,
    ) -> Option<BoxFuture<'static, ()>> {
        Some((self.raft_streams)(reader, peer))
    }
}

/// The heartbeat's [`api::METADATA_REPLAYED_OFFSET_TAG`] field; 0 when
/// absent (a broker that does not send it) or malformed.
pub(crate) fn replayed_offset_of(r: &BrokerHeartbeatRequest) -> u64 {
    r.unknown_tagged_fields
        .get(&api::METADATA_REPLAYED_OFFSET_TAG)
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map_or(0, |b| i64::from_be_bytes(b).max(0) as u64)
}
