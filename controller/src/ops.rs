//! Controller operations as pure functions: `(image, request) -> (records, results)`.
//!
//! Nothing changes when these run; the state moves only when the returned
//! records commit and are replayed into the next image.

use std::collections::{BTreeMap, HashSet};

use sluice_metadata::configs::{validate_topic_config, validate_topic_name};
use sluice_metadata::controller_api::{
    ConfigChange, ControllerError, CreatedTopic, NewPartitions, NewTopic, TopicRef,
};
use sluice_metadata::{
    ConfigRecord, ConfigResource, MetadataImage, MetadataRecord, PartitionRecord,
    ProducerIdsRecord, RemoveTopicRecord, TopicRecord, Uuid,
};

use crate::placement::assign_replicas;

/// Cluster-wide defaults the controller applies to new topics.
#[derive(Clone, Debug)]
pub struct TopicDefaults {
    pub num_partitions: i32,
    pub replication_factor: i16,
}

/// The most partitions one topic may have. Far above what one node serves,
/// it keeps a single request from asking for billions of partition records.
pub const MAX_PARTITIONS_PER_TOPIC: i32 = 100_000;

fn check_partition_count(count: i64) -> Result<(), ControllerError> {
    if count > MAX_PARTITIONS_PER_TOPIC as i64 {
        return Err(ControllerError::InvalidPartitions(format!(
            "{count} partitions is more than the {MAX_PARTITIONS_PER_TOPIC} a topic may have."
        )));
    }
    Ok(())
}

pub struct OpResult<T> {
    pub records: Vec<MetadataRecord>,
    pub results: T,
}

pub fn create_topics(
    image: &MetadataImage,
    defaults: &TopicDefaults,
    topics: Vec<NewTopic>,
) -> OpResult<Vec<Result<CreatedTopic, ControllerError>>> {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    let mut seen = HashSet::new();
    for topic in topics {
        if !seen.insert(topic.name.clone()) {
            results.push(Err(ControllerError::InvalidRequest(format!(
                "Create topics request from client contains multiple entries for topic {}",
                topic.name
            ))));
            continue;
        }
        match plan_topic(image, defaults, &topic) {
            Ok((topic_records, created)) => {
                records.extend(topic_records);
                results.push(Ok(created));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    OpResult { records, results }
}

fn plan_topic(
    image: &MetadataImage,
    defaults: &TopicDefaults,
    topic: &NewTopic,
) -> Result<(Vec<MetadataRecord>, CreatedTopic), ControllerError> {
    validate_topic_name(&topic.name).map_err(ControllerError::InvalidTopic)?;
    if image.topic(&topic.name).is_some() {
        return Err(ControllerError::TopicAlreadyExists(topic.name.clone()));
    }
    if let Some(clash) = image
        .topic_ids_by_name
        .keys()
        .find(|other| other.replace('.', "_") == topic.name.replace('.', "_"))
    {
        return Err(ControllerError::InvalidTopic(format!(
            "Topic '{}' collides with existing topic: {clash}",
            topic.name
        )));
    }
    for (name, value) in &topic.configs {
        validate_topic_config(name, value).map_err(ControllerError::InvalidConfig)?;
    }
    let brokers = usable_brokers(image);
    let assignments: Vec<Vec<i32>> = if topic.assignments.is_empty() {
        let partitions = if topic.num_partitions == -1 {
            defaults.num_partitions
        } else {
            topic.num_partitions
        };
        let rf = if topic.replication_factor == -1 {
            defaults.replication_factor
        } else {
            topic.replication_factor
        };
        if partitions <= 0 {
            return Err(ControllerError::InvalidPartitions(
                "Number of partitions must be larger than 0.".into(),
            ));
        }
        check_partition_count(partitions as i64)?;
        if rf <= 0 {
            return Err(ControllerError::InvalidReplicationFactor(
                "Replication factor must be larger than 0.".into(),
            ));
        }
        assign_replicas(&brokers, partitions, rf, 0)?
    } else {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err(ControllerError::InvalidRequest(
                "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
            ));
        }
        check_partition_count(topic.assignments.len() as i64)?;
        let mut by_partition = BTreeMap::new();
        for (partition, replicas) in &topic.assignments {
            by_partition.insert(*partition, replicas.clone());
        }
        let expected: Vec<i32> = (0..by_partition.len() as i32).collect();
        if by_partition.keys().copied().collect::<Vec<_>>() != expected {
            return Err(ControllerError::InvalidReplicaAssignment(
                "Partitions should be a consecutive 0-based integer sequence".into(),
            ));
        }
        let assignments: Vec<Vec<i32>> = by_partition.into_values().collect();
        for replicas in &assignments {
            check_manual_assignment(image, replicas)?;
        }
        assignments
    };
    let topic_id = Uuid::new_v4();
    let mut records = vec![MetadataRecord::Topic(TopicRecord {
        name: topic.name.clone(),
        topic_id,
    })];
    let replication_factor = assignments.first().map_or(0, |r| r.len() as i16);
    for (partition, replicas) in assignments.iter().enumerate() {
        records.push(new_partition(topic_id, partition as i32, replicas.clone()));
    }
    for (name, value) in &topic.configs {
        records.push(MetadataRecord::Config(ConfigRecord {
            resource: ConfigResource::Topic(topic.name.clone()),
            name: name.clone(),
            value: Some(value.clone()),
        }));
    }
    let created = CreatedTopic {
        topic_id,
        num_partitions: assignments.len() as i32,
        replication_factor,
    };
    Ok((records, created))
}

fn new_partition(topic_id: Uuid, partition: i32, replicas: Vec<i32>) -> MetadataRecord {
    MetadataRecord::Partition(PartitionRecord {
        topic_id,
        partition,
        leader: replicas
            .first()
            .copied()
            .unwrap_or(sluice_metadata::NO_LEADER),
        isr: replicas.clone(),
        replicas,
        leader_epoch: 0,
        partition_epoch: 0,
    })
}

/// Brokers that can take new replicas: registered and not fenced, by id.
fn usable_brokers(image: &MetadataImage) -> Vec<i32> {
    image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| b.broker_id)
        .collect()
}

fn check_manual_assignment(image: &MetadataImage, replicas: &[i32]) -> Result<(), ControllerError> {
    if replicas.is_empty() {
        return Err(ControllerError::InvalidReplicaAssignment(
            "The manual partition assignment includes an empty replica list.".into(),
        ));
    }
    let unique: HashSet<_> = replicas.iter().collect();
    if unique.len() != replicas.len() {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "The manual partition assignment includes duplicate replicas: {replicas:?}"
        )));
    }
    if let Some(missing) = replicas.iter().find(|id| !image.brokers.contains_key(id)) {
        return Err(ControllerError::InvalidReplicaAssignment(format!(
            "The manual partition assignment includes broker {missing}, but no such broker is registered."
        )));
    }
    Ok(())
}

pub fn delete_topics(
    image: &MetadataImage,
    topics: Vec<TopicRef>,
) -> OpResult<Vec<Result<(String, Uuid), ControllerError>>> {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(topics.len());
    let mut removed = HashSet::new();
    for topic in topics {
        let found = match &topic {
            TopicRef::Name(name) => image
                .topic(name)
                .ok_or_else(|| ControllerError::UnknownTopic(name.clone())),
            TopicRef::Id(id) => image
                .topic_by_id(id)
                .ok_or(ControllerError::UnknownTopicId(*id)),
        };
        match found {
            Ok(t) => {
                if removed.insert(t.id) {
                    records.push(MetadataRecord::RemoveTopic(RemoveTopicRecord {
                        topic_id: t.id,
                    }));
                }
                results.push(Ok((t.name.clone(), t.id)));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    OpResult { records, results }
}

pub fn create_partitions(
    image: &MetadataImage,
    requests: Vec<NewPartitions>,
) -> OpResult<Vec<Result<(), ControllerError>>> {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        match plan_partitions(image, &request) {
            Ok(mut r) => {
                records.append(&mut r);
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    OpResult { records, results }
}

fn plan_partitions(
    image: &MetadataImage,
    request: &NewPartitions,
) -> Result<Vec<MetadataRecord>, ControllerError> {
    let topic = image
        .topic(&request.topic)
        .ok_or_else(|| ControllerError::UnknownTopic(request.topic.clone()))?;
    let current = topic.partitions.len() as i32;
    if request.count < current {
        return Err(ControllerError::InvalidPartitions(format!(
            "Topic currently has {current} partitions, which is higher than the requested {}.",
            request.count
        )));
    }
    if request.count == current {
        return Err(ControllerError::InvalidPartitions(format!(
            "Topic already has {current} partitions."
        )));
    }
    check_partition_count(request.count as i64)?;
    let added = request.count - current;
    let rf = topic
        .partitions
        .values()
        .next()
        .map_or(1, |p| p.replicas.len() as i16);
    let assignments = match &request.assignments {
        Some(assignments) => {
            if assignments.len() as i32 != added {
                return Err(ControllerError::InvalidReplicaAssignment(format!(
                    "Increasing the number of partitions by {added} but {} assignments provided.",
                    assignments.len()
                )));
            }
            for replicas in assignments {
                check_manual_assignment(image, replicas)?;
            }
            assignments.clone()
        }
        None => assign_replicas(&usable_brokers(image), added, rf, current)?,
    };
    Ok(assignments
        .into_iter()
        .enumerate()
        .map(|(i, replicas)| new_partition(topic.id, current + i as i32, replicas))
        .collect())
}

pub fn alter_configs(
    image: &MetadataImage,
    changes: Vec<(ConfigResource, Vec<ConfigChange>)>,
) -> OpResult<Vec<Result<(), ControllerError>>> {
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(changes.len());
    for (resource, entries) in changes {
        let checked = match &resource {
            ConfigResource::Topic(name) if image.topic(name).is_none() => {
                Err(ControllerError::UnknownTopic(name.clone()))
            }
            ConfigResource::Topic(_) => entries.iter().try_for_each(|c| match &c.value {
                Some(value) => validate_topic_config(&c.name, value).map_err(ControllerError::InvalidConfig),
                None => Ok(()),
            }),
            ConfigResource::Broker(_) => Err(ControllerError::InvalidRequest(
                "Dynamic broker configs are not supported yet; set them in the broker's config file".into(),
            )),
        };
        match checked {
            Ok(()) => {
                // Turning unclean election on for a topic elects leaders
                // for its leaderless partitions now, as Kafka does.
                if let ConfigResource::Topic(name) = &resource {
                    let enables = entries.iter().any(|c| {
                        c.name == "unclean.leader.election.enable"
                            && c.value
                                .as_deref()
                                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
                    });
                    if enables {
                        records.extend(crate::lifecycle::elect_unclean_leaders(image, name));
                    }
                }
                records.extend(entries.into_iter().map(|c| {
                    MetadataRecord::Config(ConfigRecord {
                        resource: resource.clone(),
                        name: c.name,
                        value: c.value,
                    })
                }));
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    OpResult { records, results }
}

pub fn allocate_producer_ids(image: &MetadataImage, broker_id: i32, count: i64) -> OpResult<i64> {
    let first = image.next_producer_id;
    OpResult {
        records: vec![MetadataRecord::ProducerIds(ProducerIdsRecord {
            broker_id,
            next_producer_id: first + count.max(1),
        })],
        results: first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_metadata::controller_api::BrokerRegistrationRequest;
    use std::sync::Arc;

    use crate::test_support::{apply, unfenced_brokers};

    const DEFAULTS: TopicDefaults = TopicDefaults {
        num_partitions: 2,
        replication_factor: 1,
    };

    fn cluster(brokers: &[i32]) -> Arc<MetadataImage> {
        unfenced_brokers(brokers)
    }

    fn topic(name: &str) -> NewTopic {
        NewTopic {
            name: name.into(),
            num_partitions: -1,
            replication_factor: -1,
            ..NewTopic::default()
        }
    }

    #[test]
    fn create_topics_validates_each_topic_on_its_own() {
        let image = cluster(&[1, 2, 3]);
        let mut configured = topic("orders");
        configured.configs = vec![("retention.ms".into(), "1000".into())];
        let mut too_wide = topic("wide");
        too_wide.replication_factor = 4;
        let mut bad_config = topic("cfg");
        bad_config.configs = vec![("retention.ms".into(), "soon".into())];
        let op = create_topics(
            &image,
            &DEFAULTS,
            vec![
                configured,
                topic("orders"),
                topic("bad name"),
                too_wide,
                bad_config,
            ],
        );
        assert!(op.results[0].is_ok());
        assert!(matches!(
            op.results[1],
            Err(ControllerError::InvalidRequest(_))
        ));
        assert!(matches!(
            op.results[2],
            Err(ControllerError::InvalidTopic(_))
        ));
        assert!(matches!(
            op.results[3],
            Err(ControllerError::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            op.results[4],
            Err(ControllerError::InvalidConfig(_))
        ));

        let image = apply(&image, &op.records);
        let orders = image.topic("orders").expect("created");
        assert_eq!(orders.partitions.len(), 2);
        assert_eq!(
            image.topic_config("orders").unwrap()["retention.ms"],
            "1000"
        );
        let again = create_topics(&image, &DEFAULTS, vec![topic("orders")]);
        assert!(matches!(
            again.results[0],
            Err(ControllerError::TopicAlreadyExists(_))
        ));
        let image = apply(
            &image,
            &create_topics(&image, &DEFAULTS, vec![topic("a.b")]).records,
        );
        let clash = create_topics(&image, &DEFAULTS, vec![topic("a_b")]);
        assert!(matches!(
            clash.results[0],
            Err(ControllerError::InvalidTopic(_))
        ));
    }

    #[test]
    fn manual_assignments_are_checked() {
        let image = cluster(&[1, 2]);
        let mut manual = topic("manual");
        manual.assignments = vec![(0, vec![2, 1]), (1, vec![1, 2])];
        let mut gap = topic("gap");
        gap.assignments = vec![(0, vec![1]), (2, vec![2])];
        let mut unknown = topic("unknown");
        unknown.assignments = vec![(0, vec![7])];
        let mut both = topic("both");
        both.num_partitions = 2;
        both.assignments = vec![(0, vec![1])];
        let op = create_topics(&image, &DEFAULTS, vec![manual, gap, unknown, both]);
        assert!(op.results[0].is_ok());
        assert!(matches!(
            op.results[1],
            Err(ControllerError::InvalidReplicaAssignment(_))
        ));
        assert!(matches!(
            op.results[2],
            Err(ControllerError::InvalidReplicaAssignment(_))
        ));
        assert!(matches!(
            op.results[3],
            Err(ControllerError::InvalidRequest(_))
        ));
        let image = apply(&image, &op.records);
        assert_eq!(image.topic("manual").unwrap().partitions[&0].leader, 2);
    }

    #[test]
    fn partitions_grow_only_and_deletes_name_what_they_removed() {
        let image = cluster(&[1]);
        let image = apply(
            &image,
            &create_topics(&image, &DEFAULTS, vec![topic("t")]).records,
        );
        let shrink = create_partitions(
            &image,
            vec![NewPartitions {
                topic: "t".into(),
                count: 1,
                assignments: None,
            }],
        );
        assert!(matches!(
            shrink.results[0],
            Err(ControllerError::InvalidPartitions(_))
        ));
        let grow = create_partitions(
            &image,
            vec![NewPartitions {
                topic: "t".into(),
                count: 5,
                assignments: None,
            }],
        );
        assert!(grow.results[0].is_ok());
        let image = apply(&image, &grow.records);
        assert_eq!(image.topic("t").unwrap().partitions.len(), 5);

        let op = delete_topics(
            &image,
            vec![TopicRef::Name("t".into()), TopicRef::Name("nope".into())],
        );
        assert!(op.results[0].is_ok());
        assert!(matches!(
            op.results[1],
            Err(ControllerError::UnknownTopic(_))
        ));
        let image = apply(&image, &op.records);
        assert!(image.topic("t").is_none());
    }

    #[test]
    fn producer_ids_and_broker_epochs_only_move_forward() {
        let image = cluster(&[1]);
        let first = allocate_producer_ids(&image, 1, 1000);
        let image = apply(&image, &first.records);
        let second = allocate_producer_ids(&image, 1, 1000);
        assert_eq!((first.results, second.results), (0, 1000));

        let epoch = image.brokers[&1].broker_epoch;
        let again = crate::lifecycle::register_broker(
            &image,
            BrokerRegistrationRequest {
                broker_id: 1,
                incarnation_id: Uuid::new_v4(),
                endpoints: vec![],
                rack: None,
            },
            false,
        );
        assert!(again.results > epoch);
    }

    #[test]
    fn config_changes_need_a_known_topic_and_valid_values() {
        let image = cluster(&[1]);
        let image = apply(
            &image,
            &create_topics(&image, &DEFAULTS, vec![topic("t")]).records,
        );
        let change = |name: &str, value: Option<&str>| ConfigChange {
            name: name.into(),
            value: value.map(Into::into),
        };
        let op = alter_configs(
            &image,
            vec![
                (
                    ConfigResource::Topic("t".into()),
                    vec![change("retention.ms", Some("5"))],
                ),
                (
                    ConfigResource::Topic("t".into()),
                    vec![change("retention.ms", Some("x"))],
                ),
                (
                    ConfigResource::Topic("missing".into()),
                    vec![change("retention.ms", Some("5"))],
                ),
            ],
        );
        assert!(op.results[0].is_ok());
        assert!(matches!(
            op.results[1],
            Err(ControllerError::InvalidConfig(_))
        ));
        assert!(matches!(
            op.results[2],
            Err(ControllerError::UnknownTopic(_))
        ));
        let image = apply(&image, &op.records);
        assert_eq!(image.topic_config("t").unwrap()["retention.ms"], "5");
    }
}
