//! The partitions this broker hosts: their logs, their leader/follower state
//! and the high-watermark rule, kept together per partition.
//!
//! The replica manager is a metadata publisher: each committed change that
//! names this broker creates, updates or deletes a local replica.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_metadata::{MetadataDelta, MetadataImage, PartitionRegistration, Publisher, Uuid};
use sluice_storage::{LogConfig, PartitionLog, StorageError};
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// Marks a partition directory with the id of the topic it belongs to, so a
/// directory left from a deleted topic of the same name is never reused.
const PARTITION_METADATA: &str = "partition.metadata";

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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
    config
}

/// The high watermark: the smallest log end offset among the in-sync replicas.
/// `follower_ends` holds the fetch positions of in-sync followers.
pub fn high_watermark(leader_end: i64, follower_ends: &[i64]) -> i64 {
    follower_ends.iter().copied().fold(leader_end, i64::min)
}

#[derive(Debug)]
pub struct PartitionState {
    pub log: PartitionLog,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Set when the topic is deleted: requests still holding the partition
    /// must not write into a directory that is going away.
    pub deleted: bool,
}

pub struct Partition {
    pub topic: String,
    pub topic_id: Uuid,
    pub index: i32,
    state: Mutex<PartitionState>,
}

impl Partition {
    pub fn state(&self) -> MutexGuard<'_, PartitionState> {
        // A panic while holding the lock leaves the log as it was on disk;
        // carrying on with the inner value is safe.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub type TopicPartition = (String, i32);

pub struct ReplicaManager {
    node_id: i32,
    log_dir: PathBuf,
    log_defaults: LogConfig,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    image: RwLock<Arc<MetadataImage>>,
    /// Woken on every append, for fetches waiting on new data.
    appended: Notify,
}

impl ReplicaManager {
    pub fn new(node_id: i32, log_dir: PathBuf, log_defaults: LogConfig) -> std::io::Result<Self> {
        fs::create_dir_all(&log_dir)?;
        Ok(Self {
            node_id,
            log_dir,
            log_defaults,
            partitions: RwLock::new(HashMap::new()),
            image: RwLock::new(MetadataImage::empty()),
            appended: Notify::new(),
        })
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
        partitions.get(&(topic.to_string(), index)).cloned()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        let partitions = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        partitions.values().cloned().collect()
    }

    pub fn appended(&self) -> &Notify {
        &self.appended
    }

    /// Called after an append, and after anything that moves a high watermark.
    pub fn notify_appended(&self) {
        self.appended.notify_waiters();
    }

    /// Recomputes the high watermark of a partition this broker leads.
    pub fn update_high_watermark(&self, state: &mut PartitionState) {
        if state.leader != self.node_id {
            return;
        }
        // Followers do not replicate yet, so the leader is the whole ISR it
        // can count; replication (the cluster issue) feeds follower positions here.
        let hw = high_watermark(state.log.log_end_offset(), &[]);
        if hw > state.log.high_watermark() {
            state.log.set_high_watermark(hw);
        }
    }

    fn partition_dir(&self, topic: &str, index: i32) -> PathBuf {
        self.log_dir.join(format!("{topic}-{index}"))
    }

    fn open_log(
        &self,
        topic: &str,
        topic_id: Uuid,
        index: i32,
        config: LogConfig,
    ) -> Result<PartitionLog, StorageError> {
        let dir = self.partition_dir(topic, index);
        let marker = dir.join(PARTITION_METADATA);
        if let Ok(text) = fs::read_to_string(&marker) {
            if text.trim() != format!("topic_id: {topic_id}") {
                warn!(dir = %dir.display(), "log directory belongs to an older topic of the same name; removing it");
                fs::remove_dir_all(&dir)?;
            }
        }
        let log = PartitionLog::open(&dir, config)?;
        write_atomically(&marker, format!("topic_id: {topic_id}\n").as_bytes())?;
        Ok(log)
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
            self.remove_replica(&stale.topic, stale.index);
        }
        if let Some(existing) = self.partition(&topic.name, index) {
            let mut state = existing.state();
            state.leader = reg.leader;
            state.leader_epoch = reg.leader_epoch;
            state.replicas = reg.replicas.clone();
            state.isr = reg.isr.clone();
            return;
        }
        let config = effective_log_config(&self.log_defaults, image.topic_config(&topic.name));
        match self.open_log(&topic.name, topic_id, index, config) {
            Ok(log) => {
                let mut state = PartitionState {
                    log,
                    leader: reg.leader,
                    leader_epoch: reg.leader_epoch,
                    replicas: reg.replicas.clone(),
                    isr: reg.isr.clone(),
                    deleted: false,
                };
                self.update_high_watermark(&mut state);
                let partition = Arc::new(Partition {
                    topic: topic.name.clone(),
                    topic_id,
                    index,
                    state: Mutex::new(state),
                });
                self.partitions
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, partition);
            }
            Err(e) => {
                error!(topic = %topic.name, partition = index, error = %e, "cannot open partition log")
            }
        }
    }

    fn remove_replica(&self, topic: &str, index: i32) {
        let removed = self
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(topic.to_string(), index));
        let dir = self.partition_dir(topic, index);
        // Hold the partition's lock while its files go, so no append or roll
        // in flight writes into the directory afterwards.
        let mut guard = removed.as_ref().map(|p| p.state());
        if let Some(state) = guard.as_mut() {
            state.deleted = true;
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(dir = %dir.display(), error = %e, "cannot remove deleted partition's directory");
            }
        }
        drop(guard);
        info!(topic, partition = index, "partition deleted");
    }

    /// Removes partition directories the metadata no longer assigns here
    /// (a topic deleted while this broker was down).
    pub fn remove_strays(&self) {
        let Ok(entries) = fs::read_dir(&self.log_dir) else {
            return;
        };
        let hosted: Vec<PathBuf> = self
            .partitions()
            .iter()
            .map(|p| self.partition_dir(&p.topic, p.index))
            .collect();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && path.join(PARTITION_METADATA).exists() && !hosted.contains(&path) {
                info!(dir = %path.display(), "removing log directory of a partition no longer assigned here");
                if let Err(e) = fs::remove_dir_all(&path) {
                    warn!(dir = %path.display(), error = %e, "cannot remove stray log directory");
                }
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

    /// Persists high watermarks and log start offsets.
    pub fn checkpoint(&self) {
        for partition in self.partitions() {
            if let Err(e) = partition.state().log.checkpoint() {
                warn!(topic = %partition.topic, partition = partition.index, error = %e, "checkpoint failed");
            }
        }
    }

    /// Flushes and closes every log, marking a clean shutdown.
    pub fn close_all(&self) {
        let drained: Vec<_> = self
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, partition) in drained {
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
        for (name, _id, index) in &changes.removed {
            self.remove_replica(name, *index);
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
        // Waiting fetches and acks=all produces re-check leadership and existence.
        self.notify_appended();
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data)?;
    fs::rename(tmp, path)
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
    fn topic_configs_override_broker_defaults() {
        let defaults = LogConfig::default();
        let mut configs = BTreeMap::new();
        configs.insert("retention.ms".to_string(), "1000".to_string());
        configs.insert("segment.bytes".to_string(), "bogus".to_string());
        let config = effective_log_config(&defaults, Some(&configs));
        assert_eq!(config.retention_ms, 1000);
        assert_eq!(config.segment_bytes, defaults.segment_bytes);
    }
}
