use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};

use super::*;
use crate::batch::BatchBuilder;
use crate::segment::segment_file;

const MAX: i64 = i64::MAX;

/// A batch of `n` records of 100-byte values, timestamps `ts`, `ts+1`, ...
fn batch(n: usize, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(ts);
    for i in 0..n {
        b = b.record(ts + i as i64, Some(b"key"), Some(&[b'v'; 100]));
    }
    b.build()
}

/// An idempotent producer's batch.
fn idem(pid: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(1000).producer(pid, epoch, seq);
    for _ in 0..n {
        b = b.record(1000, None, Some(b"value"));
    }
    b.build()
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 1000,
        index_interval_bytes: 300,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, config).unwrap()
}

/// (base offset, last offset, leader epoch) of every batch in `bytes`.
fn batches_in(bytes: &[u8]) -> Vec<(i64, i64, i32)> {
    batch::validate_all(bytes, Origin::Replica)
        .unwrap()
        .into_iter()
        .map(|(_, h)| (h.base_offset, h.last_offset(), h.partition_leader_epoch))
        .collect()
}

fn active_log_path(log: &PartitionLog) -> PathBuf {
    log.active().log_path().to_path_buf()
}

/// Simulates kill -9: no close, so no clean-shutdown marker.
fn crash(log: PartitionLog) {
    drop(log);
}

/// kill -9 in the middle of an append: garbage after the last batch of the
/// active segment.
fn crash_with_garbage_tail(log: PartitionLog) {
    let path = active_log_path(&log);
    crash(log);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0x5a; 333]).unwrap();
}

#[test]
fn append_and_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));

    let a = log.append_as_leader(&batch(3, 100), 5, 0).unwrap();
    assert_eq!(
        a,
        AppendInfo {
            base_offset: 0,
            last_offset: 2,
            log_append_time: -1,
            duplicate: false,
            max_timestamp: 102
        }
    );
    let mut two = batch(1, 200);
    two.extend_from_slice(&batch(5, 300));
    let b = log.append_as_leader(&two, 5, 0).unwrap();
    assert_eq!((b.base_offset, b.last_offset), (3, 8));
    assert_eq!(log.log_end_offset(), 9);

    let r = log.read(0, 1 << 20, MAX).unwrap();
    assert_eq!((r.log_start_offset, r.log_end_offset), (0, 9));
    // Offsets and epochs patched, CRCs still valid.
    assert_eq!(
        batches_in(&r.records),
        vec![(0, 2, 5), (3, 3, 5), (4, 8, 5)]
    );
    assert_eq!(r.records.len() as u64, log.size_bytes());
    // Records bytes are exactly what the producer sent after the header.
    let first = batch(3, 100);
    assert_eq!(&r.records[HEADER_SIZE..first.len()], &first[HEADER_SIZE..]);

    assert!(log.read(9, 1000, MAX).unwrap().records.is_empty());
}

#[test]
fn read_from_the_middle_of_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    log.append_as_leader(&batch(4, 0), 0, 0).unwrap();
    log.append_as_leader(&batch(4, 0), 0, 0).unwrap();
    let r = log.read(6, 1 << 20, MAX).unwrap();
    assert_eq!(batches_in(&r.records), vec![(4, 7, 0)]);
    let r = log.read(3, 1 << 20, MAX).unwrap();
    assert_eq!(batches_in(&r.records), vec![(0, 3, 0), (4, 7, 0)]);
}

#[test]
fn max_bytes_returns_the_first_batch_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    let b1 = batch(3, 0);
    let b2 = batch(2, 0);
    log.append_as_leader(&b1, 0, 0).unwrap();
    log.append_as_leader(&b2, 0, 0).unwrap();
    log.append_as_leader(&b2, 0, 0).unwrap();

    let r = log.read(0, 1, MAX).unwrap();
    assert_eq!(r.records.len(), b1.len());
    let r = log.read(0, 0, MAX).unwrap();
    assert_eq!(batches_in(&r.records).len(), 1);
    let r = log.read(0, b1.len() + b2.len() - 1, MAX).unwrap();
    assert_eq!(batches_in(&r.records), vec![(0, 2, 0)]);
    let r = log.read(0, b1.len() + b2.len(), MAX).unwrap();
    assert_eq!(batches_in(&r.records), vec![(0, 2, 0), (3, 4, 0)]);
    let r = log.read(3, 10, MAX).unwrap();
    assert_eq!(batches_in(&r.records), vec![(3, 4, 0)]);
}

#[test]
fn max_offset_bounds_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    for _ in 0..4 {
        log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    }
    let r = log.read(0, 1 << 20, 4).unwrap();
    assert_eq!(batches_in(&r.records), vec![(0, 1, 0), (2, 3, 0)]);
    let r = log.read(0, 1 << 20, 5).unwrap();
    assert_eq!(batches_in(&r.records).len(), 3);
    assert!(log.read(4, 1 << 20, 4).unwrap().records.is_empty());
    assert!(log.read(6, 1 << 20, 4).unwrap().records.is_empty());
}

#[test]
fn offsets_outside_the_log_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for _ in 0..20 {
        log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    }
    assert!(matches!(
        log.read(41, 100, MAX),
        Err(StorageError::OffsetOutOfRange {
            offset: 41,
            log_start: 0,
            log_end: 40
        })
    ));
    assert!(matches!(
        log.read(-1, 100, MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    log.advance_log_start(13).unwrap();
    assert!(log.segment_base_offsets()[0] > 0);
    assert!(matches!(
        log.read(12, 100, MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    let r = log.read(13, 1, MAX).unwrap();
    assert_eq!(batches_in(&r.records), vec![(12, 13, 0)]);
    assert_eq!(r.log_start_offset, 13);
    assert!(matches!(
        log.advance_log_start(41),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn rolls_by_size_and_reads_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for _ in 0..30 {
        log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    }
    assert!(log.segment_count() > 5);
    for seg in &log.segments {
        assert!(seg.size() <= 1000);
    }
    // One read can span segments.
    let r = log.read(0, 1 << 20, MAX).unwrap();
    let got = batches_in(&r.records);
    assert_eq!(got.len(), 30);
    assert!(got.iter().enumerate().all(|(i, b)| b.0 == 2 * i as i64));
    // A batch bigger than a segment gets a segment of its own.
    log.append_as_leader(&batch(20, 0), 0, 0).unwrap();
    assert!(log.active().size() > 1000);
    let n = log.segment_count();
    log.append_as_leader(&batch(1, 0), 0, 0).unwrap();
    assert_eq!(log.segment_count(), n + 1);
}

#[test]
fn rolls_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: 1000,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config);
    log.roll_if_due(1_000_000).unwrap(); // empty: never rolled
    assert_eq!(log.segment_count(), 1);
    log.append_as_leader(&batch(1, 0), 0, 10_000).unwrap();
    log.append_as_leader(&batch(1, 0), 0, 10_500).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append_as_leader(&batch(1, 0), 0, 11_000).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.segment_base_offsets(), vec![0, 2]);
    log.roll_if_due(11_500).unwrap();
    assert_eq!(log.segment_count(), 2);
    log.roll_if_due(12_000).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![0, 2, 3]);
    log.roll_if_due(50_000).unwrap();
    assert_eq!(log.segment_count(), 3);
}

#[test]
fn retention_by_time_advances_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: 10_000,
        ..small_segments()
    };
    let mut log = open(dir.path(), config);
    // Timestamps 0, 1000, ..., one batch per 1000 ms.
    for i in 0..30 {
        log.append_as_leader(&batch(2, i * 1000), 0, i * 1000)
            .unwrap();
    }
    let segments = log.segment_count();
    // Nothing below the high watermark yet: nothing deleted.
    assert_eq!(log.enforce_retention(100_000).unwrap(), 0);
    log.set_high_watermark(log.log_end_offset());
    assert_eq!(log.high_watermark(), 60);
    // At 25 s, batches with timestamps <= ~15 s are expired.
    let deleted = log.enforce_retention(25_000).unwrap();
    assert!(deleted > 0 && deleted < segments - 1);
    let start = log.log_start_offset();
    assert_eq!(start, log.segment_base_offsets()[0]);
    assert!(start > 0);
    for seg in &log.segments[..log.segments.len() - 1] {
        assert!(25_000 - seg.max_timestamp() <= 10_000);
    }
    assert!(matches!(
        log.read(0, 100, MAX),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert!(!log.read(start, 100, MAX).unwrap().records.is_empty());
    // Far in the future: everything but the active segment goes.
    log.enforce_retention(1_000_000).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_end_offset(), 60);

    // The new log start is durable.
    let start = log.log_start_offset();
    crash(log);
    let log = open(dir.path(), small_segments());
    assert_eq!(log.log_start_offset(), start);
}

#[test]
fn retention_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: -1,
        retention_bytes: 3000,
        ..small_segments()
    };
    let mut log = open(dir.path(), config);
    for _ in 0..40 {
        log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    }
    log.set_high_watermark(80);
    let before = log.size_bytes();
    assert!(before > 6000);
    let deleted = log.enforce_retention(0).unwrap();
    assert!(deleted > 0);
    let after = log.size_bytes();
    // Kafka's rule: never below retention_bytes, and less than one segment above.
    assert!(after >= 3000, "{after}");
    assert!(after - log.segments[0].size() < 3000);
    assert!(log.log_start_offset() > 0);
    assert_eq!(log.enforce_retention(0).unwrap(), 0);
}

#[test]
fn index_lookups_across_many_batches_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 20_000,
        index_interval_bytes: 500,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config.clone());
    let mut expected = Vec::new();
    for i in 0..400usize {
        let n = 1 + i % 4;
        let a = log.append_as_leader(&batch(n, i as i64), 0, 0).unwrap();
        expected.push((a.base_offset, a.last_offset));
    }
    assert!(log.segment_count() > 3);
    assert!(log
        .segments
        .iter()
        .all(|s| s.offset_index().entries().len() > 5));
    let check = |log: &PartitionLog| {
        for &(base, last) in &expected {
            for o in base..=last {
                let r = log.read(o, 1, MAX).unwrap();
                assert_eq!(batches_in(&r.records), vec![(base, last, 0)], "offset {o}");
            }
        }
    };
    check(&log);
    log.close().unwrap();
    let log = open(dir.path(), config);
    check(&log);
}

#[test]
fn recovery_truncates_garbage_after_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for _ in 0..12 {
        log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    }
    let size = log.size_bytes();
    crash_with_garbage_tail(log);

    let mut log = open(dir.path(), small_segments());
    assert_eq!(log.log_end_offset(), 24);
    assert_eq!(log.size_bytes(), size);
    assert_eq!(
        batches_in(&log.read(0, 1 << 20, MAX).unwrap().records).len(),
        12
    );
    let a = log.append_as_leader(&batch(1, 0), 0, 0).unwrap();
    assert_eq!(a.base_offset, 24);
    assert_eq!(
        batches_in(&log.read(22, 1 << 20, MAX).unwrap().records),
        vec![(22, 23, 0), (24, 24, 0)]
    );
}

#[test]
fn the_clean_marker_stays_until_the_first_write_after_a_clean_open() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join(CLEAN_SHUTDOWN_FILE);
    let mut log = open(dir.path(), small_segments());
    log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    log.close().unwrap();

    // Opened and closed by kill -9 without a write: still clean.
    let mut log = open(dir.path(), small_segments());
    log.assign_epoch_start(1).unwrap();
    assert!(marker.exists());
    crash(log);

    // The first write takes the marker away before it touches a segment,
    // so a torn tail after a crash is recovered.
    let mut log = open(dir.path(), small_segments());
    log.append_as_leader(&batch(2, 0), 1, 0).unwrap();
    assert!(!marker.exists());
    let size = log.size_bytes();
    crash_with_garbage_tail(log);
    let log = open(dir.path(), small_segments());
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.size_bytes(), size);
}

#[test]
fn recovery_truncates_an_overwritten_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    for _ in 0..5 {
        log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    }
    let last_pos = log.active().find_position(8).unwrap().unwrap().0;
    let path = active_log_path(&log);
    crash(log);
    // Flip bytes inside the last batch's records: CRC no longer matches.
    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(last_pos + 80)).unwrap();
    f.write_all(b"garbage").unwrap();
    drop(f);

    let mut log = open(dir.path(), LogConfig::default());
    assert_eq!(log.log_end_offset(), 8);
    assert_eq!(log.size_bytes(), last_pos);
    assert_eq!(
        log.append_as_leader(&batch(1, 0), 0, 0)
            .unwrap()
            .base_offset,
        8
    );
}

#[test]
fn recovery_truncates_a_torn_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    for _ in 0..5 {
        log.append_as_leader(&batch(3, 0), 0, 0).unwrap();
    }
    let last_pos = log.active().find_position(14).unwrap().unwrap().0;
    let size = log.size_bytes();
    let path = active_log_path(&log);
    crash(log);
    // Half of the last batch made it to disk.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(last_pos + (size - last_pos) / 2)
        .unwrap();

    let mut log = open(dir.path(), LogConfig::default());
    assert_eq!(log.log_end_offset(), 12);
    assert_eq!(log.size_bytes(), last_pos);
    assert_eq!(
        log.append_as_leader(&batch(1, 0), 0, 0)
            .unwrap()
            .base_offset,
        12
    );

    // Only a few header bytes of a batch.
    let path = active_log_path(&log);
    crash(log);
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&batch(1, 0)[..20])
        .unwrap();
    let log = open(dir.path(), LogConfig::default());
    assert_eq!(log.log_end_offset(), 13);
}

#[test]
fn unclean_reopen_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for _ in 0..25 {
        log.append_as_leader(&batch(2, 7), 3, 0).unwrap();
    }
    let before = log.read(0, 1 << 20, MAX).unwrap().records;
    crash(log);
    let log = open(dir.path(), small_segments());
    assert_eq!(log.log_end_offset(), 50);
    assert_eq!(log.read(0, 1 << 20, MAX).unwrap().records, before);
    assert_eq!(log.latest_epoch(), Some(3));
}

#[test]
fn garbage_segments_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..20 {
        let d = dir.path().join(format!("p{round}"));
        std::fs::create_dir_all(&d).unwrap();
        // A valid first segment followed by garbage, then a garbage active one.
        let mut good = open(&d, LogConfig::default());
        good.append_as_leader(&batch(2, 0), 0, 0).unwrap();
        crash(good);
        let mut junk: Vec<u8> = (0..(rand() % 3000)).map(|_| rand() as u8).collect();
        if round % 2 == 0 && junk.len() > 20 {
            // Make it look like a v2 header so deeper checks run.
            junk[16] = 2;
            let len = junk.len() as i32 - 12;
            junk[8..12].copy_from_slice(&len.to_be_bytes());
        }
        OpenOptions::new()
            .append(true)
            .open(segment_file(&d, 0, "log"))
            .unwrap()
            .write_all(&junk)
            .unwrap();
        std::fs::write(segment_file(&d, 100, "log"), &junk).unwrap();
        std::fs::write(segment_file(&d, 100, "index"), &junk).unwrap();
        std::fs::write(d.join(EPOCH_FILE), &junk).unwrap();
        std::fs::write(d.join(CHECKPOINT_FILE), &junk).unwrap();
        std::fs::write(d.join(PRODUCER_SNAPSHOT_FILE), &junk).unwrap();
        let mut log = open(&d, LogConfig::default());
        let _ = log.read(log.log_start_offset(), 1 << 20, MAX).unwrap();
        log.append_as_leader(&batch(1, 0), 0, 0).unwrap();
    }
}

#[test]
fn high_watermark_and_log_start_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for _ in 0..20 {
        log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    }
    log.set_high_watermark(1000);
    assert_eq!(log.high_watermark(), 40);
    log.set_high_watermark(31);
    log.advance_log_start(9).unwrap();
    log.close().unwrap();
    assert!(dir.path().join(CLEAN_SHUTDOWN_FILE).exists());

    let mut log = open(dir.path(), small_segments());
    assert_eq!(log.high_watermark(), 31);
    assert_eq!(log.log_start_offset(), 9);
    assert_eq!(log.log_end_offset(), 40);
    log.set_high_watermark(35);
    log.checkpoint().unwrap();
    crash(log);
    let log = open(dir.path(), small_segments());
    assert_eq!(log.high_watermark(), 35);
}

#[test]
fn clamps_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for _ in 0..10 {
        log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    }
    log.advance_log_start(5).unwrap();
    log.set_high_watermark(0);
    assert_eq!(log.high_watermark(), 5);
    log.set_high_watermark(99);
    assert_eq!(log.high_watermark(), 20);
}

#[test]
fn missing_or_corrupt_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    for i in 0..30 {
        log.append_as_leader(&batch(2, i * 10), 0, 0).unwrap();
    }
    let indexes: Vec<Vec<_>> = log
        .segments
        .iter()
        .map(|s| s.offset_index().entries().to_vec())
        .collect();
    let times: Vec<Vec<_>> = log
        .segments
        .iter()
        .map(|s| s.time_index().entries().to_vec())
        .collect();
    let bases = log.segment_base_offsets();
    log.close().unwrap();
    for (i, base) in bases.iter().enumerate() {
        if i % 2 == 0 {
            std::fs::remove_file(segment_file(dir.path(), *base, "index")).unwrap();
            std::fs::remove_file(segment_file(dir.path(), *base, "timeindex")).unwrap();
        } else {
            std::fs::write(segment_file(dir.path(), *base, "index"), [9u8; 13]).unwrap();
        }
    }
    let log = open(dir.path(), small_segments());
    for (i, seg) in log.segments.iter().enumerate() {
        assert_eq!(seg.offset_index().entries(), &indexes[i][..]);
        assert!(segment_file(dir.path(), bases[i], "index").exists());
        assert!(segment_file(dir.path(), bases[i], "timeindex").exists());
        // Sealed segments got a final time entry the rebuild does not add.
        let n = seg.time_index().entries().len();
        assert_eq!(seg.time_index().entries(), &times[i][..n]);
    }
    for o in 0..60 {
        let r = log.read(o, 1, MAX).unwrap();
        let b = batches_in(&r.records);
        assert!(b[0].0 <= o && o <= b[0].1);
    }
    assert_eq!(log.offset_for_timestamp(105).unwrap(), Some((22, 110)));
}

#[test]
fn bad_batches_are_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    log.append_as_leader(&batch(1, 0), 0, 0).unwrap();
    let size = log.size_bytes();
    let good = batch(2, 0);

    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 1;
    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    let mut bad_len = good.clone();
    bad_len[8..12].copy_from_slice(&(good.len() as i32).to_be_bytes());
    let mut short_len = good.clone();
    short_len[8..12].copy_from_slice(&20i32.to_be_bytes());
    let mut then_bad = good.clone();
    then_bad.extend_from_slice(&bad_crc);
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0, 0, 0]);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("crc", bad_crc),
        ("magic", bad_magic),
        ("length past end", bad_len),
        ("length too short", short_len),
        ("good then bad", then_bad),
        ("trailing bytes", trailing),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        let err = log.append_as_leader(&bytes, 0, 0).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::CorruptBatch(_) | StorageError::InvalidRecord(_)
            ),
            "{what}: {err:?}"
        );
        assert_eq!(log.size_bytes(), size, "{what}");
        assert_eq!(log.log_end_offset(), 1, "{what}");
    }
    let mut magic0 = good.clone();
    magic0[16] = 0;
    assert!(matches!(
        log.append_as_leader(&magic0, 0, 0),
        Err(StorageError::InvalidRecord(_))
    ));
    let mut crc = good.clone();
    crc[30] ^= 1;
    assert!(matches!(
        log.append_as_leader(&crc, 0, 0),
        Err(StorageError::CorruptBatch(_))
    ));

    let mut log = open(
        &dir.path().join("small"),
        LogConfig {
            max_message_bytes: 300,
            ..LogConfig::default()
        },
    );
    let big = batch(5, 0);
    assert!(matches!(
        log.append_as_leader(&big, 0, 0),
        Err(StorageError::MessageTooLarge { max: 300, size }) if size == big.len()
    ));
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn idempotent_producer_dedup_and_sequence_checks() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    log.append_as_leader(&batch(2, 0), 0, 0).unwrap(); // offsets 0-1, no producer
    let a = log.append_as_leader(&idem(7, 0, 0, 3), 0, 0).unwrap();
    assert_eq!((a.base_offset, a.last_offset, a.duplicate), (2, 4, false));
    let b = log.append_as_leader(&idem(7, 0, 3, 2), 0, 0).unwrap();
    assert_eq!((b.base_offset, b.last_offset), (5, 6));

    // Retries: answered with the original offsets, nothing written.
    let size = log.size_bytes();
    let dup = log.append_as_leader(&idem(7, 0, 0, 3), 0, 0).unwrap();
    assert_eq!(
        (dup.base_offset, dup.last_offset, dup.duplicate),
        (2, 4, true)
    );
    let dup = log.append_as_leader(&idem(7, 0, 3, 2), 0, 0).unwrap();
    assert_eq!(
        (dup.base_offset, dup.last_offset, dup.duplicate),
        (5, 6, true)
    );
    assert_eq!(log.size_bytes(), size);
    assert_eq!(log.log_end_offset(), 7);

    // Gap.
    assert!(matches!(
        log.append_as_leader(&idem(7, 0, 6, 1), 0, 0),
        Err(StorageError::OutOfOrderSequence {
            expected: 5,
            received: 6,
            ..
        })
    ));
    // New epoch must restart at 0.
    assert!(matches!(
        log.append_as_leader(&idem(7, 1, 5, 1), 0, 0),
        Err(StorageError::OutOfOrderSequence { .. })
    ));
    assert_eq!(
        log.append_as_leader(&idem(7, 1, 0, 1), 0, 0)
            .unwrap()
            .base_offset,
        7
    );
    // Old epoch is fenced.
    assert!(matches!(
        log.append_as_leader(&idem(7, 0, 5, 1), 0, 0),
        Err(StorageError::InvalidProducerEpoch {
            epoch: 0,
            current: 1,
            ..
        })
    ));
    // Unknown producer: any starting sequence.
    assert_eq!(
        log.append_as_leader(&idem(8, 4, 42, 1), 0, 0)
            .unwrap()
            .base_offset,
        8
    );

    // A multi-batch append is all or nothing, and checked against itself.
    let mut two = idem(9, 0, 0, 2);
    two.extend_from_slice(&idem(9, 0, 5, 1));
    assert!(matches!(
        log.append_as_leader(&two, 0, 0),
        Err(StorageError::OutOfOrderSequence { .. })
    ));
    assert_eq!(log.log_end_offset(), 9);
    assert!(log.producer_state().get(9).is_none());
    let mut two = idem(9, 0, 0, 2);
    two.extend_from_slice(&idem(9, 0, 2, 1));
    let a = log.append_as_leader(&two, 0, 0).unwrap();
    assert_eq!((a.base_offset, a.last_offset), (9, 11));
    let dup = log.append_as_leader(&two, 0, 0).unwrap();
    assert_eq!(
        (dup.base_offset, dup.last_offset, dup.duplicate),
        (9, 11, true)
    );
}

#[test]
fn producer_state_survives_reopen() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), small_segments());
        for i in 0..20 {
            log.append_as_leader(&idem(1, 2, i * 2, 2), 0, 0).unwrap();
            log.append_as_leader(&batch(1, 0), 0, 0).unwrap();
        }
        if clean {
            log.close().unwrap();
            assert!(dir.path().join(PRODUCER_SNAPSHOT_FILE).exists());
        } else {
            crash(log);
        }
        let mut log = open(dir.path(), small_segments());
        let dup = log.append_as_leader(&idem(1, 2, 38, 2), 0, 0).unwrap();
        assert!(dup.duplicate, "clean={clean}");
        assert_eq!((dup.base_offset, dup.last_offset), (57, 58));
        assert!(matches!(
            log.append_as_leader(&idem(1, 2, 41, 1), 0, 0),
            Err(StorageError::OutOfOrderSequence { .. })
        ));
        assert!(matches!(
            log.append_as_leader(&idem(1, 1, 0, 1), 0, 0),
            Err(StorageError::InvalidProducerEpoch { .. })
        ));
        assert_eq!(
            log.append_as_leader(&idem(1, 2, 40, 1), 0, 0)
                .unwrap()
                .base_offset,
            60
        );

        // Snapshot plus the batches written after it.
        log.checkpoint().unwrap();
        log.append_as_leader(&idem(1, 2, 41, 1), 0, 0).unwrap();
        crash(log);
        let mut log = open(dir.path(), small_segments());
        assert!(
            log.append_as_leader(&idem(1, 2, 41, 1), 0, 0)
                .unwrap()
                .duplicate
        );
        assert_eq!(
            log.append_as_leader(&idem(1, 2, 42, 1), 0, 0)
                .unwrap()
                .base_offset,
            62
        );
    }
}

#[test]
fn truncate_to_drops_the_tail_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 400,
        index_interval_bytes: 100,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config.clone());
    for i in 0..30 {
        let epoch = if i < 10 {
            1
        } else if i < 20 {
            2
        } else {
            3
        };
        log.append_as_leader(&idem(5, 0, i * 2, 2), epoch, 0)
            .unwrap();
    }
    log.set_high_watermark(60);
    assert_eq!(log.end_offset_for_epoch(2), (2, 40));
    let segments = log.segment_count();
    assert!(segments > 4);
    log.checkpoint().unwrap();

    log.truncate_to(35).unwrap(); // inside the batch 34-35: it goes too
    assert_eq!(log.log_end_offset(), 34);
    assert_eq!(log.high_watermark(), 34);
    assert!(log.segment_count() < segments);
    assert!(log.segments.iter().all(|s| s.base_offset() < 34));
    assert_eq!(log.latest_epoch(), Some(2));
    assert_eq!(log.end_offset_for_epoch(2), (2, 34));
    assert_eq!(log.end_offset_for_epoch(3), (-1, -1));
    let r = log.read(30, 1 << 20, MAX).unwrap();
    assert_eq!(batches_in(&r.records), vec![(30, 31, 2), (32, 33, 2)]);
    // Producer state follows: the truncated sequences are new again.
    let a = log.append_as_leader(&idem(5, 0, 34, 2), 4, 0).unwrap();
    assert!(!a.duplicate);
    assert_eq!(a.base_offset, 34);
    assert_eq!(log.end_offset_for_epoch(2), (2, 34));
    assert_eq!(log.end_offset_for_epoch(3), (2, 34));
    assert_eq!(log.end_offset_for_epoch(4), (4, 36));

    // Persisted consistently.
    crash(log);
    let mut log = open(dir.path(), config);
    assert_eq!(log.log_end_offset(), 36);
    assert_eq!(log.end_offset_for_epoch(4), (4, 36));
    assert!(
        log.append_as_leader(&idem(5, 0, 34, 2), 4, 0)
            .unwrap()
            .duplicate
    );

    // Past the end: nothing happens. Below the first segment: start over.
    log.truncate_to(1000).unwrap();
    assert_eq!(log.log_end_offset(), 36);
    log.truncate_to(0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.latest_epoch(), None);
    assert_eq!(log.size_bytes(), 0);
}

#[test]
fn end_offset_for_epoch_tracks_leader_appends() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    assert_eq!(log.end_offset_for_epoch(0), (-1, -1));
    log.append_as_leader(&batch(2, 0), 1, 0).unwrap(); // 0-1
    log.append_as_leader(&batch(2, 0), 1, 0).unwrap(); // 2-3
    log.append_as_leader(&batch(3, 0), 3, 0).unwrap(); // 4-6
    log.append_as_leader(&batch(1, 0), 5, 0).unwrap(); // 7
    assert_eq!(log.latest_epoch(), Some(5));
    assert_eq!(
        log.leader_epochs(),
        &[
            EpochEntry {
                epoch: 1,
                start_offset: 0
            },
            EpochEntry {
                epoch: 3,
                start_offset: 4
            },
            EpochEntry {
                epoch: 5,
                start_offset: 7
            }
        ]
    );
    assert_eq!(log.end_offset_for_epoch(5), (5, 8));
    assert_eq!(log.end_offset_for_epoch(4), (3, 7));
    assert_eq!(log.end_offset_for_epoch(3), (3, 7));
    assert_eq!(log.end_offset_for_epoch(2), (1, 4));
    assert_eq!(log.end_offset_for_epoch(1), (1, 4));
    assert_eq!(log.end_offset_for_epoch(0), (0, 0));
    assert_eq!(log.end_offset_for_epoch(6), (-1, -1));
    log.close().unwrap();
    let log = open(dir.path(), LogConfig::default());
    assert_eq!(log.end_offset_for_epoch(4), (3, 7));

    // Rebuilt from the batches if the checkpoint file is lost.
    drop(log);
    std::fs::remove_file(dir.path().join(EPOCH_FILE)).unwrap();
    let log = open(dir.path(), LogConfig::default());
    assert_eq!(log.leader_epochs().len(), 3);
    assert_eq!(log.end_offset_for_epoch(2), (1, 4));
}

#[test]
fn offset_for_timestamp_and_max_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
    assert_eq!(log.max_timestamp(), None);
    // Batch i: offsets 2i..2i+1, timestamps 100i, 100i+1 (batch max 100i+1).
    for i in 0..40 {
        log.append_as_leader(&batch(2, i * 100), 0, 0).unwrap();
    }
    // An out-of-order older timestamp does not move the max.
    log.append_as_leader(&batch(2, 50), 0, 0).unwrap();
    assert!(log.segment_count() > 3);
    // The exact record, as Kafka answers: not the batch's first or max.
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(1).unwrap(), Some((1, 1)));
    assert_eq!(log.offset_for_timestamp(2).unwrap(), Some((2, 100)));
    assert_eq!(log.offset_for_timestamp(1550).unwrap(), Some((32, 1600)));
    assert_eq!(log.offset_for_timestamp(3901).unwrap(), Some((79, 3901)));
    assert_eq!(log.offset_for_timestamp(3902).unwrap(), None);
    assert_eq!(log.max_timestamp(), Some((3901, 79)));
    for i in 0..40 {
        assert_eq!(
            log.offset_for_timestamp(i * 100).unwrap(),
            Some((2 * i, i * 100))
        );
    }
    // Below the log start nothing is returned.
    log.advance_log_start(13).unwrap();
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((13, 601)));
}

#[test]
fn follower_append_copies_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open(&dir.path().join("leader"), small_segments());
    for i in 0..20 {
        leader
            .append_as_leader(&batch(2, i), 1 + (i as i32 / 8), 0)
            .unwrap();
    }
    leader.append_as_leader(&idem(3, 0, 0, 2), 4, 0).unwrap();
    let mut follower = open(&dir.path().join("follower"), small_segments());
    let mut fetched = 0;
    while follower.log_end_offset() < leader.log_end_offset() {
        let r = leader.read(follower.log_end_offset(), 700, MAX).unwrap();
        let a = follower.append_as_follower(&r.records).unwrap().unwrap();
        assert_eq!(a.last_offset + 1, follower.log_end_offset());
        fetched += 1;
    }
    assert!(fetched > 3);
    assert_eq!(
        follower.read(0, 1 << 20, MAX).unwrap().records,
        leader.read(0, 1 << 20, MAX).unwrap().records
    );
    assert_eq!(follower.leader_epochs(), leader.leader_epochs());
    assert_eq!(follower.producer_state(), leader.producer_state());

    // Already have it: skipped.
    let r = leader.read(30, 1 << 20, MAX).unwrap();
    assert_eq!(follower.append_as_follower(&r.records).unwrap(), None);
    // Overlapping the end is an error, as are corrupt batches.
    let mut straddle = BatchBuilder::new(0).base_offset(follower.log_end_offset() - 1);
    straddle = straddle.record(0, None, None).record(0, None, None);
    assert!(matches!(
        follower.append_as_follower(&straddle.build()),
        Err(StorageError::UnexpectedAppendOffset { .. })
    ));
    let mut bad = BatchBuilder::new(0)
        .base_offset(100)
        .record(0, None, None)
        .build();
    bad[65] ^= 1;
    assert!(matches!(
        follower.append_as_follower(&bad),
        Err(StorageError::CorruptBatch(_))
    ));

    // A follower may be told to start over where the leader's log starts.
    follower.truncate_fully_and_start_at(1000).unwrap();
    let b = BatchBuilder::new(0)
        .base_offset(1000)
        .leader_epoch(9)
        .record(0, None, None)
        .build();
    follower.append_as_follower(&b).unwrap();
    assert_eq!(
        (follower.log_start_offset(), follower.log_end_offset()),
        (1000, 1001)
    );
    assert_eq!(follower.end_offset_for_epoch(9), (9, 1001));
    // A gap too large for 32-bit relative offsets gets a new segment.
    let far = 1001 + (1i64 << 33);
    let b = BatchBuilder::new(0)
        .base_offset(far)
        .leader_epoch(9)
        .record(0, None, None)
        .build();
    follower.append_as_follower(&b).unwrap();
    assert_eq!(follower.log_end_offset(), far + 1);
    assert_eq!(*follower.segment_base_offsets().last().unwrap(), far);
    assert_eq!(
        batches_in(&follower.read(far, 100, MAX).unwrap().records),
        vec![(far, far, 9)]
    );
}

#[test]
fn advance_log_start_to_the_end_rolls_and_deletes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    for _ in 0..5 {
        log.append_as_leader(&batch(2, 0), 0, 0).unwrap();
    }
    log.advance_log_start(10).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![10]);
    assert_eq!(log.size_bytes(), 0);
    assert!(log.read(10, 100, MAX).unwrap().records.is_empty());
    log.close().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (10, 10));
    assert_eq!(
        log.append_as_leader(&batch(1, 0), 0, 0)
            .unwrap()
            .base_offset,
        10
    );
}

#[test]
fn empty_log_reopens_at_its_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    log.truncate_fully_and_start_at(77).unwrap();
    log.close().unwrap();
    let log = open(dir.path(), LogConfig::default());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (77, 77));
}

#[test]
fn delete_removes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topic-0");
    let mut log = open(&path, LogConfig::default());
    log.append_as_leader(&batch(1, 0), 0, 0).unwrap();
    log.delete().unwrap();
    assert!(!path.exists());
}

#[test]
fn follower_jumping_ahead_on_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    let far = 5i64 << 32;
    let b = BatchBuilder::new(0)
        .base_offset(far)
        .leader_epoch(2)
        .record(0, None, None)
        .build();
    log.append_as_follower(&b).unwrap();
    assert_eq!(log.segment_base_offsets(), vec![far]);
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (far, far + 1)
    );
    crash(log);
    let log = open(dir.path(), LogConfig::default());
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (far, far + 1)
    );
    assert_eq!(log.end_offset_for_epoch(2), (2, far + 1));
}

#[test]
fn max_timestamp_below_an_offset_ignores_the_batches_at_or_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), small_segments());
    // Two records per batch; batch i's records have timestamps t_i, t_i + 1.
    // One early outlier, and equal maxima (the first batch carrying it wins).
    let firsts: Vec<i64> = (0..30)
        .map(|i| match i {
            7 => 9_000,
            20 | 24 => 20_000,
            i => i * 100,
        })
        .collect();
    for &t in &firsts {
        log.append_as_leader(&batch(2, t), 0, 0).unwrap();
    }
    assert!(log.segment_count() > 3);
    for end in 0..=log.log_end_offset() {
        // Batch i holds offsets 2i and 2i + 1; its max record is the second.
        let expected = firsts
            .iter()
            .enumerate()
            .filter(|&(i, _)| 2 * i as i64 + 1 < end)
            .fold(None, |best: Option<(i64, i64)>, (i, &t)| match best {
                Some((ts, _)) if ts > t => best,
                _ => Some((t + 1, 2 * i as i64 + 1)),
            });
        assert_eq!(
            log.max_timestamp_below(end).unwrap(),
            expected,
            "below {end}"
        );
    }
    assert_eq!(log.max_timestamp(), Some((20_001, 41)));
}

#[test]
fn a_read_allocates_no_more_than_lies_below_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    for _ in 0..3 {
        log.append_as_leader(&batch(10, 1_000), 0, 0).unwrap();
    }
    log.set_high_watermark(30);
    // 8 MiB more in the same segment, above the high watermark.
    for _ in 0..1_000 {
        log.append_as_leader(&batch(80, 1_000), 0, 0).unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    // A consumer asking for up to 1 GiB from the start.
    let (largest, read) =
        sluice_test_alloc::largest_allocation(|| log.read(0, 1 << 30, 30).unwrap());
    assert_eq!(batches_in(&read.records).len(), 3);
    let returned = read.records.len();
    // The index scan reads in windows of a few KiB; nothing near the 8 MiB.
    assert!(
        largest <= returned.max(64 << 10),
        "returned {returned} bytes but allocated {largest} at once"
    );
    // Reading from the middle of the committed part, and a bound inside a
    // later segment's range, return the same whole batches as before.
    let read = log.read(10, 1 << 30, 30).unwrap();
    assert_eq!(batches_in(&read.records), vec![(10, 19, 0), (20, 29, 0)]);
    let read = log.read(0, 1 << 30, 31).unwrap();
    assert_eq!(
        batches_in(&read.records).len(),
        4,
        "the batch holding the bound is included"
    );
}

/// More logs than the process may keep files open for: files are closed
/// and reopened under them, and appends, reads, rolls, flushes and reopens
/// do not notice. (The budget is the process's: other tests running now
/// share it, and must not notice either.)
#[test]
fn logs_work_with_more_segments_than_open_files() {
    let dir = tempfile::tempdir().unwrap();
    crate::open_files::set_budget(8);
    let mut logs: Vec<PartitionLog> = (0..40)
        .map(|i| open(&dir.path().join(format!("p-{i}")), small_segments()))
        .collect();
    for round in 0..3 {
        for log in &mut logs {
            log.append_as_leader(&batch(2, round * 10), 1, 0).unwrap();
        }
    }
    for (i, log) in logs.iter_mut().enumerate() {
        assert_eq!(log.log_end_offset(), 6, "log {i}");
        let read = log.read(0, 1 << 20, MAX).unwrap();
        assert_eq!(batches_in(&read.records).len(), 3, "log {i}");
        log.checkpoint().unwrap();
    }
    // Half close cleanly, half crash: all reopen whole.
    for (i, log) in logs.into_iter().enumerate() {
        if i % 2 == 0 {
            log.close().unwrap();
        } else {
            crash(log);
        }
    }
    for i in 0..40 {
        let log = open(&dir.path().join(format!("p-{i}")), small_segments());
        assert_eq!(log.log_end_offset(), 6, "log {i} reopened");
        let read = log.read(2, 1 << 20, MAX).unwrap();
        assert_eq!(batches_in(&read.records)[0].0, 2, "log {i} reopened");
    }
    crate::open_files::set_budget(4096);
}
