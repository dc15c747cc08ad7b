//! Seeded, deterministic corruption tests: build a log, damage one of its
//! files in a random way, reopen, and check what must have survived.
//!
//! Every case draws everything from a xorshift generator seeded by the case
//! number, so a failure names the case and reruns identically. Set
//! `SLUICE_CORRUPTION_CASE=<n>` to run only case `n` of each property.

use std::collections::HashMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use super::*;
use crate::batch::{compute_crc, BatchBuilder};
use crate::segment::segment_file;
use crate::test_rng::Rng;

const CASES: u64 = 200;
const MAX: i64 = i64::MAX;

/// Runs `f` for each case in a fresh directory; on a panic names the case.
fn run_cases(name: &str, salt: u64, f: impl FnMut(&mut Rng, &Path)) {
    run_n_cases(name, salt, CASES, "SLUICE_CORRUPTION_CASE", f);
}

/// [`run_cases`] with `cases` cases; the environment variable `only` picks
/// one of them.
pub(super) fn run_n_cases(
    name: &str,
    salt: u64,
    cases: u64,
    only: &str,
    mut f: impl FnMut(&mut Rng, &Path),
) {
    // Any case number may be rerun alone, also one beyond `cases`.
    let range = match std::env::var(only).ok().and_then(|v| v.parse::<u64>().ok()) {
        Some(case) => case..case + 1,
        None => 0..cases,
    };
    let root = crate::fs::sim::scratch_dir();
    for case in range {
        let dir = root.path().join(format!("case-{case}"));
        let mut rng = Rng::new(salt ^ case);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(&mut rng, &dir))) {
            eprintln!("{name}: case {case} failed ({only}={case} reruns it)");
            resume_unwind(panic);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A batch as it sits in the log: offsets assigned, leader epoch stamped.
#[derive(Clone)]
pub(super) struct Stored {
    pub(super) base: i64,
    pub(super) next: i64,
    pub(super) bytes: Vec<u8>,
}

impl Stored {
    pub(super) fn header(&self) -> BatchHeader {
        BatchHeader::parse(&self.bytes).unwrap()
    }
}

/// Idempotent producers' (epoch, next sequence) as the test tracks them.
pub(super) type Producers = HashMap<i64, (i16, i32)>;

/// A client batch of 1..=8 records (mostly one) with random keys and
/// values, 1 B..`max_payload` of payload in all.
pub(super) fn random_batch(
    rng: &mut Rng,
    ts: i64,
    producer: Option<(i64, i16, i32)>,
    max_payload: u64,
) -> Vec<u8> {
    let n = if rng.one_in(3) { rng.range(2, 8) } else { 1 };
    let payload = rng.log_uniform(1, max_payload);
    let mut b = BatchBuilder::new(ts);
    if let Some((pid, epoch, seq)) = producer {
        b = b.producer(pid, epoch, seq);
    }
    for _ in 0..n {
        let key = (!rng.one_in(3)).then(|| rng.bytes_in(0, 16));
        let value = (!rng.one_in(10)).then(|| rng.bytes((payload / n).max(1) as usize));
        let record_ts = ts + rng.below(5) as i64;
        b = b.record(record_ts, key.as_deref(), value.as_deref());
    }
    b.build()
}

/// Appends `input` as leader and returns the batches as they were stored.
pub(super) fn append_expecting_success(
    log: &mut PartitionLog,
    input: &[u8],
    epoch: i32,
) -> Vec<Stored> {
    let end = log.log_end_offset();
    let info = log.append_as_leader(input, epoch, 0).unwrap();
    assert!(!info.duplicate);
    assert_eq!(info.base_offset, end);
    stamp(input, info.base_offset, epoch)
}

/// What the log stores for an accepted `input` appended at `base`.
pub(super) fn stamp(input: &[u8], base: i64, epoch: i32) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut offset = base;
    for (pos, h) in batch::validate_all(input, Origin::Client).unwrap() {
        let mut bytes = input[pos..pos + h.size()].to_vec();
        batch::set_base_offset(&mut bytes, offset);
        batch::set_partition_leader_epoch(&mut bytes, epoch);
        out.push(Stored {
            base: offset,
            next: offset + h.offset_count(),
            bytes,
        });
        offset += h.offset_count();
    }
    out
}

struct Built {
    log: PartitionLog,
    stored: Vec<Stored>,
    epoch: i32,
    ts: i64,
}

/// Fills a log with 60..=160 appends of random batches (a few requests
/// carry two), some from idempotent producers, under slowly rising leader
/// epochs, with an occasional checkpoint (producer snapshot) in between.
fn build_log(rng: &mut Rng, dir: &Path, config: &LogConfig) -> Built {
    let mut log = PartitionLog::open(dir, config.clone()).unwrap();
    let mut stored = Vec::new();
    let mut producers = Producers::new();
    let mut epoch = rng.below(3) as i32;
    let mut ts = 1_700_000_000_000 + rng.below(1000) as i64;
    for _ in 0..rng.range(60, 160) {
        if rng.one_in(30) {
            epoch += rng.range(1, 2) as i32;
        }
        let mut input = Vec::new();
        for _ in 0..if rng.one_in(8) { 2 } else { 1 } {
            ts += rng.below(40) as i64;
            if rng.one_in(10) {
                ts -= 100; // create times need not be monotonic
            }
            let producer = rng.one_in(3).then(|| {
                let pid = rng.range(1, 2) as i64;
                let p = producers.entry(pid).or_insert((0, 0));
                if rng.one_in(40) {
                    *p = (p.0 + 1, 0);
                }
                (pid, p.0, p.1)
            });
            let b = random_batch(rng, ts, producer, 20_000);
            if let Some((pid, _, _)) = producer {
                let count = BatchHeader::parse(&b).unwrap().records_count;
                producers.get_mut(&pid).unwrap().1 += count;
            }
            input.extend_from_slice(&b);
        }
        stored.extend(append_expecting_success(&mut log, &input, epoch));
        if rng.one_in(40) {
            log.checkpoint().unwrap();
        }
    }
    Built {
        log,
        stored,
        epoch,
        ts,
    }
}

fn config(rng: &mut Rng) -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        index_interval_bytes: rng.pick(&[256, 1024, 4096]),
        ..LogConfig::default()
    }
}

pub(super) fn reopen(dir: &Path, config: &LogConfig) -> PartitionLog {
    match PartitionLog::open(dir, config.clone()) {
        Ok(log) => log,
        Err(e) => panic!("reopen failed: {e:?}"),
    }
}

/// Simulates kill -9: the log is dropped without `close`, so no
/// clean-shutdown marker is written, and the one a clean open found is gone
/// if anything was written since: the next open recovers what was written.
pub(super) fn crash(log: PartitionLog) {
    drop(log);
}

/// Reads `expected` back: all of it in one read from the first batch, and
/// each batch alone from a random offset inside it.
pub(super) fn assert_reads(log: &PartitionLog, expected: &[Stored], rng: &mut Rng) {
    let want: Vec<u8> = expected.iter().flat_map(|b| b.bytes.clone()).collect();
    let from = expected.first().map_or(log.log_end_offset(), |b| b.base);
    let all = log.read(from, 1 << 30, MAX).unwrap().records;
    assert!(
        all[..] == want[..],
        "reading from {from}: got {} bytes, expected {} bytes of {} batches",
        all.len(),
        want.len(),
        expected.len()
    );
    for b in expected {
        let offset = rng.range(b.base as u64, b.next as u64 - 1) as i64;
        let got = log
            .read(offset, rng.below(2) as usize, MAX)
            .unwrap()
            .records;
        assert!(
            got[..] == b.bytes[..],
            "batch {}..{} read at {offset}: {} bytes, expected {}",
            b.base,
            b.next,
            got.len(),
            b.bytes.len()
        );
    }
}

/// The leader-epoch entries a log holding exactly `stored` must have.
pub(super) fn expected_epochs(stored: &[Stored]) -> Vec<EpochEntry> {
    let mut out: Vec<EpochEntry> = Vec::new();
    for b in stored {
        let epoch = b.header().partition_leader_epoch;
        if epoch >= 0 && out.last().is_none_or(|l| epoch > l.epoch) {
            out.push(EpochEntry {
                epoch,
                start_offset: b.base,
            });
        }
    }
    out
}

/// The producer state a log holding exactly `stored` must have.
pub(super) fn expected_producers(stored: &[Stored]) -> ProducerStateManager {
    let mut p = ProducerStateManager::new();
    for b in stored {
        p.apply_replicated(&b.header());
    }
    p
}

/// Appends one more batch (idempotent, continuing a surviving producer, if
/// there is one) and checks it lands at the log end and reads back.
pub(super) fn assert_append_works(
    log: &mut PartitionLog,
    rng: &mut Rng,
    epoch: i32,
    ts: i64,
) -> Stored {
    let end = log.log_end_offset();
    let producer = [1i64, 2].into_iter().find_map(|pid| {
        let e = log.producer_state().get(pid)?;
        let last = e.batches.back()?;
        Some((pid, e.epoch, last.last_seq + 1))
    });
    let input = random_batch(rng, ts, producer, 4000);
    let mut got = append_expecting_success(log, &input, epoch);
    assert_eq!(got.len(), 1);
    let b = got.pop().unwrap();
    assert_eq!(b.base, end);
    assert_eq!(log.log_end_offset(), b.next);
    assert_eq!(log.read(end, 1, MAX).unwrap().records[..], b.bytes[..]);
    b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Truncate,
    Overwrite,
    Append,
    Zero,
    Replace,
    Delete,
}

/// A random byte range inside a file of `len > 0` bytes.
fn random_range(rng: &mut Rng, len: usize) -> (usize, usize) {
    let at = rng.below(len as u64) as usize;
    let n = rng.log_uniform(1, (len - at).min(4096) as u64) as usize;
    (at, at + n)
}

/// Damages `orig` in one of `kinds` of ways; `None` means the file is
/// deleted. `garbage` makes the bytes for `Append`.
fn damage(
    rng: &mut Rng,
    orig: &[u8],
    kinds: &[Kind],
    garbage: &mut dyn FnMut(&mut Rng) -> Vec<u8>,
) -> (Kind, Option<Vec<u8>>) {
    let mut kind = rng.pick(kinds);
    if orig.is_empty() && matches!(kind, Kind::Truncate | Kind::Overwrite | Kind::Zero) {
        kind = Kind::Append;
    }
    let mut out = orig.to_vec();
    match kind {
        Kind::Truncate => out.truncate(rng.below(orig.len() as u64) as usize),
        Kind::Overwrite => {
            let (a, b) = random_range(rng, orig.len());
            let junk = rng.bytes(b - a);
            out[a..b].copy_from_slice(&junk);
        }
        Kind::Zero => {
            let (a, b) = random_range(rng, orig.len());
            out[a..b].fill(0);
        }
        Kind::Append => out.extend_from_slice(&garbage(rng)),
        Kind::Replace => out = rng.bytes_in(0, 299),
        Kind::Delete => return (kind, None),
    }
    (kind, Some(out))
}

fn random_garbage(rng: &mut Rng) -> Vec<u8> {
    let n = rng.log_uniform(1, 8192) as usize;
    rng.bytes(n)
}

/// Writes the damaged content (or deletes the file).
fn write_damaged(path: &Path, content: Option<&[u8]>) {
    match content {
        Some(bytes) => std::fs::write(path, bytes).unwrap(),
        None => std::fs::remove_file(path).unwrap(),
    }
}

/// Bytes not covered by the batch CRC and not checked by any header
/// invariant: base offset (0..8) and partition leader epoch (12..16).
fn uncovered(at_in_batch: usize) -> bool {
    matches!(at_in_batch, 0..=7 | 12..=15)
}

/// Property 1: damage the active segment's `.log` after a crash; recovery
/// keeps exactly the batches before the first damaged byte.
#[test]
fn damaged_active_segment_keeps_the_intact_prefix() {
    let mut kinds_seen = HashMap::new();
    let mut undetectable = 0;
    run_cases("active segment", 0x5eed_0001, |rng, dir| {
        let config = config(rng);
        let Built {
            log,
            stored,
            epoch,
            ts,
            ..
        } = build_log(rng, dir, &config);
        assert!(log.segment_count() >= 2, "want several segments");
        let active_base = log.active().base_offset();
        let path = log.active().log_path().to_path_buf();
        let log_end = log.log_end_offset();
        crash(log);

        let orig = std::fs::read(&path).unwrap();
        let first_active = stored.iter().position(|b| b.base >= active_base).unwrap();
        let active: Vec<u8> = stored[first_active..]
            .iter()
            .flat_map(|b| b.bytes.clone())
            .collect();
        assert!(orig == active, "active segment holds the appended batches");

        let next_offset = log_end;
        let mut garbage = |rng: &mut Rng| match rng.below(4) {
            0 => random_garbage(rng),
            1 => {
                // A torn append: a prefix of a real next batch.
                let b = BatchBuilder::new(ts)
                    .base_offset(next_offset)
                    .record(ts, None, Some(&rng.bytes_in(1, 3000)))
                    .build();
                b[..rng.range(1, b.len() as u64 - 1) as usize].to_vec()
            }
            2 => {
                // A whole next batch with one payload byte flipped.
                let mut b = BatchBuilder::new(ts)
                    .base_offset(next_offset)
                    .record(ts, None, Some(&rng.bytes_in(1, 3000)))
                    .build();
                let at = rng.range(HEADER_SIZE as u64, b.len() as u64 - 1) as usize;
                b[at] ^= 1 << rng.below(8);
                b
            }
            _ => {
                // Header-shaped junk: right magic, plausible length.
                let mut g = rng.bytes_in(HEADER_SIZE as u64, 4000);
                g[..8].copy_from_slice(&next_offset.to_be_bytes());
                let len = g.len() as i32 - 12 + rng.range(0, 2) as i32 - 1;
                g[8..12].copy_from_slice(&len.to_be_bytes());
                g[16] = 2;
                g
            }
        };
        let kinds = [Kind::Truncate, Kind::Overwrite, Kind::Append, Kind::Zero];
        let (kind, damaged) = damage(rng, &orig, &kinds, &mut garbage);
        let damaged = damaged.unwrap();
        *kinds_seen.entry(format!("{kind:?}")).or_insert(0) += 1;
        write_damaged(&path, Some(&damaged));

        // Where the damage starts, and which batch it hits.
        let differs = |p: usize| orig.get(p) != damaged.get(p);
        let first_bad = (0..orig.len().max(damaged.len())).find(|&p| differs(p));
        let mut pos = 0usize;
        let mut hit = None;
        for (i, b) in stored.iter().enumerate().skip(first_active) {
            let end = pos + b.bytes.len();
            if first_bad.is_some_and(|d| d < end) {
                hit = Some((i, pos, end));
                break;
            }
            pos = end;
        }
        let intact = hit.map_or(stored.len(), |(i, _, _)| i);
        // Damage confined to a batch's base offset and leader epoch passes
        // the CRC: no recovery can tell (Kafka cannot either).
        let detectable =
            hit.is_none_or(|(_, from, to)| (from..to).any(|p| differs(p) && !uncovered(p - from)));

        let mut log = reopen(dir, &config);
        let expected = &stored[..intact];
        let expected_end = hit.map_or(log_end, |(i, _, _)| stored[i].base);
        if detectable {
            assert_eq!(
                log.log_end_offset(),
                expected_end,
                "{kind:?} at {first_bad:?}"
            );
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() as usize,
                hit.map_or(orig.len(), |(_, from, _)| from),
                "the active segment is cut at the damaged batch"
            );
            assert_reads(&log, expected, rng);
            assert_eq!(log.leader_epochs(), &expected_epochs(expected)[..]);
            assert_eq!(log.producer_state(), &expected_producers(expected));
        } else {
            undetectable += 1;
            assert!(log.log_end_offset() >= expected_end);
            // Every batch before the damaged one is still there.
            let prefix: Vec<u8> = expected.iter().flat_map(|b| b.bytes.clone()).collect();
            let all = log.read(0, 1 << 30, MAX).unwrap().records;
            assert!(all.starts_with(&prefix));
            for b in expected {
                assert_eq!(log.read(b.base, 1, MAX).unwrap().records[..], b.bytes[..]);
            }
        }
        assert_eq!(log.log_start_offset(), 0);

        // The log takes new data right at its end, and keeps it.
        let added = assert_append_works(&mut log, rng, epoch, ts);
        let end = log.log_end_offset();
        crash(log);
        let log = reopen(dir, &config);
        assert_eq!(log.log_end_offset(), end);
        if detectable {
            let mut all = expected.to_vec();
            all.push(added);
            assert_reads(&log, &all, rng);
        } else {
            assert_eq!(
                log.read(added.base, 1, MAX).unwrap().records[..],
                added.bytes[..]
            );
        }
    });
    eprintln!(
        "active segment damage: {kinds_seen:?}, {undetectable} confined to CRC-free header fields"
    );
}

/// Answers that depend on the indexes, to compare before and after damage.
fn index_answers(log: &PartitionLog, probes: &[i64]) -> Vec<Option<(i64, i64)>> {
    let mut out: Vec<_> = probes
        .iter()
        .map(|&t| log.offset_for_timestamp(t).unwrap())
        .collect();
    out.push(log.max_timestamp());
    out
}

/// Property 2: damaged or missing `.index`/`.timeindex` files of any
/// segment are rebuilt; nothing is lost and lookups answer as before.
#[test]
fn damaged_index_files_are_rebuilt() {
    let mut kinds_seen = HashMap::new();
    let mut time_index_prefixes = 0;
    run_cases("index files", 0x5eed_0002, |rng, dir| {
        let config = config(rng);
        let Built {
            mut log,
            stored,
            epoch,
            ts,
            ..
        } = build_log(rng, dir, &config);
        let min_ts = stored
            .iter()
            .map(|b| b.header().base_timestamp)
            .min()
            .unwrap();
        let probes: Vec<i64> = (0..8)
            .map(|_| min_ts - 5 + rng.below((ts - min_ts + 60) as u64) as i64)
            .collect();
        log.set_high_watermark(rng.range(0, log.log_end_offset() as u64) as i64);
        let hw = log.high_watermark();
        let answers = index_answers(&log, &probes);
        let bases = log.segment_base_offsets();
        let clean = rng.one_in(2);
        if clean {
            log.close().unwrap();
        } else {
            crash(log);
        }

        let kinds = [
            Kind::Truncate,
            Kind::Overwrite,
            Kind::Append,
            Kind::Zero,
            Kind::Replace,
            Kind::Delete,
        ];
        let mut time_prefix = false;
        for _ in 0..if rng.one_in(4) { rng.range(2, 4) } else { 1 } {
            let base = rng.pick(&bases);
            let ext = rng.pick(&["index", "timeindex"]);
            let path = segment_file(dir, base, ext);
            let Ok(orig) = std::fs::read(&path) else {
                continue; // deleted by an earlier round
            };
            let (kind, damaged) = damage(rng, &orig, &kinds, &mut random_garbage);
            *kinds_seen.entry(format!("{ext} {kind:?}")).or_insert(0) += 1;
            // A time index cut to fewer whole entries is still a valid time
            // index, only a stale one: its last entry may be below the
            // segment's max timestamp, and only a full scan could tell.
            time_prefix |= ext == "timeindex"
                && damaged.as_deref().is_some_and(|d| {
                    d.len() < orig.len() && d.len() % 12 == 0 && orig.starts_with(d)
                });
            write_damaged(&path, damaged.as_deref());
        }
        time_index_prefixes += u32::from(time_prefix);

        let mut log = reopen(dir, &config);
        assert_eq!(log.segment_base_offsets(), bases);
        assert_eq!(log.log_end_offset(), stored.last().unwrap().next);
        assert_reads(&log, &stored, rng);
        if !time_prefix {
            assert_eq!(index_answers(&log, &probes), answers, "clean={clean}");
        }
        if clean {
            assert_eq!(log.high_watermark(), hw);
        }
        assert_eq!(log.leader_epochs(), &expected_epochs(&stored)[..]);
        assert_eq!(log.producer_state(), &expected_producers(&stored));
        for base in &bases {
            assert!(segment_file(dir, *base, "index").exists());
            assert!(segment_file(dir, *base, "timeindex").exists());
        }

        // Older than every probe, so the answers stay the same.
        let added = assert_append_works(&mut log, rng, epoch, min_ts - 1000);
        crash(log);
        let log = reopen(dir, &config);
        let mut all = stored.clone();
        all.push(added);
        assert_reads(&log, &all, rng);
        if !time_prefix {
            assert_eq!(index_answers(&log, &probes), answers);
        }
    });
    eprintln!(
        "index damage: {kinds_seen:?}; {time_index_prefixes} cases left a shorter valid time index"
    );
}

/// A log of 300 three-record batches with rising timestamps in segments of
/// several index entries each, closed cleanly so that every index is loaded
/// (not rebuilt) on the next open.
fn closed_log_with_indexes(dir: &Path) -> (LogConfig, Vec<Stored>) {
    let config = LogConfig {
        segment_bytes: 16 << 10,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    };
    let mut log = reopen(dir, &config);
    let mut stored = Vec::new();
    for i in 0..300 {
        let mut b = BatchBuilder::new(10_000 + i * 10);
        for r in 0..3 {
            b = b.record(10_000 + i * 10 + r, Some(b"k"), Some(&[i as u8; 200]));
        }
        stored.extend(append_expecting_success(&mut log, &b.build(), 1));
    }
    assert!(log.segment_count() > 3);
    log.close().unwrap();
    (config, stored)
}

/// Rewrites entry `i` (of `size` bytes) of an index file with `f`.
fn edit_entry(path: &Path, size: usize, i: usize, f: impl FnOnce(&mut [u8])) {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() >= (i + 1) * size,
        "{} has entry {i}",
        path.display()
    );
    f(&mut bytes[i * size..(i + 1) * size]);
    std::fs::write(path, bytes).unwrap();
}

fn add_be(field: &mut [u8], delta: i64) {
    match field.len() {
        4 => {
            let v = u32::from_be_bytes(field.try_into().unwrap());
            field.copy_from_slice(&(v as i64 + delta).to_be_bytes()[4..]);
        }
        _ => {
            let v = i64::from_be_bytes(field.try_into().unwrap());
            field.copy_from_slice(&(v + delta).to_be_bytes());
        }
    }
}

/// Regression: only the last offset index entry was checked on open, so a
/// damaged entry in the middle that kept the index monotonic sent lookups
/// into the middle of a batch (a `CorruptLog` error for a healthy log) or
/// past the batch asked for.
#[test]
fn a_damaged_middle_offset_index_entry_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (config, stored) = closed_log_with_indexes(dir.path());
    let index = segment_file(dir.path(), 0, "index");
    assert!(std::fs::metadata(&index).unwrap().len() >= 5 * 8);
    // Entry 1 points one byte into its batch; entry 3 names the offset after
    // its batch's (both still strictly increasing).
    edit_entry(&index, 8, 1, |e| add_be(&mut e[4..8], 1));
    edit_entry(&index, 8, 3, |e| add_be(&mut e[0..4], 1));
    let log = reopen(dir.path(), &config);
    let mut rng = Rng::new(1);
    assert_reads(&log, &stored, &mut rng);
    for b in &stored {
        for offset in b.base..b.next {
            let got = log.read(offset, 1, MAX).unwrap().records;
            assert!(got[..] == b.bytes[..], "offset {offset}");
        }
    }
}

/// Regression: the last time index entry was taken as the segment's max
/// timestamp unchecked, and the entry a timestamp lookup starts from was
/// trusted too, so a damaged time index gave wrong ListOffsets answers (and
/// a wrong time for retention).
#[test]
fn a_damaged_time_index_entry_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (config, stored) = closed_log_with_indexes(dir.path());
    let bases = reopen(dir.path(), &config).segment_base_offsets();
    let timestamps: Vec<i64> = (9_990..13_010).step_by(3).collect();
    let before = {
        let log = reopen(dir.path(), &config);
        let answers = index_answers(&log, &timestamps);
        log.close().unwrap();
        answers
    };
    let time_index = |base| segment_file(dir.path(), base, "timeindex");
    let entries = |base| std::fs::metadata(time_index(base)).unwrap().len() as usize / 12;
    assert!(entries(bases[0]) >= 4 && entries(bases[1]) >= 4);
    // In the first segment a middle entry claims an earlier timestamp (so a
    // lookup would start past the batch it wants); in the second the last
    // entry claims a far later one (the segment's max timestamp). Both
    // files stay strictly increasing.
    edit_entry(&time_index(bases[0]), 12, 1, |e| add_be(&mut e[0..8], -15));
    let last = entries(bases[1]) - 1;
    edit_entry(&time_index(bases[1]), 12, last, |e| {
        add_be(&mut e[0..8], 1 << 40)
    });
    let log = reopen(dir.path(), &config);
    assert_eq!(index_answers(&log, &timestamps), before);
    assert_reads(&log, &stored, &mut Rng::new(2));
}

/// Property 3: damaged or missing checkpoint, leader-epoch checkpoint and
/// producer snapshot: reopen rebuilds what it must from the segments.
#[test]
fn damaged_checkpoint_files_fall_back_to_the_log() {
    let mut outcomes: HashMap<&str, u32> = HashMap::new();
    run_cases("checkpoint files", 0x5eed_0003, |rng, dir| {
        let config = config(rng);
        let Built {
            mut log,
            mut stored,
            epoch,
            ts,
        } = build_log(rng, dir, &config);
        log.set_high_watermark(rng.range(0, log.log_end_offset() as u64) as i64);
        log.checkpoint().unwrap();
        // Some batches after the snapshot, so it lags the log end.
        for _ in 0..rng.below(4) {
            let pid = rng.range(1, 2) as i64;
            let producer = log.producer_state().get(pid).and_then(|e| {
                let last = e.batches.back()?;
                Some((pid, e.epoch, last.last_seq + 1))
            });
            let input = random_batch(rng, ts, producer, 3000);
            stored.extend(append_expecting_success(&mut log, &input, epoch));
        }
        let hw = log.high_watermark();
        let log_end = log.log_end_offset();
        let clean = rng.one_in(2);
        if clean {
            log.close().unwrap();
        } else {
            crash(log);
        }
        for name in [CHECKPOINT_FILE, EPOCH_FILE, PRODUCER_SNAPSHOT_FILE] {
            assert!(dir.join(name).exists(), "{name} was written");
        }

        let kinds = [
            Kind::Truncate,
            Kind::Overwrite,
            Kind::Append,
            Kind::Zero,
            Kind::Replace,
            Kind::Delete,
        ];
        let mut targets = Vec::new();
        for name in [CHECKPOINT_FILE, EPOCH_FILE, PRODUCER_SNAPSHOT_FILE] {
            if rng.one_in(3) {
                continue;
            }
            targets.push(name);
        }
        if targets.is_empty() {
            targets.push(rng.pick(&[CHECKPOINT_FILE, EPOCH_FILE, PRODUCER_SNAPSHOT_FILE]));
        }
        for name in targets {
            let path = dir.join(name);
            let orig = std::fs::read(&path).unwrap();
            let (_, damaged) = damage(rng, &orig, &kinds, &mut random_garbage);
            write_damaged(&path, damaged.as_deref());
        }

        // What the damaged files still say. A text checkpoint mangled into
        // other numbers that still parse cannot be told from a real one.
        let checkpoint = read_checkpoint(&dir.join(CHECKPOINT_FILE));
        let (epochs_on_disk, epochs_found) = LeaderEpochCache::load(&dir.join(EPOCH_FILE)).unwrap();
        let checkpoint_ok = checkpoint
            .as_ref()
            .is_none_or(|c| c.high_watermark == hw && c.log_start_offset == 0);
        let epochs_ok = !epochs_found || epochs_on_disk.entries() == &expected_epochs(&stored)[..];

        let mut log = reopen(dir, &config);
        assert_eq!(log.log_end_offset(), log_end);
        if checkpoint_ok && epochs_ok {
            *outcomes.entry("checked in full").or_default() += 1;
            assert_eq!(log.log_start_offset(), 0);
            assert_eq!(
                log.high_watermark(),
                if checkpoint.is_some() { hw } else { 0 }
            );
            assert_reads(&log, &stored, rng);
            assert_eq!(log.leader_epochs(), &expected_epochs(&stored)[..]);
            assert_eq!(log.producer_state(), &expected_producers(&stored));
        } else {
            *outcomes.entry("still-parseable damage").or_default() += 1;
            let start = log.log_start_offset();
            let visible: Vec<_> = stored.iter().filter(|b| b.next > start).cloned().collect();
            assert_reads(&log, &visible, rng);
        }
        let added = assert_append_works(&mut log, rng, epoch, ts);
        crash(log);
        let log = reopen(dir, &config);
        assert_eq!(
            log.read(added.base, 1, MAX).unwrap().records[..],
            added.bytes[..]
        );
    });
    eprintln!("checkpoint damage: {outcomes:?}");
}

/// A valid batch from `log`'s point of view (idempotent ones continue a
/// known producer, or retry/skip a sequence now and then).
fn plausible_batch(rng: &mut Rng, log: &PartitionLog) -> Vec<u8> {
    let producer = rng.one_in(2).then(|| {
        let pid = rng.range(1, 2) as i64;
        let (epoch, next) = log
            .producer_state()
            .get(pid)
            .and_then(|e| Some((e.epoch, e.batches.back()?.last_seq + 1)))
            .unwrap_or((0, 0));
        let seq = match rng.below(8) {
            0 => next.saturating_sub(rng.range(1, 3) as i32).max(0),
            1 => next + 1,
            _ => next,
        };
        (pid, epoch, seq)
    });
    let ts = 1_000 + rng.below(1000) as i64;
    random_batch(rng, ts, producer, 2000)
}

/// Fixes the CRC of the batch at `pos` if its declared length fits.
fn fix_crc(buf: &mut [u8], pos: usize) {
    if buf.len() < pos + HEADER_SIZE {
        return;
    }
    let len = i32::from_be_bytes(buf[pos + 8..pos + 12].try_into().unwrap());
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    let end = pos + 12 + len;
    if len >= 49 && end <= buf.len() {
        let crc = compute_crc(&buf[pos..end]);
        buf[pos + 17..pos + 21].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Overwrites `buf[at..]` with `bytes`, if they fit (an earlier mutation
/// may have cut the buffer short).
fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(s) = buf.get_mut(at..at + bytes.len()) {
        s.copy_from_slice(bytes);
    }
}

fn put_i32(buf: &mut [u8], at: usize, v: i32) {
    put(buf, at, &v.to_be_bytes());
}

fn interesting_i32(rng: &mut Rng, near: i32) -> i32 {
    match rng.below(6) {
        0 => rng.next() as i32,
        1 => rng.pick(&[0, -1, 1, i32::MIN, i32::MAX, 48, 49, 50]),
        _ => near.wrapping_add(rng.range(0, 8) as i32 - 4),
    }
}

/// Random bytes, or valid batches with their headers mangled.
fn mangled_input(rng: &mut Rng, log: &PartitionLog) -> Vec<u8> {
    if rng.one_in(8) {
        return rng.bytes_in(0, 399);
    }
    let mut buf = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..rng.range(1, 3) {
        starts.push(buf.len());
        buf.extend_from_slice(&plausible_batch(rng, log));
    }
    let at = rng.pick(&starts);
    let header = BatchHeader::parse(&buf[at..]).unwrap();
    for _ in 0..rng.range(0, 3) {
        match rng.below(12) {
            0 | 1 if !buf.is_empty() => {
                for _ in 0..rng.range(1, 4) {
                    let p = rng.below(buf.len() as u64) as usize;
                    buf[p] ^= 1 << rng.below(8);
                }
            }
            2 => put_i32(&mut buf, at + 8, interesting_i32(rng, header.batch_length)),
            3 => put_i32(
                &mut buf,
                at + 57,
                interesting_i32(rng, header.records_count),
            ),
            4 => put_i32(
                &mut buf,
                at + 23,
                interesting_i32(rng, header.last_offset_delta),
            ),
            5 => {
                // Record count and last offset delta changed together.
                let n = interesting_i32(rng, header.records_count);
                put_i32(&mut buf, at + 57, n);
                put_i32(&mut buf, at + 23, n.wrapping_sub(1));
            }
            6 => {
                let any = rng.next() as u8;
                let magic = rng.pick(&[0, 1, 2, 3, 0xff, any]);
                put(&mut buf, at + 16, &[magic]);
            }
            7 => {
                // Attributes: codec, timestamp type, transactional, control.
                let attrs = rng.below(0x40) as u16;
                put(&mut buf, at + 21, &attrs.to_be_bytes());
            }
            8 => {
                let any = rng.next() as i64;
                let pid = rng.pick(&[-1i64, 1, 2, 3, any]);
                put(&mut buf, at + 43, &pid.to_be_bytes());
                put_i32(
                    &mut buf,
                    at + 53,
                    interesting_i32(rng, header.base_sequence),
                );
            }
            9 if !buf.is_empty() => buf.truncate(rng.below(buf.len() as u64) as usize),
            10 => {
                let junk = rng.bytes_in(1, 80);
                buf.extend_from_slice(&junk);
            }
            _ => {
                let t = rng.next() as i64;
                put(&mut buf, at + 35, &t.to_be_bytes());
            }
        }
    }
    if rng.one_in(2) {
        // Make the mangled header pass the CRC so the deeper checks run.
        fix_crc(&mut buf, at);
    }
    buf
}

/// Property 4: whatever a client sends, `append_as_leader` answers Ok or a
/// typed error without panicking; an error writes nothing; whatever it
/// accepted survives a crash and recovery byte for byte.
#[test]
fn append_as_leader_survives_mangled_batches() {
    let mut outcomes: HashMap<String, u32> = HashMap::new();
    run_cases("append fuzz", 0x5eed_0004, |rng, dir| {
        let config = LogConfig {
            segment_bytes: 64 << 10,
            index_interval_bytes: 1024,
            max_message_bytes: rng.pick(&[1 << 20, 1500]),
            ..LogConfig::default()
        };
        let mut log = reopen(dir, &config);
        let mut stored = Vec::new();
        let mut epoch = 0;
        for _ in 0..rng.range(0, 3) {
            let b = random_batch(rng, 500, Some((1, 0, log.log_end_offset() as i32)), 1000);
            stored.extend(append_expecting_success(&mut log, &b, epoch));
        }
        for _ in 0..12 {
            let input = mangled_input(rng, &log);
            if rng.one_in(10) {
                epoch += 1;
            }
            let end = log.log_end_offset();
            let size = log.size_bytes();
            let segments = log.segment_base_offsets();
            let producers = log.producer_state().clone();
            let epochs = log.leader_epochs().to_vec();
            match log.append_as_leader(&input, epoch, 0) {
                Ok(info) if info.duplicate => {
                    *outcomes.entry("duplicate".into()).or_default() += 1;
                    assert_eq!((log.log_end_offset(), log.size_bytes()), (end, size));
                }
                Ok(info) => {
                    *outcomes.entry("accepted".into()).or_default() += 1;
                    assert_eq!(info.base_offset, end);
                    let accepted = stamp(&input, end, epoch);
                    assert_eq!(info.last_offset, accepted.last().unwrap().next - 1);
                    assert_eq!(log.log_end_offset(), info.last_offset + 1);
                    assert_eq!(log.size_bytes(), size + input.len() as u64);
                    stored.extend(accepted);
                }
                Err(e) => {
                    let kind = format!("{e:?}");
                    let kind = kind.split(['(', ' ']).next().unwrap_or_default();
                    *outcomes.entry(kind.to_string()).or_default() += 1;
                    assert_eq!(log.log_end_offset(), end, "{e}");
                    assert_eq!(log.size_bytes(), size, "{e}");
                    assert_eq!(log.segment_base_offsets(), segments, "{e}");
                    assert_eq!(log.producer_state(), &producers, "{e}");
                    assert_eq!(log.leader_epochs(), &epochs[..], "{e}");
                }
            }
        }
        assert_reads(&log, &stored, rng);
        let end = log.log_end_offset();
        crash(log);
        let log = reopen(dir, &config);
        assert_eq!(
            log.log_end_offset(),
            end,
            "accepted batches survive recovery"
        );
        assert_reads(&log, &stored, rng);
        assert_eq!(log.producer_state(), &expected_producers(&stored));
    });
    eprintln!("append fuzz outcomes: {outcomes:?}");
    let accepted = outcomes.get("accepted").copied().unwrap_or(0);
    let total: u32 = outcomes.values().sum();
    assert!(
        accepted > total / 10 && accepted < total * 9 / 10,
        "{outcomes:?}"
    );
}
