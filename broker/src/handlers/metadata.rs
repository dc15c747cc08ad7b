//! Metadata: brokers, topics, partitions and their leaders, from the
//! broker's metadata image; creates requested topics when auto-creation is on.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_metadata::configs::validate_topic_name;
use sluice_metadata::controller_api::{ControllerError, NewTopic};
use sluice_metadata::{MetadataImage, TopicImage, Uuid};

use super::Broker;

/// The Metadata answer, with each broker's endpoint on `listener`, the
/// listener the client came in on (a broker without it is left out, as
/// Kafka does).
pub async fn metadata(
    broker: &Broker,
    request: MetadataRequest,
    version: i16,
    listener: &str,
) -> MetadataResponse {
    // v0 used an empty list for "all topics"; later versions use null.
    let requested: Option<Vec<(Option<String>, Uuid)>> = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(
            topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        ),
    };
    let auto_create =
        broker.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);

    let mut created_errors = Vec::new();
    if let Some(requested) = &requested {
        let image = broker.replicas.image();
        let missing: Vec<String> = requested
            .iter()
            .filter_map(|(name, _)| name.clone())
            .filter(|name| image.topic(name).is_none() && validate_topic_name(name).is_ok())
            .collect();
        if auto_create && !missing.is_empty() {
            let topics = missing
                .iter()
                .map(|name| NewTopic {
                    name: name.clone(),
                    num_partitions: broker.config.num_partitions,
                    replication_factor: broker.config.default_replication_factor,
                    ..NewTopic::default()
                })
                .collect();
            let results = broker.controller.create_topics(topics, false).await;
            for (name, result) in missing.into_iter().zip(results) {
                match result {
                    Ok(_) | Err(ControllerError::TopicAlreadyExists(_)) => {}
                    Err(e) => {
                        tracing::warn!(topic = %name, error = %e, "auto-creating topic failed");
                        created_errors.push((name, crate::errors::controller_error(&e)));
                    }
                }
            }
        }
    }

    let image = broker.replicas.image();
    let topics = match requested {
        None => image
            .topics_sorted()
            .into_iter()
            .map(|t| topic_entry(&image, t))
            .collect(),
        Some(requested) => requested
            .into_iter()
            .map(|(name, id)| match &name {
                Some(name) => match image.topic(name) {
                    Some(topic) => topic_entry(&image, topic),
                    None => {
                        let error = if validate_topic_name(name).is_err() {
                            ResponseError::InvalidTopicException
                        } else {
                            created_errors
                                .iter()
                                .find(|(n, _)| n == name)
                                .map_or(ResponseError::UnknownTopicOrPartition, |(_, e)| *e)
                        };
                        error_entry(Some(name.clone()), Uuid::nil(), error)
                    }
                },
                None => match image.topic_by_id(&id) {
                    Some(topic) => topic_entry(&image, topic),
                    None => error_entry(None, id, ResponseError::UnknownTopicId),
                },
            })
            .collect(),
    };

    let brokers = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let endpoint = b.endpoint(listener)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.broker_id))
                    .with_host(StrBytes::from_string(endpoint.host.clone()))
                    .with_port(endpoint.port as i32)
                    .with_rack(b.rack.clone().map(StrBytes::from_string)),
            )
        })
        .collect();

    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(
            broker.config.cluster_id.clone(),
        )))
        .with_controller_id(BrokerId(broker.controller_id_for_clients()))
        .with_topics(topics)
}

fn topic_entry(image: &MetadataImage, topic: &TopicImage) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .map(|(&index, p)| {
            let offline: Vec<BrokerId> = p
                .replicas
                .iter()
                .filter(|id| image.brokers.get(id).is_none_or(|b| b.fenced))
                .map(|&id| BrokerId(id))
                .collect();
            let error = if p.leader < 0 {
                ResponseError::LeaderNotAvailable.code()
            } else {
                0
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(index)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(p.replicas.iter().map(|&id| BrokerId(id)).collect())
                .with_isr_nodes(p.isr.iter().map(|&id| BrokerId(id)).collect())
                .with_offline_replicas(offline)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_partitions(partitions)
}

fn error_entry(name: Option<String>, id: Uuid, error: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error.code())
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
        .with_topic_id(id)
}
