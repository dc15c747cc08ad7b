//! Consumer-group writes as pure operations on the image, like [`crate::ops`].
//!
//! A group's coordinator (a broker) runs the join/sync protocol in memory
//! and validates what clients send; what it commits here is checked once
//! more against the controller's image. Only the broker that coordinates a
//! group in this image may write it, and a generation commits only on top
//! of the one its coordinator started from, so a coordinator that lost the
//! group cannot overwrite what the new one did.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_metadata::controller_api::{
    ControllerError, GroupWrite, GroupWriteOutcome, GroupWriter,
};
use sluice_metadata::{
    GroupImage, GroupRecord, MetadataImage, MetadataRecord, OffsetCommitRecord, RemoveGroupRecord,
    RemoveOffsetsRecord, TopicOffsets,
};

use crate::ops::OpResult;

/// Checks and plans one write; `now_ms` stamps committed offsets.
pub fn write_group(
    image: &MetadataImage,
    writer: GroupWriter,
    write: GroupWrite,
    now_ms: i64,
) -> OpResult<Result<GroupWriteOutcome, ControllerError>> {
    match plan(image, writer, write, now_ms) {
        Ok((records, unknown_partitions)) => OpResult {
            records,
            results: Ok(GroupWriteOutcome {
                // Filled in with the commit's offset by the caller.
                log_offset: 0,
                unknown_partitions,
            }),
        },
        Err(e) => OpResult {
            records: Vec::new(),
            results: Err(e),
        },
    }
}

type Plan = (Vec<MetadataRecord>, Vec<(String, i32)>);

fn plan(
    image: &MetadataImage,
    writer: GroupWriter,
    write: GroupWrite,
    now_ms: i64,
) -> Result<Plan, ControllerError> {
    let group_id = write.group_id().to_string();
    check_writer(image, writer, &group_id)?;
    let group = image.groups.get(&group_id);
    match write {
        GroupWrite::Membership {
            expected_generation,
            group: record,
        } => {
            let current = group.map_or(0, |g| g.generation());
            if current != expected_generation {
                return Err(ControllerError::IllegalGeneration(format!(
                    "group {group_id} is at generation {current}, not {expected_generation}"
                )));
            }
            Ok((vec![MetadataRecord::Group(record)], Vec::new()))
        }
        GroupWrite::CommitOffsets {
            generation,
            member_id,
            offsets,
            ..
        } => {
            check_committer(group.map(|g| &**g), &group_id, generation, &member_id)?;
            let mut known = Vec::new();
            let mut unknown = Vec::new();
            for topic in offsets {
                let partitions = image.topic(&topic.topic).map(|t| &t.partitions);
                let (exists, missing): (Vec<_>, Vec<_>) = topic
                    .partitions
                    .into_iter()
                    .partition(|p| partitions.is_some_and(|ps| ps.contains_key(&p.partition)));
                unknown.extend(missing.iter().map(|p| (topic.topic.clone(), p.partition)));
                if !exists.is_empty() {
                    known.push(TopicOffsets {
                        topic: topic.topic,
                        partitions: exists,
                    });
                }
            }
            let records = if known.is_empty() {
                Vec::new()
            } else {
                vec![MetadataRecord::Offsets(OffsetCommitRecord {
                    group_id,
                    commit_timestamp: now_ms,
                    topics: known,
                })]
            };
            Ok((records, unknown))
        }
        GroupWrite::RebalanceStarted {
            generation, at_ms, ..
        } => {
            let current = group.map_or(0, |g| g.generation());
            if current != generation {
                return Err(ControllerError::IllegalGeneration(format!(
                    "group {group_id} is no longer at generation {generation}"
                )));
            }
            // Only an empty group's offsets are at risk; a group that was
            // never stored has none.
            let Some(group) = group.filter(|g| g.has_no_members()) else {
                return Ok((Vec::new(), Vec::new()));
            };
            let record = match &group.membership {
                Some(m) => GroupRecord {
                    state_timestamp: at_ms.max(m.state_timestamp),
                    ..(**m).clone()
                },
                // Offsets committed outside group management: the group
                // gets an empty generation 0 to carry the time.
                None => GroupRecord {
                    group_id: group_id.clone(),
                    generation: 0,
                    protocol_type: None,
                    protocol_name: None,
                    leader: None,
                    state_timestamp: at_ms,
                    members: Vec::new(),
                },
            };
            Ok((vec![MetadataRecord::Group(record)], Vec::new()))
        }
        GroupWrite::DeleteGroup { .. } => {
            let group = group.ok_or_else(|| {
                ControllerError::GroupIdNotFound(format!("group {group_id} does not exist"))
            })?;
            if !group.has_no_members() {
                return Err(ControllerError::NonEmptyGroup(format!(
                    "group {group_id} has active members"
                )));
            }
            Ok((
                vec![MetadataRecord::RemoveGroup(RemoveGroupRecord { group_id })],
                Vec::new(),
            ))
        }
        GroupWrite::ExpireOffsets {
            now_ms,
            retention_ms,
            grace_ms,
            ..
        } => {
            let expired = group.and_then(|g| expire_group(g, now_ms, retention_ms, grace_ms));
            Ok((expired.map(|e| e.record).into_iter().collect(), Vec::new()))
        }
        GroupWrite::DeleteOffsets { partitions, .. } => {
            let group = group.ok_or_else(|| {
                ControllerError::GroupIdNotFound(format!("group {group_id} does not exist"))
            })?;
            let partitions: Vec<_> = partitions
                .into_iter()
                .filter(|(topic, p)| group.offset(topic, *p).is_some())
                .collect();
            let records = if partitions.is_empty() {
                Vec::new()
            } else {
                vec![MetadataRecord::RemoveOffsets(RemoveOffsetsRecord {
                    group_id,
                    partitions,
                })]
            };
            Ok((records, Vec::new()))
        }
    }
}

fn check_writer(
    image: &MetadataImage,
    writer: GroupWriter,
    group_id: &str,
) -> Result<(), ControllerError> {
    let registered = image
        .brokers
        .get(&writer.broker_id)
        .is_some_and(|b| b.broker_epoch == writer.broker_epoch);
    if !registered {
        return Err(ControllerError::StaleBrokerEpoch {
            broker_id: writer.broker_id,
            broker_epoch: writer.broker_epoch,
        });
    }
    match image.group_coordinator(group_id) {
        Some(id) if id == writer.broker_id => Ok(()),
        other => Err(ControllerError::NotCoordinator(format!(
            "broker {} does not coordinate group {group_id} (coordinator: {})",
            writer.broker_id,
            other.map_or_else(|| "none".to_string(), |id| id.to_string())
        ))),
    }
}

/// Offsets come from a member of the committed generation, or, for a group
/// with no members, from a client that manages partitions itself.
fn check_committer(
    group: Option<&GroupImage>,
    group_id: &str,
    generation: i32,
    member_id: &str,
) -> Result<(), ControllerError> {
    if generation < 0 {
        return match group {
            Some(g) if !g.has_no_members() => Err(ControllerError::UnknownMemberId(format!(
                "group {group_id} has members; a commit without a member id is refused"
            ))),
            _ => Ok(()),
        };
    }
    let membership = group.and_then(|g| g.membership.as_ref()).ok_or_else(|| {
        ControllerError::IllegalGeneration(format!("group {group_id} has no generation"))
    })?;
    if membership.generation != generation {
        return Err(ControllerError::IllegalGeneration(format!(
            "group {group_id} is at generation {}, not {generation}",
            membership.generation
        )));
    }
    if !membership.members.iter().any(|m| m.member_id == member_id) {
        return Err(ControllerError::UnknownMemberId(format!(
            "{member_id} is not a member of group {group_id}"
        )));
    }
    Ok(())
}

/// Offsets past their retention, and groups left with nothing.
///
/// An offset expires `retention` after its commit, or, in a group that uses
/// group management, after the group became empty if that was later; a
/// group with members keeps all its offsets. A group with no members and no
/// offsets goes once it has been empty for `grace`, so one that is just
/// forming is not removed under its coordinator. Returns how many offsets
/// and groups were removed.
pub fn expire_groups(
    image: &MetadataImage,
    now_ms: i64,
    retention: Duration,
    grace: Duration,
) -> OpResult<(usize, usize)> {
    let (retention_ms, grace_ms) = (retention.as_millis() as i64, grace.as_millis() as i64);
    let mut records = Vec::new();
    let (mut offsets, mut groups) = (0, 0);
    for group in image.groups.values() {
        if let Some(expiry) = expire_group(group, now_ms, retention_ms, grace_ms) {
            offsets += expiry.offsets;
            groups += usize::from(expiry.removes_group);
            records.push(expiry.record);
        }
    }
    OpResult {
        records,
        results: (offsets, groups),
    }
}

/// What expiry removes of one group.
pub struct GroupExpiry {
    /// `RemoveGroup` or `RemoveOffsets`.
    pub record: MetadataRecord,
    pub offsets: usize,
    pub removes_group: bool,
}

/// [`expire_groups`] for one group: `None` when nothing of it expires.
pub fn expire_group(
    group: &GroupImage,
    now_ms: i64,
    retention_ms: i64,
    grace_ms: i64,
) -> Option<GroupExpiry> {
    if !group.has_no_members() {
        return None;
    }
    let empty_since = group.membership.as_ref().map_or(0, |m| m.state_timestamp);
    let mut expired: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partitions) in &group.offsets {
        for (&partition, committed) in partitions.iter() {
            let since = committed.commit_timestamp.max(empty_since);
            if since.saturating_add(retention_ms) <= now_ms {
                expired.entry(topic).or_default().push(partition);
            }
        }
    }
    let offsets: usize = expired.values().map(Vec::len).sum();
    if offsets == group.offset_count() {
        (offsets > 0 || empty_since.saturating_add(grace_ms) <= now_ms).then(|| GroupExpiry {
            record: MetadataRecord::RemoveGroup(RemoveGroupRecord {
                group_id: group.group_id.clone(),
            }),
            offsets,
            removes_group: true,
        })
    } else {
        (offsets > 0).then(|| GroupExpiry {
            record: MetadataRecord::RemoveOffsets(RemoveOffsetsRecord {
                group_id: group.group_id.clone(),
                partitions: expired
                    .into_iter()
                    .flat_map(|(topic, ps)| ps.into_iter().map(move |p| (topic.to_string(), p)))
                    .collect(),
            }),
            offsets,
            removes_group: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{apply, unfenced_brokers};
    use sluice_metadata::{
        GroupMemberRecord, GroupRecord, PartitionOffset, PartitionRecord, TopicRecord, Uuid,
    };
    use std::sync::Arc;

    const MINUTE: i64 = 60_000;

    /// Brokers 1..=3, unfenced, and topic "t" with two partitions.
    fn cluster() -> Arc<MetadataImage> {
        let image = unfenced_brokers(&[1, 2, 3]);
        let topic_id = Uuid::new_v4();
        let mut records = vec![MetadataRecord::Topic(TopicRecord {
            name: "t".into(),
            topic_id,
        })];
        for partition in 0..2 {
            records.push(MetadataRecord::Partition(PartitionRecord {
                topic_id,
                partition,
                replicas: vec![1],
                isr: vec![1],
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 0,
            }));
        }
        apply(&image, &records)
    }

    fn writer_for(image: &MetadataImage, group: &str) -> GroupWriter {
        let id = image.group_coordinator(group).unwrap();
        GroupWriter {
            broker_id: id,
            broker_epoch: image.brokers[&id].broker_epoch,
        }
    }

    fn generation(group: &str, generation: i32, members: &[&str], at: i64) -> GroupRecord {
        GroupRecord {
            group_id: group.into(),
            generation,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            leader: members.first().map(|m| m.to_string()),
            state_timestamp: at,
            members: members
                .iter()
                .map(|m| GroupMemberRecord {
                    member_id: m.to_string(),
                    group_instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 10_000,
                    rebalance_timeout_ms: 10_000,
                    subscription: vec![],
                    assignment: vec![],
                })
                .collect(),
        }
    }

    fn offsets(partitions: &[(i32, i64)]) -> Vec<TopicOffsets> {
        vec![TopicOffsets {
            topic: "t".into(),
            partitions: partitions
                .iter()
                .map(|&(partition, offset)| PartitionOffset {
                    partition,
                    offset,
                    leader_epoch: -1,
                    metadata: None,
                })
                .collect(),
        }]
    }

    /// Plans a write and, when it succeeds, applies its records.
    fn write(
        image: &Arc<MetadataImage>,
        writer: GroupWriter,
        write: GroupWrite,
        now: i64,
    ) -> (
        Arc<MetadataImage>,
        Result<GroupWriteOutcome, ControllerError>,
    ) {
        let op = write_group(image, writer, write, now);
        (apply(image, &op.records), op.results)
    }

    #[test]
    fn only_the_coordinator_writes_and_generations_chain() {
        let image = cluster();
        let writer = writer_for(&image, "g");
        let other = (1..=3).find(|&id| id != writer.broker_id).unwrap();
        let stranger = GroupWriter {
            broker_id: other,
            broker_epoch: image.brokers[&other].broker_epoch,
        };
        let first = GroupWrite::Membership {
            expected_generation: 0,
            group: generation("g", 1, &["a"], 0),
        };
        let (_, result) = write(&image, stranger, first.clone(), 0);
        assert!(matches!(result, Err(ControllerError::NotCoordinator(_))));
        let stale = GroupWriter {
            broker_epoch: writer.broker_epoch - 1,
            ..writer
        };
        let (_, result) = write(&image, stale, first.clone(), 0);
        assert!(matches!(
            result,
            Err(ControllerError::StaleBrokerEpoch { .. })
        ));

        let (image, result) = write(&image, writer, first.clone(), 0);
        result.unwrap();
        assert_eq!(image.groups["g"].generation(), 1);
        // A second write based on generation 0 lost the race.
        let (_, result) = write(&image, writer, first, 0);
        assert!(matches!(result, Err(ControllerError::IllegalGeneration(_))));
    }

    #[test]
    fn commits_are_checked_against_the_committed_generation() {
        let image = cluster();
        let writer = writer_for(&image, "g");
        let (image, _) = write(
            &image,
            writer,
            GroupWrite::Membership {
                expected_generation: 0,
                group: generation("g", 1, &["a"], 0),
            },
            0,
        );
        let commit = |generation: i32, member: &str| GroupWrite::CommitOffsets {
            group_id: "g".into(),
            generation,
            member_id: member.into(),
            offsets: offsets(&[(0, 7), (9, 1)]),
        };
        let (_, r) = write(&image, writer, commit(2, "a"), 5);
        assert!(matches!(r, Err(ControllerError::IllegalGeneration(_))));
        let (_, r) = write(&image, writer, commit(1, "b"), 5);
        assert!(matches!(r, Err(ControllerError::UnknownMemberId(_))));
        let (_, r) = write(&image, writer, commit(-1, ""), 5);
        assert!(matches!(r, Err(ControllerError::UnknownMemberId(_))));

        let (image, r) = write(&image, writer, commit(1, "a"), 5);
        assert_eq!(r.unwrap().unknown_partitions, vec![("t".to_string(), 9)]);
        let committed = image.groups["g"].offset("t", 0).unwrap();
        assert_eq!((committed.offset, committed.commit_timestamp), (7, 5));

        // A group outside group management takes commits with generation -1.
        let writer = writer_for(&image, "free");
        let (image, r) = write(
            &image,
            writer,
            GroupWrite::CommitOffsets {
                group_id: "free".into(),
                generation: -1,
                member_id: String::new(),
                offsets: offsets(&[(1, 3)]),
            },
            5,
        );
        r.unwrap();
        assert_eq!(image.groups["free"].offset("t", 1).unwrap().offset, 3);
    }

    #[test]
    fn only_empty_groups_are_deleted() {
        let image = cluster();
        let writer = writer_for(&image, "g");
        let delete = GroupWrite::DeleteGroup {
            group_id: "g".into(),
        };
        let (_, r) = write(&image, writer, delete.clone(), 0);
        assert!(matches!(r, Err(ControllerError::GroupIdNotFound(_))));
        let (image, _) = write(
            &image,
            writer,
            GroupWrite::Membership {
                expected_generation: 0,
                group: generation("g", 1, &["a"], 0),
            },
            0,
        );
        let (image, r) = write(&image, writer, delete.clone(), 0);
        assert!(matches!(r, Err(ControllerError::NonEmptyGroup(_))));
        let (image, _) = write(
            &image,
            writer,
            GroupWrite::Membership {
                expected_generation: 1,
                group: generation("g", 2, &[], 0),
            },
            0,
        );
        let (image, r) = write(&image, writer, delete, 0);
        r.unwrap();
        assert!(!image.groups.contains_key("g"));
    }

    /// A group that rebalances again just before its offsets expire: the
    /// coordinator forms the generation in memory, the controller's expiry
    /// sees only the committed, empty group.
    #[test]
    fn a_rebalance_that_begins_before_expiry_keeps_the_groups_offsets() {
        let retention = Duration::from_secs(600);
        let grace = Duration::from_secs(60);
        let image = cluster();
        let writer = writer_for(&image, "g");
        let (image, _) = write(
            &image,
            writer,
            GroupWrite::Membership {
                expected_generation: 0,
                group: generation("g", 1, &["a"], 0),
            },
            0,
        );
        let commit = GroupWrite::CommitOffsets {
            group_id: "g".into(),
            generation: 1,
            member_id: "a".into(),
            offsets: offsets(&[(0, 7)]),
        };
        let (image, r) = write(&image, writer, commit, 0);
        r.unwrap();
        // Every member leaves at 1 minute: the group is empty from then on.
        let (image, r) = write(
            &image,
            writer,
            GroupWrite::Membership {
                expected_generation: 1,
                group: generation("g", 2, &[], MINUTE),
            },
            MINUTE,
        );
        r.unwrap();

        // A consumer joins at 10 minutes, just before the offsets would
        // expire; the coordinator says the group is rebalancing.
        let rebalance = GroupWrite::RebalanceStarted {
            group_id: "g".into(),
            generation: 2,
            at_ms: 10 * MINUTE,
        };
        let (image, r) = write(&image, writer, rebalance.clone(), 10 * MINUTE);
        r.unwrap();
        // Expiry runs while the generation forms: it takes nothing.
        let op = expire_groups(&image, 11 * MINUTE + 1, retention, grace);
        assert_eq!(op.results, (0, 0), "{:?}", op.records);
        let image = apply(&image, &op.records);
        // The generation commits on top of the one it started from, and the
        // consumer finds its offset.
        let (image, r) = write(
            &image,
            writer,
            GroupWrite::Membership {
                expected_generation: 2,
                group: generation("g", 3, &["b"], 11 * MINUTE),
            },
            11 * MINUTE,
        );
        r.unwrap();
        assert_eq!(image.groups["g"].offset("t", 0).unwrap().offset, 7);

        // Had expiry come first, the rebalance is told the group is gone,
        // and starts a new one rather than building on what was removed.
        let (expired, _) = write(
            &image,
            writer,
            GroupWrite::Membership {
                expected_generation: 3,
                group: generation("g", 4, &[], 12 * MINUTE),
            },
            12 * MINUTE,
        );
        let op = expire_groups(&expired, 23 * MINUTE, retention, grace);
        assert_eq!(op.results, (1, 1));
        let expired = apply(&expired, &op.records);
        let late = GroupWrite::RebalanceStarted {
            group_id: "g".into(),
            generation: 4,
            at_ms: 23 * MINUTE,
        };
        let (_, r) = write(&expired, writer, late, 23 * MINUTE);
        assert!(
            matches!(r, Err(ControllerError::IllegalGeneration(_))),
            "{r:?}"
        );
    }

    /// A ZooKeeper-mode coordinator's expiry is judged on the state it
    /// lands on: a commit that landed since it looked keeps the group.
    #[test]
    fn an_expiry_write_takes_only_what_is_expired_when_it_lands() {
        let image = cluster();
        let writer = writer_for(&image, "simple");
        let commit = |offset: i64| GroupWrite::CommitOffsets {
            group_id: "simple".into(),
            generation: -1,
            member_id: String::new(),
            offsets: offsets(&[(0, offset)]),
        };
        let expire = |now_ms: i64| GroupWrite::ExpireOffsets {
            group_id: "simple".into(),
            now_ms,
            retention_ms: 10 * MINUTE,
            grace_ms: MINUTE,
        };
        let (image, r) = write(&image, writer, commit(5), 0);
        r.unwrap();
        // Planned at 10 minutes, but a commit at 9 minutes landed first.
        let (image, r) = write(&image, writer, commit(6), 9 * MINUTE);
        r.unwrap();
        let (image, r) = write(&image, writer, expire(10 * MINUTE), 10 * MINUTE);
        r.unwrap();
        assert_eq!(
            image.groups["simple"].offset("t", 0).map(|o| o.offset),
            Some(6)
        );
        // Ten minutes after that commit, the group and its offsets go.
        let (image, r) = write(&image, writer, expire(19 * MINUTE), 19 * MINUTE);
        r.unwrap();
        assert!(!image.groups.contains_key("simple"));
        // A group that is gone has nothing to expire.
        let (_, r) = write(&image, writer, expire(30 * MINUTE), 30 * MINUTE);
        r.unwrap();
    }

    #[test]
    fn offsets_expire_after_retention_unless_the_group_has_members() {
        let image = cluster();
        let retention = Duration::from_secs(600);
        let grace = Duration::from_secs(60);
        let mut image = image;
        for (group, members) in [("active", vec!["a"]), ("empty", vec![])] {
            let writer = writer_for(&image, group);
            let (next, _) = write(
                &image,
                writer,
                GroupWrite::Membership {
                    expected_generation: 0,
                    group: generation(group, 1, &members, 0),
                },
                0,
            );
            let (next, r) = write(
                &next,
                writer,
                GroupWrite::CommitOffsets {
                    group_id: group.into(),
                    generation: if members.is_empty() { -1 } else { 1 },
                    member_id: members.first().unwrap_or(&"").to_string(),
                    offsets: offsets(&[(0, 1)]),
                },
                0,
            );
            r.unwrap();
            image = next;
        }
        let writer = writer_for(&image, "free");
        let (image, _) = write(
            &image,
            writer,
            GroupWrite::CommitOffsets {
                group_id: "free".into(),
                generation: -1,
                member_id: String::new(),
                offsets: offsets(&[(0, 1)]),
            },
            0,
        );
        let (image, _) = write(
            &image,
            writer,
            GroupWrite::CommitOffsets {
                group_id: "free".into(),
                generation: -1,
                member_id: String::new(),
                offsets: offsets(&[(1, 1)]),
            },
            8 * MINUTE,
        );

        let op = expire_groups(&image, 9 * MINUTE, retention, grace);
        assert!(op.records.is_empty());
        let op = expire_groups(&image, 10 * MINUTE, retention, grace);
        assert_eq!(op.results, (2, 1));
        let image = apply(&image, &op.records);
        assert!(image.groups["active"].offset("t", 0).is_some());
        assert!(!image.groups.contains_key("empty"));
        assert!(image.groups["free"].offset("t", 0).is_none());
        assert!(image.groups["free"].offset("t", 1).is_some());

        // A group that never committed goes once it has been empty a while.
        let writer = writer_for(&image, "left");
        let (image, _) = write(
            &image,
            writer,
            GroupWrite::Membership {
                expected_generation: 0,
                group: generation("left", 1, &[], 20 * MINUTE),
            },
            0,
        );
        let removes_left = |records: &[MetadataRecord]| {
            records
                .iter()
                .any(|r| matches!(r, MetadataRecord::RemoveGroup(g) if g.group_id == "left"))
        };
        let op = expire_groups(&image, 20 * MINUTE + 1, retention, grace);
        assert!(!removes_left(&op.records));
        let op = expire_groups(&image, 21 * MINUTE, retention, grace);
        assert!(removes_left(&op.records));
    }
}
