//! Seeded power-loss tests on the test file system ([`crate::fs::sim`]).
//!
//! Each case drives a log through a random run of appends (as leader and as
//! follower), new leader epochs, segment rolls, flushes, checkpoints
//! (high watermark, log start, producer snapshot), truncations, log start
//! moves and retention, and clean close/reopen; cuts the power at a random
//! point (between two file system calls of a random step); lets the disk
//! keep only what a real one could; reopens, and checks:
//!
//! - the log opens, and takes and keeps new appends;
//! - nothing that was fsynced is lost: every batch below the last flush
//!   (flush, checkpoint, close, `flush.messages`, `flush.ms`) is there, the
//!   log start and high watermark are not behind their last checkpoint;
//! - nothing truncated or deleted comes back: what the log holds is a prefix
//!   of what the test last wrote (plus the append that was cut short);
//! - recovery deletes nothing it must keep, and leader epochs and producer
//!   state match the batches that survived.
//!
//! `SLUICE_CRASH_CASE=<n>` reruns case `n` alone.

use super::corruption_tests::{
    append_expecting_success, assert_append_works, assert_reads, crash, expected_epochs,
    expected_producers, random_batch, reopen, run_n_cases, stamp, Stored,
};
use super::*;
use crate::fs::sim::{Outcome, SimDisk};
use crate::test_rng::Rng;

const CASES: u64 = 1000;
const MAX: i64 = i64::MAX;

/// What the log holds, as far as the test knows.
#[derive(Clone, Default)]
struct Model {
    /// Batches from the first one still present (some may lie below the log
    /// start).
    batches: Vec<Stored>,
    log_start: i64,
}

/// What a power loss may not take away.
#[derive(Clone, Copy, Debug, Default)]
struct Promise {
    /// Every batch ending at or below this was fsynced.
    end: i64,
    /// The log start was checkpointed at least this far.
    start: i64,
    /// The high watermark was checkpointed at least this far.
    hw: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
    Leader,
    Follower,
    NewEpoch,
    Flush,
    FlushIfDue,
    Checkpoint,
    SetHighWatermark,
    Truncate,
    TruncateFullyAhead,
    AdvanceLogStart,
    Retention,
    Roll,
    CloseAndReopen,
}

const STEPS: &[(Step, u64)] = &[
    (Step::Leader, 30),
    (Step::Follower, 12),
    (Step::NewEpoch, 3),
    (Step::Flush, 4),
    (Step::FlushIfDue, 3),
    (Step::Checkpoint, 5),
    (Step::SetHighWatermark, 6),
    (Step::Truncate, 4),
    (Step::TruncateFullyAhead, 1),
    (Step::AdvanceLogStart, 2),
    (Step::Retention, 2),
    (Step::Roll, 2),
    (Step::CloseAndReopen, 2),
];

fn pick_step(rng: &mut Rng) -> Step {
    let total: u64 = STEPS.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(total);
    for &(step, w) in STEPS {
        if x < w {
            return step;
        }
        x -= w;
    }
    unreachable!("weights add up")
}

/// A run in progress.
struct Run<'a> {
    rng: &'a mut Rng,
    dir: &'a Path,
    config: LogConfig,
    log: Option<PartitionLog>,
    model: Model,
    promise: Promise,
    epoch: i32,
    ts: i64,
    /// Set by a step that was cut short: the batches it was appending, and
    /// how far it may have moved the log start.
    inflight: Vec<Stored>,
    inflight_start: i64,
    inflight_full: bool,
}

impl Run<'_> {
    fn log(&mut self) -> &mut PartitionLog {
        self.log.as_mut().expect("the log is open")
    }

    /// A client batch, continuing an idempotent producer now and then.
    fn client_batch(&mut self) -> Vec<u8> {
        self.ts += self.rng.below(50) as i64;
        let producer = if self.rng.one_in(3) {
            let pid = self.rng.range(1, 2) as i64;
            let continued = self.log().producer_state().get(pid).and_then(|e| {
                let last = e.batches.back()?;
                Some((pid, e.epoch, last.last_seq + 1))
            });
            Some(continued.unwrap_or((pid, 0, 0)))
        } else {
            None
        };
        random_batch(self.rng, self.ts, producer, 1500)
    }

    /// After an append of `appended`: the batches join the model, and if
    /// `flush.messages` was reached they must be durable already.
    fn appended(&mut self, appended: Vec<Stored>) {
        self.model.batches.extend(appended);
        let end = self.log().log_end_offset();
        let flush_due = end - self.promise.end >= self.config.flush_messages;
        assert_eq!(
            self.log().unflushed_messages() == 0,
            flush_due,
            "flush.messages={} after an append up to {end}, last flush at {}",
            self.config.flush_messages,
            self.promise.end
        );
        if flush_due {
            self.promise.end = end;
        }
    }

    fn flushed(&mut self) {
        self.promise.end = self.log().log_end_offset();
    }

    /// After a step that may have moved the log start or truncated.
    fn resync_start(&mut self) {
        let log = self.log.as_ref().expect("the log is open");
        let (start, end) = (log.log_start_offset(), log.log_end_offset());
        self.model.batches.retain(|b| b.next <= end);
        assert_eq!(
            self.model.batches.last().map_or(end, |b| b.next).max(start),
            end,
            "the model follows the log"
        );
        self.model.log_start = start;
        self.promise.start = self.promise.start.min(start);
        self.promise.end = self.promise.end.min(end).max(start);
        self.promise.hw = self.promise.hw.min(end).max(start);
    }

    fn step(&mut self, step: Step) -> Result<(), StorageError> {
        let end = self.log().log_end_offset();
        let start = self.log().log_start_offset();
        let hw = self.log().high_watermark();
        match step {
            Step::Leader => {
                let input = self.client_batch();
                let epoch = self.epoch;
                let stored = stamp(&input, end, epoch);
                self.inflight = stored.clone();
                let info = self.log().append_as_leader(&input, epoch, 0)?;
                assert_eq!((info.base_offset, info.duplicate), (end, false));
                self.appended(stored);
            }
            Step::Follower => {
                let input = self.client_batch();
                let stored = stamp(&input, end, self.epoch);
                let bytes: Vec<u8> = stored.iter().flat_map(|b| b.bytes.clone()).collect();
                self.inflight = stored.clone();
                self.log().append_as_follower(&bytes)?;
                self.appended(stored);
            }
            Step::NewEpoch => {
                self.epoch += 1;
                if self.rng.one_in(2) {
                    let epoch = self.epoch;
                    self.log().assign_epoch_start(epoch)?;
                }
            }
            Step::Flush => {
                self.log().flush()?;
                self.flushed();
            }
            Step::FlushIfDue => {
                if self.log().flush_if_due(wall_clock_ms())? {
                    self.flushed();
                }
            }
            Step::Checkpoint => {
                self.log().checkpoint()?;
                self.flushed();
                self.promise.hw = hw;
            }
            Step::SetHighWatermark => {
                let to = self.rng.range(hw as u64, end as u64) as i64;
                self.log().set_high_watermark(to);
            }
            Step::Truncate => {
                let to = self.rng.range(start as u64, end as u64) as i64;
                self.inflight_start = to;
                // Once under way, the truncation may or may not survive.
                let cut = self
                    .model
                    .batches
                    .iter()
                    .map(|b| b.next)
                    .filter(|&n| n <= to)
                    .max()
                    .unwrap_or(start)
                    .min(to);
                self.promise.end = self.promise.end.min(cut);
                self.promise.hw = self.promise.hw.min(cut);
                self.promise.start = self.promise.start.min(cut);
                self.log().truncate_to(to)?;
                self.resync_start();
            }
            Step::TruncateFullyAhead => {
                let to = end + self.rng.range(1, 30) as i64;
                self.inflight_start = to;
                self.inflight_full = true;
                // Once under way, any prefix of the old log may be left.
                self.promise.end = self.promise.end.min(start);
                self.promise.hw = self.promise.hw.min(start);
                self.log().truncate_fully_and_start_at(to)?;
                self.model.batches.clear();
                self.resync_start();
                self.promise = Promise {
                    end: to,
                    start: to,
                    hw: to,
                };
            }
            Step::AdvanceLogStart => {
                let to = self.rng.range(start as u64, hw as u64) as i64;
                self.inflight_start = to;
                self.log().advance_log_start(to)?;
                self.resync_start();
                self.promise.start = self.log().log_start_offset();
            }
            Step::Retention => {
                let mut config = self.config.clone();
                let size = self.log().size_bytes();
                config.retention_bytes = self.rng.below(size + 1) as i64;
                self.log().set_config(config);
                self.inflight_start = hw;
                self.log().enforce_retention(wall_clock_ms())?;
                self.resync_start();
                self.promise.start = self.log().log_start_offset();
            }
            Step::Roll => self.log().roll_if_due(MAX / 2)?,
            Step::CloseAndReopen => {
                let log = self.log.take().expect("the log is open");
                log.close()?;
                self.promise.end = end;
                self.promise.hw = hw;
                let log = PartitionLog::open(self.dir, self.config.clone())?;
                assert_eq!((log.log_start_offset(), log.log_end_offset()), (start, end));
                self.log = Some(log);
            }
        }
        Ok(())
    }

    /// Checks the log reopened after the power loss.
    fn check_recovered(&mut self, log: &PartitionLog) {
        let (start, end) = (log.log_start_offset(), log.log_end_offset());
        let p = self.promise;
        assert!(
            start >= p.start,
            "log start {start} went back below the checkpointed {}",
            p.start
        );
        let start_max = self.model.log_start.max(self.inflight_start);
        assert!(
            start <= start_max,
            "log start {start} is past anything the run set ({start_max}): data deleted"
        );
        assert!(
            end >= p.end,
            "log end {end} lost fsynced data up to {}",
            p.end
        );
        assert!(
            log.high_watermark() >= p.hw,
            "high watermark {} went back below the checkpointed {}",
            log.high_watermark(),
            p.hw
        );

        // What the log holds is a prefix of what was last written.
        let candidates: Vec<&Stored> = self
            .model
            .batches
            .iter()
            .chain(&self.inflight)
            .filter(|b| b.next > start)
            .collect();
        let got = if end > start {
            log.read(start, 1 << 30, MAX).unwrap().records
        } else {
            Bytes::new()
        };
        let mut pos = 0;
        let mut kept = Vec::new();
        for b in candidates {
            if pos == got.len() {
                break;
            }
            assert!(
                got[pos..].starts_with(&b.bytes),
                "batch {}..{} is not what was written there last",
                b.base,
                b.next
            );
            pos += b.bytes.len();
            kept.push(b.clone());
        }
        assert_eq!(pos, got.len(), "the log holds more than was written");
        // No hole at the end; except that a full truncation cut short may
        // leave its new, empty segment after what is left of the old log.
        let kept_end = kept.last().map_or(start, |b| b.next);
        assert!(
            end == kept_end || (self.inflight_full && end == self.inflight_start),
            "log end {end} is not the end of the batches it holds ({kept_end})"
        );
        let whole: Vec<Stored> = kept.iter().filter(|b| b.base >= start).cloned().collect();
        assert_reads(log, &whole, self.rng);

        let mut epochs = expected_epochs(&kept);
        if let Some(first) = epochs.first_mut() {
            first.start_offset = first.start_offset.max(start);
        }
        // The epoch in force at the log start is kept even when none of its
        // batches is left (as after retention, or a cut-short full
        // truncation): it starts at the log start and precedes the others.
        let mut recovered = log.leader_epochs().to_vec();
        if recovered.len() == epochs.len() + 1
            && recovered[0].start_offset == start
            && epochs.first().is_none_or(|e| e.epoch > recovered[0].epoch)
        {
            recovered.remove(0);
        }
        assert_eq!(recovered, epochs, "leader epochs");
        let mut producers = expected_producers(&kept);
        producers.evict_below(start);
        let summary = |p: &ProducerStateManager| {
            (1..=2)
                .map(|pid| p.get(pid).map(|e| (e.epoch, e.batches.back().cloned())))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            (log.producer_state().len(), summary(log.producer_state())),
            (producers.len(), summary(&producers)),
            "producer state"
        );
        self.model.batches = kept;
    }
}

fn crash_config(rng: &mut Rng) -> LogConfig {
    LogConfig {
        segment_bytes: rng.range(1500, 8000),
        index_interval_bytes: rng.pick(&[100, 500, 4096]),
        flush_messages: rng.pick(&[1, 3, 10, MAX]),
        flush_ms: rng.pick(&[0, MAX]),
        ..LogConfig::default()
    }
}

const SALT: u64 = 0xc0a5_0001;

/// Cases that once failed (each was a bug, fixed since): run on every test
/// run, beyond the first [`CASES`].
const REGRESSIONS: &[u64] = &[1893, 5904, 11112, 13218, 16670];

#[derive(Default)]
struct Tally {
    cut_short: u32,
    crash_steps: std::collections::HashMap<Step, u32>,
}

#[test]
fn power_loss_at_a_random_point_keeps_what_was_fsynced() {
    let mut tally = Tally::default();
    run_n_cases(
        "power loss",
        SALT,
        CASES,
        "SLUICE_CRASH_CASE",
        |rng, dir| power_loss_case(rng, dir, &mut tally),
    );
    eprintln!(
        "power loss: {} steps cut short; crash steps {:?}",
        tally.cut_short, tally.crash_steps
    );
}

#[test]
fn power_loss_regressions() {
    let root = crate::fs::sim::scratch_dir();
    for &case in REGRESSIONS {
        let dir = root.path().join(format!("case-{case}"));
        let mut rng = Rng::new(SALT ^ case);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            power_loss_case(&mut rng, &dir, &mut Tally::default())
        }));
        if let Err(panic) = r {
            eprintln!("power loss: case {case} failed (SLUICE_CRASH_CASE={case} reruns it)");
            std::panic::resume_unwind(panic);
        }
    }
}

/// One case: a random run, a power loss, recovery and its checks.
fn power_loss_case(rng: &mut Rng, dir: &Path, tally: &mut Tally) {
    let disk = SimDisk::new(dir);
    let config = crash_config(rng);
    let log = PartitionLog::open(dir, config.clone()).unwrap();
    let mut run = Run {
        rng,
        dir,
        config: config.clone(),
        log: Some(log),
        model: Model::default(),
        promise: Promise::default(),
        epoch: 0,
        ts: 1_700_000_000_000,
        inflight: Vec::new(),
        inflight_start: 0,
        inflight_full: false,
    };
    let steps = run.rng.range(1, 40);
    let crash_at = run.rng.below(steps);
    for i in 0..steps {
        let step = pick_step(run.rng);
        if i == crash_at {
            disk.crash_after(run.rng.below(12));
            *tally.crash_steps.entry(step).or_insert(0) += 1;
        }
        run.inflight.clear();
        run.inflight_start = 0;
        run.inflight_full = false;
        let r = run.step(step);
        if std::env::var("SLUICE_CRASH_CASE").is_ok() {
            let log = run.log.as_ref();
            eprintln!(
                "{step:?} -> {:?}, log [{:?}, {:?}) hw {:?}, {:?}",
                r.as_ref().err().map(ToString::to_string),
                log.map(|l| l.log_start_offset()),
                log.map(|l| l.log_end_offset()),
                log.map(|l| l.high_watermark()),
                run.promise
            );
        }
        match r {
            Ok(()) => run.inflight.clear(),
            Err(e) => {
                assert!(disk.is_dead(), "{step:?} failed with the power on: {e}");
                tally.cut_short += 1;
                break;
            }
        }
        if i == crash_at {
            break;
        }
    }
    if let Some(log) = run.log.take() {
        crash(log);
    }
    disk.power_loss(Outcome::Random(run.rng));

    let mut log = reopen(dir, &run.config);
    run.check_recovered(&log);
    let added = assert_append_works(&mut log, run.rng, run.epoch, run.ts);
    log.flush().unwrap();
    crash(log);
    disk.power_loss(Outcome::Worst);
    let log = reopen(dir, &run.config);
    assert_eq!(
        log.read(added.base, 1, MAX).unwrap().records[..],
        added.bytes[..]
    );
}

/// `flush.messages=1`: every acknowledged append survives a power loss
/// right after it, even if the disk keeps only what was fsynced. Without it
/// the same run loses data, so the check can fail.
#[test]
fn flush_messages_one_makes_each_acknowledged_append_durable() {
    for flush_messages in [1, MAX] {
        let dir = crate::fs::sim::scratch_dir();
        let disk = SimDisk::new(dir.path());
        let config = LogConfig {
            segment_bytes: 3000,
            flush_messages,
            ..LogConfig::default()
        };
        let mut rng = Rng::new(9);
        let mut acked: Vec<Stored> = Vec::new();
        let mut lost = 0;
        for i in 0..30 {
            let mut log = reopen(dir.path(), &config);
            let input = random_batch(&mut rng, 1000 + i, None, 1000);
            let end = log.log_end_offset();
            if i % 2 == 0 {
                log.append_as_leader(&input, 0, 0).unwrap();
            } else {
                let bytes: Vec<u8> = stamp(&input, end, 0)
                    .iter()
                    .flat_map(|b| b.bytes.clone())
                    .collect();
                log.append_as_follower(&bytes).unwrap();
            }
            acked.retain(|b| b.next <= end);
            acked.extend(stamp(&input, end, 0));
            crash(log);
            disk.power_loss(Outcome::Worst);
            let log = reopen(dir.path(), &config);
            if log.log_end_offset() < acked.last().map_or(0, |b| b.next) {
                lost += 1;
                assert_ne!(flush_messages, 1, "append {i} was acknowledged and lost");
            } else {
                assert_reads(&log, &acked, &mut rng);
            }
        }
        if flush_messages != 1 {
            assert!(lost > 0, "without flush.messages the power loss must bite");
        }
    }
}

/// `flush.ms`: a flush is due once unflushed data is that old, and then it
/// is durable.
#[test]
fn flush_ms_flushes_data_older_than_the_limit() {
    let dir = crate::fs::sim::scratch_dir();
    let disk = SimDisk::new(dir.path());
    let config = LogConfig {
        flush_ms: 60_000,
        ..LogConfig::default()
    };
    let mut log = reopen(dir.path(), &config);
    let input = random_batch(&mut Rng::new(3), 1000, None, 100);
    log.append_as_leader(&input, 0, 0).unwrap();
    assert_eq!(log.unflushed_messages(), 1);
    assert!(!log.flush_if_due(wall_clock_ms()).unwrap());
    assert!(log.flush_if_due(wall_clock_ms() + 60_000).unwrap());
    assert_eq!(log.unflushed_messages(), 0);
    // Nothing unflushed: nothing to do.
    assert!(!log.flush_if_due(wall_clock_ms() + 120_000).unwrap());
    crash(log);
    disk.power_loss(Outcome::Worst);
    assert_eq!(reopen(dir.path(), &config).log_end_offset(), 1);
}

/// `write_atomic` after a power loss at any point: the old content or the
/// new, never empty or a mix; once it returned, the new.
#[test]
fn write_atomic_leaves_old_or_new_content() {
    run_n_cases(
        "write_atomic",
        0xc0a5_0002,
        200,
        "SLUICE_CRASH_CASE",
        |rng, dir| {
            let disk = SimDisk::new(dir);
            let path = dir.join("marker");
            let old = rng.bytes_in(1, 100);
            write_atomic(&path, &old).unwrap();
            let new = rng.bytes_in(1, 100);
            disk.crash_after(rng.below(8));
            let done = write_atomic(&path, &new).is_ok();
            assert!(done || disk.is_dead());
            disk.power_loss(Outcome::Random(rng));
            let got = std::fs::read(&path).unwrap();
            if done {
                assert_eq!(got, new);
            } else {
                assert!(got == old || got == new, "{got:?}");
            }
        },
    );
}

/// A truncation that returned stays done: the truncated batches do not
/// come back after a power loss (found by the random test above).
#[test]
fn a_truncation_stays_truncated_after_a_power_loss() {
    let dir = crate::fs::sim::scratch_dir();
    let disk = SimDisk::new(dir.path());
    let config = LogConfig::default();
    let mut log = reopen(dir.path(), &config);
    let mut rng = Rng::new(5);
    for _ in 0..5 {
        let input = random_batch(&mut rng, 1000, None, 100);
        append_expecting_success(&mut log, &input, 0);
    }
    log.flush().unwrap();
    log.truncate_to(2).unwrap();
    let end = log.log_end_offset();
    assert!(end <= 2);
    crash(log);
    disk.power_loss(Outcome::Worst);
    assert_eq!(reopen(dir.path(), &config).log_end_offset(), end);
}

/// Recovery checks only the last segment for a torn tail. A full truncation
/// cut short can leave the old segment before the new one: it must not hold
/// unsynced (possibly torn) data then. Every batch the reopened log serves
/// passes its CRC, whatever the crash point and the disk keep.
#[test]
fn a_segment_left_behind_a_new_one_is_never_torn() {
    let root = crate::fs::sim::scratch_dir();
    let mut rng = Rng::new(11);
    for calls in 0..12 {
        for round in 0..10 {
            let dir = root.path().join(format!("{calls}-{round}"));
            let disk = SimDisk::new(&dir);
            let config = LogConfig::default();
            let mut log = reopen(&dir, &config);
            for _ in 0..3 {
                let input = random_batch(&mut rng, 1000, None, 500);
                append_expecting_success(&mut log, &input, 0);
            }
            let end = log.log_end_offset();
            disk.crash_after(calls);
            let _ = log.truncate_fully_and_start_at(end + 10);
            crash(log);
            disk.power_loss(Outcome::Random(&mut rng));
            let log = reopen(&dir, &config);
            let start = log.log_start_offset();
            if log.log_end_offset() > start {
                let r = log.read(start, 1 << 20, MAX).unwrap();
                if let Err(e) = batch::validate_all(&r.records, Origin::Replica) {
                    panic!("crash after {calls} calls, round {round}: {e}");
                }
            }
        }
    }
}

/// A checkpointed log start survives even when the unflushed data above it
/// is lost: the log reopens empty at that start, not back below it.
#[test]
fn a_checkpointed_log_start_never_goes_back() {
    let dir = crate::fs::sim::scratch_dir();
    let disk = SimDisk::new(dir.path());
    let config = LogConfig::default();
    let mut log = reopen(dir.path(), &config);
    let mut rng = Rng::new(4);
    for _ in 0..3 {
        let input = random_batch(&mut rng, 1000, None, 100);
        append_expecting_success(&mut log, &input, 0);
    }
    let start = log.log_end_offset() - 1;
    log.set_high_watermark(start);
    log.advance_log_start(start).unwrap();
    crash(log);
    disk.power_loss(Outcome::Worst);
    let mut log = reopen(dir.path(), &config);
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (start, start)
    );
    let added = assert_append_works(&mut log, &mut rng, 0, 1000);
    assert_eq!(added.base, start);
}

/// A write that fails half way (ENOSPC after some bytes) leaves nothing
/// behind: the next append lands where the failed one would have.
#[test]
fn a_failed_append_leaves_no_partial_batch() {
    let dir = crate::fs::sim::scratch_dir();
    let disk = SimDisk::new(dir.path());
    let config = LogConfig::default();
    let mut log = reopen(dir.path(), &config);
    let mut rng = Rng::new(21);
    let first = append_expecting_success(&mut log, &random_batch(&mut rng, 1000, None, 300), 0);
    let path = active_segment(&log);
    disk.fail_write(&path, 30);
    let input = random_batch(&mut rng, 1000, None, 300);
    assert!(log.append_as_leader(&input, 0, 0).is_err());
    let second = append_expecting_success(&mut log, &input, 0);
    assert_eq!(second[0].base, first.last().unwrap().next);
    let all: Vec<Stored> = first.into_iter().chain(second).collect();
    assert_reads(&log, &all, &mut rng);
    crash(log);
    assert_reads(&reopen(dir.path(), &config), &all, &mut rng);
}

/// If cutting the partial batch off fails too, the log refuses appends
/// (rather than writing after the garbage, at positions it does not know)
/// until it is reopened, whose recovery cuts the garbage.
#[test]
fn a_failed_append_that_cannot_be_undone_stops_appends() {
    let dir = crate::fs::sim::scratch_dir();
    let disk = SimDisk::new(dir.path());
    let config = LogConfig::default();
    let mut log = reopen(dir.path(), &config);
    let mut rng = Rng::new(22);
    let first = append_expecting_success(&mut log, &random_batch(&mut rng, 1000, None, 300), 0);
    let path = active_segment(&log);
    disk.fail_write(&path, 30);
    disk.fail_set_len(&path);
    let input = random_batch(&mut rng, 1000, None, 300);
    assert!(log.append_as_leader(&input, 0, 0).is_err());
    for _ in 0..2 {
        match log.append_as_leader(&input, 0, 0) {
            Err(StorageError::LogFailed(msg)) => assert!(msg.contains("append"), "{msg}"),
            other => panic!("an append after a torn one must be refused: {other:?}"),
        }
    }
    let follower = stamp(&input, log.log_end_offset(), 0);
    assert!(matches!(
        log.append_as_follower(&follower[0].bytes),
        Err(StorageError::LogFailed(_))
    ));
    // What was there is still served.
    assert_reads(&log, &first, &mut rng);
    crash(log);
    let mut log = reopen(dir.path(), &config);
    assert_reads(&log, &first, &mut rng);
    let second = append_expecting_success(&mut log, &input, 0);
    let all: Vec<Stored> = first.into_iter().chain(second).collect();
    assert_reads(&log, &all, &mut rng);
}

fn active_segment(log: &PartitionLog) -> PathBuf {
    log.active().log_path().to_path_buf()
}

fn values(n: usize) -> Vec<u8> {
    let mut b = crate::batch::BatchBuilder::new(1000);
    for _ in 0..n {
        b = b.record(1000, Some(b"k"), Some(&[b'v'; 200]));
    }
    b.build()
}

/// A checkpoint prepared under the lock and written without it makes
/// durable what it captured, though the log went on taking appends between.
#[test]
fn a_checkpoint_written_without_the_lock_makes_what_it_captured_durable() {
    let dir = crate::fs::sim::scratch_dir();
    let disk = SimDisk::new(dir.path());
    let config = LogConfig {
        segment_bytes: 3000,
        ..LogConfig::default()
    };
    let mut log = reopen(dir.path(), &config);
    for _ in 0..12 {
        log.append_as_leader(&values(2), 0, 0).unwrap();
    }
    log.set_high_watermark(20);
    let captured_end = log.log_end_offset();
    let pending = log.begin_checkpoint().unwrap();
    // The log is free again: more appends land before the fsync runs.
    for _ in 0..3 {
        log.append_as_leader(&values(2), 0, 0).unwrap();
    }
    let written = pending.write();
    assert_eq!(written.as_ref().ok(), Some(&true));
    log.end_checkpoint(pending, written).unwrap();
    assert_eq!(
        log.unflushed_messages(),
        log.log_end_offset() - captured_end
    );
    crash(log);
    disk.power_loss(Outcome::Worst);
    let log = reopen(dir.path(), &config);
    assert!(
        log.log_end_offset() >= captured_end,
        "lost data the checkpoint had made durable: log end {} < {captured_end}",
        log.log_end_offset()
    );
    assert_eq!(log.high_watermark(), 20);
}

/// A checkpoint prepared before a newer write of the checkpoint file (a log
/// start moved by DeleteRecords or retention) never lands over it: the log
/// start does not go back at the next open.
#[test]
fn a_stale_checkpoint_never_lands_over_a_newer_one() {
    let dir = crate::fs::sim::scratch_dir();
    let config = LogConfig {
        segment_bytes: 3000,
        ..LogConfig::default()
    };
    let mut log = reopen(dir.path(), &config);
    for _ in 0..20 {
        log.append_as_leader(&values(2), 0, 0).unwrap();
    }
    log.set_high_watermark(40);
    let pending = log.begin_checkpoint().unwrap();
    log.advance_log_start(9).unwrap();
    let written = pending.write();
    assert_eq!(written.as_ref().ok(), Some(&false));
    log.end_checkpoint(pending, written).unwrap();
    crash(log);
    let log = reopen(dir.path(), &config);
    assert_eq!(log.log_start_offset(), 9);
    assert_eq!(log.high_watermark(), 40);
}
