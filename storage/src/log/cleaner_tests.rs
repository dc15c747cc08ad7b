//! Log compaction: what a clean keeps, when it runs, and that a crash at
//! any step of it loses nothing.

use std::collections::BTreeMap;

use super::*;
use crate::batch::BatchBuilder;

const HOUR: i64 = 3_600_000;

fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1000,
        index_interval_bytes: 300,
        cleanup_delete: false,
        cleanup_compact: true,
        delete_retention_ms: HOUR,
        ..LogConfig::default()
    }
}

/// One record `key = value` (None: a tombstone) with timestamp `ts`.
fn put(log: &mut PartitionLog, key: &str, value: Option<&str>, ts: i64) -> i64 {
    let b = BatchBuilder::new(ts)
        .record(ts, Some(key.as_bytes()), value.map(str::as_bytes))
        .build();
    let at = log.append_as_leader(&b, 0, ts).unwrap().base_offset;
    log.set_high_watermark(log.log_end_offset());
    at
}

/// Every record readable from the log start: (offset, key, value).
fn records(log: &PartitionLog) -> Vec<(i64, String, Option<String>)> {
    let r = log
        .read(
            log.log_start_offset(),
            usize::MAX >> 1,
            log.log_end_offset(),
        )
        .unwrap();
    let mut out = Vec::new();
    for (pos, h) in batch::validate_all(&r.records, Origin::Replica).unwrap() {
        if h.compression() != 0 {
            continue;
        }
        for rec in batch::records(&r.records[pos..pos + h.size()]).unwrap() {
            out.push((
                h.base_offset + rec.offset_delta,
                String::from_utf8(rec.key.unwrap().to_vec()).unwrap(),
                rec.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
            ));
        }
    }
    out
}

/// What a consumer reading from the start ends up with: key -> (offset,
/// value) of the last record seen.
fn view(log: &PartitionLog) -> BTreeMap<String, (i64, Option<String>)> {
    records(log)
        .into_iter()
        .map(|(o, k, v)| (k, (o, v)))
        .collect()
}

/// 20 keys, each written 30 times, round robin; then filler to seal.
fn overwritten_log(dir: &Path) -> (PartitionLog, BTreeMap<String, (i64, Option<String>)>) {
    let mut log = open_log(dir);
    for round in 0..30 {
        for k in 0..20 {
            put(&mut log, &format!("k{k}"), Some(&format!("v{round}")), 1000);
        }
    }
    let expected = view(&log);
    (log, expected)
}

fn open_log(dir: &Path) -> PartitionLog {
    PartitionLog::open(dir, compact_config()).unwrap()
}

/// Swap files and the cleaner's work directory, which only a clean in
/// progress has.
fn leftover_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".swap") || n == "cleaner")
        .collect()
}

#[test]
fn keys_overwritten_many_times_shrink_to_their_latest_values() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, expected) = overwritten_log(dir.path());
    let before = records(&log).len();
    let segments_before = log.segment_count();
    assert!(segments_before > 5);

    let stats = log.clean(1000).unwrap().expect("a fresh log is all dirty");
    assert!(stats.records_removed > 0);
    assert_eq!(
        view(&log),
        expected,
        "every key keeps its latest value and offset"
    );
    let after = records(&log);
    assert!(
        after.len() < before / 5,
        "{} records left of {before}",
        after.len()
    );
    // Only the active segment (never cleaned) may repeat a key.
    let active_base = *log.segment_base_offsets().last().unwrap();
    let mut seen = std::collections::HashSet::new();
    for (o, k, _) in &after {
        if *o < active_base {
            assert!(seen.insert(k.clone()), "{k} twice in the cleaned part");
        }
    }
    assert!(
        log.segment_count() < segments_before,
        "small segments are merged"
    );
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 600));

    // Nothing new is dirty: the next pass has nothing to do.
    assert!(log.clean(1000).unwrap().is_none());
    // The cleaned log reopens the same, cleanly or not.
    drop(log);
    let log = open_log(dir.path());
    assert_eq!(view(&log), expected);
    assert_eq!(log.log_end_offset(), 600);
    assert!(leftover_files(dir.path()).is_empty());
}

#[test]
fn tombstones_go_after_delete_retention_ms() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_log(dir.path());
    put(&mut log, "gone", Some("v1"), 1000);
    put(&mut log, "kept", Some("v1"), 1000);
    put(&mut log, "gone", None, 1000);
    for i in 0..40 {
        put(&mut log, &format!("filler{}", i % 5), Some("x"), 1000);
    }
    let t0 = 10_000;
    log.clean(t0).unwrap().unwrap();
    let v = view(&log);
    assert_eq!(
        v["gone"],
        (2, None),
        "the tombstone outlives the first clean"
    );
    assert_eq!(v["kept"], (1, Some("v1".into())));
    assert_eq!(records(&log).iter().filter(|r| r.1 == "gone").count(), 1);

    // Before the horizon nothing is due; at it, a pass removes the tombstone
    // though nothing new is dirty.
    assert!(log.clean(t0 + HOUR - 1).unwrap().is_none());
    assert_eq!(view(&log)["gone"], (2, None));
    let stats = log.clean(t0 + HOUR).unwrap().unwrap();
    assert_eq!(stats.tombstones_removed, 1);
    assert!(!view(&log).contains_key("gone"));
    assert_eq!(view(&log)["kept"], (1, Some("v1".into())));
    assert!(
        log.clean(t0 + 2 * HOUR).unwrap().is_none(),
        "no horizon left"
    );
}

#[test]
fn the_delete_horizon_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_log(dir.path());
    put(&mut log, "gone", Some("v1"), 1000);
    put(&mut log, "gone", None, 1000);
    for i in 0..40 {
        put(&mut log, &format!("filler{}", i % 5), Some("x"), 1000);
    }
    log.clean(10_000).unwrap().unwrap();
    log.checkpoint().unwrap();
    drop(log);
    let mut log = open_log(dir.path());
    assert_eq!(view(&log)["gone"], (1, None));
    assert!(log.clean(10_000 + HOUR - 1).unwrap().is_none());
    log.clean(10_000 + HOUR).unwrap().unwrap();
    assert!(!view(&log).contains_key("gone"));
}

#[test]
fn min_compaction_lag_ms_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = compact_config();
    config.min_compaction_lag_ms = 5000;
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    for round in 0..20 {
        for k in 0..5 {
            put(&mut log, &format!("k{k}"), Some(&format!("v{round}")), 1000);
        }
    }
    let before = records(&log);
    // Every record is 4 s old: too young.
    assert!(log.clean(5000).unwrap().is_none());
    assert_eq!(records(&log), before);
    // At 6 s they may go.
    log.clean(6001).unwrap().unwrap();
    assert!(records(&log).len() < before.len());
}

#[test]
fn min_cleanable_dirty_ratio_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = compact_config();
    config.min_cleanable_dirty_ratio = 0.5;
    config.segment_bytes = 600;
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    // 100 distinct keys: a clean removes nothing, so the clean part stays big.
    for k in 0..100 {
        put(&mut log, &format!("key{k:03}"), Some("v"), 1000);
    }
    log.clean(2000).unwrap().unwrap();
    let clean_size = log.size_bytes();
    // A little new dirty data: below the ratio, nothing happens.
    for _ in 0..20 {
        put(&mut log, "key000", Some("w"), 1000);
    }
    assert!(log.clean(2000).unwrap().is_none());
    // Enough to pass half of the cleanable bytes.
    while log.size_bytes() < clean_size * 5 / 2 {
        put(&mut log, "key001", Some("w"), 1000);
    }
    let stats = log.clean(2000).unwrap().unwrap();
    assert!(stats.records_removed > 20);
    assert_eq!(view(&log)["key000"].1.as_deref(), Some("w"));
}

#[test]
fn max_compaction_lag_ms_overrides_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = compact_config();
    config.min_cleanable_dirty_ratio = 0.99;
    config.max_compaction_lag_ms = 10_000;
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    for k in 0..100 {
        put(&mut log, &format!("key{k:03}"), Some("v"), 1000);
    }
    log.clean(2000).unwrap().unwrap();
    for _ in 0..20 {
        put(&mut log, "key000", Some("w"), 1000);
    }
    assert!(log.clean(2000).unwrap().is_none(), "below the ratio");
    assert!(
        log.clean(11_001).unwrap().is_some(),
        "past max.compaction.lag.ms"
    );
}

#[test]
fn compact_only_logs_are_not_deleted_by_retention_but_compact_delete_ones_are() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = compact_config();
    config.retention_ms = 1000;
    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    for i in 0..50 {
        put(&mut log, &format!("k{i}"), Some("v"), 1000);
    }
    assert_eq!(log.enforce_retention(1_000_000).unwrap(), 0);
    assert_eq!(log.log_start_offset(), 0);

    config.cleanup_delete = true;
    log.set_config(config);
    assert!(log.enforce_retention(1_000_000).unwrap() > 0);
    assert!(log.log_start_offset() > 0);
    // And it still compacts.
    let end = log.log_end_offset();
    for _ in 0..30 {
        put(&mut log, "k49", Some("w"), 1_000_000);
    }
    log.clean(1_000_000).unwrap().unwrap();
    assert_eq!(view(&log)["k49"].1.as_deref(), Some("w"));
    assert!(log.log_end_offset() > end);
}

#[test]
fn compacted_logs_refuse_records_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_log(dir.path());
    let keyless = BatchBuilder::new(0).record(0, None, Some(b"v")).build();
    assert!(matches!(
        log.append_as_leader(&keyless, 0, 0),
        Err(StorageError::InvalidRecord(m)) if m.contains("without key")
    ));
    assert_eq!(log.log_end_offset(), 0);
    let mut config = compact_config();
    config.cleanup_compact = false;
    config.cleanup_delete = true;
    log.set_config(config);
    log.append_as_leader(&keyless, 0, 0).unwrap();
}

#[test]
fn compressed_batches_are_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_log(dir.path());
    // A "gzip" batch the crate cannot read: its bytes must survive as they are.
    let mut zipped = BatchBuilder::new(1000)
        .record(1000, Some(b"k"), Some(b"old"))
        .build();
    zipped[22] |= 1; // attributes: gzip
    let crc = batch::compute_crc(&zipped);
    zipped[17..21].copy_from_slice(&crc.to_be_bytes());
    log.append_as_leader(&zipped, 0, 1000).unwrap();
    log.set_high_watermark(log.log_end_offset());
    for _ in 0..40 {
        put(&mut log, "k", Some("new"), 1000);
    }
    let stats = log.clean(2000).unwrap().unwrap();
    assert_eq!(stats.batches_kept_whole, 1);
    let r = log.read(0, 1 << 20, 1).unwrap();
    let first = batch::validate_all(&r.records, Origin::Replica).unwrap()[0].1;
    // Identical but for the offset and leader epoch the log stamped.
    assert_eq!(&r.records[17..first.size()], &zipped[17..]);
    assert_eq!(view(&log)["k"].1.as_deref(), Some("new"));
}

#[test]
fn the_last_batch_of_an_idempotent_producer_survives_as_an_empty_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_log(dir.path());
    for seq in 0..3 {
        let b = BatchBuilder::new(1000)
            .producer(42, 0, seq)
            .record(1000, Some(b"k"), Some(b"from 42"))
            .build();
        log.append_as_leader(&b, 0, 1000).unwrap();
    }
    for _ in 0..40 {
        put(&mut log, "k", Some("later"), 1000);
    }
    log.clean(2000).unwrap().unwrap();
    assert!(records(&log)
        .iter()
        .all(|r| r.2.as_deref() != Some("from 42")));
    // Producer state rebuilt from the log alone still knows producer 42.
    drop(log);
    std::fs::remove_file(dir.path().join(PRODUCER_SNAPSHOT_FILE)).ok();
    let mut log = open_log(dir.path());
    let entry = log
        .producer_state()
        .get(42)
        .expect("producer 42 survives the clean");
    assert_eq!(entry.batches.back().unwrap().last_seq, 2);
    let next = BatchBuilder::new(1000)
        .producer(42, 0, 3)
        .record(1000, Some(b"k"), Some(b"again"))
        .build();
    log.append_as_leader(&next, 0, 1000).unwrap();
    // A retry of the last batch is still recognised.
    let retry = BatchBuilder::new(1000)
        .producer(42, 0, 3)
        .record(1000, Some(b"k"), Some(b"again"))
        .build();
    assert!(log.append_as_leader(&retry, 0, 1000).unwrap().duplicate);
}

#[test]
fn nothing_at_or_above_the_high_watermark_is_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_log(dir.path());
    for round in 0..30 {
        for k in 0..5 {
            put(&mut log, &format!("k{k}"), Some(&format!("v{round}")), 1000);
        }
    }
    log.set_high_watermark(0);
    assert!(log.clean(2000).unwrap().is_none());
    log.set_high_watermark(60);
    log.clean(2000).unwrap().unwrap();
    // Every record from the segment holding offset 60 on is still there.
    let kept: Vec<i64> = records(&log).iter().map(|r| r.0).collect();
    let first_kept_whole = kept.iter().position(|&o| o >= 60).unwrap();
    let tail = &kept[first_kept_whole..];
    assert_eq!(tail.last(), Some(&149));
    assert!(tail.windows(2).filter(|w| w[1] != w[0] + 1).count() <= 1);
}

/// A kill -9 at each step of a clean: the log reopens with every key's
/// latest value at its offset, and no cleaner file is left behind.
#[test]
fn a_crash_at_any_step_of_a_clean_loses_nothing() {
    for step in 1..=4u8 {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, expected) = overwritten_log(dir.path());
        let before = records(&log).len();
        log.checkpoint().unwrap();
        cleaner::crash::AT.with(|c| c.set(Some(step)));
        let r = log.clean(2000);
        cleaner::crash::AT.with(|c| c.set(None));
        assert!(r.is_err(), "step {step}: the simulated crash happened");
        let on_disk = leftover_files(dir.path());
        let cleaned: Vec<_> = std::fs::read_dir(dir.path().join("cleaner"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        match step {
            1 => assert!(
                cleaned.len() >= 3,
                "a cleaned segment with indexes: {cleaned:?}"
            ),
            2 | 3 => assert!(on_disk.iter().any(|n| n.ends_with(".swap")), "{on_disk:?}"),
            _ => {}
        }
        drop(log);

        let mut log = open_log(dir.path());
        assert_eq!(view(&log), expected, "step {step}");
        assert_eq!(log.log_end_offset(), 600, "step {step}");
        assert!(leftover_files(dir.path()).is_empty(), "step {step}");
        if step >= 2 {
            assert!(
                records(&log).len() < before,
                "step {step}: the swap was finished"
            );
        }
        // The log goes on: appends, and a clean to the end.
        put(&mut log, "k0", Some("after"), 1000);
        for i in 0..20 {
            put(&mut log, &format!("filler{i}"), Some("x"), 1000);
        }
        log.clean(3000).unwrap();
        assert_eq!(view(&log)["k0"].1.as_deref(), Some("after"), "step {step}");
        assert_eq!(view(&log)["k7"], expected["k7"], "step {step}");
    }
}

#[test]
fn truncation_during_a_clean_drops_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = overwritten_log(dir.path());
    let plan = log.plan_clean(2000).unwrap();
    let output = plan.run().unwrap();
    log.truncate_to(100).unwrap();
    let stats = log.finish_clean(output).unwrap();
    assert_eq!(stats.segments_swapped, 0);
    assert_eq!(log.log_end_offset(), 100);
    assert!(leftover_files(dir.path()).is_empty());
    // What was truncated comes back dirty.
    for i in 0..200 {
        put(&mut log, &format!("k{}", i % 3), Some("new"), 1000);
    }
    log.clean(2000).unwrap().unwrap();
    assert_eq!(view(&log)["k1"].1.as_deref(), Some("new"));
    assert_eq!(view(&log)["k19"].0, 99);
}

#[test]
fn a_clean_never_recreates_a_deleted_partition_directory() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("t-0");
    let (log, _) = overwritten_log(&part);
    let plan = log.plan_clean(2000).unwrap();
    log.delete().unwrap();
    assert!(plan.run().is_err());
    assert!(!part.exists());
}
