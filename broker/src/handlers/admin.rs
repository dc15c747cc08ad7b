//! CreateTopics, DeleteTopics, CreatePartitions and DescribeCluster: the
//! broker turns each into a controller call and reports per-item results.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::{ControllerApi, NewPartitions, NewTopic, TopicRef};
use sluice_metadata::Uuid;

use super::configs::topic_config_entries;
use super::{message, Broker};
use crate::errors::controller_error;

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub async fn create_topics(
    broker: &Broker,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let validate_only = request.validate_only;
    let controller = broker.controller.clone();
    create_topics_with(controller.as_ref(), request, |name| {
        if version < 5 {
            return None;
        }
        let image = broker.replicas.image();
        let dynamic = if validate_only {
            None
        } else {
            image.topic_config(name)
        };
        Some(
            topic_config_entries(broker, dynamic, None)
                .into_iter()
                .map(|e| e.into_created())
                .collect(),
        )
    })
    .await
}

/// CreateTopics as the controller listener answers it for a broker that
/// forwarded it: the broker reports the configs itself.
pub async fn forwarded_create_topics(
    controller: &dyn ControllerApi,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    create_topics_with(controller, request, |_| None).await
}

/// Creates the topics through `controller`; `configs_of` gives a created
/// topic's config entries for the answer (versions 5 and later).
async fn create_topics_with(
    controller: &dyn ControllerApi,
    request: CreateTopicsRequest,
    configs_of: impl Fn(&str) -> Option<Vec<CreatableTopicConfigs>>,
) -> CreateTopicsResponse {
    let mut invalid = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for t in &request.topics {
        let mut configs = Vec::with_capacity(t.configs.len());
        for c in &t.configs {
            match &c.value {
                Some(v) => configs.push((c.name.to_string(), v.to_string())),
                None => invalid.push((
                    t.name.0.to_string(),
                    format!("Null value not supported for topic configs: {}", c.name),
                )),
            }
        }
        topics.push(NewTopic {
            name: t.name.0.to_string(),
            num_partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            assignments: t
                .assignments
                .iter()
                .map(|a| {
                    (
                        a.partition_index,
                        a.broker_ids.iter().map(|b| b.0).collect(),
                    )
                })
                .collect(),
            configs,
        });
    }
    let (to_send, rejected): (Vec<NewTopic>, Vec<NewTopic>) = topics
        .into_iter()
        .partition(|t| !invalid.iter().any(|(name, _)| *name == t.name));
    let names: Vec<String> = to_send.iter().map(|t| t.name.clone()).collect();
    let results = controller
        .create_topics(to_send, request.validate_only)
        .await;

    let mut responses: Vec<CreatableTopicResult> = names
        .into_iter()
        .zip(results)
        .map(|(name, result)| {
            let response = CreatableTopicResult::default().with_name(topic_name(&name));
            match result {
                Ok(created) => {
                    let response = response
                        .with_topic_id(created.topic_id)
                        .with_num_partitions(created.num_partitions)
                        .with_replication_factor(created.replication_factor);
                    match configs_of(&name) {
                        Some(configs) => response.with_configs(Some(configs)),
                        None => response,
                    }
                }
                Err(e) => response
                    .with_error_code(controller_error(&e).code())
                    .with_error_message(message(e.to_string()))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
            }
        })
        .collect();
    for topic in rejected {
        let text = invalid
            .iter()
            .find(|(name, _)| *name == topic.name)
            .map(|(_, text)| text.clone())
            .unwrap_or_default();
        responses.push(
            CreatableTopicResult::default()
                .with_name(topic_name(&topic.name))
                .with_error_code(ResponseError::InvalidConfig.code())
                .with_error_message(message(text))
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        );
    }
    CreateTopicsResponse::default().with_topics(responses)
}

pub async fn delete_topics(
    broker: &Broker,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    delete_topics_with(broker.controller.as_ref(), request, version).await
}

pub async fn delete_topics_with(
    controller: &dyn ControllerApi,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let refs: Vec<TopicRef> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| match &t.name {
                Some(name) => TopicRef::Name(name.0.to_string()),
                None => TopicRef::Id(t.topic_id),
            })
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| TopicRef::Name(n.0.to_string()))
            .collect()
    };
    let results = controller.delete_topics(refs.clone()).await;
    let responses = refs
        .into_iter()
        .zip(results)
        .map(|(requested, result)| {
            let (name, id) = match &requested {
                TopicRef::Name(name) => (Some(name.clone()), Uuid::nil()),
                TopicRef::Id(id) => (None, *id),
            };
            match result {
                Ok((name, id)) => DeletableTopicResult::default()
                    .with_name(Some(topic_name(&name)))
                    .with_topic_id(id),
                Err(e) => DeletableTopicResult::default()
                    .with_name(name.map(|n| topic_name(&n)))
                    .with_topic_id(id)
                    .with_error_code(controller_error(&e).code())
                    .with_error_message(message(e.to_string())),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    broker: &Broker,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    create_partitions_with(broker.controller.as_ref(), request).await
}

pub async fn create_partitions_with(
    controller: &dyn ControllerApi,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let requests: Vec<NewPartitions> = request
        .topics
        .iter()
        .map(|t| NewPartitions {
            topic: t.name.0.to_string(),
            count: t.count,
            assignments: t.assignments.as_ref().map(|a| {
                a.iter()
                    .map(|r| r.broker_ids.iter().map(|b| b.0).collect())
                    .collect()
            }),
        })
        .collect();
    let results = controller
        .create_partitions(requests, request.validate_only)
        .await;
    let responses = request
        .topics
        .iter()
        .zip(results)
        .map(|(t, result)| {
            let response = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            match result {
                Ok(()) => response,
                Err(e) => response
                    .with_error_code(controller_error(&e).code())
                    .with_error_message(message(e.to_string())),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(responses)
}

/// The cluster's brokers as seen on `listener`, the listener the client
/// came in on (a broker without it is left out, as Kafka does).
pub fn describe_cluster(
    broker: &Broker,
    request: DescribeClusterRequest,
    _version: i16,
    listener: &str,
) -> DescribeClusterResponse {
    let image = broker.replicas.image();
    let brokers = image
        .brokers
        .values()
        .filter(|b| request.include_fenced_brokers || !b.fenced)
        .filter_map(|b| {
            let endpoint = b.endpoint(listener)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.broker_id))
                    .with_host(StrBytes::from_string(endpoint.host.clone()))
                    .with_port(endpoint.port as i32)
                    .with_rack(b.rack.clone().map(StrBytes::from_string))
                    .with_is_fenced(b.fenced),
            )
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(broker.config.cluster_id.clone()))
        .with_controller_id(BrokerId(broker.controller_id_for_clients()))
        .with_brokers(brokers)
}
