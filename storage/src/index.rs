//! Sparse indexes of one segment, kept in memory and mirrored to a file.
//!
//! - Offset index (`.index`): 8-byte entries, relative offset (u32) of a
//!   batch's base offset -> byte position (u32) of that batch in the `.log`.
//! - Time index (`.timeindex`): 12-byte entries, largest timestamp seen so
//!   far (i64) -> relative offset (u32) of the first batch carrying it.
//!
//! Entries are strictly increasing in both columns (timestamps strictly
//! increasing in the time index), so lookup is a binary search. Both files
//! are big-endian and can always be rebuilt from the `.log`; a file that
//! fails the sanity checks on load is reported as corrupt and the segment
//! rebuilds it.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use crate::fs::{self, File, OpenOptions};
use crate::open_files::LazyFile;
use crate::StorageError;

/// One offset index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

/// Fixed-size index records.
trait Entry: Copy {
    const SIZE: usize;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(b: &[u8]) -> Self;
    /// True if `self` may follow `prev` in a well-formed index.
    fn follows(&self, prev: &Self) -> bool;
}

impl Entry for OffsetEntry {
    const SIZE: usize = 8;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            position: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
    fn follows(&self, prev: &Self) -> bool {
        self.relative_offset > prev.relative_offset && self.position > prev.position
    }
}

impl Entry for TimeEntry {
    const SIZE: usize = 12;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        TimeEntry {
            timestamp: i64::from_be_bytes(ts),
            relative_offset: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
    fn follows(&self, prev: &Self) -> bool {
        self.timestamp > prev.timestamp && self.relative_offset >= prev.relative_offset
    }
}

/// An index file plus its entries in memory. Lookups use the entries, so
/// the file is opened only to change it: a partition that takes no writes
/// holds no descriptor for its indexes (a broker with 10,000 partitions
/// would otherwise need 20,000 for them alone), and one that does shares the
/// process's budget of open files (see [`crate::open_files`]).
#[derive(Debug)]
struct IndexFile<E: Entry> {
    file: LazyFile,
    entries: Vec<E>,
}

impl<E: Entry> IndexFile<E> {
    fn open_file(path: &Path, truncate: bool) -> Result<File, StorageError> {
        Ok(OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(path)
            .and_then(|f| {
                if truncate {
                    f.set_len(0)?;
                }
                Ok(f)
            })?)
    }

    fn create(path: &Path) -> Result<Self, StorageError> {
        Self::open_file(path, true)?;
        Ok(IndexFile {
            file: LazyFile::closed(path.to_path_buf()),
            entries: Vec::new(),
        })
    }

    /// The open file, opened now if it is not yet.
    fn handle(&mut self) -> Result<Arc<File>, StorageError> {
        Ok(self.file.get()?)
    }

    /// Loads an existing file. `Ok(None)` if it is missing or malformed.
    fn load(path: &Path) -> Result<Option<Self>, StorageError> {
        let mut file = match OpenOptions::new().read(true).append(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        if bytes.len() % E::SIZE != 0 {
            return Ok(None);
        }
        let entries: Vec<E> = bytes.chunks_exact(E::SIZE).map(E::decode).collect();
        if entries.windows(2).any(|w| !w[1].follows(&w[0])) {
            return Ok(None);
        }
        drop(file);
        Ok(Some(IndexFile {
            file: LazyFile::closed(path.to_path_buf()),
            entries,
        }))
    }

    fn append(&mut self, e: E) -> Result<(), StorageError> {
        let mut buf = Vec::with_capacity(E::SIZE);
        e.encode(&mut buf);
        (&*self.handle()?).write_all(&buf)?;
        self.entries.push(e);
        Ok(())
    }

    /// Replaces the whole file with `entries`.
    fn rewrite(&mut self, entries: Vec<E>) -> Result<(), StorageError> {
        let mut buf = Vec::with_capacity(entries.len() * E::SIZE);
        for e in &entries {
            e.encode(&mut buf);
        }
        let file = self.handle()?;
        file.set_len(0)?;
        (&*file).write_all(&buf)?;
        self.entries = entries;
        Ok(())
    }

    /// Keeps the first `n` entries.
    fn truncate_entries(&mut self, n: usize) -> Result<(), StorageError> {
        if n < self.entries.len() {
            self.entries.truncate(n);
            self.handle()?.set_len((n * E::SIZE) as u64)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        if let Some(file) = self.sync_handle()? {
            file.sync_data()?;
        }
        Ok(())
    }

    /// A handle to fsync the file through (opened again if it was closed:
    /// an fsync covers the file, whichever descriptor asks), none when the
    /// file is gone (a cleaned segment's, replaced on disk already).
    fn sync_handle(&self) -> Result<Option<Arc<File>>, StorageError> {
        match self.file.get() {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn delete(self) -> Result<(), StorageError> {
        self.file.close();
        match fs::remove_file(self.file.path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// The sparse offset index of one segment.
#[derive(Debug)]
pub struct OffsetIndex(IndexFile<OffsetEntry>);

impl OffsetIndex {
    /// Creates (or empties) the index file.
    pub fn create(path: &Path) -> Result<Self, StorageError> {
        IndexFile::create(path).map(OffsetIndex)
    }

    /// Loads the file; `Ok(None)` if missing or malformed.
    pub fn load(path: &Path) -> Result<Option<Self>, StorageError> {
        Ok(IndexFile::load(path)?.map(OffsetIndex))
    }

    pub fn entries(&self) -> &[OffsetEntry] {
        &self.0.entries
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.0.entries.last().copied()
    }

    /// Appends an entry; ignored unless it follows the last one.
    pub fn append(&mut self, relative_offset: u32, position: u32) -> Result<(), StorageError> {
        let e = OffsetEntry {
            relative_offset,
            position,
        };
        match self.0.entries.last() {
            Some(last) if !e.follows(last) => Ok(()),
            _ => self.0.append(e),
        }
    }

    /// Largest entry whose relative offset is <= `relative_offset`.
    pub fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let i = self
            .0
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        i.checked_sub(1).map(|i| self.0.entries[i])
    }

    /// Drops entries pointing at or past `position`.
    pub fn truncate_to_position(&mut self, position: u64) -> Result<(), StorageError> {
        let n = self
            .0
            .entries
            .partition_point(|e| u64::from(e.position) < position);
        self.0.truncate_entries(n)
    }

    pub fn rewrite(&mut self, entries: Vec<OffsetEntry>) -> Result<(), StorageError> {
        self.0.rewrite(entries)
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        self.0.flush()
    }

    /// A handle to fsync the index through without its owner's lock.
    pub fn sync_handle(&self) -> Result<Option<Arc<File>>, StorageError> {
        self.0.sync_handle()
    }

    pub fn delete(self) -> Result<(), StorageError> {
        self.0.delete()
    }
}

/// The sparse time index of one segment.
#[derive(Debug)]
pub struct TimeIndex(IndexFile<TimeEntry>);

impl TimeIndex {
    pub fn create(path: &Path) -> Result<Self, StorageError> {
        IndexFile::create(path).map(TimeIndex)
    }

    pub fn load(path: &Path) -> Result<Option<Self>, StorageError> {
        Ok(IndexFile::load(path)?.map(TimeIndex))
    }

    pub fn entries(&self) -> &[TimeEntry] {
        &self.0.entries
    }

    pub fn last(&self) -> Option<TimeEntry> {
        self.0.entries.last().copied()
    }

    /// Appends an entry if its timestamp is larger than the last one's.
    pub fn maybe_append(
        &mut self,
        timestamp: i64,
        relative_offset: u32,
    ) -> Result<(), StorageError> {
        let e = TimeEntry {
            timestamp,
            relative_offset,
        };
        match self.0.entries.last() {
            Some(last) if !e.follows(last) => Ok(()),
            _ => self.0.append(e),
        }
    }

    /// Largest entry whose timestamp is strictly below `timestamp`: every
    /// batch up to that entry's offset has a max timestamp below `timestamp`.
    pub fn lookup_below(&self, timestamp: i64) -> Option<TimeEntry> {
        let i = self.0.entries.partition_point(|e| e.timestamp < timestamp);
        i.checked_sub(1).map(|i| self.0.entries[i])
    }

    /// Drops entries whose offset is >= `relative_offset`.
    pub fn truncate_to_offset(&mut self, relative_offset: u32) -> Result<(), StorageError> {
        let n = self
            .0
            .entries
            .partition_point(|e| e.relative_offset < relative_offset);
        self.0.truncate_entries(n)
    }

    pub fn rewrite(&mut self, entries: Vec<TimeEntry>) -> Result<(), StorageError> {
        self.0.rewrite(entries)
    }

    pub fn flush(&self) -> Result<(), StorageError> {
        self.0.flush()
    }

    /// A handle to fsync the index through without its owner's lock.
    pub fn sync_handle(&self) -> Result<Option<Arc<File>>, StorageError> {
        self.0.sync_handle()
    }

    pub fn delete(self) -> Result<(), StorageError> {
        self.0.delete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_holds_a_descriptor_only_once_it_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = OffsetIndex::create(&path).unwrap();
        assert!(!idx.0.file.is_open(), "a new index holds its file open");
        assert!(path.exists());
        idx.flush().unwrap();
        idx.append(10, 1000).unwrap();
        idx.append(20, 2000).unwrap();
        assert!(idx.0.file.is_open());
        idx.flush().unwrap();
        drop(idx);

        // Loaded, it answers from memory with the file closed, and opens it
        // again to change it.
        let mut idx = OffsetIndex::load(&path).unwrap().unwrap();
        assert!(!idx.0.file.is_open(), "a loaded index holds its file open");
        assert_eq!(idx.lookup(25).unwrap().position, 2000);
        assert!(!idx.0.file.is_open());
        idx.append(30, 3000).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * 8);

        let mut time = TimeIndex::create(&dir.path().join("0.timeindex")).unwrap();
        assert!(!time.0.file.is_open());
        time.truncate_to_offset(0).unwrap();
        time.flush().unwrap();
    }

    #[test]
    fn offset_index_lookup_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = OffsetIndex::create(&path).unwrap();
        assert_eq!(idx.lookup(5), None);
        for i in 1..100u32 {
            idx.append(i * 10, i * 1000).unwrap();
        }
        // Out of order entries are ignored.
        idx.append(5, 5).unwrap();
        assert_eq!(idx.lookup(9), None);
        assert_eq!(idx.lookup(10).unwrap().position, 1000);
        assert_eq!(idx.lookup(15).unwrap().position, 1000);
        assert_eq!(idx.lookup(990).unwrap().position, 99_000);
        assert_eq!(idx.lookup(u32::MAX).unwrap().position, 99_000);
        drop(idx);
        let mut idx = OffsetIndex::load(&path).unwrap().unwrap();
        assert_eq!(idx.entries().len(), 99);
        idx.truncate_to_position(50_000).unwrap();
        assert_eq!(idx.last().unwrap().position, 49_000);
        drop(idx);
        let idx = OffsetIndex::load(&path).unwrap().unwrap();
        assert_eq!(idx.entries().len(), 49);

        std::fs::write(&path, [1, 2, 3]).unwrap();
        assert!(OffsetIndex::load(&path).unwrap().is_none());
        // Not monotonic.
        std::fs::write(&path, [0, 0, 0, 5, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 10]).unwrap();
        assert!(OffsetIndex::load(&path).unwrap().is_none());
        assert!(OffsetIndex::load(&dir.path().join("missing.index"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn time_index_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        let mut idx = TimeIndex::create(&path).unwrap();
        idx.maybe_append(100, 0).unwrap();
        idx.maybe_append(100, 3).unwrap(); // not larger: ignored
        idx.maybe_append(200, 5).unwrap();
        idx.maybe_append(300, 9).unwrap();
        assert_eq!(idx.entries().len(), 3);
        assert_eq!(idx.lookup_below(100), None);
        assert_eq!(idx.lookup_below(101).unwrap().relative_offset, 0);
        assert_eq!(idx.lookup_below(300).unwrap().relative_offset, 5);
        assert_eq!(idx.lookup_below(i64::MAX).unwrap().relative_offset, 9);
        idx.truncate_to_offset(6).unwrap();
        drop(idx);
        let idx = TimeIndex::load(&path).unwrap().unwrap();
        assert_eq!(idx.entries().len(), 2);
    }
}
