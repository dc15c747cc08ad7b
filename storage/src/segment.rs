//! One log segment: a `.log` file of concatenated v2 record batches plus its
//! sparse offset and time indexes.
//!
//! Reads go through `pread` (`FileExt::read_at`) so a segment can be read
//! through `&self`; appends use plain `write(2)` on an append-mode file and
//! are made durable only by [`Segment::flush`] (on roll, checkpoint, close).
//! Only the 61-byte batch headers are ever parsed; records are not decoded.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, BatchHeader, Origin, HEADER_SIZE};
use crate::fs::{self, File, OpenOptions};
use crate::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use crate::open_files::LazyFile;
use crate::StorageError;

/// Read window used when walking headers near an index entry.
const LOOKUP_WINDOW: usize = 16 * 1024;
/// Read window used when scanning a whole segment.
const SCAN_WINDOW: usize = 1024 * 1024;

/// `<dir>/<base offset, 20 digits>.<ext>`
pub fn segment_file(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// The base offset encoded in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str, ext: &str) -> Option<i64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn file_mtime_ms(file: &File) -> i64 {
    file.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(crate::log::wall_clock_ms, |d| d.as_millis() as i64)
}

/// Serves byte ranges of a file from a cached window, reading ahead so that
/// walking many small headers costs few system calls.
struct ChunkReader<'a> {
    file: &'a File,
    end: u64,
    window: usize,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a File, end: u64, window: usize) -> Self {
        ChunkReader {
            file,
            end,
            window,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// `len` bytes at `pos`, or `None` if they run past the end.
    fn get(&mut self, pos: u64, len: usize) -> Result<Option<&[u8]>, StorageError> {
        if pos.checked_add(len as u64).is_none_or(|e| e > self.end) {
            return Ok(None);
        }
        let cached = pos >= self.start && pos + len as u64 <= self.start + self.buf.len() as u64;
        if !cached {
            let n = (len.max(self.window) as u64).min(self.end - pos) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(Some(&self.buf[at..at + len]))
    }
}

/// What a full scan of the `.log` found.
struct ScanState {
    offset_entries: Vec<OffsetEntry>,
    time_entries: Vec<TimeEntry>,
    bytes_since_index: usize,
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
}

/// One segment of a partition log.
#[derive(Debug)]
pub struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    index_path: PathBuf,
    time_index_path: PathBuf,
    /// The `.log`, open only while in use (see [`crate::open_files`]).
    file: LazyFile,
    size: u64,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    index_interval: usize,
    bytes_since_index: usize,
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    /// When the first batch was appended (for time-based rolling); `None`
    /// while empty. For segments loaded from disk: the file's mtime.
    created_ms: Option<i64>,
    last_modified_ms: i64,
    dirty: bool,
}

impl Segment {
    /// Creates a new empty segment (replacing any files with the same base).
    pub fn create(
        dir: &Path,
        base_offset: i64,
        index_interval: usize,
        now_ms: i64,
    ) -> Result<Self, StorageError> {
        let log_path = segment_file(dir, base_offset, "log");
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&log_path)?;
        file.set_len(0)?;
        let file = LazyFile::opened(log_path.clone(), file);
        let index_path = segment_file(dir, base_offset, "index");
        let time_index_path = segment_file(dir, base_offset, "timeindex");
        Ok(Segment {
            base_offset,
            offset_index: OffsetIndex::create(&index_path)?,
            time_index: TimeIndex::create(&time_index_path)?,
            log_path,
            index_path,
            time_index_path,
            file,
            size: 0,
            index_interval,
            bytes_since_index: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            created_ms: None,
            last_modified_ms: now_ms,
            dirty: true,
        })
    }

    /// Opens an existing segment. Trusts its index files if they are present
    /// and consistent with the `.log` (then only the tail after the last index
    /// entry is scanned); otherwise rebuilds them from the batch headers,
    /// truncating the `.log` at the first broken header.
    pub fn open(dir: &Path, base_offset: i64, index_interval: usize) -> Result<Self, StorageError> {
        let log_path = segment_file(dir, base_offset, "log");
        let file = OpenOptions::new().read(true).append(true).open(&log_path)?;
        let size = file.metadata()?.len();
        let mtime = file_mtime_ms(&file);
        let file = LazyFile::opened(log_path.clone(), file);
        let index_path = segment_file(dir, base_offset, "index");
        let time_index_path = segment_file(dir, base_offset, "timeindex");
        let (offset_index, time_index, loaded) = match (
            OffsetIndex::load(&index_path)?,
            TimeIndex::load(&time_index_path)?,
        ) {
            (Some(o), Some(t)) => (o, t, true),
            _ => (
                OffsetIndex::create(&index_path)?,
                TimeIndex::create(&time_index_path)?,
                false,
            ),
        };
        let mut seg = Segment {
            base_offset,
            log_path,
            index_path,
            time_index_path,
            file,
            size,
            offset_index,
            time_index,
            index_interval,
            bytes_since_index: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            created_ms: (size > 0).then_some(mtime),
            last_modified_ms: mtime,
            dirty: false,
        };
        if !loaded {
            tracing::info!(segment = %seg.log_path.display(), "index files missing or malformed, rebuilding");
            seg.rebuild(false)?;
        } else if let Err(reason) = seg.load_tail()? {
            tracing::warn!(segment = %seg.log_path.display(), %reason, "index files inconsistent with the log, rebuilding");
            seg.rebuild(false)?;
        }
        Ok(seg)
    }

    /// Scans every batch from the start, checking headers and CRCs, truncates
    /// the file at the first torn or corrupt batch and rebuilds both indexes.
    /// Returns the number of bytes dropped.
    pub fn recover(&mut self) -> Result<u64, StorageError> {
        self.rebuild(true)
    }

    fn relative(&self, offset: i64) -> Option<u32> {
        u32::try_from(offset - self.base_offset).ok()
    }

    /// Uses the loaded indexes: checks that they point at real batches, then
    /// scans the batches after the last offset index entry to find the end
    /// offset and max timestamp. `Ok(Err(reason))` if anything is off.
    fn load_tail(&mut self) -> Result<Result<(), String>, StorageError> {
        let start = match self.offset_index.last() {
            None => 0u64,
            Some(e) => u64::from(e.position),
        };
        if let Some(e) = self.offset_index.last() {
            let file = self.file.get()?;
            let mut r = ChunkReader::new(&file, self.size, HEADER_SIZE);
            let Some(hb) = r.get(start, HEADER_SIZE)? else {
                return Ok(Err(format!("offset index points past the end ({start})")));
            };
            match BatchHeader::parse(hb) {
                Ok(h) if h.base_offset == self.base_offset + i64::from(e.relative_offset) => {}
                _ => return Ok(Err(format!("no batch at indexed position {start}"))),
            }
        }
        let (mut max_ts, mut max_off) = match self.time_index.last() {
            Some(t) => (t.timestamp, self.base_offset + i64::from(t.relative_offset)),
            None => (-1, -1),
        };
        let mut next = self.base_offset;
        let mut pos = start;
        let file = self.file.get()?;
        let mut r = ChunkReader::new(&file, self.size, SCAN_WINDOW);
        while pos < self.size {
            let Some(hb) = r.get(pos, HEADER_SIZE)? else {
                return Ok(Err(format!("torn header at {pos}")));
            };
            let h = match BatchHeader::parse(hb) {
                Ok(h) => h,
                Err(e) => return Ok(Err(format!("bad header at {pos}: {e}"))),
            };
            if h.base_offset < next
                || h.last_offset_delta < 0
                || self.relative(h.last_offset()).is_none()
            {
                return Ok(Err(format!("unexpected offsets in batch at {pos}")));
            }
            if pos + h.size() as u64 > self.size {
                return Ok(Err(format!("torn batch at {pos}")));
            }
            if h.max_timestamp > max_ts {
                max_ts = h.max_timestamp;
                max_off = h.base_offset;
            }
            next = h.next_offset();
            pos += h.size() as u64;
        }
        if let Some(t) = self.time_index.last() {
            if self.base_offset + i64::from(t.relative_offset) >= next {
                return Ok(Err("time index points past the end".into()));
            }
        }
        self.next_offset = next;
        self.max_timestamp = max_ts;
        self.offset_of_max_timestamp = max_off;
        self.bytes_since_index = (self.size - start) as usize;
        // The max timestamp above starts from the last time index entry:
        // check that its batch exists and carries that timestamp.
        if let Some(t) = self.time_index.last() {
            if !self.time_entry_matches(&t).unwrap_or(false) {
                return Ok(Err(format!(
                    "time index entry {} at offset {} matches no batch",
                    t.timestamp,
                    self.base_offset + i64::from(t.relative_offset)
                )));
            }
        }
        Ok(Ok(()))
    }

    /// Full scan; see [`Segment::recover`]. Without `verify_crc` only the
    /// header chain is checked (cheap: no record bytes are read).
    fn rebuild(&mut self, verify_crc: bool) -> Result<u64, StorageError> {
        let mut st = ScanState {
            offset_entries: Vec::new(),
            time_entries: Vec::new(),
            bytes_since_index: 0,
            next_offset: self.base_offset,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
        };
        let mut pos = 0u64;
        let mut stop_reason = None;
        {
            let window = if verify_crc {
                SCAN_WINDOW
            } else {
                LOOKUP_WINDOW * 4
            };
            let file = self.file.get()?;
            let mut r = ChunkReader::new(&file, self.size, window);
            while pos < self.size {
                let Some(hb) = r.get(pos, HEADER_SIZE)? else {
                    stop_reason = Some("torn batch header".to_string());
                    break;
                };
                let h = match BatchHeader::parse(hb) {
                    Ok(h) => h,
                    Err(e) => {
                        stop_reason = Some(e.to_string());
                        break;
                    }
                };
                if h.base_offset < st.next_offset
                    || h.last_offset_delta < 0
                    || h.records_count < 0
                    || self.relative(h.last_offset()).is_none()
                    || pos + h.size() as u64 > u64::from(u32::MAX)
                {
                    stop_reason = Some(format!(
                        "batch offsets {}..={} do not follow {}",
                        h.base_offset,
                        h.last_offset(),
                        st.next_offset
                    ));
                    break;
                }
                let Some(whole) = (if verify_crc {
                    r.get(pos, h.size())?
                } else {
                    r.get(pos, HEADER_SIZE)?
                        .filter(|_| pos + h.size() as u64 <= self.size)
                }) else {
                    stop_reason = Some("torn batch".to_string());
                    break;
                };
                if verify_crc {
                    if let Err(e) = batch::validate_batch(whole, Origin::Replica) {
                        stop_reason = Some(e.to_string());
                        break;
                    }
                }
                let rel = (h.base_offset - self.base_offset) as u32;
                if h.max_timestamp > st.max_timestamp {
                    st.max_timestamp = h.max_timestamp;
                    st.offset_of_max_timestamp = h.base_offset;
                }
                if st.bytes_since_index >= self.index_interval {
                    let e = OffsetEntry {
                        relative_offset: rel,
                        position: pos as u32,
                    };
                    if st
                        .offset_entries
                        .last()
                        .is_none_or(|l| e.relative_offset > l.relative_offset)
                    {
                        st.offset_entries.push(e);
                    }
                    if st.max_timestamp >= 0
                        && st
                            .time_entries
                            .last()
                            .is_none_or(|l| st.max_timestamp > l.timestamp)
                    {
                        st.time_entries.push(TimeEntry {
                            timestamp: st.max_timestamp,
                            relative_offset: (st.offset_of_max_timestamp - self.base_offset) as u32,
                        });
                    }
                    st.bytes_since_index = 0;
                }
                st.bytes_since_index += h.size();
                st.next_offset = h.next_offset();
                pos += h.size() as u64;
            }
        }
        let dropped = self.size - pos;
        if dropped > 0 {
            tracing::warn!(
                segment = %self.log_path.display(),
                position = pos,
                dropped_bytes = dropped,
                reason = stop_reason.as_deref().unwrap_or("unknown"),
                "truncating torn or corrupt data at the end of the segment"
            );
            let file = self.file.get()?;
            file.set_len(pos)?;
            file.sync_data()?;
            self.size = pos;
        }
        self.offset_index.rewrite(st.offset_entries)?;
        self.time_index.rewrite(st.time_entries)?;
        self.bytes_since_index = st.bytes_since_index;
        self.next_offset = st.next_offset;
        self.max_timestamp = st.max_timestamp;
        self.offset_of_max_timestamp = st.offset_of_max_timestamp;
        if self.size == 0 {
            self.created_ms = None;
        }
        self.dirty = true;
        Ok(dropped)
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Bytes in the `.log` file.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The offset after the last batch (the base offset when empty).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Largest batch max timestamp in the segment, -1 if none.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// Base offset of the first batch carrying [`Segment::max_timestamp`].
    pub fn offset_of_max_timestamp(&self) -> i64 {
        self.offset_of_max_timestamp
    }

    pub fn created_ms(&self) -> Option<i64> {
        self.created_ms
    }

    pub fn last_modified_ms(&self) -> i64 {
        self.last_modified_ms
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn offset_index(&self) -> &OffsetIndex {
        &self.offset_index
    }

    pub fn time_index(&self) -> &TimeIndex {
        &self.time_index
    }

    /// True if an append whose batches end at `last_offset` would overflow
    /// the 32-bit relative offsets or positions of this segment's indexes.
    pub fn cannot_hold(&self, last_offset: i64, bytes: usize) -> bool {
        self.relative(last_offset).is_none() || self.size + bytes as u64 > u64::from(u32::MAX)
    }

    /// Appends `data`, a run of validated batches whose headers (with their
    /// final offsets, at their positions in `data`) are `batches`.
    pub fn append(
        &mut self,
        data: &[u8],
        batches: &[(usize, BatchHeader)],
        now_ms: i64,
    ) -> Result<(), StorageError> {
        if data.is_empty() {
            return Ok(());
        }
        let start = self.size;
        let file = self.file.get()?;
        if let Err(e) = (&*file).write_all(data) {
            // Do not leave half a batch behind: the file is opened O_APPEND,
            // so the next write would land after it, at a position the
            // indexes do not know.
            return Err(match file.set_len(start) {
                Ok(()) => e.into(),
                Err(cut) => StorageError::LogFailed(format!(
                    "{}: an append failed ({e}) and cutting its partial data back to {start} bytes failed too ({cut})",
                    self.log_path.display()
                )),
            });
        }
        self.size += data.len() as u64;
        self.dirty = true;
        self.created_ms.get_or_insert(now_ms);
        self.last_modified_ms = now_ms;
        let mut index_err = None;
        for (at, h) in batches {
            let pos = start + *at as u64;
            if h.max_timestamp > self.max_timestamp {
                self.max_timestamp = h.max_timestamp;
                self.offset_of_max_timestamp = h.base_offset;
            }
            if self.bytes_since_index >= self.index_interval {
                if let (Some(rel), Ok(pos)) = (self.relative(h.base_offset), u32::try_from(pos)) {
                    let r = self
                        .offset_index
                        .append(rel, pos)
                        .and_then(|()| self.maybe_append_time_entry());
                    if let Err(e) = r {
                        index_err.get_or_insert(e);
                    }
                }
                self.bytes_since_index = 0;
            }
            self.bytes_since_index += h.size();
            self.next_offset = self.next_offset.max(h.next_offset());
        }
        match index_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn maybe_append_time_entry(&mut self) -> Result<(), StorageError> {
        if self.max_timestamp < 0 {
            return Ok(());
        }
        match self.relative(self.offset_of_max_timestamp) {
            Some(rel) => self.time_index.maybe_append(self.max_timestamp, rel),
            None => Ok(()),
        }
    }

    /// Reads up to `len` bytes at `position` (fewer at the end of the file).
    pub fn read(&self, position: u64, len: usize) -> Result<Bytes, StorageError> {
        let end = position.saturating_add(len as u64).min(self.size);
        if position >= end {
            return Ok(Bytes::new());
        }
        let mut buf = vec![0u8; (end - position) as usize];
        self.file.get()?.read_exact_at(&mut buf, position)?;
        Ok(Bytes::from(buf))
    }

    /// Reads the header of the batch at `position`.
    pub fn read_header(&self, position: u64) -> Result<Option<BatchHeader>, StorageError> {
        if position >= self.size {
            return Ok(None);
        }
        let file = self.file.get()?;
        let mut r = ChunkReader::new(&file, self.size, HEADER_SIZE);
        match r.get(position, HEADER_SIZE)? {
            None => Err(self.corrupt(position, "torn header")),
            Some(hb) => BatchHeader::parse(hb)
                .map(Some)
                .map_err(|e| self.corrupt(position, &e.to_string())),
        }
    }

    fn corrupt(&self, position: u64, what: &str) -> StorageError {
        StorageError::CorruptLog(format!(
            "{} at position {position}: {what}",
            self.log_path.display()
        ))
    }

    /// Calls `f(position, header)` for each batch from `position` on, until
    /// it returns false or the segment ends.
    pub fn scan_from(
        &self,
        position: u64,
        window: usize,
        mut f: impl FnMut(u64, &BatchHeader) -> bool,
    ) -> Result<(), StorageError> {
        let file = self.file.get()?;
        let mut r = ChunkReader::new(&file, self.size, window);
        let mut pos = position;
        while pos < self.size {
            let h = match r.get(pos, HEADER_SIZE)? {
                None => return Err(self.corrupt(pos, "torn header")),
                Some(hb) => {
                    BatchHeader::parse(hb).map_err(|e| self.corrupt(pos, &e.to_string()))?
                }
            };
            if !f(pos, &h) {
                break;
            }
            pos += h.size() as u64;
        }
        Ok(())
    }

    /// Calls `f` with the header of every batch whose last offset is >=
    /// `from_offset`.
    pub fn for_each_batch(
        &self,
        from_offset: i64,
        mut f: impl FnMut(&BatchHeader),
    ) -> Result<(), StorageError> {
        let start = match self.find_position(from_offset)? {
            Some((pos, _)) => pos,
            None => return Ok(()),
        };
        self.scan_from(start, 64 * 1024, |_, h| {
            f(h);
            true
        })
    }

    /// Position from which to scan for `offset`, per the offset index, and
    /// the base offset of the batch the index says starts there.
    fn index_position(&self, offset: i64) -> (u64, i64) {
        if offset <= self.base_offset {
            return (0, self.base_offset);
        }
        let rel = u32::try_from(offset - self.base_offset).unwrap_or(u32::MAX);
        self.offset_index
            .lookup(rel)
            .map_or((0, self.base_offset), |e| {
                (
                    u64::from(e.position),
                    self.base_offset + i64::from(e.relative_offset),
                )
            })
    }

    /// [`Segment::scan_from`] the offset index position for `offset`. Only
    /// the last index entry is checked on open, so the one used here is
    /// checked now: if the indexed batch is not at the indexed position (a
    /// damaged index file), the whole segment is scanned instead.
    fn scan_indexed(
        &self,
        offset: i64,
        mut f: impl FnMut(u64, &BatchHeader) -> bool,
    ) -> Result<(), StorageError> {
        let (start, base) = self.index_position(offset);
        if start == 0 {
            return self.scan_from(0, LOOKUP_WINDOW, f);
        }
        let mut checked = false;
        let mut wrong = false;
        let r = self.scan_from(start, LOOKUP_WINDOW, |pos, h| {
            if !checked {
                checked = true;
                if h.base_offset != base {
                    wrong = true;
                    return false;
                }
            }
            f(pos, h)
        });
        if checked && !wrong {
            return r;
        }
        tracing::warn!(
            segment = %self.log_path.display(),
            position = start,
            offset = base,
            "offset index entry does not match the log, scanning the whole segment"
        );
        self.scan_from(0, LOOKUP_WINDOW, f)
    }

    /// Position and header of the first batch whose last offset is >=
    /// `offset` (the batch containing it, or the next one after a gap).
    pub fn find_position(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let mut found = None;
        self.scan_indexed(offset, |pos, h| {
            if h.last_offset() >= offset {
                found = Some((pos, *h));
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    /// True if the time index entry `e` is what it claims to be: the first
    /// batch carrying the timestamp `e.timestamp` starts at its offset.
    fn time_entry_matches(&self, e: &TimeEntry) -> Result<bool, StorageError> {
        let offset = self.base_offset + i64::from(e.relative_offset);
        Ok(matches!(
            self.find_position(offset)?,
            Some((_, h)) if h.base_offset == offset && h.max_timestamp == e.timestamp
        ))
    }

    /// Header of the first batch whose max timestamp is >= `timestamp`,
    /// among the batches holding offsets from `min_offset` on (the log start).
    pub fn find_timestamp(
        &self,
        timestamp: i64,
        min_offset: i64,
    ) -> Result<Option<BatchHeader>, StorageError> {
        if self.max_timestamp < timestamp {
            return Ok(None);
        }
        // Every batch up to the entry's has a smaller max timestamp, if the
        // entry is sound; a damaged one sends the scan to the start.
        let start = match self.time_index.lookup_below(timestamp) {
            Some(e) => {
                let offset = self.base_offset + i64::from(e.relative_offset);
                match self.find_position(offset)? {
                    Some((pos, h)) if h.base_offset == offset && h.max_timestamp == e.timestamp => {
                        pos
                    }
                    _ => {
                        tracing::warn!(
                            segment = %self.log_path.display(),
                            offset,
                            timestamp = e.timestamp,
                            "time index entry does not match the log, scanning the whole segment"
                        );
                        0
                    }
                }
            }
            None => 0,
        };
        // Positions grow with offsets: skip what lies below `min_offset`.
        let start = match min_offset > self.base_offset {
            true => match self.find_position(min_offset)? {
                Some((pos, _)) => start.max(pos),
                None => return Ok(None),
            },
            false => start,
        };
        let mut found = None;
        self.scan_from(start, LOOKUP_WINDOW, |_, h| {
            if h.max_timestamp >= timestamp {
                found = Some(*h);
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    /// The largest batch max timestamp among the batches wholly below `end`,
    /// and the base offset of the first batch carrying it.
    pub fn max_timestamp_below(&self, end: i64) -> Result<Option<(i64, i64)>, StorageError> {
        if self.next_offset <= end {
            return Ok((self.max_timestamp >= 0)
                .then_some((self.max_timestamp, self.offset_of_max_timestamp)));
        }
        // A time index entry is the max timestamp of every batch up to its
        // offset: start from the last one below `end`, and scan the rest.
        let entries = self.time_index.entries();
        let mut below =
            entries.partition_point(|e| self.base_offset + i64::from(e.relative_offset) < end);
        let mut best: Option<(i64, i64)> = None;
        let mut start = 0;
        while let Some(e) = below.checked_sub(1).map(|i| entries[i]) {
            let offset = self.base_offset + i64::from(e.relative_offset);
            match self.find_position(offset)? {
                // The entry's batch straddles `end`: the one before does not.
                Some((_, h)) if h.base_offset == offset && h.last_offset() >= end => below -= 1,
                Some((pos, h)) if h.base_offset == offset && h.max_timestamp == e.timestamp => {
                    best = Some((e.timestamp, offset));
                    start = pos;
                    break;
                }
                // A damaged entry: scan the whole segment.
                _ => break,
            }
        }
        self.scan_from(start, LOOKUP_WINDOW, |_, h| {
            if h.last_offset() >= end {
                return false;
            }
            if h.max_timestamp >= 0 && best.is_none_or(|(ts, _)| h.max_timestamp > ts) {
                best = Some((h.max_timestamp, h.base_offset));
            }
            true
        })?;
        Ok(best)
    }

    /// Drops every batch whose last offset is >= `offset` (so a batch that
    /// straddles `offset` goes entirely). Returns the bytes removed.
    pub fn truncate_to(&mut self, offset: i64) -> Result<u64, StorageError> {
        let Some((pos, h)) = self.find_position(offset)? else {
            return Ok(0);
        };
        let removed = self.size - pos;
        self.file.get()?.set_len(pos)?;
        self.size = pos;
        self.dirty = true;
        self.offset_index.truncate_to_position(pos)?;
        self.time_index
            .truncate_to_offset(self.relative(h.base_offset).unwrap_or(u32::MAX))?;
        if let Err(reason) = self.load_tail()? {
            tracing::warn!(segment = %self.log_path.display(), %reason, "rebuilding indexes after truncation");
            self.rebuild(false)?;
        }
        if self.size == 0 {
            self.created_ms = None;
        }
        // A truncation is made durable at once: otherwise a power loss can
        // bring the removed batches back after new ones were written over
        // them elsewhere (the leader's, or the segments after this one).
        self.flush()?;
        Ok(removed)
    }

    /// Called when the segment stops being the active one: records the final
    /// max timestamp in the time index and syncs everything.
    pub fn seal(&mut self) -> Result<(), StorageError> {
        self.maybe_append_time_entry()?;
        self.dirty = true;
        self.flush()
    }

    /// Handles to fsync everything written since the last flush through, so
    /// the fsync can run without the log's lock. The segment counts as
    /// flushed from now on; [`Segment::mark_unflushed`] undoes that if the
    /// fsync then fails.
    pub fn take_unflushed(&mut self) -> Result<Vec<Arc<File>>, StorageError> {
        if !self.dirty {
            return Ok(Vec::new());
        }
        let mut handles = vec![self.file.get()?];
        handles.extend(self.offset_index.sync_handle()?);
        handles.extend(self.time_index.sync_handle()?);
        self.dirty = false;
        Ok(handles)
    }

    pub fn mark_unflushed(&mut self) {
        self.dirty = true;
    }

    /// fsyncs the `.log` and the indexes if anything was written since the
    /// last flush.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        if self.dirty {
            self.file.get()?.sync_data()?;
            self.offset_index.flush()?;
            self.time_index.flush()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Removes the segment's files.
    pub fn delete(self) -> Result<(), StorageError> {
        let Segment {
            file,
            log_path,
            offset_index,
            time_index,
            ..
        } = self;
        file.close();
        offset_index.delete()?;
        time_index.delete()?;
        match fs::remove_file(&log_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Keeps the `.log` open until the segment is dropped, even beyond the
    /// budget of open files: its name is about to go to another file.
    pub fn pin_open(&self) -> Result<(), StorageError> {
        Ok(self.file.pin()?)
    }

    /// Paths of the index files.
    pub fn index_paths(&self) -> (&Path, &Path) {
        (&self.index_path, &self.time_index_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;

    fn batch_at(base: i64, n: usize, ts: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new(ts).base_offset(base);
        for i in 0..n {
            b = b.record(ts + i as i64, None, Some(&[7u8; 100]));
        }
        b.build()
    }

    fn append(seg: &mut Segment, bytes: &[u8]) {
        let hs = batch::validate_all(bytes, Origin::Replica).unwrap();
        seg.append(bytes, &hs, 0).unwrap();
    }

    #[test]
    fn file_names() {
        assert_eq!(
            segment_file(Path::new("/x"), 42, "log"),
            Path::new("/x/00000000000000000042.log")
        );
        assert_eq!(
            parse_segment_file_name("00000000000000000042.log", "log"),
            Some(42)
        );
        assert_eq!(
            parse_segment_file_name("00000000000000000042.index", "log"),
            None
        );
        assert_eq!(parse_segment_file_name("42.log", "log"), None);
    }

    #[test]
    fn lookups_use_the_index_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 100, 1024, 0).unwrap();
        let mut positions = Vec::new();
        let mut off = 100;
        for i in 0..200 {
            positions.push((off, seg.size()));
            append(&mut seg, &batch_at(off, 3, 1000 + i * 10));
            off += 3;
        }
        assert_eq!(seg.next_offset(), 700);
        assert!(seg.offset_index().entries().len() > 10);
        for &(o, p) in &positions {
            for d in 0..3 {
                let (pos, h) = seg.find_position(o + d).unwrap().unwrap();
                assert_eq!((pos, h.base_offset), (p, o));
            }
        }
        assert!(seg.find_position(700).unwrap().is_none());
        // Timestamps: batch i has 1000 + 10 i .. + 2.
        let h = seg.find_timestamp(1055, 0).unwrap().unwrap();
        assert_eq!(h.base_offset, 100 + 6 * 3);
        assert_eq!(seg.find_timestamp(0, 0).unwrap().unwrap().base_offset, 100);
        assert!(seg.find_timestamp(1000 + 1990 + 3, 0).unwrap().is_none());
        assert_eq!(seg.max_timestamp(), 1000 + 1990 + 2);
        seg.seal().unwrap();
        let entries = seg.offset_index().entries().to_vec();
        drop(seg);

        let seg = Segment::open(dir.path(), 100, 1024).unwrap();
        assert_eq!(seg.offset_index().entries(), &entries[..]);
        assert_eq!(seg.next_offset(), 700);
        assert_eq!(seg.max_timestamp(), 1000 + 1990 + 2);
        assert_eq!(seg.offset_of_max_timestamp(), 697);
    }

    #[test]
    fn recover_truncates_garbage_and_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 256, 0).unwrap();
        for i in 0..20 {
            append(&mut seg, &batch_at(i * 2, 2, 5));
        }
        let good = seg.size();
        (&*seg.file.get().unwrap()).write_all(&[0xab; 100]).unwrap();
        seg.size += 100;
        assert_eq!(seg.recover().unwrap(), 100);
        assert_eq!(seg.size(), good);
        assert_eq!(seg.next_offset(), 40);
        assert_eq!(seg.find_position(39).unwrap().unwrap().1.base_offset, 38);
    }

    #[test]
    fn truncate_to_drops_straddling_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 0, 100, 0).unwrap();
        for i in 0..50 {
            append(&mut seg, &batch_at(i * 4, 4, 10 * i));
        }
        seg.truncate_to(101).unwrap();
        assert_eq!(seg.next_offset(), 100);
        assert_eq!(seg.max_timestamp(), 10 * 24 + 3);
        assert!(seg.offset_index().last().unwrap().relative_offset < 100);
        seg.truncate_to(0).unwrap();
        assert!(seg.is_empty());
        assert_eq!(seg.next_offset(), 0);
        assert_eq!(seg.max_timestamp(), -1);
    }
}
