//! The follower side of replication (Kafka's ReplicaFetcherManager and
//! ReplicaFetcherThread), and the leader's periodic ISR check.
//!
//! One task per leader broker fetches every partition this broker follows
//! from it in one Fetch request carrying this broker's id. Before fetching a
//! partition whose leader or leader epoch changed, the follower truncates the
//! tail the leader does not have, found with OffsetForLeaderEpoch. Fetched
//! batches keep the leader's offsets and epochs (`append_as_follower`), and
//! the follower's high watermark is the leader's, capped at its own log end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, OffsetForLeaderEpochRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_metadata::{MetadataImage, Uuid};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::handlers::Broker;
use crate::kafka_client::{ClientError, KafkaClient};
use crate::replica::{may_block, Partition, TopicPartition};

/// The highest Fetch version a follower uses: topics by name.
const FETCH_VERSION: i16 = 12;
/// From this OffsetForLeaderEpoch version on, requests carry a replica id.
const EPOCH_REPLICA_ID_FROM: i16 = 3;
const EARLIEST_TIMESTAMP: i64 = -2;
const LATEST_TIMESTAMP: i64 = -1;
/// Kafka's "no epoch" / "no offset" in OffsetForLeaderEpoch answers.
const UNDEFINED_EPOCH: i32 = -1;
const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// Starts replication for `broker`: the fetchers of the partitions it
/// follows and the periodic ISR check of those it leads. Both stop when
/// `shutdown` turns true.
pub fn start_replication(broker: &Arc<Broker>, shutdown: watch::Receiver<bool>) {
    tokio::spawn(manage_fetchers(broker.clone(), shutdown.clone()));
    tokio::spawn(check_isr(broker.clone(), shutdown));
}

/// Every `replica.lag.time.max.ms / 2`, removes from the ISR of the
/// partitions this broker leads the followers that fell behind.
async fn check_isr(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let lag = broker.config.replica_lag_time_max;
    let mut tick = tokio::time::interval((lag / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let changes = broker.replicas.isr_shrinks(lag.as_millis() as i64);
        if !changes.is_empty() {
            let replicas = broker.replicas.clone();
            let controller = broker.controller.clone();
            tokio::spawn(async move { replicas.alter_isr(&*controller, changes).await });
        }
    }
}

/// Keeps one fetcher task per leader this broker follows partitions from.
async fn manage_fetchers(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut changes = broker.replicas.subscribe_fetch_targets();
    let mut fetchers: HashMap<i32, JoinHandle<()>> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let leaders = broker.replicas.followed_leaders();
        fetchers.retain(|leader, task| {
            let keep = leaders.contains(leader) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for leader in leaders {
            fetchers.entry(leader).or_insert_with(|| {
                info!(leader, "starting a replica fetcher");
                tokio::spawn(LeaderFetcher::new(broker.clone(), leader).run())
            });
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    for (leader, task) in fetchers {
        debug!(leader, "stopping a replica fetcher");
        task.abort();
    }
}

/// One partition as it went into a request: the epoch and offset the
/// answer must still match when it arrives.
struct InFlight {
    partition: Arc<Partition>,
    leader_epoch: i32,
    fetch_offset: i64,
}

/// What a partition-level error means for the fetcher.
enum PartitionOutcome {
    Done,
    /// Set the partition aside until the backoff passes or its leader epoch changes.
    Delay,
    OutOfRange,
}

/// This follower's fetch session with a leader (KIP-227): what the leader
/// holds of each partition, so a request carries only what changed.
#[derive(Default)]
struct FollowerSession {
    /// 0: no session; the next request asks for one.
    id: i32,
    /// The epoch the next incremental request carries.
    epoch: i32,
    sent: HashMap<(Uuid, i32), SentPartition>,
}

struct SentPartition {
    topic: String,
    /// Fetch offset, leader epoch and log start, as last sent.
    position: (i64, i32, i64),
}

/// After i32::MAX, session epochs go on from 1 (0 asks for a new session).
fn next_session_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

struct LeaderFetcher {
    broker: Arc<Broker>,
    leader: i32,
    client: Option<KafkaClient>,
    session: FollowerSession,
    /// Partitions set aside after an error: (leader epoch then, until when).
    delayed: HashMap<TopicPartition, (i32, Instant)>,
    changes: watch::Receiver<u64>,
}

impl LeaderFetcher {
    fn new(broker: Arc<Broker>, leader: i32) -> Self {
        let changes = broker.replicas.subscribe_fetch_targets();
        Self {
            broker,
            leader,
            client: None,
            session: FollowerSession::default(),
            delayed: HashMap::new(),
            changes,
        }
    }

    fn node_id(&self) -> i32 {
        self.broker.config.node_id
    }

    fn backoff(&self) -> Duration {
        self.broker.config.replica_fetch_backoff
    }

    async fn run(mut self) {
        loop {
            let partitions = self.broker.replicas.fetch_targets(self.leader);
            if partitions.is_empty() {
                self.pause(self.backoff()).await;
                continue;
            }
            if self.client.is_none() {
                match self.connect().await {
                    Ok(client) => {
                        self.client = Some(client);
                        self.session = FollowerSession::default();
                    }
                    Err(e) => {
                        warn!(leader = self.leader, error = %e, "cannot reach the partition leader; retrying");
                        tokio::time::sleep(self.backoff()).await;
                        continue;
                    }
                }
            }
            match self.round(&partitions).await {
                Ok(true) => {}
                Ok(false) => {
                    // Nothing could be fetched: every partition waits on
                    // metadata or a backoff.
                    self.pause(self.backoff().min(Duration::from_millis(200)))
                        .await;
                }
                Err(e) => {
                    warn!(leader = self.leader, error = %e, "fetching from the partition leader failed; reconnecting");
                    self.client = None;
                    tokio::time::sleep(self.backoff()).await;
                }
            }
        }
    }

    /// Waits up to `period`, less if the fetch targets change.
    async fn pause(&mut self, period: Duration) {
        let _ = tokio::time::timeout(period, self.changes.changed()).await;
    }

    async fn connect(&self) -> Result<KafkaClient, ClientError> {
        let image = self.broker.replicas.image();
        let address = leader_address(&image, self.node_id(), self.leader).ok_or_else(|| {
            ClientError::Protocol(format!("broker {} has no registered endpoint", self.leader))
        })?;
        let mut client = KafkaClient::connect(&address, "sluice-replica-fetcher").await?;
        client.set_request_timeout(
            self.broker.config.replica_socket_timeout + self.broker.config.replica_fetch_wait_max,
        );
        debug!(leader = self.leader, %address, "connected to the partition leader");
        Ok(client)
    }

    fn is_delayed(&mut self, key: &TopicPartition, epoch: i32) -> bool {
        match self.delayed.get(key) {
            Some(&(e, until)) if e == epoch && Instant::now() < until => true,
            Some(_) => {
                self.delayed.remove(key);
                false
            }
            None => false,
        }
    }

    fn delay(&mut self, partition: &Partition, epoch: i32) {
        self.delayed.insert(
            (partition.topic.clone(), partition.index),
            (epoch, Instant::now() + self.backoff()),
        );
    }

    /// One truncation pass and one fetch. Ok(false): nothing to fetch.
    async fn round(&mut self, partitions: &[Arc<Partition>]) -> Result<bool, ClientError> {
        let mut truncate = Vec::new();
        let mut fetch = Vec::new();
        for partition in partitions {
            let (epoch, needs_truncation, latest_epoch, offset) = {
                let state = partition.state();
                if state.deleted || state.leader != self.leader {
                    continue;
                }
                (
                    state.leader_epoch,
                    state.needs_truncation,
                    state.log.latest_epoch(),
                    state.log.log_end_offset(),
                )
            };
            // Checked without building a key while nothing is delayed (the
            // usual case, on every round over every followed partition).
            if !self.delayed.is_empty()
                && self.is_delayed(&(partition.topic.clone(), partition.index), epoch)
            {
                continue;
            }
            if !needs_truncation {
                fetch.push(InFlight {
                    partition: partition.clone(),
                    leader_epoch: epoch,
                    fetch_offset: offset,
                });
                continue;
            }
            match latest_epoch {
                Some(latest) => truncate.push((partition.clone(), epoch, latest)),
                None => {
                    // No epochs to compare (an empty or pre-epoch log):
                    // Kafka's old rule, truncate to the high watermark.
                    let mut state = partition.state();
                    if state.leader_epoch == epoch && state.needs_truncation {
                        let hw = state.log.high_watermark();
                        if let Err(e) = may_block(|| state.log.truncate_to(hw)) {
                            warn!(topic = %partition.topic, partition = partition.index, error = %e, "truncation failed");
                            drop(state);
                            self.delay(partition, epoch);
                            continue;
                        }
                        state.needs_truncation = false;
                    }
                }
            }
        }
        let truncated = !truncate.is_empty();
        if truncated {
            self.truncate(truncate).await?;
        }
        if fetch.is_empty() {
            // After a truncation the partitions are ready at once.
            return Ok(truncated);
        }
        self.fetch(fetch).await?;
        Ok(true)
    }

    /// Asks the leader where each partition's latest local epoch ends and
    /// truncates the local log there (Kafka's KIP-101/279 truncation).
    async fn truncate(
        &mut self,
        partitions: Vec<(Arc<Partition>, i32, i32)>,
    ) -> Result<(), ClientError> {
        let node_id = self.node_id();
        let client = self
            .client
            .as_mut()
            .ok_or(ClientError::Timeout("no connection"))?;
        let version = client.version_for::<OffsetForLeaderEpochRequest>(4)?;
        let mut by_topic: HashMap<String, Vec<OffsetForLeaderPartition>> = HashMap::new();
        for (partition, epoch, latest) in &partitions {
            by_topic.entry(partition.topic.clone()).or_default().push(
                OffsetForLeaderPartition::default()
                    .with_partition(partition.index)
                    .with_current_leader_epoch(*epoch)
                    .with_leader_epoch(*latest),
            );
        }
        let mut request = OffsetForLeaderEpochRequest::default().with_topics(
            by_topic
                .into_iter()
                .map(|(topic, parts)| {
                    OffsetForLeaderTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic)))
                        .with_partitions(parts)
                })
                .collect(),
        );
        if version >= EPOCH_REPLICA_ID_FROM {
            request = request.with_replica_id(BrokerId(node_id));
        }
        let response = client.send_version(request, version).await?;
        let mut answers = HashMap::new();
        for topic in response.topics {
            for p in topic.partitions {
                answers.insert((topic.topic.0.to_string(), p.partition), p);
            }
        }
        for (partition, epoch, latest) in partitions {
            let key = (partition.topic.clone(), partition.index);
            let Some(answer) = answers.get(&key) else {
                self.delay(&partition, epoch);
                continue;
            };
            if answer.error_code != 0 {
                let error = ResponseError::try_from_code(answer.error_code);
                debug!(topic = %partition.topic, partition = partition.index, ?error, "OffsetForLeaderEpoch refused; waiting");
                self.delay(&partition, epoch);
                continue;
            }
            let mut state = partition.state();
            if state.deleted
                || state.leader != self.leader
                || state.leader_epoch != epoch
                || !state.needs_truncation
                || state.log.latest_epoch() != Some(latest)
            {
                continue; // the partition moved on while we asked
            }
            let log_end = state.log.log_end_offset();
            let (target, complete) = truncation_point(
                answer.leader_epoch,
                answer.end_offset,
                log_end,
                state.log.high_watermark(),
                |e| state.log.end_offset_for_epoch(e),
            );
            if target < log_end {
                info!(
                    topic = %partition.topic,
                    partition = partition.index,
                    local_epoch = latest,
                    leader_epoch = answer.leader_epoch,
                    leader_end = answer.end_offset,
                    log_end,
                    truncate_to = target,
                    "truncating a divergent log tail"
                );
                if let Err(e) = may_block(|| state.log.truncate_to(target)) {
                    warn!(topic = %partition.topic, partition = partition.index, error = %e, "truncation failed");
                    drop(state);
                    self.delay(&partition, epoch);
                    continue;
                }
            }
            if complete {
                state.needs_truncation = false;
            }
        }
        Ok(())
    }

    async fn fetch(&mut self, partitions: Vec<InFlight>) -> Result<(), ClientError> {
        let config = &self.broker.config;
        let client = self
            .client
            .as_mut()
            .ok_or(ClientError::Timeout("no connection"))?;
        let version = client.version_for::<FetchRequest>(FETCH_VERSION)?;
        // In a session, only what the leader does not already have goes in
        // the request; without one (or when asking for one), everything.
        let session = &mut self.session;
        let incremental = session.id != 0;
        let mut topics: Vec<FetchTopic> = Vec::new();
        let mut sending: Vec<((Uuid, i32), SentPartition)> = Vec::new();
        let mut by_key: HashMap<(&str, i32), &InFlight> = HashMap::with_capacity(partitions.len());
        let mut wanted: HashSet<(Uuid, i32)> = HashSet::with_capacity(partitions.len());
        for f in &partitions {
            let log_start = f.partition.state().log.log_start_offset();
            let key = (f.partition.topic_id, f.partition.index);
            by_key.insert((f.partition.topic.as_str(), f.partition.index), f);
            wanted.insert(key);
            let position = (f.fetch_offset, f.leader_epoch, log_start);
            if incremental
                && session
                    .sent
                    .get(&key)
                    .is_some_and(|s| s.position == position)
            {
                continue;
            }
            sending.push((
                key,
                SentPartition {
                    topic: f.partition.topic.clone(),
                    position,
                },
            ));
            let entry = FetchPartition::default()
                .with_partition(f.partition.index)
                .with_current_leader_epoch(f.leader_epoch)
                .with_fetch_offset(f.fetch_offset)
                .with_log_start_offset(log_start)
                .with_partition_max_bytes(config.replica_fetch_max_bytes);
            let name = TopicName(StrBytes::from_string(f.partition.topic.clone()));
            // Fetch targets come sorted by topic: a topic's partitions are
            // consecutive, so only the last entry can be theirs.
            match topics.last_mut().filter(|t| t.topic == name) {
                Some(topic) => topic.partitions.push(entry),
                None => topics.push(
                    FetchTopic::default()
                        .with_topic(name)
                        .with_topic_id(f.partition.topic_id)
                        .with_partitions(vec![entry]),
                ),
            }
        }
        let forgotten: Vec<(Uuid, i32)> = if incremental {
            session
                .sent
                .keys()
                .filter(|key| !wanted.contains(key))
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        let mut forgotten_topics: Vec<ForgottenTopic> = Vec::new();
        for key in &forgotten {
            let Some(sent) = session.sent.get(key) else {
                continue;
            };
            let name = TopicName(StrBytes::from_string(sent.topic.clone()));
            match forgotten_topics.iter_mut().find(|t| t.topic == name) {
                Some(topic) => topic.partitions.push(key.1),
                None => forgotten_topics.push(
                    ForgottenTopic::default()
                        .with_topic(name)
                        .with_topic_id(key.0)
                        .with_partitions(vec![key.1]),
                ),
            }
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(config.node_id))
            .with_max_wait_ms(
                config
                    .replica_fetch_wait_max
                    .as_millis()
                    .min(i32::MAX as u128) as i32,
            )
            .with_min_bytes(config.replica_fetch_min_bytes)
            .with_max_bytes(config.replica_fetch_response_max_bytes)
            .with_isolation_level(0)
            .with_session_id(session.id)
            .with_session_epoch(if incremental { session.epoch } else { 0 })
            .with_topics(topics)
            .with_forgotten_topics_data(forgotten_topics);
        let response = match client.send_version(request, version).await {
            Ok(response) => response,
            Err(e) => {
                // The leader may or may not have moved the session on.
                *session = FollowerSession::default();
                return Err(e);
            }
        };
        let error = ResponseError::try_from_code(response.error_code);
        if matches!(
            error,
            Some(ResponseError::FetchSessionIdNotFound | ResponseError::InvalidFetchSessionEpoch)
        ) {
            debug!(
                leader = self.leader,
                ?error,
                "fetch session lost; starting a new one"
            );
            *session = FollowerSession::default();
            return Ok(());
        }
        if response.error_code != 0 {
            *session = FollowerSession::default();
            return Err(ClientError::Protocol(format!(
                "fetch failed with {error:?}"
            )));
        }
        if incremental {
            session.epoch = next_session_epoch(session.epoch);
            for key in &forgotten {
                session.sent.remove(key);
            }
            session.sent.extend(sending);
        } else if response.session_id != 0 {
            session.id = response.session_id;
            session.epoch = 1;
            session.sent = sending.into_iter().collect();
        }
        let mut out_of_range = Vec::new();
        let mut delayed = Vec::new();
        for topic in response.responses {
            for data in topic.partitions {
                let Some(f) = by_key.get(&(topic.topic.0.as_str(), data.partition_index)) else {
                    continue;
                };
                match self.apply_fetched(f, &data) {
                    PartitionOutcome::Done => {}
                    PartitionOutcome::Delay => delayed.push((f.partition.clone(), f.leader_epoch)),
                    PartitionOutcome::OutOfRange => {
                        out_of_range.push((f.partition.clone(), f.leader_epoch))
                    }
                }
            }
        }
        drop(by_key);
        for (partition, epoch) in delayed {
            self.delay(&partition, epoch);
        }
        for (partition, epoch) in out_of_range {
            self.handle_out_of_range(&partition, epoch).await?;
        }
        Ok(())
    }

    /// Appends what the leader sent and takes its high watermark.
    fn apply_fetched(&self, f: &InFlight, data: &PartitionData) -> PartitionOutcome {
        let partition = &f.partition;
        if data.error_code != 0 {
            let error = ResponseError::try_from_code(data.error_code);
            return match error {
                Some(ResponseError::OffsetOutOfRange) => PartitionOutcome::OutOfRange,
                Some(
                    ResponseError::NotLeaderOrFollower
                    | ResponseError::FencedLeaderEpoch
                    | ResponseError::UnknownLeaderEpoch
                    | ResponseError::UnknownTopicOrPartition
                    | ResponseError::UnknownTopicId,
                ) => {
                    debug!(topic = %partition.topic, partition = partition.index, ?error, "the leader refused the fetch; waiting for metadata");
                    PartitionOutcome::Delay
                }
                _ => {
                    warn!(topic = %partition.topic, partition = partition.index, ?error, code = data.error_code, "fetch error");
                    PartitionOutcome::Delay
                }
            };
        }
        let mut state = partition.state();
        if state.deleted
            || state.leader != self.leader
            || state.leader_epoch != f.leader_epoch
            || state.needs_truncation
            || state.log.log_end_offset() != f.fetch_offset
        {
            return PartitionOutcome::Done; // stale: the partition moved on
        }
        if let Some(records) = data.records.as_ref().filter(|r| !r.is_empty()) {
            let appended = if state
                .log
                .append_may_sync(records.len(), crate::replica::now_ms())
            {
                may_block(|| state.log.append_as_follower(records))
            } else {
                state.log.append_as_follower(records)
            };
            if let Err(e) = appended {
                warn!(topic = %partition.topic, partition = partition.index, error = %e, "appending fetched records failed");
                return PartitionOutcome::Delay;
            }
        }
        let log_end = state.log.log_end_offset();
        if data.log_start_offset > state.log.log_start_offset() && data.log_start_offset <= log_end
        {
            if let Err(e) = may_block(|| state.log.advance_log_start(data.log_start_offset)) {
                warn!(topic = %partition.topic, partition = partition.index, error = %e, "cannot follow the leader's log start");
            }
        }
        if data.high_watermark >= 0 {
            let hw = data.high_watermark.min(log_end);
            if hw != state.log.high_watermark() {
                state.log.set_high_watermark(hw);
            }
        }
        PartitionOutcome::Done
    }

    /// The leader does not have our fetch offset: either our log is ahead of
    /// the leader's end, or behind its start (Kafka's fetchOffsetAndTruncate).
    async fn handle_out_of_range(
        &mut self,
        partition: &Arc<Partition>,
        epoch: i32,
    ) -> Result<(), ClientError> {
        let leader_end = self.list_offset(partition, epoch, LATEST_TIMESTAMP).await?;
        let leader_start = match leader_end {
            Some(_) => {
                self.list_offset(partition, epoch, EARLIEST_TIMESTAMP)
                    .await?
            }
            None => None,
        };
        let (Some(leader_end), Some(leader_start)) = (leader_end, leader_start) else {
            self.delay(partition, epoch);
            return Ok(());
        };
        let mut state = partition.state();
        if state.deleted || state.leader != self.leader || state.leader_epoch != epoch {
            return Ok(());
        }
        let log_end = state.log.log_end_offset();
        let result = if leader_end < log_end {
            warn!(topic = %partition.topic, partition = partition.index, leader_end, log_end, "the local log is ahead of the leader's; truncating");
            may_block(|| state.log.truncate_to(leader_end))
        } else if leader_start > log_end {
            info!(topic = %partition.topic, partition = partition.index, leader_start, log_end, "the leader's log starts past ours; starting over there");
            may_block(|| state.log.truncate_fully_and_start_at(leader_start))
        } else {
            // In range by now (the leader moved); fetch again after a pause.
            drop(state);
            self.delay(partition, epoch);
            return Ok(());
        };
        if let Err(e) = result {
            warn!(topic = %partition.topic, partition = partition.index, error = %e, "truncation failed");
            drop(state);
            self.delay(partition, epoch);
        }
        Ok(())
    }

    /// ListOffsets as a replica: LATEST is the leader's log end.
    async fn list_offset(
        &mut self,
        partition: &Partition,
        epoch: i32,
        timestamp: i64,
    ) -> Result<Option<i64>, ClientError> {
        let client = self
            .client
            .as_mut()
            .ok_or(ClientError::Timeout("no connection"))?;
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(self.broker.config.node_id))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(partition.topic.clone())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition.index)
                    .with_current_leader_epoch(epoch)
                    .with_timestamp(timestamp)])]);
        let version = client.version_for::<ListOffsetsRequest>(7)?;
        let response = client.send_version(request, version).await?;
        Ok(response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition.index)
            .filter(|p| p.error_code == 0 && p.offset >= 0)
            .map(|p| p.offset))
    }
}

/// Where a follower truncates after the leader answered OffsetForLeaderEpoch
/// for the follower's latest epoch with (`leader_epoch`, `leader_end`), and
/// whether truncation is complete (Kafka's `getOffsetTruncationState`).
/// `local_end_for` is the follower's own OffsetForLeaderEpoch lookup.
pub fn truncation_point(
    leader_epoch: i32,
    leader_end: i64,
    log_end: i64,
    high_watermark: i64,
    local_end_for: impl Fn(i32) -> (i32, i64),
) -> (i64, bool) {
    if leader_end == UNDEFINED_EPOCH_OFFSET {
        // The leader knows no epoch this old: the old rule.
        return (high_watermark.min(log_end), true);
    }
    if leader_epoch == UNDEFINED_EPOCH {
        return (leader_end.min(log_end), true);
    }
    let (local_epoch, local_end) = local_end_for(leader_epoch);
    if local_epoch == UNDEFINED_EPOCH {
        // We did not track epochs that far back; the leader's end is safe.
        (leader_end.min(log_end), true)
    } else if local_epoch != leader_epoch {
        // We never saw the leader's epoch: drop our epochs above it and ask
        // again with the one now latest.
        (local_end.min(log_end), false)
    } else {
        (local_end.min(leader_end).min(log_end), true)
    }
}

/// The leader's address: the endpoint whose listener has the name this
/// broker registered under, else its first endpoint.
fn leader_address(image: &MetadataImage, me: i32, leader: i32) -> Option<String> {
    let registration = image.brokers.get(&leader)?;
    let own_listener = image
        .brokers
        .get(&me)
        .and_then(|b| b.endpoints.first())
        .map(|e| e.listener.clone());
    let endpoint = own_listener
        .and_then(|name| registration.endpoints.iter().find(|e| e.listener == name))
        .or_else(|| registration.endpoints.first())?;
    Some(format!("{}:{}", endpoint.host, endpoint.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_follows_kafka() {
        // Local epochs: 0 at 0, 2 at 50; log end 80, high watermark 40.
        let local = |e: i32| match e {
            0 | 1 => (0, 50),
            2 => (2, 80),
            _ => (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET),
        };
        // The leader has epoch 2 up to 70: cut our tail at 70.
        assert_eq!(truncation_point(2, 70, 80, 40, local), (70, true));
        // The leader has more of epoch 2 than we do: nothing to cut.
        assert_eq!(truncation_point(2, 95, 80, 40, local), (80, true));
        // The leader never saw epoch 2; its epoch 1 ends at 60. We have no
        // epoch 1: cut at the end of our epoch 0 and ask again.
        assert_eq!(truncation_point(1, 60, 80, 40, local), (50, false));
        // Same epoch 0 on both sides, the leader's ends earlier.
        assert_eq!(truncation_point(0, 45, 80, 40, local), (45, true));
        // The leader knows no such epoch: the high watermark.
        assert_eq!(
            truncation_point(UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET, 80, 40, local),
            (40, true)
        );
    }
}
