//! The leader's rules for its followers, stated once and free of I/O: how a
//! follower's fetch moves its position and its last-caught-up time, when a
//! follower falls out of the ISR or may join it, and the high watermark over
//! the "maximal" ISR (Kafka's `Partition`/`Replica`).

use std::collections::HashMap;

/// Log end offset of a follower the leader has not heard from in this leadership.
pub const UNKNOWN_OFFSET: i64 = -1;

/// What the leader knows of one follower (Kafka's `ReplicaState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerState {
    /// The follower's fetch offset: it holds every record below it.
    pub log_end_offset: i64,
    /// The last time the follower had fetched up to the leader's log end.
    pub last_caught_up_ms: i64,
    /// When the previous fetch arrived, and the leader's log end then.
    pub last_fetch_ms: i64,
    pub last_fetch_leader_end: i64,
    /// The broker epoch of the follower's registration when it fetched
    /// (-1: unknown). An ISR expansion names it (KIP-903), so the controller
    /// can refuse one based on fetches of an incarnation that has since
    /// restarted and may have lost what it fetched.
    pub broker_epoch: i64,
}

impl FollowerState {
    /// A follower as seen by a leader that just took over: in-sync followers
    /// count as caught up now, the others never were (so they do not hold
    /// the high watermark back). A re-elected leader keeps the positions.
    pub fn on_leadership(
        previous: Option<&FollowerState>,
        in_sync: bool,
        new_leader: bool,
        leader_end: i64,
        now_ms: i64,
    ) -> FollowerState {
        let last_caught_up_ms = if in_sync { now_ms } else { 0 };
        match previous {
            Some(p) if !new_leader => FollowerState {
                log_end_offset: p.log_end_offset,
                last_caught_up_ms,
                last_fetch_ms: now_ms,
                last_fetch_leader_end: leader_end,
                broker_epoch: p.broker_epoch,
            },
            _ => FollowerState {
                log_end_offset: UNKNOWN_OFFSET,
                last_caught_up_ms,
                last_fetch_ms: 0,
                last_fetch_leader_end: UNKNOWN_OFFSET,
                broker_epoch: -1,
            },
        }
    }

    /// The state after a fetch at `fetch_offset` arriving at `now_ms` while the
    /// leader's log ends at `leader_end`. A follower is caught up when it
    /// fetched the leader's log end, or at least the log end the leader had
    /// at its previous fetch (then it was caught up as of that fetch).
    pub fn after_fetch(&self, fetch_offset: i64, leader_end: i64, now_ms: i64) -> FollowerState {
        let last_caught_up_ms = if fetch_offset >= leader_end {
            self.last_caught_up_ms.max(now_ms)
        } else if self.last_fetch_leader_end >= 0 && fetch_offset >= self.last_fetch_leader_end {
            self.last_caught_up_ms.max(self.last_fetch_ms)
        } else {
            self.last_caught_up_ms
        };
        FollowerState {
            log_end_offset: fetch_offset,
            last_caught_up_ms,
            last_fetch_ms: now_ms,
            last_fetch_leader_end: leader_end,
            broker_epoch: self.broker_epoch,
        }
    }

    /// The same state, its position now vouched for by the registration at
    /// `broker_epoch`. A follower's fetch (version 12) carries no epoch;
    /// the leader takes the one its image names for the follower, which is
    /// the fetching incarnation's: a broker registers again only once its
    /// previous incarnation is gone.
    pub fn under_epoch(self, broker_epoch: i64) -> FollowerState {
        FollowerState {
            broker_epoch,
            ..self
        }
    }

    /// Kafka's `isCaughtUp`: at the leader's log end, or caught up within the lag allowed.
    pub fn is_caught_up(&self, leader_end: i64, now_ms: i64, lag_max_ms: i64) -> bool {
        self.log_end_offset == leader_end || now_ms - self.last_caught_up_ms <= lag_max_ms
    }
}

/// An ISR change sent to the controller and not yet answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingIsr {
    pub new_isr: Vec<i32>,
    /// The leader and partition epochs the change was based on.
    pub leader_epoch: i32,
    pub partition_epoch: i32,
}

/// The ISR the high watermark must respect while a change is in flight: the
/// committed ISR plus any replica being added (a replica being removed still
/// counts until the removal commits). Kafka's `maximalIsr`.
pub fn maximal_isr(isr: &[i32], pending: Option<&PendingIsr>) -> Vec<i32> {
    let mut all = isr.to_vec();
    if let Some(pending) = pending {
        for id in &pending.new_isr {
            if !all.contains(id) {
                all.push(*id);
            }
        }
    }
    all
}

/// The high watermark a leader may expose: the smallest log end offset among
/// the members of the maximal ISR (the leader's own included). A member the
/// leader has not heard from yet holds it at [`UNKNOWN_OFFSET`]; callers only
/// ever move the high watermark forward.
pub fn leader_high_watermark(
    leader_id: i32,
    leader_end: i64,
    maximal_isr: &[i32],
    followers: &HashMap<i32, FollowerState>,
) -> i64 {
    maximal_isr
        .iter()
        .filter(|&&id| id != leader_id)
        .map(|id| {
            followers
                .get(id)
                .map_or(UNKNOWN_OFFSET, |f| f.log_end_offset)
        })
        .fold(leader_end, i64::min)
}

/// The in-sync followers that have not caught up within `lag_max_ms`.
pub fn out_of_sync_replicas(
    leader_id: i32,
    isr: &[i32],
    followers: &HashMap<i32, FollowerState>,
    leader_end: i64,
    now_ms: i64,
    lag_max_ms: i64,
) -> Vec<i32> {
    isr.iter()
        .copied()
        .filter(|&id| id != leader_id)
        .filter(|id| {
            followers
                .get(id)
                .is_none_or(|f| !f.is_caught_up(leader_end, now_ms, lag_max_ms))
        })
        .collect()
}

/// Each member of `new_isr` with the broker epoch its place rests on (the
/// leader's own for itself, -1 when unknown), for AlterPartition (KIP-903).
pub fn isr_with_epochs(
    leader_id: i32,
    leader_broker_epoch: i64,
    new_isr: &[i32],
    followers: &HashMap<i32, FollowerState>,
) -> Vec<(i32, i64)> {
    new_isr
        .iter()
        .map(|&id| {
            let epoch = if id == leader_id {
                leader_broker_epoch
            } else {
                followers.get(&id).map_or(-1, |f| f.broker_epoch)
            };
            (id, epoch)
        })
        .collect()
}

/// Whether a follower outside the ISR may join it: it holds everything
/// committed and everything the current leader epoch wrote before it.
/// Kafka's `isFollowerInSync`.
pub fn may_join_isr(follower_end: i64, high_watermark: i64, leader_epoch_start: i64) -> bool {
    follower_end >= high_watermark && follower_end >= leader_epoch_start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(leo: i64, caught_up: i64) -> FollowerState {
        FollowerState {
            log_end_offset: leo,
            last_caught_up_ms: caught_up,
            last_fetch_ms: caught_up,
            last_fetch_leader_end: leo,
            broker_epoch: -1,
        }
    }

    #[test]
    fn high_watermark_is_the_slowest_member_of_the_maximal_isr() {
        let mut followers = HashMap::new();
        followers.insert(2, follower(7, 0));
        followers.insert(3, follower(4, 0));
        // Only the leader in the ISR: its log end.
        assert_eq!(leader_high_watermark(1, 10, &[1], &followers), 10);
        assert_eq!(leader_high_watermark(1, 10, &[1, 2], &followers), 7);
        assert_eq!(leader_high_watermark(1, 10, &[1, 2, 3], &followers), 4);
        // A follower not yet heard from holds it.
        assert_eq!(
            leader_high_watermark(1, 10, &[1, 4], &followers),
            UNKNOWN_OFFSET
        );
        // A follower outside the ISR does not count.
        assert_eq!(leader_high_watermark(1, 10, &[1, 2], &followers), 7);
    }

    #[test]
    fn maximal_isr_keeps_replicas_being_removed_and_adds_those_being_added() {
        let shrink = PendingIsr {
            new_isr: vec![1],
            leader_epoch: 0,
            partition_epoch: 3,
        };
        assert_eq!(maximal_isr(&[1, 2], Some(&shrink)), vec![1, 2]);
        let expand = PendingIsr {
            new_isr: vec![1, 2, 3],
            leader_epoch: 0,
            partition_epoch: 3,
        };
        assert_eq!(maximal_isr(&[1, 2], Some(&expand)), vec![1, 2, 3]);
        assert_eq!(maximal_isr(&[1, 2], None), vec![1, 2]);

        // A pending shrink holds the high watermark at the removed replica;
        // a pending expand counts the joining replica.
        let mut followers = HashMap::new();
        followers.insert(2, follower(5, 0));
        followers.insert(3, follower(8, 0));
        let hw = |isr: &[i32], p: &PendingIsr| {
            leader_high_watermark(1, 10, &maximal_isr(isr, Some(p)), &followers)
        };
        assert_eq!(hw(&[1, 2], &shrink), 5);
        assert_eq!(hw(&[1], &expand), 5);
    }

    #[test]
    fn last_caught_up_time_follows_kafka() {
        let start = FollowerState::on_leadership(None, true, true, 100, 1_000);
        assert_eq!(start.log_end_offset, UNKNOWN_OFFSET);
        assert_eq!(start.last_caught_up_ms, 1_000);
        let outside = FollowerState::on_leadership(None, false, true, 100, 1_000);
        assert_eq!(outside.last_caught_up_ms, 0);

        // Fetching the leader's log end: caught up now.
        let s = start.after_fetch(100, 100, 2_000);
        assert_eq!(s.last_caught_up_ms, 2_000);
        // Behind the current end, but past the end at the previous fetch:
        // caught up as of the previous fetch.
        let s2 = s.after_fetch(100, 150, 3_000);
        assert_eq!(s2.last_caught_up_ms, 2_000);
        let s3 = s2.after_fetch(150, 200, 4_000);
        assert_eq!(s3.last_caught_up_ms, 3_000);
        // Behind both: unchanged.
        let s4 = s3.after_fetch(160, 250, 5_000);
        assert_eq!(s4.last_caught_up_ms, 3_000);
        assert_eq!(s4.log_end_offset, 160);
    }

    #[test]
    fn shrink_removes_followers_lagging_longer_than_allowed() {
        let mut followers = HashMap::new();
        followers.insert(2, follower(10, 0)); // at the log end: in sync however old
        followers.insert(3, follower(5, 1_000)); // behind, caught up recently
        followers.insert(4, follower(5, 0)); // behind for too long
                                             // 5 has no state at all: never in sync.
        let out = out_of_sync_replicas(1, &[1, 2, 3, 4, 5], &followers, 10, 20_000, 30_000);
        assert_eq!(out, vec![5]);
        let out = out_of_sync_replicas(1, &[1, 2, 3, 4], &followers, 10, 30_500, 30_000);
        assert_eq!(out, vec![4]);
        let out = out_of_sync_replicas(1, &[1, 2, 3, 4], &followers, 10, 31_001, 30_000);
        assert_eq!(out, vec![3, 4]);
        // The leader never removes itself.
        assert!(out_of_sync_replicas(1, &[1], &followers, 10, 99_000, 30_000).is_empty());
    }

    #[test]
    fn an_isr_change_names_the_epoch_each_member_fetched_under() {
        let mut followers = HashMap::new();
        let fetched = FollowerState::on_leadership(None, false, true, 10, 0)
            .after_fetch(10, 10, 5)
            .under_epoch(42);
        followers.insert(2, fetched);
        // A later fetch keeps the epoch unless told another.
        assert_eq!(fetched.after_fetch(11, 11, 6).broker_epoch, 42);
        assert_eq!(
            isr_with_epochs(1, 7, &[1, 2, 3], &followers),
            vec![(1, 7), (2, 42), (3, -1)]
        );
    }

    #[test]
    fn expand_needs_the_high_watermark_and_the_epoch_start() {
        assert!(may_join_isr(10, 10, 8));
        assert!(!may_join_isr(9, 10, 8));
        assert!(!may_join_isr(10, 5, 11));
        assert!(may_join_isr(12, 5, 11));
    }
}
