//! The active controller's view of the cluster, read back from ZooKeeper:
//! a metadata image (live brokers unfenced, the brokers that went away
//! fenced, every partition whose state znode it read), and the planning
//! that turns it into partition state changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use sluice_controller::lifecycle::elect_leader;
use sluice_metadata::control_requests::{LiveBroker, PartitionState};
use sluice_metadata::{
    BrokerRecord, MetadataDelta, MetadataImage, MetadataRecord, PartitionRecord, TopicImage, Uuid,
    NO_LEADER,
};
use tracing::error;

use crate::znodes::TopicAssignment;

/// `unclean.leader.election.enable` as a topic config or broker setting.
pub(super) const UNCLEAN_CONFIG: &str = "unclean.leader.election.enable";

#[derive(Default)]
pub(super) struct Context {
    /// Brokers and partitions; a partition's `partition_epoch` is its state
    /// znode's data version.
    pub image: Arc<MetadataImage>,
    /// The controller epoch each partition's state znode was last written under.
    pub state_epochs: HashMap<(Uuid, i32), i32>,
    /// Each topic's replica assignment, as `/brokers/topics/<t>` holds it.
    pub assignments: BTreeMap<String, TopicAssignment>,
    /// Brokers in controlled shutdown: still live, but never elected.
    pub shutting_down: BTreeSet<i32>,
}

impl Context {
    /// Replays `records` into the image. They are built from the image
    /// itself and from what ZooKeeper holds, so a failure is a bug: it is
    /// logged and the image kept.
    pub fn apply(&mut self, records: &[MetadataRecord]) {
        if records.is_empty() {
            return;
        }
        let mut delta = MetadataDelta::new(self.image.clone());
        match delta.replay_all(records) {
            Ok(()) => self.image = delta.apply(self.image.offset + 1),
            Err(e) => error!(error = %e, "the controller's view did not take a change"),
        }
    }

    pub fn is_live(&self, broker_id: i32) -> bool {
        self.image
            .brokers
            .get(&broker_id)
            .is_some_and(|b| !b.fenced)
    }

    pub fn live_broker_ids(&self) -> Vec<i32> {
        self.image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.broker_id)
            .collect()
    }

    /// The brokers UpdateMetadata names live. A broker in controlled
    /// shutdown is left out, so leaders never add it back to an ISR while
    /// it still fetches, and clients stop being sent to it.
    pub fn live_brokers(&self) -> Vec<LiveBroker> {
        self.image
            .brokers
            .values()
            .filter(|b| !b.fenced && !self.shutting_down.contains(&b.broker_id))
            .map(|b| LiveBroker {
                broker_id: b.broker_id,
                broker_epoch: b.broker_epoch,
                endpoints: b.endpoints.clone(),
                rack: b.rack.clone(),
            })
            .collect()
    }

    pub fn broker_epoch(&self, broker_id: i32) -> Option<i64> {
        self.image
            .brokers
            .get(&broker_id)
            .filter(|b| !b.fenced)
            .map(|b| b.broker_epoch)
    }

    /// Marks a broker live under `epoch` (its registration's czxid), or gone.
    pub fn set_broker(&mut self, record: BrokerRecord) {
        self.apply(&[MetadataRecord::Broker(record)]);
    }

    pub fn partition_state(&self, topic: &TopicImage, partition: i32) -> Option<PartitionState> {
        let p = topic.partitions.get(&partition)?;
        Some(PartitionState {
            topic: topic.name.clone(),
            topic_id: topic.id,
            partition,
            controller_epoch: self
                .state_epochs
                .get(&(topic.id, partition))
                .copied()
                .unwrap_or_default(),
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            isr: p.isr.clone(),
            partition_epoch: p.partition_epoch,
            replicas: p.replicas.clone(),
        })
    }

    /// The states of the given partitions (those still known), in order.
    pub fn states(&self, partitions: &[(Uuid, i32)]) -> Vec<PartitionState> {
        partitions
            .iter()
            .filter_map(|(id, p)| {
                let topic = self.image.topic_by_id(id)?;
                self.partition_state(topic, *p)
            })
            .collect()
    }

    /// Every partition's state.
    pub fn all_states(&self) -> Vec<PartitionState> {
        let mut states = Vec::with_capacity(self.image.partition_count());
        for topic in self.image.topics_sorted() {
            for &p in topic.partitions.keys() {
                states.extend(self.partition_state(topic, p));
            }
        }
        states
    }

    /// The image elections run against: brokers in controlled shutdown
    /// count as gone, so they lead nothing and leave the ISRs.
    pub fn electable(&self) -> MetadataImage {
        let mut view = (*self.image).clone();
        if !self.shutting_down.is_empty() {
            let mut brokers = (*view.brokers).clone();
            for id in &self.shutting_down {
                if let Some(b) = brokers.get_mut(id) {
                    b.fenced = true;
                }
            }
            view.brokers = Arc::new(brokers);
        }
        view
    }

    /// Topics with a partition that no live in-sync replica can lead: the
    /// only ones whose unclean election setting matters.
    pub fn topics_needing_unclean_choice(&self) -> Vec<String> {
        let view = self.electable();
        let usable = |b: i32| view.brokers.get(&b).is_some_and(|r| !r.fenced);
        view.topics_by_id
            .values()
            .filter(|t| {
                t.partitions
                    .values()
                    .any(|p| !usable(p.leader) && !p.isr.iter().any(|&r| usable(r)))
            })
            .map(|t| t.name.clone())
            .collect()
    }
}

/// The partition changes that follow from which brokers are usable in
/// `image`: dead members leave the ISR (never emptying it: the last one is
/// where the data is known to be), and partitions whose leader is not
/// usable get a new one from the ISR, or with unclean election (`unclean`
/// says, per topic) from any usable replica, or none.
pub(super) fn offline_changes(
    image: &MetadataImage,
    unclean: &dyn Fn(&str) -> bool,
) -> Vec<PartitionRecord> {
    let usable = |b: i32| image.brokers.get(&b).is_some_and(|r| !r.fenced);
    let mut changes = Vec::new();
    for topic in image.topics_sorted() {
        for (&index, p) in &topic.partitions {
            let mut next = p.clone();
            let live_isr: Vec<i32> = p.isr.iter().copied().filter(|&r| usable(r)).collect();
            if live_isr.len() != p.isr.len() {
                next.isr = if !live_isr.is_empty() {
                    live_isr
                } else if p.isr.contains(&p.leader) {
                    vec![p.leader]
                } else {
                    p.isr.first().map(|&r| vec![r]).unwrap_or_default()
                };
            }
            if !usable(p.leader) {
                next.leader = match elect_leader(image, &next, None, unclean(&topic.name)) {
                    Some((leader, was_unclean)) => {
                        if was_unclean {
                            next.isr = vec![leader];
                        }
                        leader
                    }
                    None => NO_LEADER,
                };
                if next.leader != p.leader {
                    next.leader_epoch += 1;
                }
            }
            if next != *p {
                changes.push(PartitionRecord {
                    topic_id: topic.id,
                    partition: index,
                    replicas: next.replicas,
                    isr: next.isr,
                    leader: next.leader,
                    leader_epoch: next.leader_epoch,
                    // Set from the state znode's version once written.
                    partition_epoch: p.partition_epoch,
                });
            }
        }
    }
    changes
}

/// A new partition's first state: the first live replica leads, the live
/// replicas are in sync (all of them, when none is live: every replica's
/// log is empty, so any may lead once it comes).
pub(super) fn initial_state(replicas: &[i32], is_live: impl Fn(i32) -> bool) -> (i32, Vec<i32>) {
    let live: Vec<i32> = replicas.iter().copied().filter(|&r| is_live(r)).collect();
    match live.first() {
        Some(&leader) => (leader, live),
        None => (NO_LEADER, replicas.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_metadata::TopicRecord;

    fn image(
        live: &[i32],
        dead: &[i32],
        partitions: &[(Vec<i32>, Vec<i32>, i32)],
    ) -> MetadataImage {
        let mut records = Vec::new();
        for (&id, fenced) in live
            .iter()
            .map(|id| (id, false))
            .chain(dead.iter().map(|id| (id, true)))
        {
            records.push(MetadataRecord::Broker(BrokerRecord {
                broker_id: id,
                incarnation_id: Uuid::nil(),
                broker_epoch: 10,
                endpoints: vec![],
                rack: None,
                fenced,
            }));
        }
        let topic_id = Uuid::from_u128(7);
        records.push(MetadataRecord::Topic(TopicRecord {
            name: "t".into(),
            topic_id,
        }));
        for (i, (replicas, isr, leader)) in partitions.iter().enumerate() {
            records.push(MetadataRecord::Partition(PartitionRecord {
                topic_id,
                partition: i as i32,
                replicas: replicas.clone(),
                isr: isr.clone(),
                leader: *leader,
                leader_epoch: 3,
                partition_epoch: 5,
            }));
        }
        let mut delta = MetadataDelta::new(MetadataImage::empty());
        delta.replay_all(&records).unwrap();
        (*delta.apply(1)).clone()
    }

    #[test]
    fn dead_leaders_are_replaced_from_the_live_isr() {
        let image = image(
            &[2, 3],
            &[1],
            &[
                (vec![1, 2, 3], vec![1, 2, 3], 1),
                (vec![2, 1], vec![2, 1], 2),
                (vec![1, 3], vec![1], 1),
                (vec![2, 3], vec![2, 3], 2),
            ],
        );
        let changes = offline_changes(&image, &|_| false);
        let by_partition: BTreeMap<i32, &PartitionRecord> =
            changes.iter().map(|c| (c.partition, c)).collect();
        // Led by the dead broker: the next in-sync replica leads.
        assert_eq!(by_partition[&0].leader, 2);
        assert_eq!(by_partition[&0].isr, vec![2, 3]);
        assert_eq!(by_partition[&0].leader_epoch, 4);
        // Led elsewhere: only the ISR shrinks, the leader epoch stays.
        assert_eq!(by_partition[&1].leader, 2);
        assert_eq!(by_partition[&1].isr, vec![2]);
        assert_eq!(by_partition[&1].leader_epoch, 3);
        // No live in-sync replica: no leader, the ISR keeps the last one.
        assert_eq!(by_partition[&2].leader, NO_LEADER);
        assert_eq!(by_partition[&2].isr, vec![1]);
        // Healthy: untouched.
        assert!(!by_partition.contains_key(&3));

        // With unclean election, an out-of-sync live replica leads alone.
        let changes = offline_changes(&image, &|_| true);
        let p2 = changes.iter().find(|c| c.partition == 2).unwrap();
        assert_eq!((p2.leader, p2.isr.clone()), (3, vec![3]));
    }

    #[test]
    fn new_partitions_start_with_their_live_replicas() {
        assert_eq!(initial_state(&[3, 1, 2], |b| b != 3), (1, vec![1, 2]));
        assert_eq!(initial_state(&[3, 1], |_| false), (NO_LEADER, vec![3, 1]));
    }
}
