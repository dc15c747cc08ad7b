//! Consumer groups in the metadata image: each group's last committed
//! membership and its committed offsets, the changes one batch of records
//! makes to them, and which broker coordinates a group.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::image::{BrokerRegistration, MetadataImage};
use crate::records::{
    GroupRecord, MetadataRecord, OffsetCommitRecord, PartitionOffset, RemoveOffsetsRecord,
    TopicOffsets,
};

/// Every group of an image by id. A persistent map: images share it, and the
/// next image copies only what its delta changed, so a commit costs the same
/// with ten groups or ten thousand.
pub type GroupMap = imbl::OrdMap<String, Arc<GroupImage>>;

/// One group as the metadata log knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupImage {
    pub group_id: String,
    /// The last committed generation; `None` for a group that only has
    /// offsets, committed by clients that assign partitions themselves.
    /// Shared, so an offset commit does not copy the members.
    pub membership: Option<Arc<GroupRecord>>,
    /// Committed offsets by topic, then partition. Each topic's map is
    /// shared between images until a commit touches it.
    pub offsets: BTreeMap<String, Arc<BTreeMap<i32, CommittedOffset>>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    /// ms since the epoch.
    pub commit_timestamp: i64,
}

impl GroupImage {
    pub fn generation(&self) -> i32 {
        self.membership.as_ref().map_or(0, |m| m.generation)
    }

    /// True when no member is in the committed generation.
    pub fn has_no_members(&self) -> bool {
        self.membership
            .as_ref()
            .is_none_or(|m| m.members.is_empty())
    }

    pub fn offset(&self, topic: &str, partition: i32) -> Option<&CommittedOffset> {
        self.offsets.get(topic)?.get(&partition)
    }

    pub fn offset_count(&self) -> usize {
        self.offsets.values().map(|p| p.len()).sum()
    }

    /// The records that rebuild this group: its membership, then its
    /// offsets, one record per distinct commit time.
    pub fn to_records(&self, records: &mut Vec<MetadataRecord>) {
        if let Some(membership) = &self.membership {
            records.push(MetadataRecord::Group((**membership).clone()));
        }
        let offsets = self.offsets.iter().flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .map(move |(&partition, committed)| (topic.as_str(), partition, committed))
        });
        offset_records(&self.group_id, offsets, records);
    }

    fn commit(&mut self, record: &OffsetCommitRecord) {
        for topic in &record.topics {
            let partitions = Arc::make_mut(self.offsets.entry(topic.topic.clone()).or_default());
            for p in &topic.partitions {
                partitions.insert(
                    p.partition,
                    CommittedOffset {
                        offset: p.offset,
                        leader_epoch: p.leader_epoch,
                        metadata: p.metadata.clone(),
                        commit_timestamp: record.commit_timestamp,
                    },
                );
            }
        }
    }

    fn remove_offsets(&mut self, record: &RemoveOffsetsRecord) {
        for (topic, partition) in &record.partitions {
            if let Some(partitions) = self.offsets.get_mut(topic) {
                Arc::make_mut(partitions).remove(partition);
                if partitions.is_empty() {
                    self.offsets.remove(topic);
                }
            }
        }
    }
}

/// The group changes of one delta; `None` marks a removed group. Groups
/// are shared with the base image until a record changes them.
#[derive(Debug, Default)]
pub(crate) struct GroupChanges {
    pub changed: BTreeMap<String, Option<Arc<GroupImage>>>,
}

impl GroupChanges {
    /// The group as this delta leaves it so far.
    fn current(&self, base: Option<&MetadataImage>, group_id: &str) -> Option<Arc<GroupImage>> {
        match self.changed.get(group_id) {
            Some(changed) => changed.clone(),
            None => base.and_then(|b| b.groups.get(group_id)).cloned(),
        }
    }

    fn current_or_new(&self, base: Option<&MetadataImage>, group_id: &str) -> Arc<GroupImage> {
        self.current(base, group_id).unwrap_or_else(|| {
            Arc::new(GroupImage {
                group_id: group_id.to_string(),
                ..GroupImage::default()
            })
        })
    }

    /// Replays one group record; `base` is `None` when the delta replaces
    /// its base image (a snapshot).
    pub fn replay(&mut self, base: Option<&MetadataImage>, record: &MetadataRecord) {
        match record {
            MetadataRecord::Group(r) => {
                let mut group = self.current_or_new(base, &r.group_id);
                Arc::make_mut(&mut group).membership = Some(Arc::new(r.clone()));
                self.changed.insert(r.group_id.clone(), Some(group));
            }
            MetadataRecord::RemoveGroup(r) => {
                self.changed.insert(r.group_id.clone(), None);
            }
            MetadataRecord::Offsets(r) => {
                let mut group = self.current_or_new(base, &r.group_id);
                Arc::make_mut(&mut group).commit(r);
                self.changed.insert(r.group_id.clone(), Some(group));
            }
            MetadataRecord::RemoveOffsets(r) => {
                if let Some(mut group) = self.current(base, &r.group_id) {
                    Arc::make_mut(&mut group).remove_offsets(r);
                    self.changed.insert(r.group_id.clone(), Some(group));
                }
            }
            _ => {}
        }
    }

    /// A deleted topic's committed offsets go with it, in every group.
    pub fn remove_topic(&mut self, base: Option<&MetadataImage>, topic: &str) {
        let mut holders: Vec<String> = self
            .changed
            .iter()
            .filter(|(_, g)| g.as_ref().is_some_and(|g| g.offsets.contains_key(topic)))
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(base) = base {
            holders.extend(
                base.groups
                    .values()
                    .filter(|g| !self.changed.contains_key(&g.group_id))
                    .filter(|g| g.offsets.contains_key(topic))
                    .map(|g| g.group_id.clone()),
            );
        }
        for group_id in holders {
            if let Some(mut group) = self.current(base, &group_id) {
                Arc::make_mut(&mut group).offsets.remove(topic);
                self.changed.insert(group_id, Some(group));
            }
        }
    }

    pub fn apply(&self, start: &GroupMap, replaces_base: bool) -> GroupMap {
        // Cloning the persistent map shares it; each change copies only the
        // path to its group, so a delta costs O(changes x log groups).
        let mut groups = if replaces_base {
            GroupMap::new()
        } else {
            start.clone()
        };
        for (id, group) in &self.changed {
            match group {
                Some(group) => groups.insert(id.clone(), group.clone()),
                None => groups.remove(id),
            };
        }
        groups
    }
}

/// The broker that coordinates `group_id`: of the unfenced brokers, the one
/// whose pairing with the group hashes highest (rendezvous hashing). Every
/// node computes the same answer from the same image, and when a broker
/// joins or leaves only the groups it gains or loses move.
pub fn group_coordinator<'a>(
    brokers: impl IntoIterator<Item = &'a BrokerRegistration>,
    group_id: &str,
) -> Option<i32> {
    let key = fnv1a(group_id.as_bytes());
    brokers
        .into_iter()
        .filter(|b| !b.fenced)
        .max_by_key(|b| (mix(key ^ mix(b.broker_id as u64)), b.broker_id))
        .map(|b| b.broker_id)
}

/// FNV-1a: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The splitmix64 finalizer, so nearby inputs give unrelated weights.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Committed offsets as metadata records: one record per distinct commit
/// time, so replaying them keeps each offset's own timestamp.
pub fn offset_records<'a>(
    group_id: &str,
    offsets: impl IntoIterator<Item = (&'a str, i32, &'a CommittedOffset)>,
    records: &mut Vec<MetadataRecord>,
) {
    let mut by_time: BTreeMap<i64, BTreeMap<&str, Vec<PartitionOffset>>> = BTreeMap::new();
    for (topic, partition, committed) in offsets {
        by_time
            .entry(committed.commit_timestamp)
            .or_default()
            .entry(topic)
            .or_default()
            .push(PartitionOffset {
                partition,
                offset: committed.offset,
                leader_epoch: committed.leader_epoch,
                metadata: committed.metadata.clone(),
            });
    }
    for (commit_timestamp, topics) in by_time {
        records.push(MetadataRecord::Offsets(OffsetCommitRecord {
            group_id: group_id.to_string(),
            commit_timestamp,
            topics: topics
                .into_iter()
                .map(|(topic, partitions)| TopicOffsets {
                    topic: topic.to_string(),
                    partitions,
                })
                .collect(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{GroupMemberRecord, RemoveGroupRecord, RemoveTopicRecord, TopicRecord};
    use crate::MetadataDelta;
    use uuid::Uuid;

    fn broker(id: i32, fenced: bool) -> BrokerRegistration {
        BrokerRegistration {
            broker_id: id,
            incarnation_id: Uuid::nil(),
            broker_epoch: 1,
            endpoints: vec![],
            rack: None,
            fenced,
        }
    }

    fn commit(group: &str, topic: &str, partition: i32, offset: i64, at: i64) -> MetadataRecord {
        MetadataRecord::Offsets(OffsetCommitRecord {
            group_id: group.into(),
            commit_timestamp: at,
            topics: vec![TopicOffsets {
                topic: topic.into(),
                partitions: vec![PartitionOffset {
                    partition,
                    offset,
                    leader_epoch: 2,
                    metadata: Some("m".into()),
                }],
            }],
        })
    }

    fn membership(group: &str, generation: i32, members: &[&str]) -> MetadataRecord {
        MetadataRecord::Group(GroupRecord {
            group_id: group.into(),
            generation,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            leader: members.first().map(|m| m.to_string()),
            state_timestamp: 5,
            members: members
                .iter()
                .map(|m| GroupMemberRecord {
                    member_id: m.to_string(),
                    group_instance_id: None,
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 10_000,
                    rebalance_timeout_ms: 10_000,
                    subscription: vec![1],
                    assignment: vec![2],
                })
                .collect(),
        })
    }

    fn apply(base: &Arc<MetadataImage>, records: &[MetadataRecord]) -> Arc<MetadataImage> {
        let mut delta = MetadataDelta::new(base.clone());
        delta.replay_all(records).unwrap();
        delta.apply(base.offset + 1)
    }

    #[test]
    fn coordinators_are_stable_and_spread_and_skip_fenced_brokers() {
        let brokers: Vec<_> = (1..=3).map(|id| broker(id, false)).collect();
        let mut per_broker = BTreeMap::new();
        for i in 0..300 {
            let group = format!("group-{i}");
            let chosen = group_coordinator(&brokers, &group).unwrap();
            assert_eq!(
                group_coordinator(brokers.iter().rev(), &group),
                Some(chosen)
            );
            *per_broker.entry(chosen).or_insert(0) += 1;
        }
        assert_eq!(per_broker.len(), 3);
        assert!(per_broker.values().all(|&n| n > 60), "{per_broker:?}");

        // Fencing a broker moves only its own groups.
        let fenced = vec![broker(1, false), broker(2, true), broker(3, false)];
        for i in 0..300 {
            let group = format!("group-{i}");
            let before = group_coordinator(&brokers, &group).unwrap();
            let after = group_coordinator(&fenced, &group).unwrap();
            assert_ne!(after, 2);
            if before != 2 {
                assert_eq!(before, after);
            }
        }
        assert_eq!(group_coordinator(&[broker(1, true)], "g"), None);
    }

    #[test]
    fn commits_keep_the_latest_offset_and_share_untouched_topics() {
        let image = apply(
            &MetadataImage::empty(),
            &[commit("g", "a", 0, 10, 1), commit("g", "b", 0, 5, 1)],
        );
        let next = apply(
            &image,
            &[commit("g", "a", 0, 20, 2), commit("g", "a", 1, 3, 2)],
        );
        let group = &next.groups["g"];
        assert_eq!(group.offset("a", 0).unwrap().offset, 20);
        assert_eq!(group.offset("a", 0).unwrap().commit_timestamp, 2);
        assert_eq!(group.offset_count(), 3);
        assert!(Arc::ptr_eq(
            &group.offsets["b"],
            &image.groups["g"].offsets["b"]
        ));
        assert!(group.membership.is_none());
        assert_eq!(group.generation(), 0);
    }

    #[test]
    fn removals_and_topic_deletion_drop_offsets() {
        let id = Uuid::new_v4();
        let image = apply(
            &MetadataImage::empty(),
            &[
                MetadataRecord::Topic(TopicRecord {
                    name: "a".into(),
                    topic_id: id,
                }),
                commit("g", "a", 0, 10, 1),
                commit("g", "b", 0, 5, 1),
                commit("h", "a", 3, 1, 1),
                membership("h", 4, &["m1"]),
            ],
        );
        let next = apply(
            &image,
            &[MetadataRecord::RemoveTopic(RemoveTopicRecord {
                topic_id: id,
            })],
        );
        assert!(!next.groups["g"].offsets.contains_key("a"));
        assert_eq!(next.groups["g"].offset("b", 0).unwrap().offset, 5);
        assert_eq!(next.groups["h"].offset_count(), 0);
        assert_eq!(next.groups["h"].generation(), 4);

        let next = apply(
            &next,
            &[
                MetadataRecord::RemoveOffsets(RemoveOffsetsRecord {
                    group_id: "g".into(),
                    partitions: vec![("b".into(), 0)],
                }),
                MetadataRecord::RemoveGroup(RemoveGroupRecord {
                    group_id: "h".into(),
                }),
            ],
        );
        assert_eq!(next.groups["g"].offset_count(), 0);
        assert!(!next.groups.contains_key("h"));
    }

    #[test]
    fn snapshots_hold_one_offset_per_partition() {
        let mut records = vec![membership("g", 2, &["m1", "m2"])];
        for i in 0..100 {
            records.push(commit("g", "a", i % 4, i as i64, i as i64 / 10));
        }
        let image = apply(&MetadataImage::empty(), &records);
        let snapshot = image.to_records();
        let offsets: usize = snapshot
            .iter()
            .map(|r| match r {
                MetadataRecord::Offsets(o) => o.topics.iter().map(|t| t.partitions.len()).sum(),
                _ => 0,
            })
            .sum();
        assert_eq!(offsets, 4);
        let mut delta = MetadataDelta::for_snapshot(MetadataImage::empty());
        delta.replay_all(&snapshot).unwrap();
        let loaded = delta.apply(image.offset);
        assert_eq!(loaded.groups, image.groups);
    }
}
