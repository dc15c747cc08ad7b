//! Idempotent producer state of one partition: for each producer id, its
//! epoch and its last few batches (sequence range and offsets), enough to
//! answer a retried batch with its original offsets and to reject gaps.
//!
//! Checks follow Kafka's `ProducerStateManager`: an older epoch is fenced, a
//! new epoch must start at sequence 0, within an epoch sequences follow on
//! from the last batch (wrapping after `i32::MAX`), and an unknown producer
//! may start anywhere (KIP-360). The state is rebuilt from batch headers when
//! a log is opened; a snapshot written at checkpoint time lets that rebuild
//! start near the end of the log instead of at its start.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;
use crate::StorageError;

/// How many recent batches are remembered per producer (Kafka: 5, the
/// maximum number of in-flight requests for an idempotent producer).
pub const MAX_CACHED_BATCHES: usize = 5;

const SNAPSHOT_MAGIC: &[u8; 8] = b"SLPSNAP1";

/// One appended batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// What the log knows about one producer id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first, at most [`MAX_CACHED_BATCHES`].
    pub batches: VecDeque<BatchMetadata>,
}

impl ProducerEntry {
    fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
    }

    fn last_offset(&self) -> Option<i64> {
        self.batches.back().map(|b| b.last_offset)
    }

    fn find_duplicate(&self, epoch: i16, first_seq: i32, last_seq: i32) -> Option<BatchMetadata> {
        if epoch != self.epoch {
            return None;
        }
        self.batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
            .copied()
    }

    /// Records a batch (no checks).
    fn push(&mut self, epoch: i16, meta: BatchMetadata) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
        self.batches.push_back(meta);
        while self.batches.len() > MAX_CACHED_BATCHES {
            self.batches.pop_front();
        }
    }
}

/// Outcome of checking one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent, or the next batch in sequence: write it.
    Append,
    /// A retry of a batch already in the log, at these offsets.
    Duplicate(BatchMetadata),
}

/// Changes staged while checking the batches of one append, so that a
/// multi-batch append is checked against itself and applied all or nothing.
#[derive(Debug, Default)]
pub struct ProducerAppend {
    staged: HashMap<i64, ProducerEntry>,
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    i64::from(next_seq) == i64::from(last_seq) + 1 || (next_seq == 0 && last_seq == i32::MAX)
}

impl ProducerAppend {
    /// Checks the batch `h`, which would be written at `base_offset`, against
    /// `state` plus what this append staged so far; stages it if it is to be
    /// written.
    pub fn check(
        &mut self,
        state: &ProducerStateManager,
        h: &BatchHeader,
        base_offset: i64,
    ) -> Result<SequenceCheck, StorageError> {
        if !h.has_producer_id() || h.base_sequence < 0 {
            return Ok(SequenceCheck::Append);
        }
        let pid = h.producer_id;
        let first_seq = h.base_sequence;
        let last_seq = h.last_sequence();
        let current = self.staged.get(&pid).or_else(|| state.producers.get(&pid));
        if let Some(cur) = current {
            if let Some(dup) = cur.find_duplicate(h.producer_epoch, first_seq, last_seq) {
                return Ok(SequenceCheck::Duplicate(dup));
            }
            if h.producer_epoch < cur.epoch {
                return Err(StorageError::InvalidProducerEpoch {
                    producer_id: pid,
                    epoch: h.producer_epoch,
                    current: cur.epoch,
                });
            }
            if h.producer_epoch > cur.epoch {
                if first_seq != 0 {
                    return Err(StorageError::OutOfOrderSequence {
                        producer_id: pid,
                        producer_epoch: h.producer_epoch,
                        expected: 0,
                        received: first_seq,
                    });
                }
            } else if let Some(last) = cur.last_seq() {
                if !in_sequence(last, first_seq) {
                    return Err(StorageError::OutOfOrderSequence {
                        producer_id: pid,
                        producer_epoch: h.producer_epoch,
                        expected: crate::batch::increment_sequence(last, 1),
                        received: first_seq,
                    });
                }
            }
        }
        let mut entry = current.cloned().unwrap_or_else(|| ProducerEntry {
            epoch: h.producer_epoch,
            batches: VecDeque::new(),
        });
        entry.push(
            h.producer_epoch,
            BatchMetadata {
                first_seq,
                last_seq,
                base_offset,
                last_offset: base_offset + h.offset_count() - 1,
            },
        );
        self.staged.insert(pid, entry);
        Ok(SequenceCheck::Append)
    }

    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }
}

/// Producer state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStateManager {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStateManager {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn clear(&mut self) {
        self.producers.clear();
    }

    /// Starts checking the batches of one append.
    pub fn begin(&self) -> ProducerAppend {
        ProducerAppend::default()
    }

    /// Applies the batches staged by a successful append.
    pub fn commit(&mut self, append: ProducerAppend) {
        self.producers.extend(append.staged);
    }

    /// Records a batch already in the log (follower append, rebuild on open)
    /// without checks. The header must carry its final base offset.
    pub fn apply_replicated(&mut self, h: &BatchHeader) {
        if !h.has_producer_id() || h.base_sequence < 0 {
            return;
        }
        let meta = BatchMetadata {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        };
        self.producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
            })
            .push(h.producer_epoch, meta);
    }

    /// The last offset of each producer's latest batch: the batch that
    /// compaction must keep (if only as an empty header) so the producer's
    /// sequence survives a clean and a restart.
    pub fn last_offsets(&self) -> HashMap<i64, i64> {
        self.producers
            .iter()
            .filter_map(|(&id, e)| e.last_offset().map(|o| (id, o)))
            .collect()
    }

    /// Forgets producers whose last batch lies entirely before `log_start`
    /// (their data was deleted).
    pub fn evict_below(&mut self, log_start: i64) {
        self.producers
            .retain(|_, e| e.last_offset().is_some_and(|o| o >= log_start));
    }

    /// Encodes the state as of `end_offset` (the log end offset).
    pub fn encode_snapshot(&self, end_offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.producers.len() * 40);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&end_offset.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.producers[&id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a snapshot: `(end offset, state)`, or `None` if it is
    /// truncated, corrupt or of an unknown format.
    pub fn decode_snapshot(buf: &[u8]) -> Option<(i64, ProducerStateManager)> {
        let body_len = buf.len().checked_sub(4)?;
        let (body, crc) = buf.split_at(body_len);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader(body);
        if r.take(8)? != SNAPSHOT_MAGIC {
            return None;
        }
        let end_offset = r.i64()?;
        let count = r.u32()?;
        let mut producers = HashMap::new();
        for _ in 0..count {
            let id = r.i64()?;
            let epoch = r.i16()?;
            let n = r.take(1)?[0] as usize;
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMetadata {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    base_offset: r.i64()?,
                    last_offset: r.i64()?,
                });
            }
            producers.insert(id, ProducerEntry { epoch, batches });
        }
        if !r.0.is_empty() {
            return None;
        }
        Some((end_offset, ProducerStateManager { producers }))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{validate_batch, BatchBuilder, Origin};

    fn header(pid: i64, epoch: i16, seq: i32, n: usize) -> BatchHeader {
        let mut b = BatchBuilder::new(0).producer(pid, epoch, seq);
        for _ in 0..n {
            b = b.record(0, None, Some(b"v"));
        }
        validate_batch(&b.build(), Origin::Client).unwrap()
    }

    fn append(
        s: &mut ProducerStateManager,
        h: &BatchHeader,
        base: i64,
    ) -> Result<SequenceCheck, StorageError> {
        let mut a = s.begin();
        let r = a.check(s, h, base)?;
        s.commit(a);
        Ok(r)
    }

    #[test]
    fn sequence_rules() {
        let mut s = ProducerStateManager::new();
        // Unknown producer: any sequence.
        assert_eq!(
            append(&mut s, &header(1, 0, 10, 3), 0).unwrap(),
            SequenceCheck::Append
        );
        assert_eq!(
            append(&mut s, &header(1, 0, 13, 2), 3).unwrap(),
            SequenceCheck::Append
        );
        // Retry of either cached batch.
        assert_eq!(
            append(&mut s, &header(1, 0, 10, 3), 99).unwrap(),
            SequenceCheck::Duplicate(BatchMetadata {
                first_seq: 10,
                last_seq: 12,
                base_offset: 0,
                last_offset: 2
            })
        );
        assert!(matches!(
            append(&mut s, &header(1, 0, 16, 1), 5),
            Err(StorageError::OutOfOrderSequence {
                expected: 15,
                received: 16,
                ..
            })
        ));
        // New epoch must start at 0.
        assert!(matches!(
            append(&mut s, &header(1, 1, 15, 1), 5),
            Err(StorageError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(
            append(&mut s, &header(1, 1, 0, 1), 5).unwrap(),
            SequenceCheck::Append
        );
        assert!(matches!(
            append(&mut s, &header(1, 0, 15, 1), 6),
            Err(StorageError::InvalidProducerEpoch {
                epoch: 0,
                current: 1,
                ..
            })
        ));
        // Non-idempotent batches are not tracked.
        let plain = validate_batch(
            &BatchBuilder::new(0).record(0, None, None).build(),
            Origin::Client,
        )
        .unwrap();
        assert_eq!(append(&mut s, &plain, 6).unwrap(), SequenceCheck::Append);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn only_five_batches_cached_and_wraparound() {
        let mut s = ProducerStateManager::new();
        for i in 0..7 {
            append(&mut s, &header(9, 0, i, 1), i64::from(i)).unwrap();
        }
        assert_eq!(s.get(9).unwrap().batches.len(), MAX_CACHED_BATCHES);
        // Sequence 0 fell out of the cache: it is now out of order, not a duplicate.
        assert!(append(&mut s, &header(9, 0, 0, 1), 7).is_err());
        assert!(matches!(
            append(&mut s, &header(9, 0, 6, 1), 7),
            Ok(SequenceCheck::Duplicate(_))
        ));

        let mut s = ProducerStateManager::new();
        append(&mut s, &header(3, 0, i32::MAX - 1, 2), 0).unwrap();
        assert_eq!(s.get(3).unwrap().batches[0].last_seq, i32::MAX);
        assert_eq!(
            append(&mut s, &header(3, 0, 0, 1), 2).unwrap(),
            SequenceCheck::Append
        );
    }

    #[test]
    fn staging_is_all_or_nothing() {
        let s = ProducerStateManager::new();
        let mut a = s.begin();
        a.check(&s, &header(1, 0, 0, 2), 0).unwrap();
        a.check(&s, &header(1, 0, 2, 2), 2).unwrap();
        assert!(a.check(&s, &header(1, 0, 9, 1), 4).is_err());
        // Never committed: state unchanged.
        assert!(s.is_empty());
    }

    #[test]
    fn snapshot_round_trip_and_corruption() {
        let mut s = ProducerStateManager::new();
        for pid in 0..10 {
            for i in 0..3 {
                append(
                    &mut s,
                    &header(pid, 2, i * 2, 2),
                    pid * 100 + i64::from(i) * 2,
                )
                .unwrap();
            }
        }
        let snap = s.encode_snapshot(1234);
        let (end, t) = ProducerStateManager::decode_snapshot(&snap).unwrap();
        assert_eq!(end, 1234);
        assert_eq!(t, s);
        let mut bad = snap.clone();
        bad[20] ^= 1;
        assert!(ProducerStateManager::decode_snapshot(&bad).is_none());
        assert!(ProducerStateManager::decode_snapshot(&snap[..snap.len() - 1]).is_none());
        assert!(ProducerStateManager::decode_snapshot(&[]).is_none());

        s.evict_below(500);
        assert_eq!(s.len(), 5);
    }
}
