//! Fetch: whole record batches up to the high watermark, with long polling.
//! A fetch carrying a replica id is a follower's: it reads up to the log
//! end, and its fetch offset tells the leader how far the follower got.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::IsrChange;
use sluice_metadata::Uuid;

use super::{absent_partition_error, Broker};
use crate::errors::storage_error;
use crate::fetch_session::{Begin, FetchSession};
use crate::memory::MemoryLease;
use crate::replica::{now_ms, Partition};

/// Fetch versions from which topics are named by id.
const TOPIC_IDS_FROM: i16 = 13;

/// A fetch that names no leader epoch (Kafka's NO_PARTITION_LEADER_EPOCH);
/// any other value is checked against the partition's.
const NO_EPOCH: i32 = -1;

/// Fetch versions from which the replica id moved into `replica_state`.
const REPLICA_STATE_FROM: i16 = 15;

/// Answers a fetch, with the lease of the memory its records hold.
pub async fn fetch(
    broker: &Broker,
    request: FetchRequest,
    version: i16,
) -> (FetchResponse, MemoryLease) {
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let deadline = tokio::time::Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    let replica_id = if version >= REPLICA_STATE_FROM {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    // `fetch.max.bytes` caps what the client asks for.
    let max_bytes =
        (request.max_bytes.max(0) as usize).min(broker.config.fetch_max_bytes.max(0) as usize);
    let poll = LongPoll {
        min_bytes,
        max_bytes,
        deadline,
    };
    match broker.fetch_sessions.begin(&request, version, replica_id) {
        Begin::Sessionless => {
            let (response, bytes, lease) = poll
                .run(broker, |first, budget| {
                    read_all(broker, &request, version, replica_id, first, budget)
                })
                .await;
            (response, settle(broker, lease, bytes))
        }
        Begin::Session { session, full } => {
            // Whether a read went over every partition, recording the
            // follower's position in each, is kept for the session.
            let mut refreshed = false;
            let (read, _, lease) = poll
                .run(broker, |first, budget| {
                    let read = read_session(broker, &session, full, replica_id, first, budget);
                    refreshed |= read.refreshed;
                    let (bytes, any_error) = (read.bytes, read.any_error);
                    (read, bytes, any_error)
                })
                .await;
            answer_in_session(broker, session, read, refreshed, lease)
        }
        Begin::Refused(error) => {
            let response = FetchResponse::default()
                .with_error_code(error.code())
                .with_session_id(0);
            (response, broker.memory.try_acquire_up_to(0))
        }
    }
}

/// How long a fetch may wait for data, and how much it may take.
struct LongPoll {
    min_bytes: usize,
    max_bytes: usize,
    deadline: tokio::time::Instant,
}

impl LongPoll {
    /// Reads until there is enough to answer: `min_bytes`, an error, or the
    /// deadline; between reads it waits for an append. `read(first, budget)`
    /// gives (the answer, its bytes, whether a partition failed); only the
    /// first read of a request records a follower's position.
    async fn run<R>(
        &self,
        broker: &Broker,
        mut read: impl FnMut(bool, usize) -> (R, usize, bool),
    ) -> (R, usize, MemoryLease) {
        let mut first = true;
        loop {
            // Register for wake-ups before reading, so an append between the
            // read and the wait is not missed.
            let notified = broker.replicas.appended().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            // Read no more than the memory pool lends now; while it lends
            // nothing, the answer carries no records.
            let lease = broker.memory.try_acquire_up_to(self.max_bytes);
            let (answer, bytes, any_error) = read(first, lease.bytes());
            first = false;
            if bytes >= self.min_bytes || any_error || tokio::time::Instant::now() >= self.deadline
            {
                return (answer, bytes, lease);
            }
            drop((answer, lease));
            if tokio::time::timeout_at(self.deadline, notified)
                .await
                .is_err()
            {
                let lease = broker.memory.try_acquire_up_to(self.max_bytes);
                let (answer, bytes, _) = read(false, lease.bytes());
                return (answer, bytes, lease);
            }
        }
    }
}

/// One read over a session's partitions, not yet answered.
struct SessionRead {
    topics: Vec<FetchableTopicResponse>,
    /// One per session partition, in order: `None` when it was skipped.
    updates: Vec<Option<SessionUpdate>>,
    bytes: usize,
    any_error: bool,
    read_at_ms: i64,
    /// Whether every partition was read, the follower's position in each
    /// recorded.
    refreshed: bool,
}

/// What the session learns of a partition it read, once the answer goes.
struct SessionUpdate {
    replica: Option<Arc<Partition>>,
    /// What the answer told the follower, if it held the partition.
    sent: Option<(i64, i64)>,
    quiet_at: Option<u64>,
}

fn read_session(
    broker: &Broker,
    session: &FetchSession,
    full: bool,
    replica_id: i32,
    record_position: bool,
    max_bytes: usize,
) -> SessionRead {
    let read_at_ms = now_ms();
    let mut reads = Reads::new(max_bytes);
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    let mut updates = Vec::with_capacity(session.partitions.len());
    // Every so often a round reads every partition, recording the
    // follower's position in each: skipped rounds record nothing, and the
    // ISR check must still see an idle follower as recently caught up.
    let refresh_every = (broker.config.replica_lag_time_max / 4).as_millis() as i64;
    let refresh = record_position && read_at_ms - session.refreshed_at_ms >= refresh_every;
    for ((name, index), cached) in &session.partitions {
        if !full && !refresh && cached.is_quiet() {
            updates.push(None);
            continue;
        }
        let wanted = Wanted {
            partition: *index,
            fetch_offset: cached.fetch_offset,
            current_leader_epoch: cached.current_leader_epoch,
            max_bytes: cached.max_bytes,
            check_topic_id: None,
        };
        let read = reads.read(broker, Some(name), &wanted, replica_id, record_position);
        let (hw, log_start) = (read.data.high_watermark, read.data.log_start_offset);
        let has_records = read.data.records.as_ref().is_some_and(|r| !r.is_empty());
        let include = full
            || read.failed
            || has_records
            || hw != cached.sent_high_watermark
            || log_start != cached.sent_log_start;
        updates.push(Some(SessionUpdate {
            replica: read.replica,
            sent: include.then_some((hw, log_start)),
            quiet_at: read.quiet_at,
        }));
        if !include {
            continue;
        }
        match topics.last_mut().filter(|t| t.topic.0.as_str() == name) {
            Some(topic) => topic.partitions.push(read.data),
            None => topics.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(name.clone())))
                    .with_topic_id(cached.topic_id)
                    .with_partitions(vec![read.data]),
            ),
        }
    }
    let (bytes, any_error) = reads.finish(broker, true);
    SessionRead {
        topics,
        updates,
        bytes,
        any_error,
        read_at_ms,
        refreshed: record_position && (full || refresh),
    }
}

/// Records in the session what the answer tells the follower, puts the
/// session back, and answers.
fn answer_in_session(
    broker: &Broker,
    mut session: FetchSession,
    read: SessionRead,
    refreshed: bool,
    lease: MemoryLease,
) -> (FetchResponse, MemoryLease) {
    for (cached, update) in session.partitions.values_mut().zip(read.updates) {
        let Some(update) = update else { continue };
        cached.replica = update.replica;
        if let Some((hw, log_start)) = update.sent {
            cached.sent_high_watermark = hw;
            cached.sent_log_start = log_start;
        }
        cached.quiet_at = update.quiet_at;
    }
    if refreshed {
        session.refreshed_at_ms = read.read_at_ms;
    }
    let id = session.id;
    broker.fetch_sessions.finish(session);
    let response = FetchResponse::default()
        .with_session_id(id)
        .with_responses(read.topics);
    (response, settle(broker, lease, read.bytes))
}

/// Fits a fetch's lease to the `bytes` it read: the rest goes back to the
/// pool. A first batch larger than the lease (served whole, as Kafka does)
/// takes more if the pool has it.
fn settle(broker: &Broker, mut lease: MemoryLease, bytes: usize) -> MemoryLease {
    if bytes > lease.bytes() {
        let more = broker.memory.try_acquire_up_to(bytes - lease.bytes());
        lease.absorb(more);
    } else {
        lease.shrink_to(bytes);
    }
    lease
}

fn read_all(
    broker: &Broker,
    request: &FetchRequest,
    version: i16,
    replica_id: i32,
    record_position: bool,
    max_bytes: usize,
) -> (FetchResponse, usize, bool) {
    let image = broker.replicas.image();
    let mut reads = Reads::new(max_bytes);
    let read_committed = request.isolation_level == 1;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = if version >= TOPIC_IDS_FROM {
            image.topic_by_id(&topic.topic_id).map(|t| t.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let wanted = Wanted {
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                current_leader_epoch: p.current_leader_epoch,
                max_bytes: p.partition_max_bytes,
                check_topic_id: (version >= TOPIC_IDS_FROM).then_some(topic.topic_id),
            };
            let read = reads.read(
                broker,
                name.as_deref(),
                &wanted,
                replica_id,
                record_position,
            );
            let mut data = read.data;
            if read_committed {
                data = data.with_aborted_transactions(Some(Vec::new()));
            }
            partitions.push(data);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_string(name.unwrap_or_default())))
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions),
        );
    }
    let (total, any_error) = reads.finish(broker, replica_id >= 0);
    (
        FetchResponse::default().with_responses(topics),
        total,
        any_error,
    )
}

/// One partition as a fetch asks for it.
struct Wanted {
    partition: i32,
    fetch_offset: i64,
    current_leader_epoch: i32,
    max_bytes: i32,
    /// From v13 a topic is asked for by id: the replica must be of that topic.
    check_topic_id: Option<Uuid>,
}

/// What reading one partition gave.
struct Read {
    data: PartitionData,
    /// The replica read, when there is one.
    replica: Option<Arc<Partition>>,
    failed: bool,
    /// The partition's version after the read, if the follower is caught
    /// up, in the ISR and owed nothing: a session may skip it until the
    /// version changes.
    quiet_at: Option<u64>,
}

/// The reads of one fetch: the byte budget they share, and what they leave
/// to do once done (wake producers, propose ISR additions, count bytes).
struct Reads {
    budget: usize,
    total: usize,
    any_error: bool,
    hw_moved: bool,
    isr_changes: Vec<(Arc<Partition>, IsrChange)>,
}

impl Reads {
    fn new(max_bytes: usize) -> Self {
        Reads {
            budget: max_bytes,
            total: 0,
            any_error: false,
            hw_moved: false,
            isr_changes: Vec::new(),
        }
    }

    /// Reads one partition of topic `name` (`None`: the topic id is unknown).
    fn read(
        &mut self,
        broker: &Broker,
        name: Option<&str>,
        p: &Wanted,
        replica_id: i32,
        record_position: bool,
    ) -> Read {
        let from_follower = replica_id >= 0;
        let data = PartitionData::default()
            .with_partition_index(p.partition)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1);
        let mut fail = |data: PartitionData, error: ResponseError, replica| {
            self.any_error = true;
            Read {
                data: data.with_error_code(error.code()),
                replica,
                failed: true,
                quiet_at: None,
            }
        };
        let Some(name) = name else {
            return fail(data, ResponseError::UnknownTopicId, None);
        };
        let Some(partition) = broker.replicas.partition(name, p.partition) else {
            let error = absent_partition_error(broker, name, p.partition);
            return fail(data, error, None);
        };
        if p.check_topic_id.is_some_and(|id| id != partition.topic_id) {
            // The name now belongs to a newer topic than the one asked for.
            return fail(data, ResponseError::UnknownTopicId, None);
        }
        let mut state = partition.state();
        if state.deleted {
            drop(state);
            return fail(data, ResponseError::UnknownTopicOrPartition, None);
        }
        if state.leader != broker.config.node_id {
            drop(state);
            return fail(data, ResponseError::NotLeaderOrFollower, Some(partition));
        }
        if p.current_leader_epoch != NO_EPOCH && p.current_leader_epoch != state.leader_epoch {
            let error = if p.current_leader_epoch < state.leader_epoch {
                ResponseError::FencedLeaderEpoch
            } else {
                ResponseError::UnknownLeaderEpoch
            };
            drop(state);
            return fail(data, error, Some(partition));
        }
        if from_follower && !state.replicas.contains(&replica_id) {
            // Not (yet) a replica in our view: with an epoch, the follower
            // may know a newer assignment than we do, so it retries.
            let error = if p.current_leader_epoch != NO_EPOCH {
                ResponseError::UnknownLeaderEpoch
            } else {
                ResponseError::NotLeaderOrFollower
            };
            drop(state);
            return fail(data, error, Some(partition));
        }
        let log_end = state.log.log_end_offset();
        if from_follower
            && record_position
            && p.fetch_offset >= state.log.log_start_offset()
            && p.fetch_offset <= log_end
        {
            let (moved, change) = broker.replicas.record_follower_fetch(
                &partition,
                &mut state,
                replica_id,
                p.fetch_offset,
                now_ms(),
            );
            self.hw_moved |= moved;
            if let Some(change) = change {
                self.isr_changes.push((partition.clone(), change));
            }
        }
        let hw = state.log.high_watermark();
        // Followers read up to the log end, consumers up to the high watermark.
        let max_offset = if from_follower { log_end } else { hw };
        let data = data
            .with_high_watermark(hw)
            .with_last_stable_offset(hw)
            .with_log_start_offset(state.log.log_start_offset());
        // The log returns a first batch whole even past the limit, so a
        // large message never blocks a consumer (KIP-74).
        let limit = (p.max_bytes.max(0) as usize).min(self.budget);
        let (data, failed) = if limit == 0 {
            (data.with_records(Some(Bytes::new())), false)
        } else {
            match state.log.read(p.fetch_offset, limit, max_offset) {
                Ok(read) => {
                    let n = read.records.len();
                    self.total += n;
                    self.budget = self.budget.saturating_sub(n);
                    (data.with_records(Some(read.records)), false)
                }
                Err(e) => {
                    self.any_error = true;
                    (data.with_error_code(storage_error(&e).code()), true)
                }
            }
        };
        let owed_nothing = !failed && p.fetch_offset == log_end && limit > 0;
        let quiet = from_follower
            && owed_nothing
            && state.isr.contains(&replica_id)
            && state.pending_isr.is_none();
        let version = state.settle();
        drop(state);
        Read {
            data,
            replica: Some(partition),
            failed,
            quiet_at: quiet.then_some(version),
        }
    }

    /// Wakes what waits on a moved high watermark, sends the ISR additions,
    /// and counts the bytes read. Returns (bytes, any partition failed).
    fn finish(self, broker: &Broker, from_follower: bool) -> (usize, bool) {
        let Reads {
            total,
            any_error,
            hw_moved,
            isr_changes,
            ..
        } = self;
        if hw_moved {
            // acks=all producers wait on the high watermark.
            broker.replicas.notify_appended();
        }
        if !isr_changes.is_empty() {
            let replicas = broker.replicas.clone();
            let controller = broker.controller.clone();
            tokio::spawn(async move { replicas.alter_isr(&*controller, isr_changes).await });
        }
        if from_follower {
            metrics::counter!("sluice_replica_fetch_bytes_total").increment(total as u64);
        } else {
            metrics::counter!("sluice_fetch_bytes_total").increment(total as u64);
        }
        (total, any_error)
    }
}
