//! The leader-epoch cache: for each leader epoch, the first offset written
//! in it. Followers use it (through OffsetForLeaderEpoch) to find where their
//! log diverges from a new leader's. Persisted as a small text file in the
//! same format as Kafka's `leader-epoch-checkpoint`:
//!
//! ```text
//! 0            <- version
//! 2            <- number of entries
//! 3 0          <- epoch, start offset
//! 5 120
//! ```
//!
//! A new epoch at the log end (a new leader, or a follower's first batch of
//! the epoch) is written without an fsync, so that a broker taking over
//! thousands of leaderships does not wait on thousands of fsyncs; the log's
//! next checkpoint or clean close makes it durable before anything that
//! relies on it. After a power loss the file may lack epochs that began
//! after that point, or be torn: the log rebuilds them from the batches
//! it replays from its producer snapshot (see `PartitionLog::open`).

use std::path::{Path, PathBuf};

use crate::StorageError;

/// Kafka's "no epoch" / "no offset" answers.
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// One epoch and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// Epoch -> start offset, both strictly increasing.
#[derive(Debug, Clone)]
pub struct LeaderEpochCache {
    path: PathBuf,
    entries: Vec<EpochEntry>,
    /// The file was last written without an fsync.
    unsynced: bool,
}

fn parse(text: &str) -> Option<Vec<EpochEntry>> {
    // Every strict prefix of a well-formed file is malformed: either it
    // ends mid-line or it has fewer entries than it announces. A file torn
    // by a power loss is then rebuilt, never read short.
    if !text.ends_with('\n') {
        return None;
    }
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next()? != "0" {
        return None;
    }
    let n: usize = lines.next()?.parse().ok()?;
    let mut entries = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let mut parts = lines.next()?.split_whitespace();
        let epoch = parts.next()?.parse().ok()?;
        let start_offset = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        entries.push(EpochEntry {
            epoch,
            start_offset,
        });
    }
    if lines.next().is_some() {
        return None;
    }
    let monotonic = entries
        .windows(2)
        .all(|w| w[1].epoch > w[0].epoch && w[1].start_offset > w[0].start_offset);
    (monotonic && entries.iter().all(|e| e.epoch >= 0 && e.start_offset >= 0)).then_some(entries)
}

impl LeaderEpochCache {
    /// Loads the file at `path`. The flag is false if it was missing or did
    /// not parse, in which case the cache starts empty and should be rebuilt
    /// from the log.
    pub fn load(path: &Path) -> Result<(Self, bool), StorageError> {
        let (entries, found) = match crate::fs::read_to_string(path) {
            Ok(text) => match parse(&text) {
                Some(e) => (e, true),
                None => {
                    tracing::warn!(file = %path.display(), "malformed leader epoch checkpoint, rebuilding");
                    (Vec::new(), false)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), false),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => (Vec::new(), false),
            Err(e) => return Err(e.into()),
        };
        Ok((
            LeaderEpochCache {
                path: path.to_path_buf(),
                entries,
                unsynced: false,
            },
            found,
        ))
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    pub fn clear(&mut self) -> bool {
        let changed = !self.entries.is_empty();
        self.entries.clear();
        changed
    }

    /// Records that `epoch` starts at `start_offset`. Like Kafka, a new entry
    /// that conflicts with later ones (lower epoch or lower offset) removes
    /// them. Returns true if the cache changed.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || start_offset < 0 {
            return false;
        }
        if let Some(last) = self.entries.last() {
            if epoch == last.epoch && start_offset >= last.start_offset {
                return false;
            }
        }
        while let Some(last) = self.entries.last() {
            if last.epoch >= epoch || last.start_offset >= start_offset {
                if last.epoch < epoch && last.start_offset == start_offset {
                    // An older epoch in which nothing was written: every
                    // leader change of an idle partition replaces one.
                    tracing::debug!(
                        removed_epoch = last.epoch,
                        epoch,
                        start_offset,
                        "leader epoch without records replaced"
                    );
                } else {
                    tracing::warn!(
                        removed_epoch = last.epoch,
                        removed_start = last.start_offset,
                        epoch,
                        start_offset,
                        "leader epoch entry conflicts with a new one, removing it"
                    );
                }
                self.entries.pop();
            } else {
                break;
            }
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// Removes entries starting at or after `end_offset` (log truncation).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let n = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        let changed = n < self.entries.len();
        self.entries.truncate(n);
        changed
    }

    /// Removes entries wholly before `start_offset`; the epoch in force at
    /// `start_offset` is kept and starts there (log start moved).
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let n = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        if n == 0 {
            return false;
        }
        let kept = n - 1;
        let changed = kept > 0 || self.entries[kept].start_offset != start_offset;
        self.entries.drain(..kept);
        self.entries[0].start_offset = start_offset;
        changed
    }

    /// Kafka's OffsetForLeaderEpoch answer: the largest epoch <= `epoch` and
    /// the start offset of the next larger epoch, or `log_end_offset` if
    /// `epoch` is the latest; `(-1, -1)` if `epoch` is above every known
    /// epoch or the cache is empty.
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> (i32, i64) {
        const UNKNOWN: (i32, i64) = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        if epoch == UNDEFINED_EPOCH {
            return UNKNOWN;
        }
        if self.latest_epoch() == Some(epoch) {
            return (epoch, log_end_offset);
        }
        let higher = self.entries.partition_point(|e| e.epoch <= epoch);
        let Some(next) = self.entries.get(higher) else {
            return UNKNOWN;
        };
        match higher.checked_sub(1) {
            None => (epoch, next.start_offset),
            Some(floor) => (self.entries[floor].epoch, next.start_offset),
        }
    }

    /// Writes the file atomically and durably.
    pub fn persist(&mut self) -> Result<(), StorageError> {
        crate::log::write_atomic(&self.path, self.encode().as_bytes())?;
        self.unsynced = false;
        Ok(())
    }

    /// Writes the file atomically (a reader sees the old or the new file)
    /// but not durably: only for changes that [`LeaderEpochCache::sync`]
    /// or a rebuild from the log can make good after a power loss.
    pub fn persist_unsynced(&mut self) -> Result<(), StorageError> {
        crate::log::write_replacing(&self.path, self.encode().as_bytes())?;
        self.unsynced = true;
        Ok(())
    }

    /// Makes an unsynced write durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.unsynced {
            self.persist()?;
        }
        Ok(())
    }

    fn encode(&self) -> String {
        let mut text = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache {
            path: PathBuf::from("/nonexistent"),
            entries: Vec::new(),
            unsynced: false,
        };
        for &(e, o) in entries {
            c.assign(e, o);
        }
        c
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        let c = cache(&[(1, 0), (3, 100), (5, 250)]);
        assert_eq!(c.end_offset_for(5, 400), (5, 400));
        assert_eq!(c.end_offset_for(6, 400), (-1, -1));
        assert_eq!(c.end_offset_for(4, 400), (3, 250));
        assert_eq!(c.end_offset_for(3, 400), (3, 250));
        assert_eq!(c.end_offset_for(2, 400), (1, 100));
        assert_eq!(c.end_offset_for(1, 400), (1, 100));
        assert_eq!(c.end_offset_for(0, 400), (0, 0));
        assert_eq!(c.end_offset_for(-1, 400), (-1, -1));
        assert_eq!(cache(&[]).end_offset_for(0, 10), (-1, -1));
    }

    #[test]
    fn assign_and_truncate() {
        let mut c = cache(&[(1, 0), (3, 100), (5, 250)]);
        assert!(!c.assign(5, 260));
        assert!(c.assign(4, 200)); // conflicts with epoch 5
        assert_eq!(c.latest_epoch(), Some(4));
        assert!(c.truncate_from_end(100));
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 1,
                start_offset: 0
            }]
        );

        let mut c = cache(&[(1, 0), (3, 100), (5, 250)]);
        assert!(c.truncate_from_start(120));
        assert_eq!(
            c.entries(),
            &[
                EpochEntry {
                    epoch: 3,
                    start_offset: 120
                },
                EpochEntry {
                    epoch: 5,
                    start_offset: 250
                }
            ]
        );
        assert!(!c.truncate_from_start(50));
    }

    #[test]
    fn persist_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader-epoch-checkpoint");
        let (mut c, found) = LeaderEpochCache::load(&path).unwrap();
        assert!(!found);
        c.assign(2, 0);
        c.assign(7, 55);
        c.persist().unwrap();
        let (d, found) = LeaderEpochCache::load(&path).unwrap();
        assert!(found);
        assert_eq!(d.entries(), c.entries());
        std::fs::write(&path, "0\n2\n2 0\n").unwrap();
        assert!(!LeaderEpochCache::load(&path).unwrap().1);
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(!LeaderEpochCache::load(&path).unwrap().1);
    }

    #[test]
    fn no_torn_prefix_of_an_unsynced_write_reads_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader-epoch-checkpoint");
        let (mut c, _) = LeaderEpochCache::load(&path).unwrap();
        for (epoch, start) in [(2, 0), (7, 100), (9, 1234)] {
            c.assign(epoch, start);
        }
        c.persist_unsynced().unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert!(LeaderEpochCache::load(&path).unwrap().1);
        for len in 0..whole.len() {
            std::fs::write(&path, &whole[..len]).unwrap();
            assert!(
                !LeaderEpochCache::load(&path).unwrap().1,
                "prefix of {len} bytes"
            );
        }
    }
}
