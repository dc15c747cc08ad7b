//! Log compaction (Kafka's log cleaner) for one partition log.
//!
//! A clean keeps, in the sealed segments below the first uncleanable offset,
//! the latest record of each key; a tombstone (null value) stays until the
//! delete horizon that its first clean stamped on its batch has passed
//! (KIP-534). Offsets never change: records go, batches keep their base and
//! last offsets, producer id, epoch and sequence, and the last batch of each
//! idempotent producer stays (as an empty header if need be), so producers
//! carry on after a clean.
//!
//! Only uncompressed batches are read record by record: the storage crate
//! does not decompress, so a compressed batch is kept whole (and its keys do
//! not supersede anything), as are control and transactional batches and
//! any batch whose records do not parse. Nothing is dropped unread.
//!
//! A clean is three steps, so that the heavy part holds no lock:
//! 1. [`PartitionLog::plan_clean`] (under the partition's lock) decides
//!    whether the log is due and notes the segments to read;
//! 2. [`CleanPlan::run`] (no lock) reads those segment files through its own
//!    descriptors, maps each key of the dirty part to its latest offset and
//!    writes each group of segments, cleaned, as a whole segment (`.log` and
//!    indexes, fsynced) in the `cleaner/` subdirectory;
//! 3. [`PartitionLog::finish_clean`] (under the lock) checks that the log's
//!    segments did not change meanwhile and swaps each cleaned segment in,
//!    with renames only:
//!
//! ```text
//! cleaner/<base>.log     written and fsynced; open() deletes cleaner/ (the
//!                        segments it was to replace are intact)
//! <base>.<end>.swap      renamed from cleaner/, directory fsynced: the commit
//!                        point; open() finishes the swap from here
//!                        then the old segments in [base, end) are removed,
//!                        directory fsynced
//! <base>.log             the swap file renamed over, its indexes moved next
//!                        to it, directory fsynced (missing indexes are
//!                        rebuilt on open)
//! cleaner-checkpoint     where the clean part ends (first dirty offset)
//! ```

use crate::fs::{self, File};
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::{remove_if_exists, sync_dir, write_atomic, PartitionLog};
use crate::batch::{self, BatchHeader, HEADER_SIZE};
use crate::segment::{parse_segment_file_name, segment_file, Segment};
use crate::StorageError;

const CHECKPOINT_FILE: &str = "cleaner-checkpoint";
/// Subdirectory where cleaned segments are written before the swap.
const WORK_DIR: &str = "cleaner";
const SWAP_SUFFIX: &str = ".swap";
/// Bytes of batches gathered before one write to the cleaned segment.
const WRITE_CHUNK: usize = 1 << 20;
/// Key bytes the offset map may hold in one pass (Kafka's
/// `log.cleaner.dedupe.buffer.size`); a larger dirty part takes more passes.
const MAX_MAP_BYTES: usize = 128 << 20;
/// Bookkeeping counted per map entry on top of the key bytes.
const MAP_ENTRY_OVERHEAD: usize = 48;

/// What the cleaner remembers of a partition between passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CleanerCheckpoint {
    /// Everything below is clean (holds each key at most once).
    pub first_dirty: i64,
    /// The earliest delete horizon of a batch still holding tombstones:
    /// from then on a pass is due even if nothing new is dirty.
    pub next_horizon: Option<i64>,
}

pub(crate) fn read_checkpoint(dir: &Path) -> CleanerCheckpoint {
    let Ok(text) = fs::read_to_string(dir.join(CHECKPOINT_FILE)) else {
        return CleanerCheckpoint::default();
    };
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("0") {
        return CleanerCheckpoint::default();
    }
    let mut cp = CleanerCheckpoint::default();
    for line in lines {
        let mut parts = line.split_whitespace();
        match (
            parts.next(),
            parts.next().and_then(|v| v.parse::<i64>().ok()),
        ) {
            (Some("first_dirty_offset"), Some(v)) => cp.first_dirty = v,
            (Some("next_delete_horizon_ms"), Some(v)) => cp.next_horizon = (v >= 0).then_some(v),
            _ => {}
        }
    }
    cp
}

pub(crate) fn write_checkpoint(dir: &Path, cp: &CleanerCheckpoint) -> Result<(), StorageError> {
    let text = format!(
        "0\nfirst_dirty_offset {}\nnext_delete_horizon_ms {}\n",
        cp.first_dirty,
        cp.next_horizon.unwrap_or(-1)
    );
    write_atomic(&dir.join(CHECKPOINT_FILE), text.as_bytes())
}

fn work_dir(dir: &Path) -> PathBuf {
    dir.join(WORK_DIR)
}

/// Removes the work directory if it is empty (a clean is over).
fn remove_work_dir(dir: &Path) {
    let _ = fs::remove_dir(work_dir(dir));
}

/// Removes a cleaned segment's files from the work directory.
fn remove_cleaned(dir: &Path, base: i64) -> Result<(), StorageError> {
    let work = work_dir(dir);
    for ext in ["log", "index", "timeindex"] {
        remove_if_exists(&segment_file(&work, base, ext))?;
    }
    Ok(())
}

fn swap_path(dir: &Path, base: i64, end: i64) -> PathBuf {
    dir.join(format!("{base:020}.{end:020}{SWAP_SUFFIX}"))
}

fn parse_swap_name(name: &str) -> Option<(i64, i64)> {
    let stem = name.strip_suffix(SWAP_SUFFIX)?;
    let (base, end) = stem.split_once('.')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(base) || !digits(end) {
        return None;
    }
    Some((base.parse().ok()?, end.parse().ok()?))
}

/// Test hook: makes the clean stop with an error at the given step, leaving
/// its files as a kill -9 there would.
#[cfg(test)]
pub(crate) mod crash {
    use std::cell::Cell;

    thread_local! {
        pub static AT: Cell<Option<u8>> = const { Cell::new(None) };
    }

    pub fn point(step: u8) -> Result<(), crate::StorageError> {
        if AT.with(Cell::get) == Some(step) {
            return Err(std::io::Error::other(format!("simulated crash at step {step}")).into());
        }
        Ok(())
    }
}

#[cfg(not(test))]
mod crash {
    #[inline(always)]
    pub fn point(_step: u8) -> Result<(), crate::StorageError> {
        Ok(())
    }
}

/// Finishes or discards a clean that a crash interrupted, before the log's
/// segments are listed: each `.swap` file replaces the segments of its
/// range, and the work directory goes.
pub(crate) fn recover(dir: &Path) -> Result<(), StorageError> {
    let mut swaps = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(range) = name.to_str().and_then(parse_swap_name) {
            swaps.push(range);
        }
    }
    swaps.sort_unstable();
    for &(base, end) in &swaps {
        tracing::warn!(dir = %dir.display(), base, end, "finishing a log clean interrupted by a crash");
        remove_segment_files(dir, base, end)?;
        sync_dir(dir)?;
        fs::rename(swap_path(dir, base, end), segment_file(dir, base, "log"))?;
    }
    let work = work_dir(dir);
    let had_work = match fs::remove_dir_all(&work) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    if had_work || !swaps.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Removes the files of every segment whose base offset is in [base, end).
fn remove_segment_files(dir: &Path, base: i64, end: i64) -> Result<(), StorageError> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let seg_base = ["log", "index", "timeindex"]
            .iter()
            .find_map(|ext| parse_segment_file_name(name, ext));
        if seg_base.is_some_and(|b| b >= base && b < end) {
            remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

/// A sealed segment as the plan saw it.
#[derive(Debug, Clone)]
struct Source {
    base: i64,
    size: u64,
    last_modified_ms: i64,
    path: PathBuf,
}

/// What [`PartitionLog::plan_clean`] decided to clean; [`CleanPlan::run`]
/// does the work without the log.
#[derive(Debug)]
pub struct CleanPlan {
    dir: PathBuf,
    /// Sealed segments from the first one, all below `end`.
    sources: Vec<Source>,
    /// Base of the first segment not cleaned.
    end: i64,
    first_dirty: i64,
    now_ms: i64,
    delete_retention_ms: i64,
    segment_bytes: u64,
    index_interval_bytes: usize,
    /// Producer id -> last offset of its latest batch.
    producer_last: HashMap<i64, i64>,
    generation: u64,
}

/// Cleaned files ready to be swapped in by [`PartitionLog::finish_clean`].
#[derive(Debug)]
pub struct CleanOutput {
    dir: PathBuf,
    groups: Vec<CleanedGroup>,
    first_dirty: i64,
    next_horizon: Option<i64>,
    generation: u64,
    pub stats: CleanStats,
}

#[derive(Debug)]
struct CleanedGroup {
    base: i64,
    /// Base of the segment after the group.
    end: i64,
    /// (base, size) of the segments replaced.
    sources: Vec<(i64, u64)>,
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub segments_read: usize,
    pub segments_swapped: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// Records without a key, removed as Kafka's cleaner does.
    pub keyless_removed: u64,
    /// Compressed (or otherwise unreadable) batches kept whole.
    pub batches_kept_whole: u64,
}

impl CleanStats {
    fn add(&mut self, o: &CleanStats) {
        self.segments_read += o.segments_read;
        self.segments_swapped += o.segments_swapped;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.records_removed += o.records_removed;
        self.tombstones_removed += o.tombstones_removed;
        self.keyless_removed += o.keyless_removed;
        self.batches_kept_whole += o.batches_kept_whole;
    }
}

impl PartitionLog {
    /// Decides whether the log is due for a clean (`cleanup.policy` has
    /// `compact`, and the dirty ratio, `max.compaction.lag.ms` or an expired
    /// tombstone horizon say so) and snapshots what the clean needs. Cheap;
    /// meant to run under the partition's lock.
    pub fn plan_clean(&self, now_ms: i64) -> Option<CleanPlan> {
        let config = &self.config;
        if !config.cleanup_compact || self.segments.len() < 2 {
            return None;
        }
        let sealed = &self.segments[..self.segments.len() - 1];
        let first_dirty = self
            .cleaner
            .first_dirty
            .clamp(self.log_start_offset, self.log_end_offset());
        // The active segment, the segment holding the high watermark and a
        // dirty segment with records younger than min.compaction.lag.ms are
        // not cleaned, nor anything after them.
        let lag_bound = now_ms.saturating_sub(config.min_compaction_lag_ms);
        let stop = sealed
            .iter()
            .position(|s| {
                s.next_offset() > self.high_watermark
                    || (config.min_compaction_lag_ms > 0
                        && s.next_offset() > first_dirty
                        && s.max_timestamp() > lag_bound)
            })
            .unwrap_or(sealed.len());
        if stop == 0 {
            return None;
        }
        let end = self.segments[stop].base_offset();
        let cleanable = &self.segments[..stop];
        let total: u64 = cleanable.iter().map(Segment::size).sum();
        let dirty_segments: Vec<&Segment> = cleanable
            .iter()
            .filter(|s| s.next_offset() > first_dirty)
            .collect();
        let dirty: u64 = dirty_segments.iter().map(|s| s.size()).sum();
        let ratio_due = total > 0
            && first_dirty < end
            && dirty as f64 / total as f64 >= config.min_cleanable_dirty_ratio;
        let lag_due = config.max_compaction_lag_ms < i64::MAX
            && dirty_segments.first().is_some_and(|s| {
                s.read_header(0).ok().flatten().is_some_and(|h| {
                    // A horizon in the base timestamp is not a record's time.
                    h.delete_horizon_ms().is_none()
                        && h.base_timestamp >= 0
                        && now_ms.saturating_sub(h.base_timestamp) > config.max_compaction_lag_ms
                })
            });
        let horizon_due = self.cleaner.next_horizon.is_some_and(|h| h <= now_ms);
        if !(ratio_due || lag_due || horizon_due) {
            return None;
        }
        Some(CleanPlan {
            dir: self.dir.clone(),
            sources: cleanable
                .iter()
                .map(|s| Source {
                    base: s.base_offset(),
                    size: s.size(),
                    last_modified_ms: s.last_modified_ms(),
                    path: s.log_path().to_path_buf(),
                })
                .collect(),
            end,
            first_dirty,
            now_ms,
            delete_retention_ms: config.delete_retention_ms,
            segment_bytes: config.segment_bytes,
            index_interval_bytes: config.index_interval_bytes,
            producer_last: self.producers.last_offsets(),
            generation: self.generation,
        })
    }

    /// Swaps in what [`CleanPlan::run`] wrote (see the module docs for the
    /// order of the steps), unless the segments changed since the plan
    /// (truncation, retention), in which case the cleaned files are dropped.
    pub fn finish_clean(&mut self, mut output: CleanOutput) -> Result<CleanStats, StorageError> {
        let groups = std::mem::take(&mut output.groups);
        if output.generation != self.generation {
            tracing::info!(dir = %self.dir.display(), "segments changed during the clean; dropping its output");
            for g in &groups {
                remove_cleaned(&self.dir, g.base)?;
            }
            remove_work_dir(&self.dir);
            return Ok(CleanStats::default());
        }
        self.generation += 1;
        let mut swapped = 0;
        let mut groups = groups.into_iter();
        while let Some(g) = groups.next() {
            if let Err(e) = self.swap_in(&g) {
                for rest in groups {
                    let _ = remove_cleaned(&self.dir, rest.base);
                }
                return Err(e);
            }
            swapped += g.sources.len();
        }
        remove_work_dir(&self.dir);
        self.cleaner = CleanerCheckpoint {
            first_dirty: output.first_dirty,
            next_horizon: output.next_horizon,
        };
        write_checkpoint(&self.dir, &self.cleaner)?;
        let mut stats = output.stats;
        stats.segments_swapped = swapped;
        Ok(stats)
    }

    fn swap_in(&mut self, g: &CleanedGroup) -> Result<(), StorageError> {
        let first = self.segments.iter().position(|s| s.base_offset() == g.base);
        let matches = first.is_some_and(|i| {
            let after = i + g.sources.len();
            after < self.segments.len()
                && self.segments[after].base_offset() == g.end
                && self.segments[i..after]
                    .iter()
                    .zip(&g.sources)
                    .all(|(s, &(base, size))| s.base_offset() == base && s.size() == size)
        });
        let Some(i) = first.filter(|_| matches) else {
            tracing::warn!(dir = %self.dir.display(), base = g.base, "segments to replace are gone; dropping the cleaned segment");
            return remove_cleaned(&self.dir, g.base);
        };
        // The old segments keep their descriptors open until replaced in
        // memory below, so reads go on meanwhile (and, should a rename below
        // fail, afterwards): pinned, they are never closed and reopened by
        // a name that the cleaned segment takes.
        for seg in &self.segments[i..i + g.sources.len()] {
            seg.pin_open()?;
        }
        let work = work_dir(&self.dir);
        let swap = swap_path(&self.dir, g.base, g.end);
        fs::rename(segment_file(&work, g.base, "log"), &swap)?;
        sync_dir(&self.dir)?;
        crash::point(2)?;
        remove_segment_files(&self.dir, g.base, g.end)?;
        sync_dir(&self.dir)?;
        crash::point(3)?;
        fs::rename(&swap, segment_file(&self.dir, g.base, "log"))?;
        for ext in ["index", "timeindex"] {
            fs::rename(
                segment_file(&work, g.base, ext),
                segment_file(&self.dir, g.base, ext),
            )?;
        }
        sync_dir(&self.dir)?;
        crash::point(4)?;
        let seg = Segment::open(&self.dir, g.base, self.config.index_interval_bytes)?;
        self.segments.splice(i..i + g.sources.len(), [seg]);
        Ok(())
    }

    /// Plans, runs and finishes a clean in one go (tests, tools).
    pub fn clean(&mut self, now_ms: i64) -> Result<Option<CleanStats>, StorageError> {
        let Some(plan) = self.plan_clean(now_ms) else {
            return Ok(None);
        };
        let output = plan.run()?;
        self.finish_clean(output).map(Some)
    }
}

/// Calls `f(header, whole batch)` for each batch of a segment file, reading
/// its first `size` bytes through a descriptor of its own.
fn for_each_batch(
    src: &Source,
    mut f: impl FnMut(&BatchHeader, &[u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let file = File::open(&src.path)?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut pos = 0u64;
    let mut buf = Vec::new();
    while pos < src.size {
        buf.resize(HEADER_SIZE, 0);
        r.read_exact(&mut buf)?;
        let h = BatchHeader::parse(&buf).map_err(|e| {
            StorageError::CorruptLog(format!("{} at position {pos}: {e}", src.path.display()))
        })?;
        if pos + h.size() as u64 > src.size {
            return Err(StorageError::CorruptLog(format!(
                "{} at position {pos}: batch runs past the segment's end",
                src.path.display()
            )));
        }
        buf.resize(h.size(), 0);
        r.read_exact(&mut buf[HEADER_SIZE..])?;
        f(&h, &buf)?;
        pos += h.size() as u64;
    }
    Ok(())
}

/// What to write for one batch.
enum Kept {
    Whole,
    Rebuilt(Vec<u8>),
    Dropped,
}

impl CleanPlan {
    /// Reads the planned segments, builds the offset map and writes the
    /// cleaned files. Holds no lock: the files read are sealed segments,
    /// and [`PartitionLog::finish_clean`] checks that they are still there.
    pub fn run(self) -> Result<CleanOutput, StorageError> {
        let mut stats = CleanStats::default();
        // 1. The latest offset of every key in the dirty part.
        let mut map: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut map_bytes = 0usize;
        let mut clean_end = self.end;
        for (i, src) in self.sources.iter().enumerate() {
            let src_end = self.sources.get(i + 1).map_or(self.end, |s| s.base);
            if src_end <= self.first_dirty {
                continue;
            }
            if map_bytes > MAX_MAP_BYTES && src.base > self.first_dirty {
                clean_end = src.base;
                break;
            }
            for_each_batch(src, |h, bytes| {
                if h.last_offset() < self.first_dirty || h.is_control() || h.is_transactional() {
                    return Ok(());
                }
                for r in batch::records(bytes).unwrap_or_default() {
                    let offset = h.base_offset + r.offset_delta;
                    if let (Some(key), true) = (r.key, offset >= self.first_dirty) {
                        // Most keys recur: copy a key only the first time.
                        match map.get_mut(key) {
                            Some(latest) => *latest = offset,
                            None => {
                                map.insert(key.to_vec(), offset);
                                map_bytes += key.len() + MAP_ENTRY_OVERHEAD;
                            }
                        }
                    }
                }
                Ok(())
            })?;
        }

        // 2. Clean the segments below `clean_end` into files of at most
        // segment.bytes each, merging neighbours whose cleaned data fits.
        let sources: Vec<&Source> = self.sources.iter().filter(|s| s.base < clean_end).collect();
        let mut out_groups: Vec<CleanedGroup> = Vec::new();
        let result = self.write_groups(&sources, clean_end, &map, &mut stats, &mut out_groups);
        let next_horizon = match result {
            Ok(h) => h,
            Err(e) => {
                // Nothing was swapped in: whatever was written goes.
                out_groups.clear();
                let _ = fs::remove_dir_all(work_dir(&self.dir));
                return Err(e);
            }
        };
        crash::point(1)?;
        Ok(CleanOutput {
            dir: self.dir,
            groups: out_groups,
            first_dirty: clean_end,
            next_horizon,
            generation: self.generation,
            stats,
        })
    }

    /// Cleans `sources` in order into segments in the work directory, one
    /// per group of neighbouring sources; a group closes when the next
    /// source's cleaned data would take it past segment.bytes (that source
    /// is then cut off again and cleaned into the next group). Groups of one
    /// segment that did not change are left out. Returns the earliest
    /// pending delete horizon.
    fn write_groups(
        &self,
        sources: &[&Source],
        clean_end: i64,
        map: &HashMap<Vec<u8>, i64>,
        stats: &mut CleanStats,
        out: &mut Vec<CleanedGroup>,
    ) -> Result<Option<i64>, StorageError> {
        struct Open {
            first: usize,
            count: usize,
            seg: Segment,
            changed: bool,
        }
        let work = work_dir(&self.dir);
        // Not create_dir_all: a partition deleted meanwhile must stay gone.
        match fs::create_dir(&work) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e.into()),
            _ => {}
        }
        let limit = self.segment_bytes.min(u64::from(u32::MAX));
        let next_base = |i: usize| sources.get(i + 1).map_or(clean_end, |s| s.base);
        let mut next_horizon: Option<i64> = None;
        let mut open: Option<Open> = None;
        let mut i = 0;
        while i < sources.len() {
            let src = sources[i];
            // Relative offsets in the merged segment's indexes must fit.
            if let Some(o) = open.take() {
                if next_base(i) - sources[o.first].base > i64::from(i32::MAX) {
                    self.close_group(o.first, o.count, o.seg, o.changed, sources, clean_end, out)?;
                } else {
                    open = Some(o);
                }
            }
            let o = match open.as_mut() {
                Some(o) => o,
                None => open.insert(Open {
                    first: i,
                    count: 0,
                    seg: Segment::create(&work, src.base, self.index_interval_bytes, self.now_ms)?,
                    changed: false,
                }),
            };
            let mut src_stats = CleanStats::default();
            let mut src_horizon = None;
            let before = o.seg.size();
            let mut changed = false;
            let mut buf: Vec<u8> = Vec::new();
            let mut headers: Vec<(usize, BatchHeader)> = Vec::new();
            for_each_batch(src, |h, bytes| {
                let kept = self.clean_batch(h, bytes, map, &mut src_stats, &mut src_horizon);
                changed |= !matches!(kept, Kept::Whole);
                let written: &[u8] = match &kept {
                    Kept::Whole => bytes,
                    Kept::Rebuilt(b) => b,
                    Kept::Dropped => return Ok(()),
                };
                let header = BatchHeader::parse(written)?;
                headers.push((buf.len(), header));
                buf.extend_from_slice(written);
                if buf.len() >= WRITE_CHUNK {
                    o.seg.append(&buf, &headers, self.now_ms)?;
                    buf.clear();
                    headers.clear();
                }
                Ok(())
            })?;
            o.seg.append(&buf, &headers, self.now_ms)?;
            if o.count > 0 && o.seg.size() > limit {
                // Does not fit: cut it off again and start the next group
                // with it (its batches are the ones from its base on).
                o.seg.truncate_to(src.base)?;
                let Some(o) = open.take() else { break };
                self.close_group(o.first, o.count, o.seg, o.changed, sources, clean_end, out)?;
                continue;
            }
            o.count += 1;
            o.changed |= changed;
            src_stats.segments_read = 1;
            src_stats.bytes_read = src.size;
            src_stats.bytes_written = o.seg.size() - before;
            stats.add(&src_stats);
            if let Some(h) = src_horizon {
                next_horizon = Some(next_horizon.map_or(h, |n: i64| n.min(h)));
            }
            i += 1;
        }
        if let Some(o) = open.take() {
            self.close_group(o.first, o.count, o.seg, o.changed, sources, clean_end, out)?;
        }
        Ok(next_horizon)
    }

    /// fsyncs a finished group's segment and records it, or drops it if it
    /// is a single segment that did not change.
    #[allow(clippy::too_many_arguments)]
    fn close_group(
        &self,
        first: usize,
        count: usize,
        mut seg: Segment,
        changed: bool,
        sources: &[&Source],
        clean_end: i64,
        groups: &mut Vec<CleanedGroup>,
    ) -> Result<(), StorageError> {
        let group = &sources[first..first + count];
        if count == 0 || (count == 1 && !changed) {
            return seg.delete();
        }
        seg.seal()?;
        // Retention by time falls back on the file's age: keep the sources'.
        let mtime = group.iter().map(|s| s.last_modified_ms).max().unwrap_or(0);
        if mtime > 0 {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(mtime as u64);
            // Only the mtime changes, which the test file system does not
            // model: std's handle, which can set it.
            let r = std::fs::File::options()
                .write(true)
                .open(seg.log_path())
                .and_then(|f| f.set_modified(t));
            if let Err(e) = r {
                tracing::debug!(path = %seg.log_path().display(), error = %e, "cannot set the cleaned segment's mtime");
            }
        }
        groups.push(CleanedGroup {
            base: group[0].base,
            end: sources.get(first + count).map_or(clean_end, |s| s.base),
            sources: group.iter().map(|s| (s.base, s.size)).collect(),
        });
        Ok(())
    }

    fn clean_batch(
        &self,
        h: &BatchHeader,
        bytes: &[u8],
        map: &HashMap<Vec<u8>, i64>,
        stats: &mut CleanStats,
        next_horizon: &mut Option<i64>,
    ) -> Kept {
        if h.is_control() || h.is_transactional() {
            return Kept::Whole;
        }
        let records = if batch::compute_crc(bytes) == h.crc {
            batch::records(bytes)
        } else {
            None
        };
        let Some(records) = records else {
            stats.batches_kept_whole += 1;
            if h.compression() == 0 {
                tracing::warn!(dir = %self.dir.display(), base_offset = h.base_offset, "a batch's records do not parse; keeping it whole");
            } else {
                tracing::debug!(dir = %self.dir.display(), base_offset = h.base_offset, codec = h.compression(), "compressed batch kept whole");
            }
            return Kept::Whole;
        };
        let horizon = h.delete_horizon_ms();
        let tombstones_expired = horizon.is_some_and(|t| self.now_ms >= t);
        let mut kept = Vec::with_capacity(records.len());
        let mut has_tombstones = false;
        for r in &records {
            let offset = h.base_offset + r.offset_delta;
            let retain = match r.key {
                None => {
                    stats.keyless_removed += 1;
                    false
                }
                Some(key) => {
                    let latest = map.get(key).is_none_or(|&o| offset >= o);
                    if latest && r.value.is_none() && tombstones_expired {
                        stats.tombstones_removed += 1;
                        false
                    } else {
                        latest
                    }
                }
            };
            if retain {
                has_tombstones |= r.value.is_none();
                kept.push(r);
            } else {
                stats.records_removed += 1;
            }
        }
        let set_horizon = has_tombstones && horizon.is_none();
        if has_tombstones {
            let h = horizon.unwrap_or_else(|| self.now_ms.saturating_add(self.delete_retention_ms));
            *next_horizon = Some(next_horizon.map_or(h, |n| n.min(h)));
        }
        if kept.len() == records.len() && !set_horizon {
            return Kept::Whole;
        }
        if kept.is_empty() {
            let last_of_producer = h.has_producer_id()
                && self.producer_last.get(&h.producer_id) == Some(&h.last_offset());
            if !last_of_producer {
                return Kept::Dropped;
            }
            // An empty batch still carries the producer's last sequence.
            let ts = h.max_timestamp;
            return Kept::Rebuilt(batch::rebuild_batch(h, ts, ts, false, 0, &[]));
        }
        let base_ts = if set_horizon {
            self.now_ms.saturating_add(self.delete_retention_ms)
        } else {
            h.base_timestamp
        };
        let mut body = Vec::with_capacity(bytes.len());
        let mut max_ts = i64::MIN;
        for r in &kept {
            let ts = h.base_timestamp.wrapping_add(r.timestamp_delta);
            max_ts = max_ts.max(ts);
            batch::encode_record(&mut body, r, ts, base_ts);
        }
        if h.is_log_append_time() {
            max_ts = h.max_timestamp;
        }
        Kept::Rebuilt(batch::rebuild_batch(
            h,
            base_ts,
            max_ts,
            set_horizon,
            kept.len() as i32,
            &body,
        ))
    }
}

impl Drop for CleanOutput {
    /// Output never swapped in leaves no file behind.
    fn drop(&mut self) {
        for g in &self.groups {
            if let Err(e) = remove_cleaned(&self.dir, g.base) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove a cleaned file");
            }
        }
        remove_work_dir(&self.dir);
    }
}
