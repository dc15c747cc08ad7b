//! The durable log of one partition: a directory of segments plus a few
//! small checkpoint files.
//!
//! ```text
//! <dir>/00000000000000000000.log         batches, as received (offsets patched)
//! <dir>/00000000000000000000.index       sparse offset index
//! <dir>/00000000000000000000.timeindex   sparse time index
//! <dir>/log-checkpoint                   high watermark + log start offset
//! <dir>/leader-epoch-checkpoint          epoch -> start offset
//! <dir>/producer-snapshot                producer state as of some offset
//! <dir>/.clean-shutdown                  present only between close and open
//! <dir>/cleaner-checkpoint               compacted logs: end of the clean part
//! <dir>/cleaner/, <dir>/*.swap           a clean in progress (see [`cleaner`])
//! ```
//!
//! Appends are plain `write(2)`s; data survives a killed process through the
//! page cache and is fsynced on roll, checkpoint and close. After an unclean
//! shutdown the active segment is scanned (headers and CRCs) and cut at the
//! first torn or corrupt batch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

use crate::batch::{self, BatchHeader, Origin, HEADER_SIZE};
use crate::fs::{self, File};
use crate::leader_epoch::{EpochEntry, LeaderEpochCache};
use crate::producer_state::{ProducerStateManager, SequenceCheck};
use crate::segment::{parse_segment_file_name, Segment};
use crate::StorageError;

const CHECKPOINT_FILE: &str = "log-checkpoint";
const EPOCH_FILE: &str = "leader-epoch-checkpoint";
const PRODUCER_SNAPSHOT_FILE: &str = "producer-snapshot";
const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";
const TMP_SUFFIX: &str = ".tmp";

/// Milliseconds since the Unix epoch, by the system clock.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Makes a directory's entries (files created, renamed or removed in it)
/// durable.
pub fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Replaces `path` with `bytes` atomically: write a temporary file, fsync,
/// rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    replace_file(path, bytes, true)
}

/// Replaces `path` with `bytes` atomically (a reader sees the old or the
/// new content) but not durably: no fsync. After a power loss the file may
/// be the old one, the new one, or the new one torn.
pub(crate) fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    replace_file(path, bytes, false)
}

/// Writes a temporary file and renames it over `path`; `durable` fsyncs
/// the file before the rename and the directory after it.
fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StorageError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)?;
    if durable {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Per-partition log settings (Kafka topic configs of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment this old.
    pub segment_ms: i64,
    /// `retention.ms`; -1 keeps data forever.
    pub retention_ms: i64,
    /// `retention.bytes`; -1 means no size limit.
    pub retention_bytes: i64,
    /// `max.message.bytes`: largest batch a producer may append.
    pub max_message_bytes: usize,
    /// `index.interval.bytes`: bytes of log between index entries.
    pub index_interval_bytes: usize,
    /// `flush.messages`: fsync as soon as this many offsets have been
    /// appended since the last flush (`i64::MAX`: never for that reason).
    pub flush_messages: i64,
    /// `flush.ms`: [`PartitionLog::flush_if_due`] fsyncs data that has been
    /// waiting this long (`i64::MAX`: never for that reason).
    pub flush_ms: i64,
    /// `cleanup.policy` holds `delete`: `retention.ms`/`retention.bytes`
    /// delete old segments.
    pub cleanup_delete: bool,
    /// `cleanup.policy` holds `compact`: the cleaner keeps the latest value
    /// of each key (see [`crate::log::cleaner`]).
    pub cleanup_compact: bool,
    /// `delete.retention.ms`: how long a tombstone outlives its first clean.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`: share of not yet cleaned bytes that
    /// makes a log worth cleaning.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: records younger than this are not cleaned.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a log whose oldest uncleaned record is this
    /// old is cleaned whatever its dirty ratio.
    pub max_compaction_lag_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        const WEEK_MS: i64 = 7 * 24 * 60 * 60 * 1000;
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: WEEK_MS,
            retention_ms: WEEK_MS,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            index_interval_bytes: 4096,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
        }
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended (or of the original, for a
    /// duplicate).
    pub base_offset: i64,
    pub last_offset: i64,
    /// Always -1: timestamps are the producer's (CreateTime).
    pub log_append_time: i64,
    /// True if this was an idempotent retry answered with the offsets of
    /// the batch already in the log; nothing was written.
    pub duplicate: bool,
    /// Largest batch max timestamp among the appended batches.
    pub max_timestamp: i64,
}

/// Whole batches read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub records: Bytes,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

/// The durable log of one partition.
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base offset; never empty; the last one is the active one.
    segments: Vec<Segment>,
    log_start_offset: i64,
    high_watermark: i64,
    epochs: LeaderEpochCache,
    producers: ProducerStateManager,
    /// (high watermark, log start) last written to the checkpoint file.
    checkpointed: Option<(i64, i64)>,
    /// Log end offset covered by the producer snapshot on disk, if any.
    snapshot_offset: Option<i64>,
    /// Everything below this offset has been fsynced (Kafka's recovery
    /// point); `flush.messages` counts the offsets above it.
    recovery_point: i64,
    /// Wall clock time of the last flush, for `flush.ms`.
    last_flush_ms: i64,
    /// The clean-shutdown marker found at open is still on disk. It goes,
    /// durably, before the first change to a segment: a crash after that
    /// must not skip the recovery it vouches is not needed. Removing it
    /// lazily keeps an fsync per partition out of a start-up that opens
    /// 100,000 of them, most of which take no write for a while.
    clean_marker: bool,
    /// Set when a failed append could not be undone: appends are refused
    /// until the log is reopened.
    failed: Option<String>,
    /// Numbers each write of the checkpoint or producer-snapshot file, so
    /// one prepared under the lock and written without it never lands over
    /// a newer one. The mutex holds the number of the last write made.
    checkpoint_seq: u64,
    checkpoint_files: Arc<Mutex<u64>>,
    /// Where the clean part of a compacted log ends.
    cleaner: cleaner::CleanerCheckpoint,
    /// Bumped whenever segments are removed or cut (retention, truncation,
    /// a clean's swap): a clean planned before then is not swapped in.
    generation: u64,
}

struct Checkpoint {
    high_watermark: i64,
    log_start_offset: i64,
}

fn read_checkpoint(path: &Path) -> Option<Checkpoint> {
    let text = fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim() != "0" {
        return None;
    }
    let mut hw = None;
    let mut ls = None;
    for line in lines {
        let mut parts = line.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|v| v.parse::<i64>().ok()),
        ) {
            (Some("high_watermark"), Some(v)) => hw = Some(v),
            (Some("log_start_offset"), Some(v)) => ls = Some(v),
            _ => {}
        }
    }
    Some(Checkpoint {
        high_watermark: hw?,
        log_start_offset: ls?,
    })
}

/// A checkpoint taken from a log under its lock, to be made durable
/// without it: the segment data written so far, then the checkpoint and
/// producer-snapshot files (see [`PartitionLog::begin_checkpoint`]).
pub struct PendingCheckpoint {
    dir: PathBuf,
    /// Handles on the files with unflushed writes.
    unflushed: Vec<Arc<File>>,
    flushed_to: i64,
    started_ms: i64,
    generation: u64,
    seq: u64,
    files: Arc<Mutex<u64>>,
    checkpoint: Option<(i64, i64)>,
    snapshot: Option<(i64, Vec<u8>)>,
}

impl PendingCheckpoint {
    /// fsyncs the data, then writes the checkpoint files unless a newer
    /// write of them was made meanwhile. Returns whether they were written.
    pub fn write(&self) -> Result<bool, StorageError> {
        for file in &self.unflushed {
            file.sync_data()?;
        }
        let mut last = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if *last > self.seq {
            return Ok(false);
        }
        if let Some(state) = self.checkpoint {
            write_atomic(
                &self.dir.join(CHECKPOINT_FILE),
                checkpoint_text(state).as_bytes(),
            )?;
        }
        if let Some((_, bytes)) = &self.snapshot {
            write_atomic(&self.dir.join(PRODUCER_SNAPSHOT_FILE), bytes)?;
        }
        *last = self.seq;
        Ok(true)
    }
}

fn checkpoint_text((high_watermark, log_start): (i64, i64)) -> String {
    format!("0\nhigh_watermark {high_watermark}\nlog_start_offset {log_start}\n")
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`. See the module docs for what is
    /// recovered when the last shutdown was not clean.
    pub fn open(dir: &Path, mut config: LogConfig) -> Result<Self, StorageError> {
        config.segment_bytes = config.segment_bytes.min(i32::MAX as u64);
        fs::create_dir_all(dir)?;
        cleaner::recover(dir)?;
        let clean_marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = clean_marker.exists();

        let mut bases = Vec::new();
        let mut index_files = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(TMP_SUFFIX) {
                remove_if_exists(&entry.path())?;
            } else if let Some(base) = parse_segment_file_name(name, "log") {
                bases.push(base);
            } else if let Some(base) = parse_segment_file_name(name, "index")
                .or_else(|| parse_segment_file_name(name, "timeindex"))
            {
                index_files.push((base, entry.path()));
            }
        }
        bases.sort_unstable();
        for (base, path) in index_files {
            if bases.binary_search(&base).is_err() {
                remove_if_exists(&path)?;
            }
        }

        let checkpoint = read_checkpoint(&dir.join(CHECKPOINT_FILE));
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for (i, &base) in bases.iter().enumerate() {
            let mut seg = Segment::open(dir, base, config.index_interval_bytes)?;
            if i + 1 == bases.len() && !clean {
                let dropped = seg.recover()?;
                if dropped > 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        dropped_bytes = dropped,
                        log_end_offset = seg.next_offset(),
                        "recovered the active segment after an unclean shutdown"
                    );
                }
            }
            segments.push(seg);
        }
        if segments.is_empty() {
            let base = checkpoint.as_ref().map_or(0, |c| c.log_start_offset.max(0));
            segments.push(Segment::create(
                dir,
                base,
                config.index_interval_bytes,
                wall_clock_ms(),
            )?);
            sync_dir(dir)?;
        }

        let first_base = segments[0].base_offset();
        let log_end = segments.last().map_or(first_base, Segment::next_offset);
        let log_start = checkpoint
            .as_ref()
            .map_or(first_base, |c| c.log_start_offset.max(first_base))
            .min(log_end);
        let high_watermark = checkpoint
            .as_ref()
            .map_or(log_start, |c| c.high_watermark)
            .clamp(log_start, log_end);

        let (epochs, epochs_found) = LeaderEpochCache::load(&dir.join(EPOCH_FILE))?;
        let snapshot = fs::read(dir.join(PRODUCER_SNAPSHOT_FILE))
            .ok()
            .and_then(|b| ProducerStateManager::decode_snapshot(&b))
            .filter(|(off, _)| *off >= log_start && *off <= log_end);
        let snapshot_offset = snapshot.as_ref().map(|(off, _)| *off);

        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset: log_start,
            high_watermark,
            epochs,
            producers: ProducerStateManager::new(),
            checkpointed: None,
            snapshot_offset,
            recovery_point: log_end,
            last_flush_ms: wall_clock_ms(),
            clean_marker: clean,
            failed: None,
            checkpoint_seq: 0,
            checkpoint_files: Arc::new(Mutex::new(0)),
            cleaner: cleaner::read_checkpoint(dir),
            generation: 0,
        };

        // Replay batch headers from the producer snapshot (or the log
        // start) to rebuild producer state, and the leader epochs that began
        // in them: those may be missing from the file, which is written
        // without an fsync until the checkpoint that writes the snapshot.
        let mut epochs_changed = false;
        let replay_from = if epochs_found {
            epochs_changed |= log.epochs.truncate_from_end(log_end);
            epochs_changed |= log.epochs.truncate_from_start(log_start);
            match snapshot {
                Some((off, mut state)) => {
                    // Producers whose batches were all deleted before the
                    // snapshot's batches were replayed were forgotten then;
                    // forget them before replaying too, as the running log did.
                    state.evict_below(log_start);
                    log.producers = state;
                    off
                }
                None => log_start,
            }
        } else {
            log_start
        };
        epochs_changed |= log.replay_from(replay_from)?;
        log.producers.evict_below(log_start);
        if epochs_changed {
            // Rebuilt from what is on disk, so it can be rebuilt again.
            log.epochs.persist_unsynced()?;
        }
        // Unflushed data above a checkpointed log start can be lost to a
        // power loss: then the log is empty and starts there (as Kafka's
        // recovery does), rather than going back below it.
        let checkpointed_start = checkpoint.as_ref().map_or(0, |c| c.log_start_offset);
        if checkpointed_start > log.log_end_offset() {
            tracing::warn!(
                dir = %dir.display(),
                log_end = log.log_end_offset(),
                log_start = checkpointed_start,
                "the log ends before its checkpointed start, starting it empty there"
            );
            log.truncate_fully_and_start_at(checkpointed_start)?;
        }
        tracing::debug!(
            dir = %dir.display(),
            segments = log.segments.len(),
            log_start,
            log_end,
            high_watermark,
            clean,
            "opened partition log"
        );
        Ok(log)
    }

    /// Removes the clean-shutdown marker, durably, if it is still there.
    /// Every method that changes a segment calls this first.
    fn before_segment_change(&mut self) -> Result<(), StorageError> {
        if self.clean_marker {
            remove_if_exists(&self.dir.join(CLEAN_SHUTDOWN_FILE))?;
            sync_dir(&self.dir)?;
            self.clean_marker = false;
        }
        Ok(())
    }

    /// Replays producer state and leader epochs from the batches at or after
    /// `from_offset`: an epoch newer than the latest known starts at its
    /// first batch. Returns true if the epochs changed.
    fn replay_from(&mut self, from_offset: i64) -> Result<bool, StorageError> {
        let mut producers = std::mem::take(&mut self.producers);
        let mut epochs = self.epochs.clone();
        let mut epochs_changed = false;
        let log_start = self.log_start_offset;
        let r = self.for_each_batch(from_offset, |h| {
            producers.apply_replicated(h);
            let epoch = h.partition_leader_epoch;
            if epoch >= 0 && epochs.latest_epoch().is_none_or(|latest| epoch > latest) {
                epochs_changed |= epochs.assign(epoch, h.base_offset.max(log_start));
            }
        });
        self.producers = producers;
        self.epochs = epochs;
        r.map(|()| epochs_changed)
    }

    /// Replays producer state from the batches at or after `from_offset`.
    fn rebuild_producers_from(&mut self, from_offset: i64) -> Result<(), StorageError> {
        let mut producers = std::mem::take(&mut self.producers);
        let r = self.for_each_batch(from_offset, |h| producers.apply_replicated(h));
        self.producers = producers;
        r
    }

    /// Calls `f` with the header of every batch whose last offset is >=
    /// `from_offset`, in log order.
    fn for_each_batch(
        &self,
        from_offset: i64,
        mut f: impl FnMut(&BatchHeader),
    ) -> Result<(), StorageError> {
        let first = self.segment_index(from_offset);
        for seg in &self.segments[first..] {
            seg.for_each_batch(from_offset, &mut f)?;
        }
        Ok(())
    }

    /// Index of the segment that would hold `offset`.
    fn segment_index(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1)
    }

    fn active(&self) -> &Segment {
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let n = self.segments.len();
        &mut self.segments[n - 1]
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Changes the configuration (takes effect on the next append/roll/
    /// retention pass).
    pub fn set_config(&mut self, mut config: LogConfig) {
        config.segment_bytes = config.segment_bytes.min(i32::MAX as u64);
        self.config = config;
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset()
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// Sets the high watermark, clamped to [log start, log end]. Persisted by
    /// [`PartitionLog::checkpoint`].
    pub fn set_high_watermark(&mut self, hw: i64) {
        self.high_watermark = hw.clamp(self.log_start_offset, self.log_end_offset());
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.segments.iter().map(Segment::base_offset).collect()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::size).sum()
    }

    pub fn producer_state(&self) -> &ProducerStateManager {
        &self.producers
    }

    pub fn leader_epochs(&self) -> &[EpochEntry] {
        self.epochs.entries()
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    /// Records that `epoch` starts at the current log end, as a new leader
    /// does before appending anything (Kafka's `maybeAssignEpochStartOffset`):
    /// followers truncate against it. An epoch not above the latest is ignored.
    pub fn assign_epoch_start(&mut self, epoch: i32) -> Result<(), StorageError> {
        if epoch < 0
            || self
                .epochs
                .latest_epoch()
                .is_some_and(|latest| latest >= epoch)
        {
            return Ok(());
        }
        if self.epochs.assign(epoch, self.log_end_offset()) {
            self.epochs.persist_unsynced()?;
        }
        Ok(())
    }

    /// Kafka OffsetForLeaderEpoch: see [`LeaderEpochCache::end_offset_for`].
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// Appends batches from a producer. All batches are validated (and
    /// checked against the producer state) before anything is written; the
    /// log assigns offsets and stamps `leader_epoch` into each header.
    pub fn append_as_leader(
        &mut self,
        records: &[u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        self.check_appendable()?;
        self.before_segment_change()?;
        let batches = batch::validate_all(records, Origin::Client)?;
        if batches.is_empty() {
            return Err(StorageError::InvalidRecord("no record batches".into()));
        }
        let max = self.config.max_message_bytes;
        if let Some((_, h)) = batches.iter().find(|(_, h)| h.size() > max) {
            return Err(StorageError::MessageTooLarge {
                size: h.size(),
                max,
            });
        }
        if self.config.cleanup_compact {
            // Kafka's LogValidator: a compacted topic needs a key to compact
            // by. Compressed batches are not decoded here, so not checked.
            if batches
                .iter()
                .any(|&(pos, h)| batch::has_keyless_record(&records[pos..pos + h.size()]))
            {
                return Err(StorageError::InvalidRecord(format!(
                    "Compacted topic cannot accept message without key in topic partition {}",
                    self.dir
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                )));
            }
        }
        let max_timestamp = batches
            .iter()
            .map(|(_, h)| h.max_timestamp)
            .max()
            .unwrap_or(-1);

        let log_end = self.log_end_offset();
        let mut staged = self.producers.begin();
        let mut next = log_end;
        let mut duplicates = Vec::new();
        for (_, h) in &batches {
            match staged.check(&self.producers, h, next)? {
                SequenceCheck::Append => next += h.offset_count(),
                SequenceCheck::Duplicate(meta) => duplicates.push(meta),
            }
        }
        if let (Some(first), Some(last)) = (duplicates.first(), duplicates.last()) {
            if duplicates.len() != batches.len() {
                return Err(StorageError::InvalidRecord(
                    "produce request mixes retried and new batches".into(),
                ));
            }
            return Ok(AppendInfo {
                base_offset: first.base_offset,
                last_offset: last.last_offset,
                log_append_time: -1,
                duplicate: true,
                max_timestamp,
            });
        }

        let mut data = records.to_vec();
        let mut headers = Vec::with_capacity(batches.len());
        let mut offset = log_end;
        for (pos, mut h) in batches {
            batch::set_base_offset(&mut data[pos..], offset);
            batch::set_partition_leader_epoch(&mut data[pos..], leader_epoch);
            h.base_offset = offset;
            h.partition_leader_epoch = leader_epoch;
            offset += h.offset_count();
            headers.push((pos, h));
        }
        let last_offset = offset - 1;

        self.maybe_roll(log_end, last_offset, data.len(), now_ms)?;
        if leader_epoch >= 0 {
            match self.epochs.latest_epoch() {
                Some(e) if e > leader_epoch => tracing::warn!(
                    dir = %self.dir.display(),
                    leader_epoch,
                    latest = e,
                    "append as leader with an epoch older than the log's latest"
                ),
                Some(e) if e == leader_epoch => {}
                _ => {
                    self.epochs.assign(leader_epoch, log_end);
                    self.epochs.persist_unsynced()?;
                }
            }
        }
        self.append_to_active(&data, &headers, now_ms)?;
        self.producers.commit(staged);
        self.maybe_flush_after_append()?;
        Ok(AppendInfo {
            base_offset: log_end,
            last_offset,
            log_append_time: -1,
            duplicate: false,
            max_timestamp,
        })
    }

    /// Appends batches fetched from the leader, which already carry their
    /// offsets and leader epochs. Batches wholly below the log end are
    /// skipped; `Ok(None)` if nothing was left to write.
    pub fn append_as_follower(
        &mut self,
        records: &[u8],
    ) -> Result<Option<AppendInfo>, StorageError> {
        self.check_appendable()?;
        self.before_segment_change()?;
        let batches = batch::validate_all(records, Origin::Replica)?;
        let log_end = self.log_end_offset();
        let skip = batches
            .iter()
            .take_while(|(_, h)| h.last_offset() < log_end)
            .count();
        let batches = &batches[skip..];
        let (Some(&(start, first)), Some(&(_, last))) = (batches.first(), batches.last()) else {
            return Ok(None);
        };
        if first.base_offset < log_end {
            return Err(StorageError::UnexpectedAppendOffset {
                first_offset: first.base_offset,
                log_end,
            });
        }
        let mut expected = log_end;
        for (_, h) in batches {
            if h.base_offset < expected {
                return Err(StorageError::InvalidRecord(format!(
                    "batch offsets go backwards: {} after {}",
                    h.base_offset,
                    expected - 1
                )));
            }
            expected = h.next_offset();
        }
        let data = &records[start..];
        let headers: Vec<_> = batches.iter().map(|&(pos, h)| (pos - start, h)).collect();
        let now_ms = wall_clock_ms();
        self.maybe_roll(first.base_offset, last.last_offset(), data.len(), now_ms)?;

        let mut epochs_changed = false;
        for (_, h) in batches {
            let e = h.partition_leader_epoch;
            if e >= 0 && self.epochs.latest_epoch().is_none_or(|l| e > l) {
                epochs_changed |= self.epochs.assign(e, h.base_offset);
            }
        }
        if epochs_changed {
            self.epochs.persist_unsynced()?;
        }
        self.append_to_active(data, &headers, now_ms)?;
        for (_, h) in batches {
            self.producers.apply_replicated(h);
        }
        self.maybe_flush_after_append()?;
        Ok(Some(AppendInfo {
            base_offset: first.base_offset,
            last_offset: last.last_offset(),
            log_append_time: -1,
            duplicate: false,
            max_timestamp: batches
                .iter()
                .map(|(_, h)| h.max_timestamp)
                .max()
                .unwrap_or(-1),
        }))
    }

    fn check_appendable(&self) -> Result<(), StorageError> {
        match &self.failed {
            Some(why) => Err(StorageError::LogFailed(why.clone())),
            None => Ok(()),
        }
    }

    /// Writes to the active segment; remembers a failure that left the
    /// segment in a state appends must not build on.
    fn append_to_active(
        &mut self,
        data: &[u8],
        headers: &[(usize, BatchHeader)],
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let r = self.active_mut().append(data, headers, now_ms);
        if let Err(StorageError::LogFailed(why)) = &r {
            tracing::error!(dir = %self.dir.display(), reason = %why, "refusing appends until the log is reopened");
            self.failed = Some(why.clone());
        }
        r
    }

    /// Rolls before appending `bytes` ending at `last_offset` if the active
    /// segment is full, too old, or cannot index those offsets.
    fn maybe_roll(
        &mut self,
        new_base: i64,
        last_offset: i64,
        bytes: usize,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let seg = self.active();
        if seg.is_empty() {
            if seg.cannot_hold(last_offset, bytes) && new_base != seg.base_offset() {
                // An empty active segment whose base is too far behind (a
                // follower jumping ahead): replace it.
                let fresh = Segment::create(
                    &self.dir,
                    new_base,
                    self.config.index_interval_bytes,
                    now_ms,
                )?;
                let n = self.segments.len();
                let old = std::mem::replace(&mut self.segments[n - 1], fresh);
                old.delete()?;
                sync_dir(&self.dir)?;
                if n == 1 {
                    // Nothing below the new base exists any more.
                    self.set_log_start(new_base)?;
                }
            }
            return Ok(());
        }
        let full = seg.size() + bytes as u64 > self.config.segment_bytes;
        let old = seg
            .created_ms()
            .is_some_and(|c| now_ms.saturating_sub(c) >= self.config.segment_ms);
        if full || old || seg.cannot_hold(last_offset, bytes) {
            self.roll(new_base, now_ms)?;
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one at `new_base` (>= the
    /// log end offset).
    fn roll(&mut self, new_base: i64, now_ms: i64) -> Result<(), StorageError> {
        self.before_segment_change()?;
        let new_base = new_base.max(self.log_end_offset());
        self.active_mut().seal()?;
        let seg = Segment::create(
            &self.dir,
            new_base,
            self.config.index_interval_bytes,
            now_ms,
        )?;
        sync_dir(&self.dir)?;
        tracing::debug!(dir = %self.dir.display(), base_offset = new_base, "rolled a new segment");
        self.segments.push(seg);
        Ok(())
    }

    /// Rolls the active segment if it is non-empty and older than
    /// `segment_ms`.
    pub fn roll_if_due(&mut self, now_ms: i64) -> Result<(), StorageError> {
        let seg = self.active();
        let due = !seg.is_empty()
            && seg
                .created_ms()
                .is_some_and(|c| now_ms.saturating_sub(c) >= self.config.segment_ms);
        if due {
            self.roll(self.log_end_offset(), now_ms)?;
        }
        Ok(())
    }

    /// Reads whole batches starting with the one containing `offset`. Stops
    /// before a batch whose base offset is >= `max_offset` and after
    /// `max_bytes`, except that the first batch is always returned whole
    /// (KIP-74). May continue into following segments.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
    ) -> Result<ReadResult, StorageError> {
        let log_start = self.log_start_offset;
        let log_end = self.log_end_offset();
        if offset < log_start || offset > log_end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut used = 0usize;
        let mut from = offset;
        let mut idx = self.segment_index(offset);
        while offset < log_end && offset < max_offset && idx < self.segments.len() {
            let seg = &self.segments[idx];
            let Some((pos, first)) = seg.find_position(from)? else {
                idx += 1;
                continue;
            };
            if first.base_offset >= max_offset {
                break;
            }
            let budget = max_bytes.saturating_sub(used);
            let want = if pieces.is_empty() {
                budget.max(first.size())
            } else {
                budget
            };
            if want < first.size() {
                break;
            }
            // Bound the read by `max_offset` before allocating for it: a
            // consumer's max bytes may be far larger than what lies below
            // the high watermark.
            let bound = if max_offset < seg.next_offset() {
                match seg.find_position(max_offset)? {
                    Some((at, h)) if h.base_offset >= max_offset => at,
                    Some((at, h)) => at + h.size() as u64,
                    None => seg.size(),
                }
            } else {
                seg.size()
            };
            let want = want.min(usize::try_from(bound.saturating_sub(pos)).unwrap_or(usize::MAX));
            let chunk = seg.read(pos, want)?;
            let mut take = 0usize;
            let mut stopped_early = false;
            while take + HEADER_SIZE <= chunk.len() {
                let h = BatchHeader::parse(&chunk[take..]).map_err(|e| {
                    StorageError::CorruptLog(format!(
                        "{} at position {}: {e}",
                        seg.log_path().display(),
                        pos + take as u64
                    ))
                })?;
                if h.base_offset >= max_offset {
                    stopped_early = true;
                    break;
                }
                if take + h.size() > chunk.len() {
                    break;
                }
                take += h.size();
                from = h.next_offset();
            }
            if take == 0 {
                break;
            }
            used += take;
            pieces.push(chunk.slice(..take));
            let segment_done = pos + take as u64 >= seg.size();
            if stopped_early || !segment_done || used >= max_bytes {
                break;
            }
            idx += 1;
        }
        let records = match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.pop().unwrap_or_default(),
            _ => {
                let mut buf = BytesMut::with_capacity(used);
                for p in &pieces {
                    buf.extend_from_slice(p);
                }
                buf.freeze()
            }
        };
        Ok(ReadResult {
            records,
            log_start_offset: log_start,
            log_end_offset: log_end,
        })
    }

    /// The first record (at or after the log start) whose timestamp is >=
    /// `timestamp`, as `(offset, timestamp)`. For a compressed batch, whose
    /// records are not read, the batch's base offset and max timestamp.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let log_start = self.log_start_offset;
        let first = self.segment_index(log_start);
        for seg in self.segments.iter().skip(first) {
            if seg.max_timestamp() < timestamp {
                continue;
            }
            let found = seg.find_timestamp(timestamp, log_start)?;
            if let Some(h) = found {
                // Kafka answers with the exact record; that needs the batch's
                // records, read here only for uncompressed batches.
                let exact = self
                    .read(h.base_offset.max(log_start), 1, self.log_end_offset())
                    .ok()
                    .and_then(|r| {
                        crate::batch::first_record_at_or_after(&r.records, timestamp, log_start)
                    });
                let (offset, ts) = exact.unwrap_or((h.base_offset, h.max_timestamp));
                return Ok(Some((offset.max(log_start), ts)));
            }
        }
        Ok(None)
    }

    /// The largest timestamp in the log and the offset of the record carrying
    /// it (Kafka ListOffsets MAX_TIMESTAMP); the batch's base offset when its
    /// records are compressed.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        self.max_timestamp_below(self.log_end_offset())
            .ok()
            .flatten()
    }

    /// [`PartitionLog::max_timestamp`] among the batches wholly below `end`:
    /// a client may only learn of records below the high watermark.
    pub fn max_timestamp_below(&self, end: i64) -> Result<Option<(i64, i64)>, StorageError> {
        let mut best: Option<(i64, i64)> = None;
        for seg in &self.segments {
            if seg.base_offset() >= end {
                break;
            }
            if let Some((ts, base)) = seg.max_timestamp_below(end)? {
                if best.is_none_or(|(b, _)| ts > b) {
                    best = Some((ts, base.max(self.log_start_offset)));
                }
            }
        }
        let Some((ts, base)) = best else {
            return Ok(None);
        };
        let exact = self.read(base, 1, end).ok().and_then(|r| {
            crate::batch::first_record_at_or_after(&r.records, ts, self.log_start_offset)
        });
        Ok(Some((ts, exact.map_or(base, |(offset, _)| offset))))
    }

    /// Removes everything at or after `offset` (a batch straddling `offset`
    /// goes entirely, so the new log end may be below `offset`). Used by
    /// followers after a leader change.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), StorageError> {
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        self.before_segment_change()?;
        if offset <= self.segments[0].base_offset() {
            return self.truncate_fully_and_start_at(offset.max(0));
        }
        while self.segments.len() > 1 && self.active().base_offset() >= offset {
            if let Some(seg) = self.segments.pop() {
                seg.delete()?;
            }
        }
        self.generation += 1;
        // The removed segments must be gone for good before the one below
        // them is cut: otherwise a power loss could keep them behind it.
        sync_dir(&self.dir)?;
        let removed = self.active_mut().truncate_to(offset)?;
        let log_end = self.log_end_offset();
        tracing::info!(dir = %self.dir.display(), offset, log_end, removed_bytes = removed, "truncated log");
        self.log_start_offset = self.log_start_offset.min(log_end);
        self.high_watermark = self.high_watermark.min(log_end);
        self.recovery_point = self.recovery_point.min(log_end);
        if self.epochs.truncate_from_end(log_end) {
            self.epochs.persist()?;
        }
        self.discard_producer_snapshot()?;
        self.producers.clear();
        self.rebuild_producers_from(self.log_start_offset)?;
        self.write_checkpoint()?;
        self.lower_first_dirty(log_end)
    }

    /// Data at or after `offset` is gone: whatever comes there next is dirty.
    fn lower_first_dirty(&mut self, offset: i64) -> Result<(), StorageError> {
        if self.cleaner.first_dirty > offset {
            self.cleaner.first_dirty = offset;
            cleaner::write_checkpoint(&self.dir, &self.cleaner)?;
        }
        Ok(())
    }

    /// Deletes every segment and starts an empty log at `offset` (a follower
    /// whose log no longer overlaps the leader's).
    pub fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<(), StorageError> {
        self.before_segment_change()?;
        let offset = offset.max(0);
        // A crash at any point must leave a prefix of the old log or the new
        // one, never newer segments behind an emptied older one: drop the
        // newest segments first. At least one segment stays at every step.
        while self.segments.len() > 1 {
            if let Some(seg) = self.segments.pop() {
                let r = seg.delete();
                self.clamp_to_log_end();
                r?;
            }
        }
        // Their removal must be durable before the oldest is cut, and so must
        // the end of the epochs and producer snapshot: a crash can leave the
        // oldest segment with the new one after it, and a hole between.
        self.discard_producer_snapshot()?;
        sync_dir(&self.dir)?;
        if self.epochs.truncate_from_end(self.log_end_offset()) {
            self.epochs.persist()?;
        }
        // Recovery checks only the last segment for a torn tail, and a crash
        // can leave the oldest before the new one: sync it first. A new one
        // below it would have its data after the new log end: empty it.
        let oldest = self.segments[0].base_offset();
        let r = match offset.cmp(&oldest) {
            std::cmp::Ordering::Greater => self.segments[0].flush(),
            _ => self.segments[0].truncate_to(oldest).map(drop),
        };
        self.clamp_to_log_end();
        r?;
        if oldest != offset {
            let fresh = Segment::create(
                &self.dir,
                offset,
                self.config.index_interval_bytes,
                wall_clock_ms(),
            )?;
            std::mem::replace(&mut self.segments[0], fresh).delete()?;
        }
        sync_dir(&self.dir)?;
        tracing::info!(dir = %self.dir.display(), offset, "truncated log fully");
        self.log_start_offset = offset;
        self.high_watermark = offset;
        self.recovery_point = offset;
        if self.epochs.clear() {
            self.epochs.persist()?;
        }
        self.discard_producer_snapshot()?;
        self.producers.clear();
        self.write_checkpoint()?;
        self.lower_first_dirty(offset)
    }

    /// Keeps the offsets kept in memory within the log after a part of a
    /// truncation.
    fn clamp_to_log_end(&mut self) {
        let log_end = self.log_end_offset();
        self.log_start_offset = self.log_start_offset.min(log_end);
        self.high_watermark = self.high_watermark.min(log_end);
        self.recovery_point = self.recovery_point.min(log_end);
    }

    /// Moves the log start offset forward (DeleteRecords) and deletes the
    /// segments wholly below it.
    pub fn advance_log_start(&mut self, offset: i64) -> Result<(), StorageError> {
        let log_end = self.log_end_offset();
        if offset > log_end || offset < 0 {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset,
                log_end,
            });
        }
        if offset <= self.log_start_offset {
            return Ok(());
        }
        if offset == log_end && !self.active().is_empty() {
            // Everything goes, the active segment too: roll so it can.
            self.roll(log_end, wall_clock_ms())?;
        }
        let mut deleted = 0;
        self.generation += 1;
        while self.segments.len() > 1 && self.segments[1].base_offset() <= offset {
            self.segments.remove(0).delete()?;
            deleted += 1;
        }
        tracing::info!(dir = %self.dir.display(), log_start = offset, deleted_segments = deleted, "advanced log start");
        self.set_log_start(offset)
    }

    /// Applies a new (larger) log start offset to the caches and persists it.
    fn set_log_start(&mut self, offset: i64) -> Result<(), StorageError> {
        self.log_start_offset = offset.max(self.log_start_offset);
        self.high_watermark = self.high_watermark.max(self.log_start_offset);
        self.recovery_point = self.recovery_point.max(self.log_start_offset);
        self.producers.evict_below(self.log_start_offset);
        // The log start first: a crash in between leaves epochs that the
        // next open cuts at the log start, never epochs cut beyond it.
        self.write_checkpoint()?;
        if self.epochs.truncate_from_start(self.log_start_offset) {
            self.epochs.persist()?;
        }
        Ok(())
    }

    /// Deletes the oldest segments that are past `retention_ms` (by their
    /// max timestamp, or mtime if they have none), then the oldest while the
    /// log would still be at least `retention_bytes` without them (Kafka's
    /// rule). Never deletes the active segment, nor a segment holding offsets
    /// at or above the high watermark. Returns the number deleted.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<usize, StorageError> {
        let mut deleted = 0;
        if !self.config.cleanup_delete {
            // cleanup.policy=compact: only the cleaner removes data.
            return Ok(0);
        }
        if self.config.retention_ms >= 0 {
            while self.deletable_oldest() {
                let seg = &self.segments[0];
                let ts = if seg.max_timestamp() >= 0 {
                    seg.max_timestamp()
                } else {
                    seg.last_modified_ms()
                };
                if now_ms.saturating_sub(ts) <= self.config.retention_ms {
                    break;
                }
                self.segments.remove(0).delete()?;
                deleted += 1;
            }
        }
        if self.config.retention_bytes >= 0 {
            let limit = self.config.retention_bytes as u64;
            let mut size = self.size_bytes();
            while self.deletable_oldest()
                && size.saturating_sub(self.segments[0].size()) >= limit
                && size > limit
            {
                size -= self.segments[0].size();
                self.segments.remove(0).delete()?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            self.generation += 1;
            let new_start = self.segments[0].base_offset();
            tracing::info!(
                dir = %self.dir.display(),
                deleted_segments = deleted,
                log_start = new_start.max(self.log_start_offset),
                "retention deleted segments"
            );
            self.set_log_start(new_start)?;
        }
        Ok(deleted)
    }

    /// True if the oldest segment is not the active one and lies wholly below
    /// the high watermark.
    fn deletable_oldest(&self) -> bool {
        self.segments.len() > 1 && self.segments[1].base_offset() <= self.high_watermark
    }

    /// Takes the right to write the checkpoint files next: writes prepared
    /// before this one will not land after it.
    fn next_checkpoint_write(&mut self) -> (u64, MutexGuard<'_, u64>) {
        self.checkpoint_seq += 1;
        let mut last = self
            .checkpoint_files
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *last = self.checkpoint_seq;
        (self.checkpoint_seq, last)
    }

    /// Removes the producer snapshot, durably: a snapshot that came back
    /// after the log changed under it would describe batches no longer there.
    fn discard_producer_snapshot(&mut self) -> Result<(), StorageError> {
        self.snapshot_offset = None;
        let dir = self.dir.clone();
        let (_, _files) = self.next_checkpoint_write();
        match fs::remove_file(dir.join(PRODUCER_SNAPSHOT_FILE)) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn write_checkpoint(&mut self) -> Result<(), StorageError> {
        let state = (self.high_watermark, self.log_start_offset);
        if self.checkpointed == Some(state) {
            return Ok(());
        }
        let path = self.dir.join(CHECKPOINT_FILE);
        let (_, files) = self.next_checkpoint_write();
        write_atomic(&path, checkpoint_text(state).as_bytes())?;
        drop(files);
        self.checkpointed = Some(state);
        Ok(())
    }

    /// fsyncs segment data written since the last flush.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        for seg in &mut self.segments {
            seg.flush()?;
        }
        self.recovery_point = self.log_end_offset();
        self.last_flush_ms = wall_clock_ms();
        Ok(())
    }

    /// Offsets appended since the last flush.
    pub fn unflushed_messages(&self) -> i64 {
        self.log_end_offset() - self.recovery_point
    }

    /// `flush.messages`, checked after each append, before it is answered
    /// (Kafka counts offsets past the recovery point the same way).
    fn maybe_flush_after_append(&mut self) -> Result<(), StorageError> {
        if self.unflushed_messages() >= self.config.flush_messages {
            self.flush()?;
        }
        Ok(())
    }

    /// `flush.ms`: flushes if something is unflushed and the last flush is
    /// at least `flush_ms` old. Returns true if it flushed.
    pub fn flush_if_due(&mut self, now_ms: i64) -> Result<bool, StorageError> {
        let due = self.flush_due(now_ms);
        if due {
            self.flush()?;
        }
        Ok(due)
    }

    /// Flushes segment data, then atomically writes the high watermark and
    /// log start offset, and a producer-state snapshot (so the next open need
    /// not rescan the whole log). Writes nothing that has not changed.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        let pending = self.begin_checkpoint()?;
        let written = pending.write();
        self.end_checkpoint(pending, written)
    }

    /// The first half of [`PartitionLog::checkpoint`], for a caller that holds
    /// the log under a lock: captures what to fsync and write. The caller
    /// runs [`PendingCheckpoint::write`] without the lock, then hands the
    /// result to [`PartitionLog::end_checkpoint`] under it again.
    pub fn begin_checkpoint(&mut self) -> Result<PendingCheckpoint, StorageError> {
        // Epochs first: the producer snapshot this writes is where the next
        // open starts replaying, so every epoch that began before it must be
        // on disk by then.
        self.epochs.sync()?;
        let mut unflushed = Vec::new();
        for i in 0..self.segments.len() {
            match self.segments[i].take_unflushed() {
                Ok(handles) => unflushed.extend(handles),
                Err(e) => {
                    self.segments.iter_mut().for_each(Segment::mark_unflushed);
                    return Err(e);
                }
            }
        }
        let log_end = self.log_end_offset();
        let state = (self.high_watermark, self.log_start_offset);
        let checkpoint = (self.checkpointed != Some(state)).then_some(state);
        let want_snapshot = !self.producers.is_empty() || self.snapshot_offset.is_some();
        let snapshot = (want_snapshot && self.snapshot_offset != Some(log_end))
            .then(|| (log_end, self.producers.encode_snapshot(log_end)));
        self.checkpoint_seq += 1;
        Ok(PendingCheckpoint {
            dir: self.dir.clone(),
            unflushed,
            flushed_to: log_end,
            started_ms: wall_clock_ms(),
            generation: self.generation,
            seq: self.checkpoint_seq,
            files: self.checkpoint_files.clone(),
            checkpoint,
            snapshot,
        })
    }

    /// No checkpoint prepared earlier writes its files any more: the log's
    /// directory is about to be renamed away, and a new one may take its name.
    /// For the same reason the segments keep their files open from now on
    /// (whatever the budget of open files), never to reopen them by a name
    /// that may by then belong to the new directory.
    pub fn stop_checkpoint_writes(&mut self) {
        for seg in &self.segments {
            if let Err(e) = seg.pin_open() {
                tracing::warn!(segment = %seg.log_path().display(), error = %e, "cannot keep a segment of a log going away open");
            }
        }
        *self
            .checkpoint_files
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = u64::MAX;
    }

    /// Whether appending `bytes` now may fsync (a segment roll seals the old
    /// segment, `flush.messages` flushes): a caller on an async runtime's
    /// worker lets the runtime know it may block.
    pub fn append_may_sync(&self, bytes: usize, now_ms: i64) -> bool {
        let seg = self.active();
        self.config.flush_messages != i64::MAX
            || seg.size() + bytes as u64 > self.config.segment_bytes
            || seg
                .created_ms()
                .is_some_and(|c| now_ms.saturating_sub(c) >= self.config.segment_ms)
    }

    /// `flush.ms`: something is unflushed and the last flush is at least
    /// `flush_ms` old.
    pub fn flush_due(&self, now_ms: i64) -> bool {
        self.unflushed_messages() > 0
            && now_ms.saturating_sub(self.last_flush_ms) >= self.config.flush_ms
    }

    /// Records what a [`PendingCheckpoint`] made durable. A flush that
    /// failed leaves every segment to be flushed again; one that raced a
    /// truncation or a swap moves no recovery point.
    pub fn end_checkpoint(
        &mut self,
        pending: PendingCheckpoint,
        written: Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                self.segments.iter_mut().for_each(Segment::mark_unflushed);
                return Err(e);
            }
        };
        let unchanged = pending.generation == self.generation;
        if unchanged {
            self.recovery_point = self
                .recovery_point
                .max(pending.flushed_to.min(self.log_end_offset()));
            self.last_flush_ms = pending.started_ms;
        }
        if written {
            if let Some(state) = pending.checkpoint {
                self.checkpointed = Some(state);
            }
            if let Some((offset, _)) = pending.snapshot {
                if unchanged {
                    self.snapshot_offset = Some(offset);
                }
            }
        }
        Ok(())
    }

    /// Checkpoints, then leaves a clean-shutdown marker so the next open
    /// skips recovery.
    pub fn close(mut self) -> Result<(), StorageError> {
        self.active_mut().seal()?;
        self.checkpoint()?;
        File::create(self.dir.join(CLEAN_SHUTDOWN_FILE))?.sync_all()?;
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Deletes the log and its directory.
    pub fn delete(self) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        drop(self);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

pub mod cleaner;
#[cfg(test)]
mod cleaner_tests;
#[cfg(test)]
mod corruption_tests;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;
