//! Kafka RecordBatch v2 (magic 2): the 61-byte header, validation, and the
//! two in-place patches the broker makes (base offset, leader epoch).
//!
//! ```text
//! off len field                 off len field
//!   0   8 baseOffset             27   8 baseTimestamp
//!   8   4 batchLength            35   8 maxTimestamp
//!  12   4 partitionLeaderEpoch   43   8 producerId
//!  16   1 magic                  51   2 producerEpoch
//!  17   4 crc (CRC32C, 21..end)  53   4 baseSequence
//!  21   2 attributes             57   4 recordsCount
//!  23   4 lastOffsetDelta        61     records...
//! ```
//!
//! Individual records are never decoded here: validation only checks that the
//! header is self-consistent and that the CRC matches. Compressed batches are
//! stored exactly as received.

use crate::StorageError;

/// Size of the v2 batch header.
pub const HEADER_SIZE: usize = 61;
/// baseOffset + batchLength: the bytes not counted by `batchLength`.
pub const LOG_OVERHEAD: usize = 12;
/// The only message format this log stores.
pub const MAGIC_V2: i8 = 2;
/// Smallest legal `batchLength` (a header with no records).
pub const MIN_BATCH_LENGTH: i32 = (HEADER_SIZE - LOG_OVERHEAD) as i32;
/// A record needs at least 7 bytes (length, attributes, timestamp delta,
/// offset delta, key length, value length, header count: one byte each).
const MIN_RECORD_SIZE: usize = 7;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_MASK: i16 = 0x08;
const TRANSACTIONAL_MASK: i16 = 0x10;
const CONTROL_MASK: i16 = 0x20;
/// KIP-534: the base timestamp holds the time after which the batch's
/// tombstones may be removed by compaction.
const DELETE_HORIZON_MASK: i16 = 0x40;
/// none, gzip, snappy, lz4, zstd.
const MAX_COMPRESSION_CODEC: u8 = 4;

/// The parsed 61-byte header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Rejects anything that is not magic 2, with the error the client expects:
/// the old formats are well-formed but unsupported, any other value is junk.
fn check_magic(magic: i8) -> Result<(), StorageError> {
    match magic {
        MAGIC_V2 => Ok(()),
        0 | 1 => Err(StorageError::InvalidRecord(format!(
            "message format v{magic} is not supported, only v2 record batches"
        ))),
        m => Err(StorageError::CorruptBatch(format!(
            "unknown magic byte {m}"
        ))),
    }
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Checks the length of `buf`,
    /// the magic byte and that `batchLength` is at least a header; does not
    /// check the CRC or that the whole batch is present (see
    /// [`validate_batch`]).
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, StorageError> {
        if buf.len() < HEADER_SIZE {
            // The magic byte sits at the same place in every format.
            if buf.len() > MAGIC {
                check_magic(buf[MAGIC] as i8)?;
            }
            return Err(StorageError::CorruptBatch(format!(
                "{} bytes is too short for a record batch header",
                buf.len()
            )));
        }
        check_magic(buf[MAGIC] as i8)?;
        let batch_length = i32_at(buf, BATCH_LENGTH);
        if batch_length < MIN_BATCH_LENGTH {
            return Err(StorageError::CorruptBatch(format!(
                "batch length {batch_length} is smaller than a batch header"
            )));
        }
        Ok(BatchHeader {
            base_offset: i64_at(buf, BASE_OFFSET),
            batch_length,
            partition_leader_epoch: i32_at(buf, PARTITION_LEADER_EPOCH),
            magic: buf[MAGIC] as i8,
            crc: u32_at(buf, CRC),
            attributes: i16_at(buf, ATTRIBUTES),
            last_offset_delta: i32_at(buf, LAST_OFFSET_DELTA),
            base_timestamp: i64_at(buf, BASE_TIMESTAMP),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP),
            producer_id: i64_at(buf, PRODUCER_ID),
            producer_epoch: i16_at(buf, PRODUCER_EPOCH),
            base_sequence: i32_at(buf, BASE_SEQUENCE),
            records_count: i32_at(buf, RECORDS_COUNT),
        })
    }

    /// Total size of the batch in bytes, header included.
    pub fn size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(MIN_BATCH_LENGTH) as usize
    }

    /// Offset of the last record (base offset + last offset delta).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta.max(0))
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Number of offsets this batch occupies (last offset delta + 1).
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta.max(0)) + 1
    }

    /// Compression codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes & COMPRESSION_MASK) as u8
    }

    /// True if timestamps are LogAppendTime, false for CreateTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_MASK != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_MASK != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_MASK != 0
    }

    /// The time after which compaction may remove this batch's tombstones,
    /// once a cleaner has set it (KIP-534: kept in the base timestamp).
    pub fn delete_horizon_ms(&self) -> Option<i64> {
        (self.attributes & DELETE_HORIZON_MASK != 0).then_some(self.base_timestamp)
    }

    /// True for batches written by an idempotent or transactional producer.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Sequence number of the last record, wrapping after `i32::MAX` as
    /// Kafka does.
    pub fn last_sequence(&self) -> i32 {
        increment_sequence(self.base_sequence, self.last_offset_delta.max(0))
    }
}

/// `seq + inc`, wrapping to 0 after `i32::MAX` (Kafka's sequence space).
pub fn increment_sequence(seq: i32, inc: i32) -> i32 {
    if seq > i32::MAX - inc {
        inc - (i32::MAX - seq) - 1
    } else {
        seq + inc
    }
}

/// CRC32C of a whole batch as stored in its header (bytes 21..end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES.min(batch.len())..])
}

/// How strictly to check a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From a producing client: must be a plain, non-empty, self-consistent
    /// batch (Kafka's LogValidator rules for client batches).
    Client,
    /// From the partition leader or the log itself: structural checks only
    /// (compaction on other brokers may leave gaps in a batch).
    Replica,
}

/// Validates the batch at the start of `buf`: header, presence of the whole
/// batch, CRC, and header consistency for `origin`. Returns the header; the
/// batch occupies `buf[..header.size()]`.
pub fn validate_batch(buf: &[u8], origin: Origin) -> Result<BatchHeader, StorageError> {
    if buf.len() < LOG_OVERHEAD {
        return Err(StorageError::CorruptBatch(format!(
            "{} trailing bytes do not hold a record batch",
            buf.len()
        )));
    }
    let h = BatchHeader::parse(buf)?;
    let size = LOG_OVERHEAD as u64 + h.batch_length as u64;
    if size > buf.len() as u64 {
        return Err(StorageError::CorruptBatch(format!(
            "batch length {} runs past the end of the {} available bytes",
            h.batch_length,
            buf.len() - LOG_OVERHEAD
        )));
    }
    let size = size as usize;
    let crc = compute_crc(&buf[..size]);
    if crc != h.crc {
        return Err(StorageError::CorruptBatch(format!(
            "CRC mismatch: header says {:#010x}, computed {crc:#010x}",
            h.crc
        )));
    }
    if h.compression() > MAX_COMPRESSION_CODEC {
        return Err(StorageError::CorruptBatch(format!(
            "unknown compression codec {}",
            h.compression()
        )));
    }
    if h.records_count < 0 || h.last_offset_delta < 0 {
        return Err(StorageError::InvalidRecord(format!(
            "negative record count {} or last offset delta {}",
            h.records_count, h.last_offset_delta
        )));
    }
    match origin {
        Origin::Client => {
            if h.records_count == 0 {
                return Err(StorageError::InvalidRecord("empty record batch".into()));
            }
            if h.last_offset_delta != h.records_count - 1 {
                return Err(StorageError::InvalidRecord(format!(
                    "record count {} does not match last offset delta {}",
                    h.records_count, h.last_offset_delta
                )));
            }
            if h.compression() == 0
                && (h.records_count as usize).saturating_mul(MIN_RECORD_SIZE) > size - HEADER_SIZE
            {
                return Err(StorageError::InvalidRecord(format!(
                    "{} records cannot fit in {} bytes",
                    h.records_count,
                    size - HEADER_SIZE
                )));
            }
            if h.is_control() {
                return Err(StorageError::InvalidRecord(
                    "clients may not write control batches".into(),
                ));
            }
            if h.has_producer_id() && h.base_sequence < 0 {
                return Err(StorageError::InvalidRecord(format!(
                    "producer id {} with invalid base sequence {}",
                    h.producer_id, h.base_sequence
                )));
            }
        }
        Origin::Replica => {
            if h.records_count > 0 && h.records_count - 1 > h.last_offset_delta {
                return Err(StorageError::InvalidRecord(format!(
                    "record count {} exceeds the offset range {}",
                    h.records_count,
                    i64::from(h.last_offset_delta) + 1
                )));
            }
        }
    }
    Ok(h)
}

/// Walks a buffer of concatenated batches, validating each one. Yields
/// `(position in the buffer, header)`; after the first error it yields
/// nothing more.
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    origin: Origin,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(buf: &'a [u8], origin: Origin) -> Self {
        BatchIter {
            buf,
            pos: 0,
            origin,
            failed: false,
        }
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(usize, BatchHeader), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        match validate_batch(&self.buf[self.pos..], self.origin) {
            Ok(h) => {
                let at = self.pos;
                self.pos += h.size();
                Some(Ok((at, h)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Validates every batch in `buf`; all or nothing.
pub fn validate_all(buf: &[u8], origin: Origin) -> Result<Vec<(usize, BatchHeader)>, StorageError> {
    BatchIter::new(buf, origin).collect()
}

/// Overwrites the base offset of the batch at the start of `batch`. The base
/// offset is not covered by the CRC.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites the partition leader epoch of the batch at the start of
/// `batch`. Not covered by the CRC either.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Builds simple uncompressed v2 batches. Meant for tests and tools; the
/// broker never re-encodes client batches.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    base_offset: i64,
    partition_leader_epoch: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: i16,
    count: i32,
    records: Vec<u8>,
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

impl BatchBuilder {
    /// A batch without producer id whose first record has `base_timestamp`.
    pub fn new(base_timestamp: i64) -> Self {
        BatchBuilder {
            base_offset: 0,
            partition_leader_epoch: -1,
            base_timestamp,
            max_timestamp: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: 0,
            count: 0,
            records: Vec::new(),
        }
    }

    /// Marks the batch as written by idempotent producer `id`.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn base_offset(mut self, base_offset: i64) -> Self {
        self.base_offset = base_offset;
        self
    }

    pub fn leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Adds a record with the next offset delta.
    pub fn record(mut self, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Self {
        let mut body = Vec::new();
        body.push(0u8); // record attributes
        put_varint(&mut body, timestamp - self.base_timestamp);
        put_varint(&mut body, i64::from(self.count));
        put_bytes(&mut body, key);
        put_bytes(&mut body, value);
        put_varint(&mut body, 0); // no headers
        put_varint(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(&body);
        self.count += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
        self
    }

    /// Encodes the batch, CRC included.
    pub fn build(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_SIZE + self.records.len());
        b.extend_from_slice(&self.base_offset.to_be_bytes());
        let len = (HEADER_SIZE - LOG_OVERHEAD + self.records.len()) as i32;
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        b.push(MAGIC_V2 as u8);
        b.extend_from_slice(&[0; 4]); // crc, filled below
        b.extend_from_slice(&self.attributes.to_be_bytes());
        b.extend_from_slice(&(self.count - 1).max(0).to_be_bytes());
        b.extend_from_slice(&self.base_timestamp.to_be_bytes());
        let max_ts = if self.count == 0 {
            self.base_timestamp
        } else {
            self.max_timestamp
        };
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&self.producer_id.to_be_bytes());
        b.extend_from_slice(&self.producer_epoch.to_be_bytes());
        b.extend_from_slice(&self.base_sequence.to_be_bytes());
        b.extend_from_slice(&self.count.to_be_bytes());
        b.extend_from_slice(&self.records);
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }
}

/// One record of an uncompressed batch, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub attributes: u8,
    pub timestamp_delta: i64,
    pub offset_delta: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's bytes after its timestamp delta (offset delta, key,
    /// value, headers), to copy unchanged when re-encoding.
    pub tail: &'a [u8],
}

fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Option<Option<&'a [u8]>> {
    let len = read_varint(buf, pos)?;
    if len < 0 {
        return Some(None);
    }
    let end = pos.checked_add(usize::try_from(len).ok()?)?;
    let b = buf.get(*pos..end)?;
    *pos = end;
    Some(Some(b))
}

/// Decodes the records of a whole uncompressed batch. `None` if the batch is
/// compressed or its records do not parse (the caller must then keep it as
/// it is).
pub fn records(batch: &[u8]) -> Option<Vec<RecordView<'_>>> {
    let header = BatchHeader::parse(batch).ok()?;
    let mut out = Vec::with_capacity(usize::try_from(header.records_count).ok()?.min(4096));
    visit_records(batch, |record| {
        out.push(record);
        true
    })?;
    Some(out)
}

/// Calls `visit` with each record of an uncompressed batch, in order, until
/// it returns false. Returns whether every record was visited; `None` if the
/// batch is compressed or a record does not parse.
fn visit_records<'a>(
    batch: &'a [u8],
    mut visit: impl FnMut(RecordView<'a>) -> bool,
) -> Option<bool> {
    let header = BatchHeader::parse(batch).ok()?;
    if header.compression() != 0 || header.size() > batch.len() {
        return None;
    }
    let body = &batch[..header.size()];
    let mut pos = HEADER_SIZE;
    for _ in 0..header.records_count {
        let length = usize::try_from(read_varint(body, &mut pos)?).ok()?;
        let end = pos.checked_add(length)?;
        let rec = body.get(pos..end)?;
        let mut at = 1usize;
        let attributes = *rec.first()?;
        let timestamp_delta = read_varint(rec, &mut at)?;
        let tail_start = at;
        let offset_delta = read_varint(rec, &mut at)?;
        let key = read_bytes(rec, &mut at)?;
        let value = read_bytes(rec, &mut at)?;
        pos = end;
        let more = visit(RecordView {
            attributes,
            timestamp_delta,
            offset_delta,
            key,
            value,
            tail: &rec[tail_start..],
        });
        if !more {
            return Some(false);
        }
    }
    (pos == body.len()).then_some(true)
}

/// Appends `record` to `out` as a record of a batch whose base timestamp
/// is `base_timestamp`, keeping its absolute timestamp `timestamp`.
pub fn encode_record(
    out: &mut Vec<u8>,
    record: &RecordView<'_>,
    timestamp: i64,
    base_timestamp: i64,
) {
    let mut delta = Vec::with_capacity(10);
    put_varint(&mut delta, timestamp.wrapping_sub(base_timestamp));
    let len = 1 + delta.len() + record.tail.len();
    put_varint(out, len as i64);
    out.push(record.attributes);
    out.extend_from_slice(&delta);
    out.extend_from_slice(record.tail);
}

/// Re-encodes the header of `original` around new `records` (already
/// encoded, `count` of them), keeping its offsets, producer id, epoch and
/// sequence, leader epoch and flags, as Kafka's cleaner does: the last
/// offset (and so the last sequence) survives even if its record was
/// removed. `delete_horizon_ms` sets the KIP-534 flag; the base timestamp
/// is then the horizon and `records` must be encoded relative to it.
pub fn rebuild_batch(
    original: &BatchHeader,
    base_timestamp: i64,
    max_timestamp: i64,
    delete_horizon: bool,
    count: i32,
    records: &[u8],
) -> Vec<u8> {
    let mut attributes = original.attributes;
    if delete_horizon {
        attributes |= DELETE_HORIZON_MASK;
    }
    let mut b = Vec::with_capacity(HEADER_SIZE + records.len());
    b.extend_from_slice(&original.base_offset.to_be_bytes());
    let len = (HEADER_SIZE - LOG_OVERHEAD + records.len()) as i32;
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&original.partition_leader_epoch.to_be_bytes());
    b.push(MAGIC_V2 as u8);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&attributes.to_be_bytes());
    b.extend_from_slice(&original.last_offset_delta.to_be_bytes());
    b.extend_from_slice(&base_timestamp.to_be_bytes());
    b.extend_from_slice(&max_timestamp.to_be_bytes());
    b.extend_from_slice(&original.producer_id.to_be_bytes());
    b.extend_from_slice(&original.producer_epoch.to_be_bytes());
    b.extend_from_slice(&original.base_sequence.to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(records);
    let crc = compute_crc(&b);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

/// True if an uncompressed batch holds a record without a key (compacted
/// topics refuse them). Compressed batches are not read.
pub fn has_keyless_record(batch: &[u8]) -> bool {
    // On the produce path of compacted topics: stop at the first keyless
    // record, and build no list of records.
    let mut keyless = false;
    visit_records(batch, |record| {
        keyless = record.key.is_none();
        !keyless
    });
    keyless
}

/// Reads one zigzag varint (Kafka's record encoding) at `*pos`.
fn read_varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut raw: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    None
}

/// The offset and timestamp of the first record in an uncompressed,
/// create-time batch whose timestamp is at least `target`: what ListOffsets
/// by timestamp answers. Only the record prefixes (length, attributes,
/// timestamp and offset deltas) are read. `None` for compressed or
/// log-append-time batches, or when no record qualifies. Records below
/// `min_offset` (the log start) are passed over.
pub fn first_record_at_or_after(batch: &[u8], target: i64, min_offset: i64) -> Option<(i64, i64)> {
    let header = BatchHeader::parse(batch).ok()?;
    if header.compression() != 0 || header.is_log_append_time() {
        return None;
    }
    let end = (header.batch_length as usize)
        .checked_add(12)?
        .min(batch.len());
    let mut pos = HEADER_SIZE;
    for _ in 0..header.records_count {
        let length = usize::try_from(read_varint(batch, &mut pos)?).ok()?;
        let record_end = pos.checked_add(length)?;
        if record_end > end {
            return None;
        }
        let mut at = pos + 1; // skip the record's attributes
        let timestamp = header
            .base_timestamp
            .checked_add(read_varint(batch, &mut at)?)?;
        let offset = header
            .base_offset
            .checked_add(read_varint(batch, &mut at)?)?;
        if timestamp >= target && offset >= min_offset {
            return Some((offset, timestamp));
        }
        pos = record_end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(1000);
        for i in 0..n {
            b = b.record(1000 + i as i64, Some(b"k"), Some(b"value"));
        }
        b.build()
    }

    #[test]
    fn parse_and_validate_built_batch() {
        let b = batch(3);
        let h = validate_batch(&b, Origin::Client).unwrap();
        assert_eq!(h.size(), b.len());
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.max_timestamp, 1002);
        assert_eq!(h.magic, 2);
        assert!(!h.has_producer_id());
    }

    #[test]
    fn patching_offset_and_epoch_keeps_crc_valid() {
        let mut b = batch(2);
        set_base_offset(&mut b, 12345);
        set_partition_leader_epoch(&mut b, 7);
        let h = validate_batch(&b, Origin::Client).unwrap();
        assert_eq!(h.base_offset, 12345);
        assert_eq!(h.partition_leader_epoch, 7);
        assert_eq!(h.last_offset(), 12346);
    }

    #[test]
    fn rejects_bad_crc_magic_length_and_counts() {
        let mut b = batch(2);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            validate_batch(&b, Origin::Client),
            Err(StorageError::CorruptBatch(_))
        ));

        let mut b = batch(2);
        b[MAGIC] = 1;
        assert!(matches!(
            validate_batch(&b, Origin::Client),
            Err(StorageError::InvalidRecord(_))
        ));
        b[MAGIC] = 0;
        assert!(matches!(
            validate_batch(&b, Origin::Client),
            Err(StorageError::InvalidRecord(_))
        ));
        b[MAGIC] = 9;
        assert!(matches!(
            validate_batch(&b, Origin::Client),
            Err(StorageError::CorruptBatch(_))
        ));

        let mut b = batch(2);
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&10_000i32.to_be_bytes());
        assert!(matches!(
            validate_batch(&b, Origin::Client),
            Err(StorageError::CorruptBatch(_))
        ));
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&3i32.to_be_bytes());
        assert!(matches!(
            validate_batch(&b, Origin::Client),
            Err(StorageError::CorruptBatch(_))
        ));
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate_batch(&b, Origin::Client),
            Err(StorageError::CorruptBatch(_))
        ));

        // Count not matching the last offset delta; CRC recomputed so only the
        // count check can fail.
        let mut b = batch(2);
        b[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&5i32.to_be_bytes());
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_batch(&b, Origin::Client),
            Err(StorageError::InvalidRecord(_))
        ));

        assert!(matches!(
            validate_batch(&b[..30], Origin::Client),
            Err(StorageError::CorruptBatch(_))
        ));
        assert!(matches!(
            validate_batch(&b[..5], Origin::Client),
            Err(StorageError::CorruptBatch(_))
        ));
    }

    #[test]
    fn iterator_walks_and_stops_at_garbage() {
        let mut buf = batch(1);
        buf.extend_from_slice(&batch(4));
        let hs = validate_all(&buf, Origin::Client).unwrap();
        assert_eq!(hs.len(), 2);
        assert_eq!(hs[1].0, hs[0].1.size());
        buf.extend_from_slice(&[1, 2, 3]);
        let items: Vec<_> = BatchIter::new(&buf, Origin::Client).collect();
        assert_eq!(items.len(), 3);
        assert!(items[2].is_err());
        assert!(validate_all(&buf, Origin::Client).is_err());
    }

    #[test]
    fn sequence_wraps() {
        assert_eq!(increment_sequence(5, 3), 8);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u64;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = validate_all(&buf, Origin::Replica);
            let _ = BatchHeader::parse(&buf);
        }
    }

    #[test]
    fn rebuilding_with_a_delete_horizon_keeps_offsets_timestamps_and_producer() {
        let b = BatchBuilder::new(1000)
            .producer(9, 2, 40)
            .base_offset(100)
            .record(1000, Some(b"a"), Some(b"1"))
            .record(1007, Some(b"b"), None)
            .record(1003, Some(b"c"), Some(b"3"))
            .build();
        let h = validate_batch(&b, Origin::Replica).unwrap();
        let rs = records(&b).unwrap();
        assert_eq!(rs.len(), 3);
        assert_eq!((rs[1].key, rs[1].value), (Some(&b"b"[..]), None));
        // Keep the last two, with the horizon as the base timestamp.
        let horizon = 50_000;
        let mut body = Vec::new();
        for r in &rs[1..] {
            encode_record(&mut body, r, h.base_timestamp + r.timestamp_delta, horizon);
        }
        let rebuilt = rebuild_batch(&h, horizon, 1007, true, 2, &body);
        let r = validate_batch(&rebuilt, Origin::Replica).unwrap();
        assert_eq!(
            (r.base_offset, r.last_offset(), r.records_count),
            (100, 102, 2)
        );
        assert_eq!(
            (r.producer_id, r.producer_epoch, r.base_sequence),
            (9, 2, 40)
        );
        assert_eq!(r.last_sequence(), h.last_sequence());
        assert_eq!(r.delete_horizon_ms(), Some(horizon));
        assert_eq!(h.delete_horizon_ms(), None);
        let kept = records(&rebuilt).unwrap();
        let abs: Vec<(i64, i64)> = kept
            .iter()
            .map(|k| (100 + k.offset_delta, horizon + k.timestamp_delta))
            .collect();
        assert_eq!(abs, vec![(101, 1007), (102, 1003)]);
        assert!(!has_keyless_record(&rebuilt));
        let keyless = BatchBuilder::new(0).record(0, None, Some(b"v")).build();
        assert!(has_keyless_record(&keyless));
    }

    #[test]
    fn finds_the_first_record_at_or_after_a_timestamp() {
        let b = BatchBuilder::new(1000)
            .base_offset(40)
            .record(1000, None, Some(b"a"))
            .record(1005, Some(b"k"), Some(b"bb"))
            .record(1003, None, None)
            .record(1010, None, Some(b"dddd"))
            .build();
        assert_eq!(first_record_at_or_after(&b, 0, 0), Some((40, 1000)));
        assert_eq!(first_record_at_or_after(&b, 1004, 0), Some((41, 1005)));
        assert_eq!(first_record_at_or_after(&b, 1006, 0), Some((43, 1010)));
        assert_eq!(first_record_at_or_after(&b, 1011, 0), None);
        assert_eq!(first_record_at_or_after(&b, 0, 42), Some((42, 1003)));
        assert_eq!(
            first_record_at_or_after(&b[..70], 1006, 0),
            None,
            "a cut batch is not read past its end"
        );
    }
}
