//! The Raft log store: raft-rs's read-only [`Storage`] trait over RocksDB.
//!
//! Raft only reads through the trait; every write goes through
//! [`RaftLogStore::append_ready`] (one `WriteBatch` per `Ready`, synced when
//! the `Ready` says so), [`RaftLogStore::set_conf_state`],
//! [`RaftLogStore::save_snapshot`] and [`RaftLogStore::compact`], called by
//! the driver that owns the `RawNode`.
//!
//! Layout (one RocksDB instance, default column family):
//!
//! | key                      | value                                      |
//! |--------------------------|--------------------------------------------|
//! | `e` + be64(index)        | `Entry` (protobuf)                         |
//! | `m/hard_state`           | `HardState` (protobuf)                     |
//! | `m/conf_state`           | be64(index it took effect) + `ConfState`   |
//! | `m/truncated`            | be64(index) + be64(term) of the entry just |
//! |                          | before the first one kept                  |
//! | `m/snapshot_meta`        | `SnapshotMetadata` (protobuf)              |
//! | `m/snapshot_data`        | the state machine's snapshot bytes         |
//!
//! Big-endian indexes keep entries in log order under RocksDB's bytewise
//! comparator. Everything but the entries themselves is cached in memory; the
//! cache changes only after the batch that changes the disk has been written.

use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};

const ENTRY_PREFIX: u8 = b'e';
const HARD_STATE_KEY: &[u8] = b"m/hard_state";
const CONF_STATE_KEY: &[u8] = b"m/conf_state";
const TRUNCATED_KEY: &[u8] = b"m/truncated";
const SNAPSHOT_META_KEY: &[u8] = b"m/snapshot_meta";
const SNAPSHOT_DATA_KEY: &[u8] = b"m/snapshot_data";

/// Errors of the Raft log store.
#[derive(Debug, thiserror::Error)]
pub enum RaftStoreError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("protobuf encoding failed: {0}")]
    Encode(#[source] protobuf::ProtobufError),
    #[error("corrupt raft store: {0}")]
    Corrupt(String),
    #[error("raft log compacted: index {index} is below the first index {first_index}")]
    Compacted { index: u64, first_index: u64 },
    #[error("raft log index {index} unavailable (last index {last_index})")]
    Unavailable { index: u64, last_index: u64 },
    #[error("entries are not contiguous with the log: {0}")]
    NotContiguous(String),
    #[error("snapshot at index {index} is older than the log's first index {first_index}")]
    SnapshotOutOfDate { index: u64, first_index: u64 },
    #[error("no snapshot newer than index {0}")]
    SnapshotUnavailable(u64),
    #[error(
        "compacting to {compact_index} would drop entries after the snapshot at {snapshot_index}"
    )]
    CompactBeyondSnapshot {
        compact_index: u64,
        snapshot_index: u64,
    },
    #[error("snapshot term {term} at index {index} does not match the log's term {log_term}")]
    TermMismatch {
        index: u64,
        term: u64,
        log_term: u64,
    },
    #[error("the raft store is already initialized")]
    AlreadyInitialized,
}

pub type Result<T, E = RaftStoreError> = std::result::Result<T, E>;

impl From<RaftStoreError> for raft::Error {
    fn from(e: RaftStoreError) -> Self {
        let se = match e {
            RaftStoreError::Compacted { .. } => StorageError::Compacted,
            RaftStoreError::Unavailable { .. } => StorageError::Unavailable,
            RaftStoreError::SnapshotOutOfDate { .. } => StorageError::SnapshotOutOfDate,
            RaftStoreError::SnapshotUnavailable(_) => StorageError::SnapshotTemporarilyUnavailable,
            other => StorageError::Other(Box::new(other)),
        };
        raft::Error::Store(se)
    }
}

/// What is kept in memory: everything but the entries.
#[derive(Debug, Clone, Default)]
struct Meta {
    hard_state: HardState,
    conf_state: ConfState,
    /// Log index at which `conf_state` took effect (0 for the initial one).
    conf_index: u64,
    snapshot: SnapshotMetadata,
    /// (index, term) of the entry just before the first one kept.
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
}

impl Meta {
    fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }
}

/// Tests: the write batches of a store, in order, with their sync flags.
#[cfg(test)]
type Batches = Vec<(Vec<u8>, bool)>;
#[cfg(test)]
type Recorded = Arc<std::sync::Mutex<Batches>>;

/// A Raft log in RocksDB. Cloning is cheap and shares the database and the
/// cached metadata, so the `RawNode` can own one clone while the driver
/// writes through another.
#[derive(Clone)]
pub struct RaftLogStore {
    db: Arc<DB>,
    meta: Arc<RwLock<Meta>>,
    /// Tests: every write batch and its sync flag, in order.
    #[cfg(test)]
    recorded: Option<Recorded>,
}

impl std::fmt::Debug for RaftLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLogStore")
            .field("path", &self.db.path())
            .field("meta", &*self.read_meta())
            .finish()
    }
}

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn entry_index(key: &[u8]) -> Option<u64> {
    match key {
        [ENTRY_PREFIX, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

fn encode<M: protobuf::Message>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes().map_err(RaftStoreError::Encode)
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| RaftStoreError::Corrupt(format!("{what}: {e}")))
}

fn be_u64(what: &str, bytes: &[u8]) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| RaftStoreError::Corrupt(format!("{what}: expected 8 bytes")))
}

fn encode_conf_state(cs: &ConfState, index: u64) -> Result<Vec<u8>> {
    let mut v = index.to_be_bytes().to_vec();
    v.extend_from_slice(&encode(cs)?);
    Ok(v)
}

impl RaftLogStore {
    /// Opens (creating if missing) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, path)?;
        let meta = load_meta(&db)?;
        tracing::debug!(
            first_index = meta.first_index(),
            last_index = meta.last_index,
            commit = meta.hard_state.commit,
            snapshot_index = meta.snapshot.index,
            "opened raft log store"
        );
        Ok(RaftLogStore {
            db: Arc::new(db),
            meta: Arc::new(RwLock::new(meta)),
            #[cfg(test)]
            recorded: None,
        })
    }

    // The cache is only replaced wholesale after a successful write, so a
    // panic elsewhere cannot leave it half-updated: poisoning is harmless.
    fn read_meta(&self) -> RwLockReadGuard<'_, Meta> {
        self.meta.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_meta(&self) -> RwLockWriteGuard<'_, Meta> {
        self.meta.write().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        #[cfg(test)]
        if let Some(r) = &self.recorded {
            r.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((batch.data().to_vec(), sync));
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// True once the store has a configuration (from [`Self::initialize`]
    /// or from a snapshot received from a leader).
    pub fn is_initialized(&self) -> bool {
        let m = self.read_meta();
        m.conf_state != ConfState::default() || m.last_index > 0 || m.snapshot.index > 0
    }

    /// Initializes a brand-new store with `voters`, the way raft-rs's
    /// `MemStorage::initialize_with_conf_state` does: an empty log whose
    /// first index is 1, with term 0 at index 0. Every voter of a new
    /// cluster must be initialized with the same set.
    pub fn initialize(&self, voters: &[u64]) -> Result<()> {
        if self.is_initialized() || self.read_meta().hard_state != HardState::default() {
            return Err(RaftStoreError::AlreadyInitialized);
        }
        let cs = ConfState::from((voters.iter().copied(), std::iter::empty::<u64>()));
        let mut guard = self.write_meta();
        let mut batch = WriteBatch::default();
        batch.put(CONF_STATE_KEY, encode_conf_state(&cs, 0)?);
        batch.put(TRUNCATED_KEY, [0u8; 16]);
        self.write(batch, true)?;
        guard.conf_state = cs;
        guard.conf_index = 0;
        Ok(())
    }

    /// Persists one `Ready`: its snapshot (which replaces the whole log),
    /// its entries (an entry at index i drops every stored entry >= i) and
    /// its hard state, in one batch, fsynced when `sync`.
    pub fn append_ready(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        snapshot: Option<&Snapshot>,
        sync: bool,
    ) -> Result<()> {
        let mut guard = self.write_meta();
        let mut next = guard.clone();
        let mut batch = WriteBatch::default();
        let mut hard_state_changed = false;

        if let Some(snap) = snapshot.filter(|s| !s.is_empty()) {
            let m = snap.get_metadata();
            if m.index < next.first_index() {
                return Err(RaftStoreError::SnapshotOutOfDate {
                    index: m.index,
                    first_index: next.first_index(),
                });
            }
            // The snapshot replaces the log: raft-rs only hands one over when
            // the local log cannot be reconciled with the leader's.
            batch.delete_range(entry_key(0), entry_key(u64::MAX));
            batch.delete(entry_key(u64::MAX));
            batch.put(SNAPSHOT_META_KEY, encode(m)?);
            batch.put(SNAPSHOT_DATA_KEY, &snap.data[..]);
            batch.put(TRUNCATED_KEY, truncated_value(m.index, m.term));
            batch.put(
                CONF_STATE_KEY,
                encode_conf_state(m.get_conf_state(), m.index)?,
            );
            next.snapshot = m.clone();
            next.truncated_index = m.index;
            next.truncated_term = m.term;
            next.last_index = m.index;
            next.conf_state = m.get_conf_state().clone();
            next.conf_index = m.index;
            let hs = &mut next.hard_state;
            hs.term = hs.term.max(m.term);
            hs.commit = hs.commit.max(m.index);
            hard_state_changed = true;
        }

        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index < next.first_index() {
                return Err(RaftStoreError::Compacted {
                    index: first.index,
                    first_index: next.first_index(),
                });
            }
            if first.index > next.last_index + 1 {
                return Err(RaftStoreError::NotContiguous(format!(
                    "first new entry {} leaves a gap after the last index {}",
                    first.index, next.last_index
                )));
            }
            for (i, e) in entries.iter().enumerate() {
                if e.index != first.index + i as u64 {
                    return Err(RaftStoreError::NotContiguous(format!(
                        "entry {} at position {i} of a batch starting at {}",
                        e.index, first.index
                    )));
                }
                batch.put(entry_key(e.index), encode(e)?);
            }
            // Drop the conflicting tail the new entries did not overwrite.
            for index in last.index + 1..=next.last_index {
                batch.delete(entry_key(index));
            }
            next.last_index = last.index;
        }

        if let Some(hs) = hard_state {
            // A snapshot in the same Ready only ever raises term and commit.
            let term = hs.term.max(next.hard_state.term);
            let commit = hs.commit.max(next.hard_state.commit);
            next.hard_state = hs.clone();
            if hard_state_changed {
                next.hard_state.term = term;
                next.hard_state.commit = commit;
            }
            hard_state_changed = true;
        }
        if hard_state_changed {
            batch.put(HARD_STATE_KEY, encode(&next.hard_state)?);
        }

        if batch.is_empty() {
            return Ok(());
        }
        self.write(batch, sync)?;
        *guard = next;
        Ok(())
    }

    /// Records the configuration that took effect at log `index` (the
    /// driver calls this when it applies a conf-change entry). Not synced: if
    /// lost, the conf-change entry is replayed after a restart.
    pub fn set_conf_state(&self, conf_state: &ConfState, index: u64) -> Result<()> {
        let mut guard = self.write_meta();
        let mut batch = WriteBatch::default();
        batch.put(CONF_STATE_KEY, encode_conf_state(conf_state, index)?);
        self.write(batch, false)?;
        guard.conf_state = conf_state.clone();
        guard.conf_index = index;
        Ok(())
    }

    /// Saves the state machine's snapshot taken at `index` (whose entry has
    /// `term`), replacing the previous one. Does not touch the log: call
    /// [`Self::compact`] afterwards to drop the entries it covers.
    pub fn save_snapshot(
        &self,
        index: u64,
        term: u64,
        conf_state: &ConfState,
        data: &[u8],
    ) -> Result<()> {
        let mut guard = self.write_meta();
        if index <= guard.snapshot.index {
            return Err(RaftStoreError::SnapshotOutOfDate {
                index,
                first_index: guard.snapshot.index + 1,
            });
        }
        if index > guard.last_index {
            return Err(RaftStoreError::Unavailable {
                index,
                last_index: guard.last_index,
            });
        }
        let log_term = term_locked(&self.db, &guard, index)?;
        if log_term != term {
            return Err(RaftStoreError::TermMismatch {
                index,
                term,
                log_term,
            });
        }
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state.clone());
        let mut batch = WriteBatch::default();
        batch.put(SNAPSHOT_META_KEY, encode(&meta)?);
        batch.put(SNAPSHOT_DATA_KEY, data);
        self.write(batch, true)?;
        guard.snapshot = meta;
        Ok(())
    }

    /// Discards the entries before `compact_index` (raft-rs's convention:
    /// afterwards `first_index() == compact_index`). Entries after the
    /// saved snapshot are never discarded.
    pub fn compact(&self, compact_index: u64) -> Result<()> {
        let mut guard = self.write_meta();
        if compact_index <= guard.first_index() {
            return Ok(());
        }
        if compact_index > guard.last_index + 1 {
            return Err(RaftStoreError::Unavailable {
                index: compact_index,
                last_index: guard.last_index,
            });
        }
        if compact_index - 1 > guard.snapshot.index {
            return Err(RaftStoreError::CompactBeyondSnapshot {
                compact_index,
                snapshot_index: guard.snapshot.index,
            });
        }
        let truncated_term = term_locked(&self.db, &guard, compact_index - 1)?;
        let mut batch = WriteBatch::default();
        batch.delete_range(entry_key(guard.first_index()), entry_key(compact_index));
        batch.put(
            TRUNCATED_KEY,
            truncated_value(compact_index - 1, truncated_term),
        );
        self.write(batch, false)?;
        guard.truncated_index = compact_index - 1;
        guard.truncated_term = truncated_term;
        Ok(())
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.read_meta().hard_state.clone()
    }

    /// The persisted configuration and the log index it took effect at.
    pub fn conf_state(&self) -> (ConfState, u64) {
        let m = self.read_meta();
        (m.conf_state.clone(), m.conf_index)
    }

    /// Metadata of the saved snapshot (index 0 when there is none).
    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.read_meta().snapshot.clone()
    }

    /// The saved snapshot with its data, if there is one.
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>> {
        let m = self.read_meta();
        if m.snapshot.index == 0 {
            return Ok(None);
        }
        let data = self.db.get(SNAPSHOT_DATA_KEY)?.ok_or_else(|| {
            RaftStoreError::Corrupt("snapshot metadata without snapshot data".into())
        })?;
        let mut snap = Snapshot::default();
        snap.set_metadata(m.snapshot.clone());
        snap.data = data.into();
        Ok(Some(snap))
    }

    fn entries_locked(
        &self,
        m: &Meta,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>> {
        if low < m.first_index() {
            return Err(RaftStoreError::Compacted {
                index: low,
                first_index: m.first_index(),
            });
        }
        if high > m.last_index + 1 {
            return Err(RaftStoreError::Unavailable {
                index: high - 1,
                last_index: m.last_index,
            });
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max_size = max_size.filter(|&s| s != raft::NO_LIMIT);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(entry_key(high).to_vec());
        let start = entry_key(low);
        let iter = self
            .db
            .iterator_opt(IteratorMode::From(&start, Direction::Forward), ro);
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let mut expected = low;
        let mut limited = false;
        for item in iter {
            let (key, value) = item?;
            let index = entry_index(&key)
                .ok_or_else(|| RaftStoreError::Corrupt("malformed entry key".into()))?;
            if index != expected {
                return Err(RaftStoreError::Corrupt(format!(
                    "entry {expected} missing (found {index})"
                )));
            }
            let entry: Entry = decode("entry", &value)?;
            if entry.index != index {
                return Err(RaftStoreError::Corrupt(format!(
                    "entry stored under index {index} claims index {}",
                    entry.index
                )));
            }
            // Same measure as raft::util::limit_size (the encoded size), so
            // we can stop reading early; limit_size below is the final word.
            size += value.len() as u64;
            if let Some(max) = max_size {
                if !out.is_empty() && size > max {
                    limited = true;
                    break;
                }
            }
            out.push(entry);
            expected += 1;
        }
        if !limited && expected != high {
            return Err(RaftStoreError::Corrupt(format!(
                "entries [{low}, {high}) incomplete: stopped at {expected}"
            )));
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }
}

fn truncated_value(index: u64, term: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&index.to_be_bytes());
    v[8..].copy_from_slice(&term.to_be_bytes());
    v
}

fn term_locked(db: &DB, m: &Meta, index: u64) -> Result<u64> {
    if index == m.truncated_index {
        return Ok(m.truncated_term);
    }
    if index < m.first_index() {
        return Err(RaftStoreError::Compacted {
            index,
            first_index: m.first_index(),
        });
    }
    if index > m.last_index {
        return Err(RaftStoreError::Unavailable {
            index,
            last_index: m.last_index,
        });
    }
    let bytes = db
        .get_pinned(entry_key(index))?
        .ok_or_else(|| RaftStoreError::Corrupt(format!("entry {index} missing")))?;
    let entry: Entry = decode("entry", &bytes)?;
    Ok(entry.term)
}

fn load_meta(db: &DB) -> Result<Meta> {
    let mut meta = Meta::default();
    if let Some(v) = db.get(HARD_STATE_KEY)? {
        meta.hard_state = decode("hard state", &v)?;
    }
    if let Some(v) = db.get(CONF_STATE_KEY)? {
        if v.len() < 8 {
            return Err(RaftStoreError::Corrupt("conf state: too short".into()));
        }
        meta.conf_index = be_u64("conf state index", &v[..8])?;
        meta.conf_state = decode("conf state", &v[8..])?;
    }
    if let Some(v) = db.get(SNAPSHOT_META_KEY)? {
        meta.snapshot = decode("snapshot metadata", &v)?;
    }
    if let Some(v) = db.get(TRUNCATED_KEY)? {
        if v.len() != 16 {
            return Err(RaftStoreError::Corrupt(
                "truncated state: expected 16 bytes".into(),
            ));
        }
        meta.truncated_index = be_u64("truncated index", &v[..8])?;
        meta.truncated_term = be_u64("truncated term", &v[8..])?;
    }

    // The log must be exactly [truncated + 1, last], without holes at the ends.
    let mut it = db.raw_iterator();
    it.seek(entry_key(0));
    let first = it.key().and_then(entry_index);
    it.status()?;
    it.seek_for_prev(entry_key(u64::MAX));
    let last = it.key().and_then(entry_index);
    it.status()?;
    meta.last_index = match (first, last) {
        (Some(first), Some(last)) => {
            if first != meta.first_index() {
                return Err(RaftStoreError::Corrupt(format!(
                    "first entry is {first}, expected {}",
                    meta.first_index()
                )));
            }
            last
        }
        (None, None) => meta.truncated_index,
        _ => return Err(RaftStoreError::Corrupt("inconsistent entry range".into())),
    };
    if meta.snapshot.index > meta.last_index {
        return Err(RaftStoreError::Corrupt(format!(
            "snapshot at {} is past the last index {}",
            meta.snapshot.index, meta.last_index
        )));
    }
    Ok(meta)
}

impl Storage for RaftLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let m = self.read_meta();
        Ok(RaftState::new(m.hard_state.clone(), m.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let m = self.read_meta();
        Ok(self.entries_locked(&m, low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let m = self.read_meta();
        Ok(term_locked(&self.db, &m, idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read_meta().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read_meta().last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match self.load_snapshot()? {
            Some(snap) if snap.get_metadata().index >= request_index => Ok(snap),
            _ => Err(RaftStoreError::SnapshotUnavailable(request_index).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn all(store: &RaftLogStore) -> Vec<(u64, u64)> {
        let first = store.first_index().unwrap();
        let last = store.last_index().unwrap();
        store
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    fn new_store(dir: &tempfile::TempDir) -> RaftLogStore {
        let s = RaftLogStore::open(dir.path()).unwrap();
        s.initialize(&[1, 2, 3]).unwrap();
        s
    }

    #[test]
    fn initialize_like_mem_storage() {
        let dir = tempfile::tempdir().unwrap();
        let s = RaftLogStore::open(dir.path()).unwrap();
        assert!(!s.is_initialized());
        assert!(!s.initial_state().unwrap().initialized());
        s.initialize(&[1, 2, 3]).unwrap();
        assert!(matches!(
            s.initialize(&[1]),
            Err(RaftStoreError::AlreadyInitialized)
        ));
        let st = s.initial_state().unwrap();
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert!(s.snapshot(0, 2).is_err());
        drop(s);
        let s = RaftLogStore::open(dir.path()).unwrap();
        assert!(s.is_initialized());
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    }

    #[test]
    fn append_overwrite_and_truncate_on_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let s = new_store(&dir);
        let ents: Vec<_> = (1..=5).map(|i| entry(i, 1, b"x")).collect();
        s.append_ready(&ents, None, None, true).unwrap();
        assert_eq!(all(&s), vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);

        // A new leader overwrites from index 3 with a shorter tail.
        s.append_ready(&[entry(3, 2, b"y")], None, None, true)
            .unwrap();
        assert_eq!(all(&s), vec![(1, 1), (2, 1), (3, 2)]);
        assert_eq!(s.last_index().unwrap(), 3);
        assert!(matches!(
            s.term(4),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));

        // Plain append after the end, and overwriting the last one.
        s.append_ready(&[entry(4, 2, b"a"), entry(5, 2, b"b")], None, None, false)
            .unwrap();
        s.append_ready(&[entry(5, 3, b"c")], None, None, false)
            .unwrap();
        assert_eq!(all(&s), vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]);

        // Gaps and non-contiguous batches are refused, and change nothing.
        assert!(s
            .append_ready(&[entry(7, 3, b"")], None, None, false)
            .is_err());
        assert!(s
            .append_ready(&[entry(6, 3, b""), entry(8, 3, b"")], None, None, false)
            .is_err());
        assert_eq!(s.last_index().unwrap(), 5);

        // The truncation survives a reopen.
        drop(s);
        let s = RaftLogStore::open(dir.path()).unwrap();
        assert_eq!(all(&s), vec![(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]);
        let e = s
            .entries(5, 6, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(&e[0].data[..], b"c");
    }

    #[test]
    fn entries_honour_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = new_store(&dir);
        let ents: Vec<_> = (1..=10).map(|i| entry(i, 1, &[0u8; 100])).collect();
        s.append_ready(&ents, None, None, false).unwrap();
        let one = u64::from(ents[0].compute_size());
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(s.entries(1, 11, None, ctx()).unwrap().len(), 10);
        assert_eq!(s.entries(1, 11, raft::NO_LIMIT, ctx()).unwrap().len(), 10);
        assert_eq!(s.entries(1, 11, 0u64, ctx()).unwrap().len(), 1);
        assert_eq!(s.entries(1, 11, one * 3, ctx()).unwrap().len(), 3);
        assert_eq!(s.entries(1, 11, one * 3 + 1, ctx()).unwrap().len(), 3);
        assert_eq!(s.entries(4, 6, None, ctx()).unwrap().len(), 2);
        assert!(s.entries(1, 12, None, ctx()).is_err());
        let mut expected = ents.clone();
        raft::util::limit_size(&mut expected, Some(one * 5 + 7));
        assert_eq!(s.entries(1, 11, one * 5 + 7, ctx()).unwrap(), expected);
    }

    #[test]
    fn hard_state_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = new_store(&dir);
        s.append_ready(&[entry(1, 1, b"a")], Some(&hs(1, 1, 0)), None, true)
            .unwrap();
        s.append_ready(&[], Some(&hs(2, 3, 1)), None, false)
            .unwrap();
        drop(s);
        let s = RaftLogStore::open(dir.path()).unwrap();
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state, hs(2, 3, 1));
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(s.last_index().unwrap(), 1);
    }

    #[test]
    fn snapshot_then_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = new_store(&dir);
        let ents: Vec<_> = (1..=10).map(|i| entry(i, 1 + i / 5, b"e")).collect();
        s.append_ready(&ents, Some(&hs(3, 1, 10)), None, true)
            .unwrap();

        // Entries not covered by a snapshot stay.
        assert!(matches!(
            s.compact(5),
            Err(RaftStoreError::CompactBeyondSnapshot { .. })
        ));
        assert!(matches!(
            s.save_snapshot(7, 9, &ConfState::from((vec![1, 2, 3], vec![])), b"x"),
            Err(RaftStoreError::TermMismatch { .. })
        ));
        let cs = ConfState::from((vec![1, 2, 3], vec![]));
        s.save_snapshot(7, 2, &cs, b"state@7").unwrap();
        s.compact(8).unwrap();
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(7).unwrap(), 2);
        assert!(matches!(
            s.term(6),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(7, 9, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        // Compacting again below is a no-op; older snapshots are refused.
        s.compact(3).unwrap();
        assert!(s.save_snapshot(6, 2, &cs, b"old").is_err());

        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 7);
        assert_eq!(snap.get_metadata().term, 2);
        assert_eq!(&snap.data[..], b"state@7");
        assert!(s.snapshot(8, 2).is_err());

        drop(s);
        let s = RaftLogStore::open(dir.path()).unwrap();
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(s.term(7).unwrap(), 2);
        assert_eq!(all(&s), vec![(8, 2), (9, 2), (10, 3)]);
        let snap = s.load_snapshot().unwrap().unwrap();
        assert_eq!(snap.get_metadata().index, 7);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        assert_eq!(&snap.data[..], b"state@7");
        // Overwriting compacted entries is refused.
        assert!(matches!(
            s.append_ready(&[entry(7, 4, b"")], None, None, false),
            Err(RaftStoreError::Compacted { .. })
        ));
    }

    #[test]
    fn snapshot_from_leader_replaces_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = new_store(&dir);
        let ents: Vec<_> = (1..=3).map(|i| entry(i, 1, b"old")).collect();
        s.append_ready(&ents, Some(&hs(1, 1, 2)), None, true)
            .unwrap();

        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 4;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3, 4], vec![])));
        snap.data = b"leader state".to_vec().into();
        s.append_ready(
            &[entry(21, 4, b"new")],
            Some(&hs(4, 0, 20)),
            Some(&snap),
            true,
        )
        .unwrap();

        let check = |s: &RaftLogStore| {
            assert_eq!(s.first_index().unwrap(), 21);
            assert_eq!(s.last_index().unwrap(), 21);
            assert_eq!(s.term(20).unwrap(), 4);
            assert_eq!(all(s), vec![(21, 4)]);
            let st = s.initial_state().unwrap();
            assert_eq!(st.conf_state.voters, vec![1, 2, 3, 4]);
            assert_eq!(st.hard_state.commit, 20);
            assert_eq!(s.conf_state().1, 20);
            assert_eq!(&s.snapshot(0, 1).unwrap().data[..], b"leader state");
        };
        check(&s);
        drop(s);
        check(&RaftLogStore::open(dir.path()).unwrap());
    }

    #[test]
    fn corrupt_entry_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = new_store(&dir);
        s.append_ready(&[entry(1, 1, b"a"), entry(2, 1, b"b")], None, None, true)
            .unwrap();
        s.db.put(entry_key(2), b"\xff\xff\xff").unwrap();
        assert!(s.term(2).is_err());
        assert!(s
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .is_err());
        s.db.put(HARD_STATE_KEY, b"\x08").unwrap();
        drop(s);
        assert!(matches!(
            RaftLogStore::open(dir.path()),
            Err(RaftStoreError::Corrupt(_))
        ));
    }
}

/// Power loss between and within the store's operations.
///
/// RocksDB does its own file I/O (C++), so it cannot run on the test file
/// system of [`crate::fs::sim`], and the Rust binding has no fault-injection
/// environment. What can be tested is the store's use of RocksDB under
/// RocksDB's own promise: write batches are atomic, the write-ahead log is
/// replayed in order up to the last intact record, and a synced write syncs
/// the log up to it. So after a power loss the database holds the batches
/// of some prefix of those written, at least up to the last synced one.
/// These tests record every batch of a random run of the driver's
/// operations (appends, new terms, conflicting overwrites, commits, snapshot
/// then compaction, snapshot from a leader, configuration changes), rebuild
/// the database from every allowed prefix, reopen the store and check that
/// it is exactly the store as it stood after that batch (nothing synced
/// lost, nothing compacted or overwritten back, the cache equal to the
/// disk) and that its invariants hold.
#[cfg(test)]
mod power_loss_tests {
    use super::*;
    use crate::test_rng::Rng;

    /// Everything the store answers, to compare a reopened store with the
    /// running one.
    #[derive(Debug, Clone, PartialEq)]
    struct View {
        hard_state: HardState,
        conf: (ConfState, u64),
        snapshot: SnapshotMetadata,
        first: u64,
        last: u64,
        before_first_term: u64,
        entries: Vec<Entry>,
    }

    fn view(s: &RaftLogStore) -> View {
        let first = s.first_index().unwrap();
        let last = s.last_index().unwrap();
        View {
            hard_state: s.hard_state(),
            conf: s.conf_state(),
            snapshot: s.snapshot_metadata(),
            first,
            last,
            before_first_term: s.term(first - 1).unwrap(),
            entries: s
                .entries(first, last + 1, None, GetEntriesContext::empty(false))
                .unwrap(),
        }
    }

    fn check_invariants(v: &View) {
        assert!(v.first <= v.last + 1, "{v:?}");
        // Nothing compacted that no snapshot covers.
        assert!(v.first <= v.snapshot.index + 1 || v.snapshot.index == 0 && v.first == 1);
        assert!(v.snapshot.index <= v.hard_state.commit, "{v:?}");
        assert!(v.hard_state.commit <= v.last, "{v:?}");
        assert_eq!(v.entries.len() as u64, v.last + 1 - v.first);
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("{index}@{term}").into_bytes().into(),
            ..Default::default()
        }
    }

    /// One random run; returns the batches written and the store's view
    /// after each.
    fn run(rng: &mut Rng, dir: &Path) -> (Batches, Vec<Option<View>>) {
        let mut store = RaftLogStore::open(dir).unwrap();
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        store.recorded = Some(recorded.clone());
        let voters = vec![1, 2, 3];
        store.initialize(&voters).unwrap();
        let mut views = vec![Some(view(&store))];
        let mut hs = HardState::default();
        let mut voters = voters;
        for _ in 0..rng.range(5, 25) {
            let last = store.last_index().unwrap();
            let first = store.first_index().unwrap();
            match rng.below(7) {
                // The leader (or a follower) appends entries of its term.
                0 | 1 => {
                    hs.term = hs.term.max(1);
                    let n = rng.range(1, 4);
                    let ents: Vec<_> = (last + 1..=last + n).map(|i| entry(i, hs.term)).collect();
                    if rng.one_in(2) {
                        hs.commit = rng.range(hs.commit, last + n);
                    }
                    store.append_ready(&ents, Some(&hs), None, true).unwrap();
                }
                // An election: a new term and a vote, synced.
                2 => {
                    hs.term += 1;
                    hs.vote = rng.range(1, 3);
                    store.append_ready(&[], Some(&hs), None, true).unwrap();
                }
                // A new leader overwrites an uncommitted tail.
                3 if hs.commit < last => {
                    hs.term += 1;
                    let from = rng.range(hs.commit.max(first - 1) + 1, last);
                    let n = rng.range(1, 3);
                    let ents: Vec<_> = (from..from + n).map(|i| entry(i, hs.term)).collect();
                    store.append_ready(&ents, Some(&hs), None, true).unwrap();
                }
                // The commit index moves on (not synced, as the driver does).
                4 if hs.commit < last => {
                    hs.commit = rng.range(hs.commit + 1, last);
                    store.append_ready(&[], Some(&hs), None, false).unwrap();
                }
                // The state machine's snapshot, then compaction.
                5 => {
                    let snap = store.snapshot_metadata().index;
                    if hs.commit > snap && hs.commit >= first {
                        let index = rng.range(snap.max(first - 1) + 1, hs.commit);
                        let term = store.term(index).unwrap();
                        let cs = ConfState::from((voters.clone(), vec![]));
                        store
                            .save_snapshot(index, term, &cs, format!("state@{index}").as_bytes())
                            .unwrap();
                        note(&store, &recorded, &mut views);
                        store.compact(index + 1).unwrap();
                    } else {
                        // A configuration change applied (not synced).
                        voters.push(voters.len() as u64 + 1);
                        let cs = ConfState::from((voters.clone(), vec![]));
                        store.set_conf_state(&cs, hs.commit).unwrap();
                    }
                }
                // A snapshot from the leader replaces the log.
                _ => {
                    let index = last + rng.range(1, 5);
                    hs.term = hs.term.max(1);
                    let mut snap = Snapshot::default();
                    snap.mut_metadata().index = index;
                    snap.mut_metadata().term = hs.term;
                    snap.mut_metadata()
                        .set_conf_state(ConfState::from((voters.clone(), vec![])));
                    snap.data = format!("leader@{index}").into_bytes().into();
                    hs.commit = hs.commit.max(index);
                    let ents: Vec<_> = (index + 1..=index + rng.below(3))
                        .map(|i| entry(i, hs.term))
                        .collect();
                    store
                        .append_ready(&ents, Some(&hs), Some(&snap), true)
                        .unwrap();
                }
            }
            note(&store, &recorded, &mut views);
            hs = store.hard_state();
        }
        let batches = recorded.lock().unwrap().clone();
        assert_eq!(batches.len(), views.len());
        (batches, views)
    }

    /// After each call: the view as of its last batch. A call that wrote
    /// several has no view for the batches before its last (the store's
    /// cache only changes at the end of a call).
    fn note(store: &RaftLogStore, recorded: &Recorded, views: &mut Vec<Option<View>>) {
        let n = recorded.lock().unwrap().len();
        if n > views.len() {
            views.resize(n - 1, None);
            views.push(Some(view(store)));
        }
    }

    #[test]
    fn power_loss_after_any_batch_leaves_the_store_as_it_was_then() {
        let root = crate::fs::sim::scratch_dir();
        let mut cuts = 0;
        for seed in 0..100u64 {
            let mut rng = Rng::new(0x5a5a_0000 ^ seed);
            let (batches, views) = run(&mut rng, &root.path().join(format!("run-{seed}")));
            // The store as of batch k is views[k - 1] (views[0]: initialized).
            let last_synced = batches
                .iter()
                .rposition(|(_, sync)| *sync)
                .map_or(0, |i| i + 1);
            for k in last_synced.max(1)..=batches.len() {
                let dir = root.path().join(format!("cut-{seed}-{k}"));
                {
                    let mut opts = Options::default();
                    opts.create_if_missing(true);
                    let db = DB::open(&opts, &dir).unwrap();
                    for (data, _) in &batches[..k] {
                        db.write(WriteBatch::from_data(data)).unwrap();
                    }
                }
                let store = match RaftLogStore::open(&dir) {
                    Ok(s) => s,
                    Err(e) => panic!("seed {seed}: the store does not open after batch {k}: {e}"),
                };
                let got = view(&store);
                check_invariants(&got);
                if let Some(want) = &views[k - 1] {
                    assert_eq!(
                        &got,
                        want,
                        "seed {seed}, after batch {k} of {}",
                        batches.len()
                    );
                }
                cuts += 1;
            }
        }
        assert!(cuts > 100);
    }
}
