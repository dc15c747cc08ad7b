//! The partitions this broker hosts: their logs, their leader/follower state
//! and the high-watermark rule, kept together per partition.
//!
//! The replica manager is a metadata publisher: each committed change that
//! names this broker creates, updates or deletes a local replica.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use sluice_metadata::controller_api::{ControllerApi, ControllerError, IsrChange};
use sluice_metadata::{MetadataDelta, MetadataImage, PartitionRegistration, Publisher, Uuid};
use sluice_storage::{LogConfig, PartitionLog, StorageError};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use crate::isr::{self, FollowerState, PendingIsr};

/// Marks a partition directory with the id of the topic it belongs to, so a
/// directory left from a deleted topic of the same name is never reused.
const PARTITION_METADATA: &str = "partition.metadata";

/// A deleted partition's directory is renamed `<topic>-<p>.<topic id>-delete`
/// (as Kafka does) before its files are removed, so deletion goes by topic
/// id and a half-removed directory is never mistaken for a live one.
const DELETE_SUFFIX: &str = "-delete";

pub use sluice_storage::wall_clock_ms as now_ms;

/// A topic's log settings: the broker's defaults overridden by the topic's
/// dynamic configs.
pub fn effective_log_config(
    defaults: &LogConfig,
    topic_configs: Option<&BTreeMap<String, String>>,
) -> LogConfig {
    let mut config = defaults.clone();
    let Some(configs) = topic_configs else {
        return config;
    };
    let get = |name: &str| configs.get(name).and_then(|v| v.trim().parse::<i64>().ok());
    if let Some(v) = get("segment.bytes") {
        config.segment_bytes = v.max(1) as u64;
    }
    if let Some(v) = get("segment.ms") {
        config.segment_ms = v;
    }
    if let Some(v) = get("retention.ms") {
        config.retention_ms = v;
    }
    if let Some(v) = get("retention.bytes") {
        config.retention_bytes = v;
    }
    if let Some(v) = get("max.message.bytes") {
        config.max_message_bytes = v.max(0) as usize;
    }
    if let Some(v) = get("index.interval.bytes") {
        config.index_interval_bytes = v.max(1) as usize;
    }
    if let Some(v) = get("flush.messages") {
        config.flush_messages = v.max(1);
    }
    if let Some(v) = get("flush.ms") {
        config.flush_ms = v.max(0);
    }
    if let Some((delete, compact)) = configs
        .get("cleanup.policy")
        .and_then(|v| cleanup_policy(v))
    {
        config.cleanup_delete = delete;
        config.cleanup_compact = compact;
    }
    if let Some(v) = get("delete.retention.ms") {
        config.delete_retention_ms = v;
    }
    if let Some(v) = configs
        .get("min.cleanable.dirty.ratio")
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        config.min_cleanable_dirty_ratio = v;
    }
    if let Some(v) = get("min.compaction.lag.ms") {
        config.min_compaction_lag_ms = v;
    }
    if let Some(v) = get("max.compaction.lag.ms") {
        config.max_compaction_lag_ms = v;
    }
    config
}

/// `cleanup.policy` (a comma-separated list of `delete` and `compact`) as
/// (delete, compact); `None` if it names anything else.
pub fn cleanup_policy(value: &str) -> Option<(bool, bool)> {
    let (mut delete, mut compact) = (false, false);
    for word in value.split(',').map(str::trim) {
        match word {
            "delete" => delete = true,
            "compact" => compact = true,
            _ => return None,
        }
    }
    Some((delete, compact))
}

/// Runs `work`, which may block on disk I/O, on an async runtime's worker:
/// on a multi-threaded runtime the worker's other tasks move elsewhere
/// meanwhile, so heartbeats and other requests are not held up behind it.
pub fn may_block<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// The high watermark: the smallest log end offset among the in-sync replicas.
/// `follower_ends` holds the fetch positions of in-sync followers.
pub fn high_watermark(leader_end: i64, follower_ends: &[i64]) -> i64 {
    follower_ends.iter().copied().fold(leader_end, i64::min)
}

/// How long a leader waits before proposing another ISR change after the
/// controller refused one or could not be reached.
const ISR_RETRY_BACKOFF_MS: i64 = 500;

#[derive(Debug)]
pub struct PartitionState {
    pub log: PartitionLog,
    pub leader: i32,
    pub leader_epoch: i32,
    /// Bumped by the controller on every change of the registration
    /// (AlterPartition names the one it is based on).
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    /// The committed ISR.
    pub isr: Vec<i32>,
    /// Set when the topic is deleted: requests still holding the partition
    /// must not write into a directory that is going away.
    pub deleted: bool,
    /// Leader only: what it knows of each follower.
    pub followers: HashMap<i32, FollowerState>,
    /// Leader only: the ISR change sent to the controller and not yet answered.
    pub pending_isr: Option<PendingIsr>,
    /// Leader only: the log end when this leader epoch began.
    pub leader_epoch_start_offset: i64,
    /// Leader only: no ISR change is proposed before this time.
    pub isr_retry_at_ms: i64,
    /// Follower only: the log may hold a tail the leader does not have; it is
    /// truncated (OffsetForLeaderEpoch) before fetching.
    pub needs_truncation: bool,
    /// What fetchers last saw; kept by [`StateGuard`].
    observed: Observed,
}

impl PartitionState {
    /// The ISR the high watermark and acks=all respect: the committed ISR
    /// plus replicas being added (Kafka's `maximalIsr`).
    pub fn maximal_isr(&self) -> Vec<i32> {
        isr::maximal_isr(&self.isr, self.pending_isr.as_ref())
    }
}

pub struct Partition {
    pub topic: String,
    pub topic_id: Uuid,
    pub index: i32,
    state: Mutex<PartitionState>,
    /// Bumped, under the lock, whenever what a fetcher sees of the
    /// partition changes (see [`Observed`]): a fetch session skips a
    /// partition whose version it has already answered for, without locking.
    version: AtomicU64,
}

/// What a fetch of the partition could see differently: its offsets, its
/// leadership and registration, whether it is deleted, and the ISR change
/// in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    log_start: i64,
    log_end: i64,
    high_watermark: i64,
    leader: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    isr_pending: bool,
    deleted: bool,
}

impl Observed {
    fn of(state: &PartitionState) -> Self {
        Observed {
            log_start: state.log.log_start_offset(),
            log_end: state.log.log_end_offset(),
            high_watermark: state.log.high_watermark(),
            leader: state.leader,
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            isr_pending: state.pending_isr.is_some(),
            deleted: state.deleted,
        }
    }
}

/// The locked state of a partition. When released (or [`StateGuard::settle`]d)
/// it bumps the partition's version if anything a fetcher sees changed.
pub struct StateGuard<'a> {
    guard: MutexGuard<'a, PartitionState>,
    version: &'a AtomicU64,
}

impl StateGuard<'_> {
    /// Bumps the version now if the state changed, and returns it: the
    /// version that stands for exactly what the caller has seen.
    pub fn settle(&mut self) -> u64 {
        let now = Observed::of(&self.guard);
        if now != self.guard.observed {
            self.guard.observed = now;
            self.version.fetch_add(1, Ordering::SeqCst);
        }
        self.version.load(Ordering::SeqCst)
    }
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = PartitionState;
    fn deref(&self) -> &PartitionState {
        &self.guard
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut PartitionState {
        &mut self.guard
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

impl Partition {
    pub(crate) fn new(topic: String, topic_id: Uuid, index: i32, state: PartitionState) -> Self {
        let mut state = state;
        state.observed = Observed::of(&state);
        Partition {
            topic,
            topic_id,
            index,
            state: Mutex::new(state),
            version: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> StateGuard<'_> {
        // A panic while holding the lock leaves the log as it was on disk;
        // carrying on with the inner value is safe.
        let guard = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        StateGuard {
            guard,
            version: &self.version,
        }
    }

    /// The version as of the last change released; read without the lock.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }
}

pub type TopicPartition = (String, i32);

/// A partition this broker should host whose log could not be opened (a
/// descriptor limit, an I/O error, an unreadable marker). Its directory is
/// left exactly as it is; opening is retried by housekeeping.
#[derive(Debug, Clone)]
pub struct OfflinePartition {
    pub topic_id: Uuid,
    pub error: String,
}

pub struct ReplicaManager {
    node_id: i32,
    log_dir: PathBuf,
    log_defaults: LogConfig,
    /// By topic, then index: a lookup by name hashes the name and
    /// allocates nothing (a fetch of thousands of partitions does one each).
    partitions: RwLock<HashMap<String, HashMap<i32, Arc<Partition>>>>,
    offline: Mutex<HashMap<TopicPartition, OfflinePartition>>,
    /// Set once the first image (the caught-up one) has been applied: only
    /// then can a directory be judged to belong to nothing.
    loaded: AtomicBool,
    image: RwLock<Arc<MetadataImage>>,
    /// Woken on every append, for fetches waiting on new data.
    appended: Notify,
    /// This broker's epoch from its registration (-1 until registered).
    broker_epoch: AtomicI64,
    /// Partitions this broker follows, by leader: what the fetchers fetch.
    fetch_targets: Mutex<HashMap<i32, BTreeMap<TopicPartition, Arc<Partition>>>>,
    /// Bumped whenever the fetch targets or a follower's leader epoch change.
    targets_changed: watch::Sender<u64>,
}

impl ReplicaManager {
    pub fn new(node_id: i32, log_dir: PathBuf, log_defaults: LogConfig) -> std::io::Result<Self> {
        fs::create_dir_all(&log_dir)?;
        Ok(Self {
            node_id,
            log_dir,
            log_defaults,
            partitions: RwLock::new(HashMap::new()),
            offline: Mutex::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            image: RwLock::new(MetadataImage::empty()),
            appended: Notify::new(),
            broker_epoch: AtomicI64::new(-1),
            fetch_targets: Mutex::new(HashMap::new()),
            targets_changed: watch::channel(0).0,
        })
    }

    /// The broker epoch the controller gave this broker's registration;
    /// AlterPartition requests carry it.
    pub fn set_broker_epoch(&self, epoch: i64) {
        self.broker_epoch.store(epoch, Ordering::SeqCst);
    }

    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::SeqCst)
    }

    /// The partitions this broker follows from `leader`.
    pub fn fetch_targets(&self, leader: i32) -> Vec<Arc<Partition>> {
        let targets = self.fetch_targets.lock().unwrap_or_else(|p| p.into_inner());
        targets
            .get(&leader)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The leaders this broker follows at least one partition from.
    pub fn followed_leaders(&self) -> Vec<i32> {
        let targets = self.fetch_targets.lock().unwrap_or_else(|p| p.into_inner());
        let mut leaders: Vec<i32> = targets
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(l, _)| *l)
            .collect();
        leaders.sort_unstable();
        leaders
    }

    /// Changes whenever the fetch targets or a followed partition's leader
    /// epoch change.
    pub fn subscribe_fetch_targets(&self) -> watch::Receiver<u64> {
        self.targets_changed.subscribe()
    }

    fn targets_changed(&self) {
        self.targets_changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Follow `partition` from `leader`, or from nobody.
    fn set_fetch_target(&self, partition: &Arc<Partition>, leader: Option<i32>) {
        let key = (partition.topic.clone(), partition.index);
        let mut targets = self.fetch_targets.lock().unwrap_or_else(|p| p.into_inner());
        for (l, m) in targets.iter_mut() {
            if Some(*l) != leader {
                m.remove(&key);
            }
        }
        targets.retain(|_, m| !m.is_empty());
        if let Some(leader) = leader {
            targets
                .entry(leader)
                .or_default()
                .insert(key, partition.clone());
        }
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    pub fn log_defaults(&self) -> &LogConfig {
        &self.log_defaults
    }

    /// The latest metadata image this broker has applied.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions.get(topic)?.get(&index).cloned()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions
            .values()
            .flat_map(|t| t.values().cloned())
            .collect()
    }

    pub fn appended(&self) -> &Notify {
        &self.appended
    }

    /// Called after an append, and after anything that moves a high watermark.
    pub fn notify_appended(&self) {
        self.appended.notify_waiters();
    }

    /// Recomputes the high watermark of a partition this broker leads: the
    /// smallest log end among the maximal ISR, and only ever forward.
    /// Returns true if it moved.
    pub fn update_high_watermark(&self, state: &mut PartitionState) -> bool {
        if state.leader != self.node_id || state.deleted {
            return false;
        }
        let hw = isr::leader_high_watermark(
            self.node_id,
            state.log.log_end_offset(),
            &state.maximal_isr(),
            &state.followers,
        );
        if hw > state.log.high_watermark() {
            state.log.set_high_watermark(hw);
            true
        } else {
            false
        }
    }

    /// Leader side of a follower's fetch at `fetch_offset`: records the
    /// follower's position, moves the high watermark, and proposes adding
    /// the follower to the ISR once it has caught up. Returns whether the
    /// high watermark moved and the ISR change to send, if any.
    pub fn record_follower_fetch(
        &self,
        partition: &Partition,
        state: &mut PartitionState,
        replica: i32,
        fetch_offset: i64,
        now_ms: i64,
    ) -> (bool, Option<IsrChange>) {
        let leader_end = state.log.log_end_offset();
        let previous =
            state.followers.get(&replica).copied().unwrap_or_else(|| {
                FollowerState::on_leadership(None, false, true, leader_end, now_ms)
            });
        let broker_epoch = self
            .image()
            .brokers
            .get(&replica)
            .map_or(-1, |b| b.broker_epoch);
        state.followers.insert(
            replica,
            previous
                .after_fetch(fetch_offset, leader_end, now_ms)
                .under_epoch(broker_epoch),
        );
        let moved = self.update_high_watermark(state);
        let expand = self.maybe_expand_isr(partition, state, replica, fetch_offset, now_ms);
        (moved, expand)
    }

    fn maybe_expand_isr(
        &self,
        partition: &Partition,
        state: &mut PartitionState,
        replica: i32,
        follower_end: i64,
        now_ms: i64,
    ) -> Option<IsrChange> {
        if state.pending_isr.is_some()
            || now_ms < state.isr_retry_at_ms
            || state.isr.contains(&replica)
            || !state.replicas.contains(&replica)
            || self.broker_epoch() < 0
            || !isr::may_join_isr(
                follower_end,
                state.log.high_watermark(),
                state.leader_epoch_start_offset,
            )
        {
            return None;
        }
        let eligible = self
            .image()
            .brokers
            .get(&replica)
            .is_some_and(|b| !b.fenced);
        if !eligible {
            return None;
        }
        let mut new_isr = state.isr.clone();
        new_isr.push(replica);
        info!(topic = %partition.topic, partition = partition.index, replica, isr = ?new_isr, "expanding the ISR");
        Some(self.propose_isr(partition, state, new_isr))
    }

    fn propose_isr(
        &self,
        partition: &Partition,
        state: &mut PartitionState,
        new_isr: Vec<i32>,
    ) -> IsrChange {
        state.pending_isr = Some(PendingIsr {
            new_isr: new_isr.clone(),
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
        });
        IsrChange {
            topic_id: partition.topic_id,
            partition: partition.index,
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            broker_epochs: isr::isr_with_epochs(
                self.node_id,
                self.broker_epoch(),
                &new_isr,
                &state.followers,
            ),
            new_isr,
        }
    }

    /// The ISR shrinks due now: followers in the ISR of partitions this
    /// broker leads that have not caught up for `lag_max_ms`
    /// (`replica.lag.time.max.ms`). Marks each change pending.
    pub fn isr_shrinks(&self, lag_max_ms: i64) -> Vec<(Arc<Partition>, IsrChange)> {
        if self.broker_epoch() < 0 {
            return Vec::new();
        }
        let now = now_ms();
        let mut changes = Vec::new();
        for partition in self.partitions() {
            let mut state = partition.state();
            if state.deleted
                || state.leader != self.node_id
                || state.pending_isr.is_some()
                || now < state.isr_retry_at_ms
            {
                continue;
            }
            let out = isr::out_of_sync_replicas(
                self.node_id,
                &state.isr,
                &state.followers,
                state.log.log_end_offset(),
                now,
                lag_max_ms,
            );
            if out.is_empty() {
                continue;
            }
            let new_isr: Vec<i32> = state
                .isr
                .iter()
                .copied()
                .filter(|id| !out.contains(id))
                .collect();
            if new_isr.is_empty() {
                continue;
            }
            info!(
                topic = %partition.topic,
                partition = partition.index,
                out_of_sync = ?out,
                isr = ?new_isr,
                "shrinking the ISR"
            );
            let change = self.propose_isr(&partition, &mut state, new_isr);
            drop(state);
            changes.push((partition, change));
        }
        changes
    }

    /// Sends ISR changes (each already marked pending) to the controller and
    /// applies the answers. A refused or failed change is dropped and
    /// proposed again later from the state then current.
    pub async fn alter_isr(
        &self,
        controller: &dyn ControllerApi,
        batch: Vec<(Arc<Partition>, IsrChange)>,
    ) {
        if batch.is_empty() {
            return;
        }
        let changes: Vec<IsrChange> = batch.iter().map(|(_, c)| c.clone()).collect();
        let mut results = controller
            .alter_partition(self.node_id, self.broker_epoch(), changes)
            .await
            .into_iter();
        let now = now_ms();
        for (partition, change) in &batch {
            let result = results.next().unwrap_or_else(|| {
                Err(ControllerError::Internal(
                    "the controller gave no answer for this change".into(),
                ))
            });
            let mut state = partition.state();
            let still_ours = state.pending_isr.as_ref().is_some_and(|p| {
                p.leader_epoch == change.leader_epoch
                    && p.partition_epoch == change.partition_epoch
                    && p.new_isr == change.new_isr
            });
            if !still_ours {
                // Newer metadata already superseded this change.
                continue;
            }
            state.pending_isr = None;
            match result {
                Ok(committed) => {
                    if committed.leader == self.node_id
                        && committed.leader_epoch == state.leader_epoch
                        && committed.partition_epoch > state.partition_epoch
                    {
                        state.isr = committed.isr;
                        state.partition_epoch = committed.partition_epoch;
                    }
                    info!(
                        topic = %partition.topic,
                        partition = partition.index,
                        isr = ?state.isr,
                        partition_epoch = state.partition_epoch,
                        "ISR change committed"
                    );
                }
                Err(e) => {
                    state.isr_retry_at_ms = now + ISR_RETRY_BACKOFF_MS;
                    match e {
                        ControllerError::FencedLeaderEpoch(_)
                        | ControllerError::NotLeader(_)
                        | ControllerError::InvalidUpdateVersion(_) => {
                            // Our view is stale: the metadata brings the
                            // current state; propose again from that.
                            info!(topic = %partition.topic, partition = partition.index, error = %e, "ISR change refused; waiting for newer metadata")
                        }
                        _ => {
                            warn!(topic = %partition.topic, partition = partition.index, error = %e, "ISR change failed; will retry")
                        }
                    }
                }
            }
            // A shrink lets the high watermark move; a dropped expand may too.
            self.update_high_watermark(&mut state);
        }
        self.notify_appended();
    }

    fn partition_dir(&self, topic: &str, index: i32) -> PathBuf {
        self.log_dir.join(format!("{topic}-{index}"))
    }

    /// Opens the log of `topic`-`index` for topic id `topic_id`. A directory
    /// of the same name that belongs to another topic id is an older,
    /// deleted topic (the image is caught up, so it knows): it is retired.
    /// A marker that cannot be read keeps the directory untouched and fails.
    fn open_log(
        &self,
        topic: &str,
        topic_id: Uuid,
        index: i32,
        config: LogConfig,
    ) -> Result<PartitionLog, StorageError> {
        let dir = self.partition_dir(topic, index);
        let marker = dir.join(PARTITION_METADATA);
        match read_marker(&dir)? {
            Some(id) if id == topic_id => {}
            Some(older) => {
                warn!(dir = %dir.display(), topic_id = %older, "log directory belongs to a deleted topic of the same name; retiring it");
                self.retire_dir(&dir, older)?;
                self.create_marked_dir(&dir, &marker, topic_id)?;
            }
            None => self.create_marked_dir(&dir, &marker, topic_id)?,
        }
        PartitionLog::open(&dir, config)
    }

    /// Creates a partition directory and writes its topic-id marker before
    /// any data goes in, each step durable.
    fn create_marked_dir(
        &self,
        dir: &Path,
        marker: &Path,
        topic_id: Uuid,
    ) -> Result<(), StorageError> {
        let existed = dir.exists();
        fs::create_dir_all(dir)?;
        sluice_storage::write_atomic(marker, format!("topic_id: {topic_id}\n").as_bytes())?;
        if !existed {
            sluice_storage::sync_dir(&self.log_dir)?;
        }
        Ok(())
    }

    /// Renames a partition directory of topic id `topic_id` to its
    /// `-delete` name (durably), then removes it in the background.
    fn retire_dir(&self, dir: &Path, topic_id: Uuid) -> Result<(), StorageError> {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        let retired = self
            .log_dir
            .join(format!("{name}.{}{DELETE_SUFFIX}", topic_id.simple()));
        fs::rename(dir, &retired)?;
        sluice_storage::sync_dir(&self.log_dir)?;
        remove_in_background(retired);
        Ok(())
    }

    fn become_replica(
        &self,
        image: &MetadataImage,
        topic_id: Uuid,
        index: i32,
        reg: &PartitionRegistration,
    ) {
        let Some(topic) = image.topic_by_id(&topic_id) else {
            return;
        };
        let key = (topic.name.clone(), index);
        if let Some(stale) = self
            .partition(&topic.name, index)
            .filter(|p| p.topic_id != topic_id)
        {
            // A deleted topic's partition under the same name: never reuse it.
            self.remove_replica(&stale.topic, stale.topic_id, stale.index);
        }
        if let Some(existing) = self.partition(&topic.name, index) {
            let (follow, epoch_changed) = {
                let mut state = existing.state();
                self.apply_registration(&existing, &mut state, reg)
            };
            self.set_fetch_target(&existing, follow);
            if epoch_changed {
                self.targets_changed();
            }
            return;
        }
        let config = effective_log_config(&self.log_defaults, image.topic_config(&topic.name));
        match self.open_log(&topic.name, topic_id, index, config) {
            Ok(log) => {
                if self.offline().remove(&key).is_some() {
                    info!(topic = %topic.name, partition = index, "partition log opened; back online");
                    self.offline_gauge();
                }
                let partition = Arc::new(Partition::new(
                    topic.name.clone(),
                    topic_id,
                    index,
                    PartitionState {
                        log,
                        leader: sluice_metadata::NO_LEADER,
                        leader_epoch: -1,
                        partition_epoch: -1,
                        replicas: Vec::new(),
                        isr: Vec::new(),
                        deleted: false,
                        followers: HashMap::new(),
                        pending_isr: None,
                        leader_epoch_start_offset: 0,
                        isr_retry_at_ms: 0,
                        needs_truncation: false,
                        observed: Observed::default(),
                    },
                ));
                let (follow, _) = {
                    let mut state = partition.state();
                    self.apply_registration(&partition, &mut state, reg)
                };
                self.partitions
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(key.0)
                    .or_default()
                    .insert(index, partition.clone());
                self.set_fetch_target(&partition, follow);
                self.targets_changed();
            }
            Err(e) => {
                // The data stays where it is: never deleted for failing to open.
                let error = e.to_string();
                let mut offline = self.offline();
                let known = offline.get(&key).is_some_and(|o| o.error == error);
                if !known {
                    error!(topic = %topic.name, partition = index, error = %e, "cannot open partition log; the partition is offline on this broker and will be retried");
                }
                offline.insert(key, OfflinePartition { topic_id, error });
                drop(offline);
                self.offline_gauge();
            }
        }
    }

    fn offline(&self) -> MutexGuard<'_, HashMap<TopicPartition, OfflinePartition>> {
        self.offline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn offline_gauge(&self) {
        metrics::gauge!("sluice_offline_partitions").set(self.offline().len() as f64);
    }

    /// The partition's open error if this broker should host it but could
    /// not open its log.
    pub fn offline_error(&self, topic: &str, index: i32) -> Option<String> {
        self.offline()
            .get(&(topic.to_string(), index))
            .map(|o| o.error.clone())
    }

    /// Tries again to open the logs that failed to open (descriptors freed,
    /// a disk remounted), for partitions the image still assigns here.
    pub fn retry_offline(&self) {
        let keys: Vec<(TopicPartition, Uuid)> = self
            .offline()
            .iter()
            .map(|(k, o)| (k.clone(), o.topic_id))
            .collect();
        if keys.is_empty() {
            return;
        }
        let image = self.image();
        for ((topic, index), topic_id) in keys {
            let reg = image
                .topic_by_id(&topic_id)
                .and_then(|t| t.partitions.get(&index))
                .filter(|reg| reg.replicas.contains(&self.node_id));
            match reg {
                Some(reg) => self.become_replica(&image, topic_id, index, reg),
                None => {
                    self.offline().remove(&(topic, index));
                    self.offline_gauge();
                }
            }
        }
    }

    /// Applies a partition's registration: becoming leader (follower
    /// tracking reset, the new epoch starting at the log end), becoming a
    /// follower (truncation before fetching), or an ISR/replica change.
    /// Returns the leader to fetch from, if any, and whether the leader or
    /// its epoch changed.
    fn apply_registration(
        &self,
        partition: &Partition,
        state: &mut PartitionState,
        reg: &PartitionRegistration,
    ) -> (Option<i32>, bool) {
        let me = self.node_id;
        let follow_of = |state: &PartitionState| {
            (state.leader != me && state.leader >= 0).then_some(state.leader)
        };
        if reg.leader_epoch < state.leader_epoch
            || (reg.leader_epoch == state.leader_epoch
                && reg.partition_epoch < state.partition_epoch)
        {
            // Older than what an AlterPartition answer already told us.
            debug!(topic = %partition.topic, partition = partition.index, "ignoring an older partition registration");
            return (follow_of(state), false);
        }
        let new_epoch = reg.leader != state.leader || reg.leader_epoch != state.leader_epoch;
        let was_leader = state.leader == me;
        if new_epoch || reg.partition_epoch != state.partition_epoch {
            // Whatever was in flight is answered by this registration.
            state.pending_isr = None;
        }
        state.replicas = reg.replicas.clone();
        state.isr = reg.isr.clone();
        state.partition_epoch = reg.partition_epoch;
        state.leader = reg.leader;
        state.leader_epoch = reg.leader_epoch;
        let now = now_ms();
        if reg.leader == me {
            let leader_end = state.log.log_end_offset();
            if new_epoch {
                // Followers truncate against the epoch's start offset, so it
                // is recorded now, before anything is appended in it.
                if let Err(e) = state.log.assign_epoch_start(reg.leader_epoch) {
                    error!(topic = %partition.topic, partition = partition.index, error = %e, "cannot record the new leader epoch");
                }
                state.leader_epoch_start_offset = leader_end;
                state.needs_truncation = false;
                state.isr_retry_at_ms = 0;
                info!(
                    topic = %partition.topic,
                    partition = partition.index,
                    leader_epoch = reg.leader_epoch,
                    log_end = leader_end,
                    isr = ?reg.isr,
                    "became leader"
                );
            }
            let previous = std::mem::take(&mut state.followers);
            state.followers = reg
                .replicas
                .iter()
                .filter(|&&id| id != me)
                .map(|&id| {
                    let follower = match previous.get(&id) {
                        Some(known) if !new_epoch => *known,
                        known => FollowerState::on_leadership(
                            known,
                            reg.isr.contains(&id),
                            !was_leader,
                            leader_end,
                            now,
                        ),
                    };
                    (id, follower)
                })
                .collect();
            self.update_high_watermark(state);
        } else {
            state.followers.clear();
            state.pending_isr = None;
            if new_epoch {
                state.needs_truncation = true;
                info!(
                    topic = %partition.topic,
                    partition = partition.index,
                    leader = reg.leader,
                    leader_epoch = reg.leader_epoch,
                    log_end = state.log.log_end_offset(),
                    "became follower"
                );
            }
        }
        (follow_of(state), new_epoch)
    }

    /// Deletes this broker's replica of partition `index` of topic id
    /// `topic_id`, and nothing of any other topic id that has the same name.
    fn remove_replica(&self, topic: &str, topic_id: Uuid, index: i32) {
        let key = (topic.to_string(), index);
        let removed = {
            let mut partitions = self.partitions.write().unwrap_or_else(|p| p.into_inner());
            match partitions.get_mut(topic) {
                Some(hosted) if hosted.get(&index).is_some_and(|p| p.topic_id == topic_id) => {
                    let removed = hosted.remove(&index);
                    if hosted.is_empty() {
                        partitions.remove(topic);
                    }
                    removed
                }
                _ => None,
            }
        };
        let was_offline = {
            let mut offline = self.offline();
            let ours = offline.get(&key).is_some_and(|o| o.topic_id == topic_id);
            ours && offline.remove(&key).is_some()
        };
        if was_offline {
            self.offline_gauge();
        }
        if let Some(partition) = &removed {
            self.set_fetch_target(partition, None);
            self.targets_changed();
        }
        // Hold the partition's lock while its directory goes, so no append or
        // roll in flight writes into it afterwards.
        let mut guard = removed.as_ref().map(|p| p.state());
        if let Some(state) = guard.as_mut() {
            state.deleted = true;
            state.log.stop_checkpoint_writes();
        }
        let dir = self.partition_dir(topic, index);
        match read_marker(&dir) {
            Ok(Some(id)) if id == topic_id => {
                if let Err(e) = self.retire_dir(&dir, topic_id) {
                    warn!(dir = %dir.display(), error = %e, "cannot retire deleted partition's directory");
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot read the marker of a deleted partition's directory; left in place")
            }
        }
        drop(guard);
        info!(topic, partition = index, %topic_id, "partition deleted");
    }

    /// After the first, caught-up image: removes what that image says is
    /// gone, and only that. A directory whose marker names a topic id the
    /// image does not have (deleted while this broker was down), or a
    /// partition no longer assigned here, is retired. Directories without a
    /// readable marker, and partitions that failed to open, are left alone.
    fn remove_strays(&self, image: &MetadataImage) {
        let Ok(entries) = fs::read_dir(&self.log_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !path.is_dir() {
                continue;
            }
            if is_retired_dir_name(&name) {
                // Renamed for deletion before a crash: finish the job.
                remove_in_background(path);
                continue;
            }
            let Some(index) = name
                .rsplit_once('-')
                .and_then(|(_, p)| p.parse::<i32>().ok())
            else {
                continue;
            };
            let topic_id = match read_marker(&path) {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(e) => {
                    warn!(dir = %path.display(), error = %e, "cannot read a log directory's marker; left in place");
                    continue;
                }
            };
            let assigned = image
                .topic_by_id(&topic_id)
                .and_then(|t| t.partitions.get(&index))
                .is_some_and(|reg| reg.replicas.contains(&self.node_id));
            if assigned {
                continue;
            }
            info!(dir = %path.display(), %topic_id, "retiring the log directory of a partition the metadata no longer assigns here");
            if let Err(e) = self.retire_dir(&path, topic_id) {
                warn!(dir = %path.display(), error = %e, "cannot retire stray log directory");
            }
        }
    }

    /// Time-based roll and retention for every partition.
    pub fn enforce_retention(&self) {
        let now = now_ms();
        for partition in self.partitions() {
            let mut state = partition.state();
            if let Err(e) = state.log.roll_if_due(now) {
                warn!(topic = %partition.topic, partition = partition.index, error = %e, "segment roll failed");
            }
            match state.log.enforce_retention(now) {
                Ok(0) => {}
                Ok(deleted) => {
                    info!(topic = %partition.topic, partition = partition.index, deleted, "retention deleted segments")
                }
                Err(e) => {
                    warn!(topic = %partition.topic, partition = partition.index, error = %e, "retention failed")
                }
            }
        }
    }

    /// `flush.ms`: fsyncs the logs whose unflushed data is old enough.
    pub fn flush_due_logs(&self) {
        let now = now_ms();
        for partition in self.partitions() {
            if partition.state().log.flush_due(now) {
                self.checkpoint_partition(&partition);
            }
        }
    }

    /// Flushes a partition's log and writes its checkpoints with the
    /// partition's lock held only to capture and to record: produce and
    /// fetch never wait behind an fsync.
    fn checkpoint_partition(&self, partition: &Partition) {
        let pending = {
            let mut state = partition.state();
            if state.deleted {
                return;
            }
            state.log.begin_checkpoint()
        };
        let result = pending.and_then(|pending| {
            let written = pending.write();
            partition.state().log.end_checkpoint(pending, written)
        });
        if let Err(e) = result {
            warn!(topic = %partition.topic, partition = partition.index, error = %e, "checkpoint failed");
        }
    }

    /// One log cleaner pass over the compacted partitions that are due. Each
    /// partition's lock is held only to plan and to swap the cleaned
    /// segments in; the copying runs without it (see
    /// `sluice_storage::log::cleaner`).
    pub fn clean_logs(&self) {
        for partition in self.partitions() {
            let plan = {
                let state = partition.state();
                if state.deleted {
                    continue;
                }
                state.log.plan_clean(now_ms())
            };
            let Some(plan) = plan else { continue };
            let output = match plan.run() {
                Ok(output) => output,
                Err(e) => {
                    warn!(topic = %partition.topic, partition = partition.index, error = %e, "log clean failed");
                    continue;
                }
            };
            let mut state = partition.state();
            if state.deleted {
                // Dropping the output removes its files.
                continue;
            }
            match state.log.finish_clean(output) {
                Ok(stats) => info!(
                    topic = %partition.topic,
                    partition = partition.index,
                    segments_read = stats.segments_read,
                    segments_swapped = stats.segments_swapped,
                    bytes_read = stats.bytes_read,
                    bytes_written = stats.bytes_written,
                    records_removed = stats.records_removed,
                    tombstones_removed = stats.tombstones_removed,
                    batches_kept_whole = stats.batches_kept_whole,
                    "cleaned log"
                ),
                Err(e) => {
                    warn!(topic = %partition.topic, partition = partition.index, error = %e, "swapping in a cleaned log failed")
                }
            }
        }
    }

    /// Flushes logs and persists high watermarks and log start offsets.
    pub fn checkpoint(&self) {
        for partition in self.partitions() {
            self.checkpoint_partition(&partition);
        }
    }

    /// Flushes and closes every log, marking a clean shutdown.
    pub fn close_all(&self) {
        self.fetch_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let drained: Vec<_> = self
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .flat_map(|(_, hosted)| hosted.into_values())
            .collect();
        for partition in drained {
            match Arc::try_unwrap(partition) {
                Ok(partition) => {
                    let state = partition
                        .state
                        .into_inner()
                        .unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = state.log.close() {
                        warn!(error = %e, "closing a log failed");
                    }
                }
                Err(partition) => {
                    // Still referenced by a request in flight: flush what we can.
                    let _ = partition.state().log.checkpoint();
                }
            }
        }
    }
}

impl Publisher for ReplicaManager {
    fn publish(&self, delta: &MetadataDelta, image: &Arc<MetadataImage>) {
        let changes = delta.local_changes(self.node_id);
        for (name, id, index) in &changes.removed {
            self.remove_replica(name, *id, *index);
        }
        for (topic_id, index) in &changes.updated {
            if let Some(reg) = image
                .topic_by_id(topic_id)
                .and_then(|t| t.partitions.get(index))
            {
                self.become_replica(image, *topic_id, *index, reg);
            }
        }
        // Topic config changes reach the logs they govern.
        if !Arc::ptr_eq(&delta.base().configs, &image.configs) {
            for partition in self.partitions() {
                let config =
                    effective_log_config(&self.log_defaults, image.topic_config(&partition.topic));
                partition.state().log.set_config(config);
            }
        }
        *self.image.write().unwrap_or_else(|p| p.into_inner()) = image.clone();
        if !self.loaded.swap(true, Ordering::SeqCst) {
            // The loader publishes the caught-up image first, whole.
            self.remove_strays(image);
        }
        // Waiting fetches and acks=all produces re-check leadership and
        // existence, so they wake only when a hosted partition changed: a
        // woken fetch re-reads its whole session, and most entries (offset
        // commits, other brokers' partitions) change nothing here.
        if !changes.updated.is_empty() || !changes.removed.is_empty() {
            self.notify_appended();
        }
    }
}

/// The topic id a partition directory's marker names: `None` when there is
/// no marker (a directory being created), an error when it cannot be read
/// or parsed.
fn read_marker(dir: &Path) -> Result<Option<Uuid>, StorageError> {
    let text = match fs::read_to_string(dir.join(PARTITION_METADATA)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .find_map(|l| l.strip_prefix("topic_id:"))
        .and_then(|id| Uuid::parse_str(id.trim()).ok())
        .map(Some)
        .ok_or_else(|| {
            StorageError::CorruptLog(format!(
                "{} does not name a topic id",
                dir.join(PARTITION_METADATA).display()
            ))
        })
}

/// `<topic>-<p>.<32 hex digits>-delete`: a directory retired for deletion.
fn is_retired_dir_name(name: &str) -> bool {
    name.strip_suffix(DELETE_SUFFIX)
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(_, id)| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Removes a retired directory off the caller's thread: a large partition
/// takes a while, and nothing waits for it.
fn remove_in_background(dir: PathBuf) {
    std::thread::spawn(move || {
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(dir = %dir.display(), error = %e, "cannot remove a retired log directory");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_watermark_is_the_slowest_in_sync_replica() {
        assert_eq!(high_watermark(10, &[]), 10);
        assert_eq!(high_watermark(10, &[7, 12]), 7);
    }

    #[test]
    fn a_new_leader_epoch_starts_at_the_log_end_before_any_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        for _ in 0..2 {
            let batch = sluice_storage::batch::BatchBuilder::new(0)
                .record(0, None, Some(b"v"))
                .build();
            log.append_as_leader(&batch, 0, 0).unwrap();
        }
        log.assign_epoch_start(3).unwrap();
        // A follower asking for epoch 0, or for an epoch this leader never
        // saw, learns where epoch 0 ended.
        assert_eq!(log.end_offset_for_epoch(0), (0, 2));
        assert_eq!(log.end_offset_for_epoch(2), (0, 2));
        assert_eq!(log.end_offset_for_epoch(3), (3, 2));
        // An older epoch never rewrites the cache.
        log.assign_epoch_start(1).unwrap();
        assert_eq!(log.latest_epoch(), Some(3));
    }

    #[test]
    fn topic_configs_override_broker_defaults() {
        let defaults = LogConfig::default();
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        configs.insert("segment.bytes".to_string(), "bogus".to_string());
        let config = effective_log_config(&defaults, Some(&configs));
        assert_eq!(config.retention_ms, 1000);
        assert_eq!(config.segment_bytes, defaults.segment_bytes);
        assert!(config.cleanup_delete && !config.cleanup_compact);

        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("delete.retention.ms".to_string(), "5".to_string());
        configs.insert("min.cleanable.dirty.ratio".to_string(), "0.1".to_string());
        configs.insert("min.compaction.lag.ms".to_string(), "7".to_string());
        configs.insert("max.compaction.lag.ms".to_string(), "9".to_string());
        let config = effective_log_config(&defaults, Some(&configs));
        assert!(!config.cleanup_delete && config.cleanup_compact);
        assert_eq!(config.delete_retention_ms, 5);
        assert_eq!(config.min_cleanable_dirty_ratio, 0.1);
        assert_eq!(
            (config.min_compaction_lag_ms, config.max_compaction_lag_ms),
            (7, 9)
        );
        configs.insert("cleanup.policy".to_string(), "compact, delete".to_string());
        let config = effective_log_config(&defaults, Some(&configs));
        assert!(config.cleanup_delete && config.cleanup_compact);
    }

    #[test]
    fn flush_topic_configs_reach_the_log() {
        let defaults = LogConfig::default();
        assert_eq!(defaults.flush_messages, i64::MAX);
        assert_eq!(defaults.flush_ms, i64::MAX);
        let mut configs = BTreeMap::new();
        configs.insert("flush.messages".to_string(), "1".to_string());
        configs.insert("flush.ms".to_string(), "250".to_string());
        let config = effective_log_config(&defaults, Some(&configs));
        assert_eq!((config.flush_messages, config.flush_ms), (1, 250));
    }

    use sluice_metadata::{
        encode_batch, MetadataLoader, MetadataRecord, PartitionRecord, RemoveTopicRecord,
        TopicRecord,
    };

    fn topic(name: &str, id: Uuid, replicas: Vec<i32>) -> Vec<u8> {
        encode_batch(&[
            MetadataRecord::Topic(TopicRecord {
                name: name.into(),
                topic_id: id,
            }),
            MetadataRecord::Partition(PartitionRecord {
                topic_id: id,
                partition: 0,
                replicas: replicas.clone(),
                isr: replicas.clone(),
                leader: replicas[0],
                leader_epoch: 0,
                partition_epoch: 0,
            }),
        ])
    }

    fn remove(id: Uuid) -> Vec<u8> {
        encode_batch(&[MetadataRecord::RemoveTopic(RemoveTopicRecord {
            topic_id: id,
        })])
    }

    fn manager(dir: &Path) -> Arc<ReplicaManager> {
        Arc::new(ReplicaManager::new(1, dir.to_path_buf(), LogConfig::default()).unwrap())
    }

    fn append(manager: &ReplicaManager, topic: &str, value: &[u8]) {
        let partition = manager.partition(topic, 0).expect("hosted");
        let mut state = partition.state();
        let batch = sluice_storage::batch::BatchBuilder::new(0)
            .record(0, None, Some(value))
            .build();
        state.log.append_as_leader(&batch, 0, 0).unwrap();
        state.log.flush().unwrap();
    }

    fn log_end(manager: &ReplicaManager, topic: &str) -> i64 {
        manager
            .partition(topic, 0)
            .expect("hosted")
            .state()
            .log
            .log_end_offset()
    }

    /// Lets background removals of retired directories finish.
    fn entries(dir: &Path) -> Vec<String> {
        for _ in 0..100 {
            let names: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !names.iter().any(|n| is_retired_dir_name(n)) {
                let mut names = names;
                names.sort();
                return names;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("retired directories were not removed");
    }

    #[test]
    fn replaying_a_delete_and_recreate_at_restart_keeps_the_new_topics_data() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        let history = [
            topic("t", old, vec![1]),
            remove(old),
            topic("t", new, vec![1]),
        ];

        // First life: every entry is published as it commits.
        let replicas = manager(dir.path());
        let mut loader = MetadataLoader::new(vec![replicas.clone() as Arc<dyn Publisher>]);
        loader.set_committed_offset(0);
        loader.load_entry(1, &history[0]).unwrap();
        append(&replicas, "t", b"old");
        loader.load_entry(2, &history[1]).unwrap();
        loader.load_entry(3, &history[2]).unwrap();
        append(&replicas, "t", b"new-1");
        append(&replicas, "t", b"new-2");
        assert_eq!(log_end(&replicas, "t"), 2);
        replicas.close_all();

        // Restart: the same history is replayed, and the new topic's data stays.
        let replicas = manager(dir.path());
        let mut loader = MetadataLoader::new(vec![replicas.clone() as Arc<dyn Publisher>]);
        loader.set_committed_offset(3);
        for (i, entry) in history.iter().enumerate() {
            loader.load_entry(i as u64 + 1, entry).unwrap();
        }
        assert_eq!(
            log_end(&replicas, "t"),
            2,
            "the re-created topic lost its data"
        );
        assert_eq!(entries(dir.path()), vec!["t-0".to_string()]);
    }

    #[test]
    fn deletion_goes_by_topic_id_and_strays_go_only_when_the_image_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (gone, kept, other_id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        // A partition of a topic deleted while this broker was down.
        fs::create_dir_all(dir.path().join("gone-0")).unwrap();
        fs::write(
            dir.path().join("gone-0").join(PARTITION_METADATA),
            format!("topic_id: {gone}\n"),
        )
        .unwrap();
        // A directory whose marker cannot be read, and one without a marker.
        fs::create_dir_all(dir.path().join("garbled-0")).unwrap();
        fs::write(dir.path().join("garbled-0").join(PARTITION_METADATA), b"").unwrap();
        fs::create_dir_all(dir.path().join("unmarked-0")).unwrap();
        // A retired directory left by a crash before its removal finished.
        let retired = format!("old-0.{}-delete", Uuid::new_v4().simple());
        fs::create_dir_all(dir.path().join(&retired)).unwrap();

        let replicas = manager(dir.path());
        let mut loader = MetadataLoader::new(vec![replicas.clone() as Arc<dyn Publisher>]);
        loader.set_committed_offset(1);
        loader.load_entry(1, &topic("kept", kept, vec![1])).unwrap();
        append(&replicas, "kept", b"v");
        assert_eq!(
            entries(dir.path()),
            vec![
                "garbled-0".to_string(),
                "kept-0".into(),
                "unmarked-0".into()
            ]
        );

        // Removing another topic id under the same name touches nothing.
        replicas.remove_replica("kept", other_id, 0);
        assert_eq!(log_end(&replicas, "kept"), 1);
        loader.load_entry(2, &remove(kept)).unwrap();
        assert!(replicas.partition("kept", 0).is_none());
        assert_eq!(
            entries(dir.path()),
            vec!["garbled-0".to_string(), "unmarked-0".into()]
        );
    }

    #[test]
    fn a_partition_that_fails_to_open_is_offline_and_its_data_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let replicas = manager(dir.path());
        let mut loader = MetadataLoader::new(vec![replicas.clone() as Arc<dyn Publisher>]);
        loader.set_committed_offset(1);
        loader.load_entry(1, &topic("t", id, vec![1])).unwrap();
        append(&replicas, "t", b"v");
        replicas.close_all();

        // A file the log cannot open: a directory where its index should be.
        let index = dir.path().join("t-0").join("00000000000000000000.index");
        let _ = fs::remove_file(&index);
        fs::create_dir_all(&index).unwrap();
        let replicas = manager(dir.path());
        let mut loader = MetadataLoader::new(vec![replicas.clone() as Arc<dyn Publisher>]);
        loader.set_committed_offset(1);
        loader.load_entry(1, &topic("t", id, vec![1])).unwrap();
        assert!(replicas.partition("t", 0).is_none());
        assert!(replicas.offline_error("t", 0).is_some());
        assert!(dir
            .path()
            .join("t-0")
            .join("00000000000000000000.log")
            .exists());

        // Once the cause is gone, housekeeping brings it back with its data.
        fs::remove_dir(&index).unwrap();
        replicas.retry_offline();
        assert!(replicas.offline_error("t", 0).is_none());
        assert_eq!(log_end(&replicas, "t"), 1);
    }
}
