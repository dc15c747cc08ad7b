//! Broker lifecycle and partition leadership as pure operations:
//! registration, fencing and unfencing, controlled shutdown, ISR changes
//! asked for by leaders, and leader elections.
//!
//! Each returns the records to commit; leadership only moves when they are
//! replayed. The election rule is stated once, in [`elect_leader`].

use sluice_metadata::controller_api::{
    BrokerRegistrationRequest, ControllerError, IsrChange, PartitionState,
};
use sluice_metadata::{
    BrokerRecord, BrokerRegistration, MetadataImage, MetadataRecord, PartitionRecord,
    PartitionRegistration, Uuid, NO_LEADER,
};

use crate::ops::OpResult;

/// Whether a broker may lead or be in an ISR, given the fencing decided so far.
fn usable(image: &MetadataImage, broker: i32, fenced_now: Option<i32>) -> bool {
    fenced_now != Some(broker) && image.brokers.get(&broker).is_some_and(|b| !b.fenced)
}

/// The leader a partition should have: the first replica, in assignment
/// order, that is in the ISR and usable; with unclean election, failing
/// that, the first usable replica outside the ISR.
pub fn elect_leader(
    image: &MetadataImage,
    partition: &PartitionRegistration,
    fenced_now: Option<i32>,
    unclean: bool,
) -> Option<(i32, bool)> {
    let clean = partition
        .replicas
        .iter()
        .copied()
        .find(|&r| partition.isr.contains(&r) && usable(image, r, fenced_now));
    if let Some(leader) = clean {
        return Some((leader, false));
    }
    if unclean {
        return partition
            .replicas
            .iter()
            .copied()
            .find(|&r| usable(image, r, fenced_now))
            .map(|leader| (leader, true));
    }
    None
}

/// `unclean.leader.election.enable` for `topic`: its own config if set,
/// else the controller's (broker-wide) setting `default`.
pub fn unclean_for(image: &MetadataImage, topic: &str, default: bool) -> bool {
    image
        .topic_config(topic)
        .and_then(|c| c.get("unclean.leader.election.enable"))
        .map_or(default, |v| v.trim().eq_ignore_ascii_case("true"))
}

fn record(topic_id: Uuid, index: i32, p: &PartitionRegistration) -> MetadataRecord {
    MetadataRecord::Partition(PartitionRecord {
        topic_id,
        partition: index,
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
    })
}

/// Partition changes once `broker` can no longer serve: partitions it
/// leads get a new leader from the ISR (or none), and it leaves every ISR
/// it is in, unless it is the last member (an ISR is never empty, so the
/// data's last known home is remembered).
fn remove_broker_from_partitions(
    image: &MetadataImage,
    broker: i32,
    unclean: bool,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics_by_id.values() {
        let unclean = unclean_for(image, &topic.name, unclean);
        for (&index, p) in &topic.partitions {
            if !p.replicas.contains(&broker) {
                continue;
            }
            let mut next = p.clone();
            if next.isr.len() > 1 {
                next.isr.retain(|&r| r != broker);
            }
            if p.leader == broker || p.leader == NO_LEADER {
                match elect_leader(image, &next, Some(broker), unclean) {
                    Some((leader, was_unclean)) => {
                        next.leader = leader;
                        if was_unclean {
                            next.isr = vec![leader];
                        }
                    }
                    None => next.leader = NO_LEADER,
                }
                if next.leader != p.leader {
                    next.leader_epoch += 1;
                }
            }
            if next != *p {
                next.partition_epoch += 1;
                records.push(record(topic.id, index, &next));
            }
        }
    }
    records
}

fn broker_record(b: &BrokerRegistration, fenced: bool) -> MetadataRecord {
    MetadataRecord::Broker(BrokerRecord {
        broker_id: b.broker_id,
        incarnation_id: b.incarnation_id,
        broker_epoch: b.broker_epoch,
        endpoints: b.endpoints.clone(),
        rack: b.rack.clone(),
        fenced,
    })
}

/// A broker (re)registers. It starts fenced and is unfenced by a heartbeat
/// once it has caught up with the metadata log; a restart moves its
/// leaderships away first, because its log may be behind. The result is
/// the new broker epoch.
pub fn register_broker(
    image: &MetadataImage,
    request: BrokerRegistrationRequest,
    unclean: bool,
) -> OpResult<i64> {
    let previous = image.brokers.get(&request.broker_id);
    // Strictly larger than any epoch handed out before, so requests from an
    // earlier incarnation are recognisable.
    let broker_epoch = (image.offset as i64 + 1).max(previous.map_or(0, |b| b.broker_epoch) + 1);
    let mut records = vec![MetadataRecord::Broker(BrokerRecord {
        broker_id: request.broker_id,
        incarnation_id: request.incarnation_id,
        broker_epoch,
        endpoints: request.endpoints,
        rack: request.rack,
        fenced: true,
    })];
    if previous.is_some_and(|b| !b.fenced) {
        records.extend(remove_broker_from_partitions(
            image,
            request.broker_id,
            unclean,
        ));
    }
    OpResult {
        records,
        results: broker_epoch,
    }
}

/// Fences a broker whose session expired (or that finished a controlled
/// shutdown); nothing when it is already fenced or has re-registered.
pub fn fence_broker(
    image: &MetadataImage,
    broker_id: i32,
    broker_epoch: i64,
    unclean: bool,
) -> OpResult<()> {
    let mut records = Vec::new();
    if let Some(b) = image
        .brokers
        .get(&broker_id)
        .filter(|b| !b.fenced && b.broker_epoch == broker_epoch)
    {
        records.push(broker_record(b, true));
        records.extend(remove_broker_from_partitions(image, broker_id, unclean));
    }
    OpResult {
        records,
        results: (),
    }
}

/// Unfences a broker that has caught up, and gives it the leadership of
/// partitions that had no leader and can now have one.
pub fn unfence_broker(image: &MetadataImage, broker_id: i32, unclean: bool) -> OpResult<()> {
    let mut records = Vec::new();
    let Some(b) = image.brokers.get(&broker_id).filter(|b| b.fenced) else {
        return OpResult {
            records,
            results: (),
        };
    };
    records.push(broker_record(b, false));
    // Elect against the image as it will be once the broker is unfenced.
    let mut after = image.clone();
    let mut brokers = (*after.brokers).clone();
    if let Some(entry) = brokers.get_mut(&broker_id) {
        entry.fenced = false;
    }
    after.brokers = brokers.into();
    for topic in image.topics_by_id.values() {
        let unclean = unclean_for(image, &topic.name, unclean);
        for (&index, p) in &topic.partitions {
            if p.leader != NO_LEADER || !p.replicas.contains(&broker_id) {
                continue;
            }
            if let Some((leader, was_unclean)) = elect_leader(&after, p, None, unclean) {
                let mut next = p.clone();
                next.leader = leader;
                if was_unclean {
                    next.isr = vec![leader];
                }
                next.leader_epoch += 1;
                next.partition_epoch += 1;
                records.push(record(topic.id, index, &next));
            }
        }
    }
    OpResult {
        records,
        results: (),
    }
}

/// Leaders for the leaderless partitions of `topic`, allowing replicas
/// outside the ISR (its `unclean.leader.election.enable` was just turned on).
pub fn elect_unclean_leaders(image: &MetadataImage, topic: &str) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    let Some(topic) = image.topic(topic) else {
        return records;
    };
    for (&index, p) in &topic.partitions {
        if p.leader != NO_LEADER {
            continue;
        }
        if let Some((leader, was_unclean)) = elect_leader(image, p, None, true) {
            let mut next = p.clone();
            next.leader = leader;
            if was_unclean {
                next.isr = vec![leader];
            }
            next.leader_epoch += 1;
            next.partition_epoch += 1;
            records.push(record(topic.id, index, &next));
        }
    }
    records
}

/// Controlled shutdown: moves every leadership of `broker_id` to another
/// in-sync replica and takes it out of the ISRs, so clients move on before
/// the process exits. A partition with no other in-sync replica is left
/// without a leader (its ISR keeps the broker, whose return elects it
/// again), as Kafka does. The result is the number of partitions changed.
pub fn controlled_shutdown(image: &MetadataImage, broker_id: i32) -> OpResult<usize> {
    let mut records = Vec::new();
    for topic in image.topics_by_id.values() {
        for (&index, p) in &topic.partitions {
            if !p.replicas.contains(&broker_id) {
                continue;
            }
            let mut next = p.clone();
            if p.leader == broker_id {
                next.leader = elect_leader(image, p, Some(broker_id), false)
                    .map_or(NO_LEADER, |(leader, _)| leader);
                next.leader_epoch += 1;
            }
            if next.isr.len() > 1 {
                next.isr.retain(|&r| r != broker_id);
            }
            if next != *p {
                next.partition_epoch += 1;
                records.push(record(topic.id, index, &next));
            }
        }
    }
    let changed = records.len();
    OpResult {
        records,
        results: changed,
    }
}

/// ISR changes asked for by partition leaders (Kafka's AlterPartition).
pub fn alter_partition(
    image: &MetadataImage,
    broker_id: i32,
    broker_epoch: i64,
    changes: Vec<IsrChange>,
) -> OpResult<Vec<Result<PartitionState, ControllerError>>> {
    let registered = image.brokers.get(&broker_id);
    if registered.map(|b| b.broker_epoch) != Some(broker_epoch) {
        let err = ControllerError::StaleBrokerEpoch {
            broker_id,
            broker_epoch,
        };
        return OpResult {
            records: Vec::new(),
            results: changes.iter().map(|_| Err(err.clone())).collect(),
        };
    }
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(changes.len());
    for change in changes {
        let result = plan_isr_change(image, broker_id, &change).map(|next| {
            records.push(record(change.topic_id, change.partition, &next));
            PartitionState {
                leader: next.leader,
                leader_epoch: next.leader_epoch,
                isr: next.isr.clone(),
                partition_epoch: next.partition_epoch,
            }
        });
        results.push(result);
    }
    OpResult { records, results }
}

fn plan_isr_change(
    image: &MetadataImage,
    broker_id: i32,
    change: &IsrChange,
) -> Result<PartitionRegistration, ControllerError> {
    let p = image
        .topic_by_id(&change.topic_id)
        .and_then(|t| t.partitions.get(&change.partition))
        .ok_or(ControllerError::UnknownTopicId(change.topic_id))?;
    if p.leader != broker_id {
        return Err(ControllerError::NotLeader(format!(
            "Broker {broker_id} is not the leader of partition {}",
            change.partition
        )));
    }
    if change.leader_epoch != p.leader_epoch {
        return Err(ControllerError::FencedLeaderEpoch(format!(
            "Leader epoch {} is not the current {}",
            change.leader_epoch, p.leader_epoch
        )));
    }
    if change.partition_epoch != p.partition_epoch {
        return Err(ControllerError::InvalidUpdateVersion(format!(
            "Partition epoch {} is not the current {}",
            change.partition_epoch, p.partition_epoch
        )));
    }
    if !change.new_isr.contains(&broker_id) {
        return Err(ControllerError::InvalidRequest(
            "The new ISR must include the leader".into(),
        ));
    }
    let added_ineligible = change
        .new_isr
        .iter()
        .find(|&&r| !p.replicas.contains(&r) || (!p.isr.contains(&r) && !usable(image, r, None)));
    if let Some(r) = added_ineligible {
        return Err(ControllerError::IneligibleReplica(format!(
            "Replica {r} is not a live replica of the partition"
        )));
    }
    // KIP-903: the leader adds a replica for what it fetched under one
    // registration. If that broker has registered again since (it
    // restarted, and may have lost an unflushed tail), those fetches vouch
    // for nothing.
    let restarted = change.broker_epochs.iter().find(|&&(r, epoch)| {
        epoch >= 0
            && !p.isr.contains(&r)
            && image
                .brokers
                .get(&r)
                .is_some_and(|b| b.broker_epoch != epoch)
    });
    if let Some((r, epoch)) = restarted {
        return Err(ControllerError::IneligibleReplica(format!(
            "Replica {r} was in sync under broker epoch {epoch}, which is not its current registration"
        )));
    }
    let mut next = p.clone();
    let mut isr = change.new_isr.clone();
    isr.sort_unstable();
    isr.dedup();
    next.isr = isr;
    next.partition_epoch += 1;
    Ok(next)
}

/// Moves leadership back to the preferred (first) replica wherever that
/// replica is usable and in sync, restoring the spread placement gave.
pub fn preferred_leader_elections(image: &MetadataImage) -> OpResult<usize> {
    let mut records = Vec::new();
    for topic in image.topics_by_id.values() {
        for (&index, p) in &topic.partitions {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            if p.leader != preferred && p.isr.contains(&preferred) && usable(image, preferred, None)
            {
                let mut next = p.clone();
                next.leader = preferred;
                next.leader_epoch += 1;
                next.partition_epoch += 1;
                records.push(record(topic.id, index, &next));
            }
        }
    }
    let moved = records.len();
    OpResult {
        records,
        results: moved,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_metadata::controller_api::NewTopic;

    use super::*;
    use crate::ops::{create_topics, TopicDefaults};
    use crate::test_support::{apply, registration, unfenced_brokers};

    /// Three unfenced brokers and a topic of three partitions, RF 3.
    fn cluster() -> (Arc<MetadataImage>, Uuid) {
        let mut image = unfenced_brokers(&[1, 2, 3]);
        let defaults = TopicDefaults {
            num_partitions: 3,
            replication_factor: 3,
        };
        let op = create_topics(
            &image,
            &defaults,
            vec![NewTopic {
                name: "t".into(),
                num_partitions: -1,
                replication_factor: -1,
                ..NewTopic::default()
            }],
        );
        image = apply(&image, &op.records);
        let id = image.topic("t").unwrap().id;
        (image, id)
    }

    fn partition(image: &MetadataImage, id: Uuid, index: i32) -> PartitionRegistration {
        image.topic_by_id(&id).unwrap().partitions[&index].clone()
    }

    #[test]
    fn new_brokers_start_fenced_and_unfence_on_request() {
        let image = MetadataImage::empty();
        let op = register_broker(&image, registration(1), false);
        let image = apply(&image, &op.records);
        assert!(image.brokers[&1].fenced);
        let image = apply(&image, &unfence_broker(&image, 1, false).records);
        assert!(!image.brokers[&1].fenced);
    }

    #[test]
    fn fencing_moves_leadership_within_the_isr_and_shrinks_it() {
        let (image, id) = cluster();
        let p0 = partition(&image, id, 0);
        assert_eq!(p0.leader, 1);
        let epoch = image.brokers[&1].broker_epoch;
        let image = apply(&image, &fence_broker(&image, 1, epoch, false).records);
        let p0 = partition(&image, id, 0);
        assert_eq!(p0.leader, 2);
        assert_eq!(p0.leader_epoch, 1);
        assert!(!p0.isr.contains(&1));
        // A partition led elsewhere only loses broker 1 from its ISR.
        let p1 = partition(&image, id, 1);
        assert_eq!((p1.leader, p1.leader_epoch), (2, 0));
        assert!(!p1.isr.contains(&1));
        // Stale epochs fence nothing.
        assert!(fence_broker(&image, 2, epoch - 100, false)
            .records
            .is_empty());
    }

    #[test]
    fn the_last_isr_member_is_kept_and_leads_again_when_back() {
        let (mut image, id) = cluster();
        for broker in [2, 3, 1] {
            let epoch = image.brokers[&broker].broker_epoch;
            image = apply(&image, &fence_broker(&image, broker, epoch, false).records);
        }
        let p0 = partition(&image, id, 0);
        assert_eq!(p0.leader, NO_LEADER);
        assert_eq!(p0.isr, vec![1]);
        // Broker 3 is not in the ISR: no clean election for it.
        image = apply(&image, &unfence_broker(&image, 3, false).records);
        assert_eq!(partition(&image, id, 0).leader, NO_LEADER);
        image = apply(&image, &unfence_broker(&image, 1, false).records);
        let p0 = partition(&image, id, 0);
        assert_eq!(p0.leader, 1);
        assert!(p0.leader_epoch > 0);
    }

    #[test]
    fn unclean_election_picks_a_live_replica_outside_the_isr() {
        let (mut image, id) = cluster();
        for broker in [2, 3, 1] {
            let epoch = image.brokers[&broker].broker_epoch;
            image = apply(&image, &fence_broker(&image, broker, epoch, false).records);
        }
        image = apply(&image, &unfence_broker(&image, 3, true).records);
        let p0 = partition(&image, id, 0);
        assert_eq!((p0.leader, p0.isr.clone()), (3, vec![3]));
    }

    /// Kills every ISR member of `t` and returns broker 3 (outside the
    /// ISR of partition 0) to life.
    fn isr_dead_then_3_back(mut image: Arc<MetadataImage>, unclean: bool) -> Arc<MetadataImage> {
        for broker in [2, 3, 1] {
            let epoch = image.brokers[&broker].broker_epoch;
            image = apply(
                &image,
                &fence_broker(&image, broker, epoch, unclean).records,
            );
        }
        apply(&image, &unfence_broker(&image, 3, unclean).records)
    }

    fn set_topic_config(image: &Arc<MetadataImage>, name: &str, value: &str) -> Arc<MetadataImage> {
        let op = crate::ops::alter_configs(
            image,
            vec![(
                sluice_metadata::ConfigResource::Topic("t".into()),
                vec![sluice_metadata::controller_api::ConfigChange {
                    name: name.into(),
                    value: Some(value.into()),
                }],
            )],
        );
        assert!(op.results.iter().all(Result::is_ok));
        apply(image, &op.records)
    }

    #[test]
    fn the_topic_level_unclean_setting_overrides_the_brokers() {
        // Broker-wide off, topic on: the out-of-ISR replica leads.
        let (image, id) = cluster();
        let image = set_topic_config(&image, "unclean.leader.election.enable", "true");
        let image = isr_dead_then_3_back(image, false);
        let p0 = partition(&image, id, 0);
        assert_eq!((p0.leader, p0.isr.clone()), (3, vec![3]));

        // Broker-wide on, topic off: it stays leaderless.
        let (image, id) = cluster();
        let image = set_topic_config(&image, "unclean.leader.election.enable", "false");
        let image = isr_dead_then_3_back(image, true);
        assert_eq!(partition(&image, id, 0).leader, NO_LEADER);

        // Neither: leaderless too, until the topic turns it on.
        let (image, id) = cluster();
        let image = isr_dead_then_3_back(image, false);
        assert_eq!(partition(&image, id, 0).leader, NO_LEADER);
        let image = set_topic_config(&image, "unclean.leader.election.enable", "true");
        let p0 = partition(&image, id, 0);
        assert_eq!((p0.leader, p0.isr.clone()), (3, vec![3]));
    }

    #[test]
    fn controlled_shutdown_moves_leaders_away() {
        let (image, id) = cluster();
        let op = controlled_shutdown(&image, 1);
        assert_eq!(op.results, 3);
        let image = apply(&image, &op.records);
        for index in 0..3 {
            let p = partition(&image, id, index);
            assert_ne!(p.leader, 1);
            assert!(!p.isr.contains(&1));
        }
        assert_eq!(controlled_shutdown(&image, 1).results, 0);
        // The last in-sync replica leaves its partitions leaderless.
        let image = apply(&image, &controlled_shutdown(&image, 2).records);
        let image = apply(&image, &controlled_shutdown(&image, 3).records);
        let p0 = partition(&image, id, 0);
        assert_eq!(p0.leader, NO_LEADER);
        assert_eq!(p0.isr.len(), 1);
    }

    #[test]
    fn isr_changes_check_leader_epochs_and_eligibility() {
        let (image, id) = cluster();
        let epoch = image.brokers[&1].broker_epoch;
        let change = |isr: Vec<i32>, leader_epoch, partition_epoch| IsrChange {
            topic_id: id,
            partition: 0,
            leader_epoch,
            partition_epoch,
            new_isr: isr,
            broker_epochs: Vec::new(),
        };
        let op = alter_partition(&image, 1, epoch, vec![change(vec![1, 2], 0, 0)]);
        let state = op.results[0].clone().unwrap();
        assert_eq!((state.isr.clone(), state.partition_epoch), (vec![1, 2], 1));
        let image = apply(&image, &op.records);
        let results = alter_partition(
            &image,
            1,
            epoch,
            vec![
                change(vec![1, 2, 3], 0, 0),
                change(vec![1, 2, 3], 5, 1),
                change(vec![1, 2, 7], 0, 1),
            ],
        )
        .results;
        assert!(matches!(
            results[0],
            Err(ControllerError::InvalidUpdateVersion(_))
        ));
        assert!(matches!(
            results[1],
            Err(ControllerError::FencedLeaderEpoch(_))
        ));
        assert!(matches!(
            results[2],
            Err(ControllerError::IneligibleReplica(_))
        ));
        let stale = alter_partition(&image, 1, epoch - 1, vec![change(vec![1], 0, 1)]);
        assert!(matches!(
            stale.results[0],
            Err(ControllerError::StaleBrokerEpoch { .. })
        ));
        let not_leader = alter_partition(
            &image,
            2,
            image.brokers[&2].broker_epoch,
            vec![change(vec![2], 0, 1)],
        );
        assert!(matches!(
            not_leader.results[0],
            Err(ControllerError::NotLeader(_))
        ));
    }

    #[test]
    fn an_expansion_for_a_broker_that_registered_again_is_refused() {
        let (image, id) = cluster();
        let epoch = image.brokers[&1].broker_epoch;
        // Broker 3 leaves the ISR, then restarts: a new registration.
        let shrink = IsrChange {
            topic_id: id,
            partition: 0,
            leader_epoch: 0,
            partition_epoch: 0,
            new_isr: vec![1, 2],
            broker_epochs: Vec::new(),
        };
        let image = apply(
            &image,
            &alter_partition(&image, 1, epoch, vec![shrink]).records,
        );
        let old_epoch = image.brokers[&3].broker_epoch;
        let image = apply(
            &image,
            &register_broker(&image, registration(3), false).records,
        );
        let image = apply(&image, &unfence_broker(&image, 3, false).records);
        let new_epoch = image.brokers[&3].broker_epoch;
        assert_ne!(old_epoch, new_epoch);
        let expand = |broker_3_epoch: i64| IsrChange {
            topic_id: id,
            partition: 0,
            leader_epoch: 0,
            partition_epoch: 1,
            new_isr: vec![1, 2, 3],
            broker_epochs: vec![(1, epoch), (2, -1), (3, broker_3_epoch)],
        };
        // The leader saw broker 3 in sync before its restart.
        let op = alter_partition(&image, 1, epoch, vec![expand(old_epoch)]);
        assert!(
            matches!(op.results[0], Err(ControllerError::IneligibleReplica(_))),
            "{:?}",
            op.results[0]
        );
        assert!(op.records.is_empty());
        // Fetches of the current registration do count.
        let op = alter_partition(&image, 1, epoch, vec![expand(new_epoch)]);
        assert_eq!(op.results[0].clone().unwrap().isr, vec![1, 2, 3]);
    }

    #[test]
    fn preferred_leaders_return_after_a_broker_comes_back() {
        let (image, id) = cluster();
        let epoch = image.brokers[&1].broker_epoch;
        let image = apply(&image, &fence_broker(&image, 1, epoch, false).records);
        let image = apply(
            &image,
            &register_broker(&image, registration(1), false).records,
        );
        let image = apply(&image, &unfence_broker(&image, 1, false).records);
        // Back in the ISR (the leader asks for that once it has caught up).
        let p0 = partition(&image, id, 0);
        let op = alter_partition(
            &image,
            p0.leader,
            image.brokers[&p0.leader].broker_epoch,
            vec![IsrChange {
                topic_id: id,
                partition: 0,
                leader_epoch: p0.leader_epoch,
                partition_epoch: p0.partition_epoch,
                new_isr: vec![1, 2, 3],
                broker_epochs: Vec::new(),
            }],
        );
        let image = apply(&image, &op.records);
        let op = preferred_leader_elections(&image);
        assert_eq!(op.results, 1);
        let image = apply(&image, &op.records);
        assert_eq!(partition(&image, id, 0).leader, 1);
        assert_eq!(preferred_leader_elections(&image).results, 0);
    }
}
