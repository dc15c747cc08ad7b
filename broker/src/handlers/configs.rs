//! DescribeConfigs, IncrementalAlterConfigs and AlterConfigs.
//!
//! A topic config's value comes from, in order: the topic's dynamic config,
//! the broker's setting of the matching key, the Kafka default.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::messages::create_topics_response::CreatableTopicConfigs;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    incremental_alter_configs_response, AlterConfigsRequest, AlterConfigsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_metadata::configs::{ConfigType, TOPIC_CONFIGS};
use sluice_metadata::controller_api::{ConfigChange, ControllerApi, ControllerError, TopicConfig};
use sluice_metadata::{ConfigResource, MetadataImage};

use super::{message, Broker};
use crate::errors::controller_error;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

// Kafka's ConfigSource values.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

// Kafka's ConfigType values.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;

/// One config as reported to clients, with where its value came from.
pub struct ConfigEntry {
    name: String,
    value: String,
    source: i8,
    config_type: i8,
    /// (name, value, source), most specific first.
    synonyms: Vec<(String, String, i8)>,
}

impl ConfigEntry {
    pub fn into_created(self) -> CreatableTopicConfigs {
        CreatableTopicConfigs::default()
            .with_name(StrBytes::from_string(self.name))
            .with_value(Some(StrBytes::from_string(self.value)))
            .with_config_source(self.source)
    }

    fn into_described(self, synonyms: bool) -> DescribeConfigsResourceResult {
        let synonyms = if synonyms {
            self.synonyms
                .into_iter()
                .map(|(name, value, source)| {
                    DescribeConfigsSynonym::default()
                        .with_name(StrBytes::from_string(name))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_source(source)
                })
                .collect()
        } else {
            Vec::new()
        };
        DescribeConfigsResourceResult::default()
            .with_name(StrBytes::from_string(self.name))
            .with_value(Some(StrBytes::from_string(self.value)))
            .with_config_source(self.source)
            .with_config_type(self.config_type)
            .with_synonyms(synonyms)
    }
}

fn type_code(kind: ConfigType) -> i8 {
    match kind {
        ConfigType::Long { .. } => TYPE_LONG,
        ConfigType::Int { .. } => TYPE_INT,
        ConfigType::Boolean => TYPE_BOOLEAN,
        ConfigType::Double => TYPE_DOUBLE,
        ConfigType::Choice { list: true, .. } => TYPE_LIST,
        ConfigType::Choice { list: false, .. } => TYPE_STRING,
    }
}

/// Every topic config with its effective value. `keys` limits the answer.
pub fn topic_config_entries(
    broker: &Broker,
    dynamic: Option<&BTreeMap<String, String>>,
    keys: Option<&[String]>,
) -> Vec<ConfigEntry> {
    TOPIC_CONFIGS
        .iter()
        .filter(|def| keys.is_none_or(|keys| keys.iter().any(|k| k == def.name)))
        .map(|def| {
            let mut synonyms = Vec::new();
            if let Some(v) = dynamic.and_then(|d| d.get(def.name)) {
                synonyms.push((def.name.to_string(), v.clone(), DYNAMIC_TOPIC_CONFIG));
            }
            match broker.config.settings.get(def.broker_key) {
                Some((v, true)) => {
                    synonyms.push((def.broker_key.to_string(), v.clone(), STATIC_BROKER_CONFIG))
                }
                Some((v, false)) => {
                    synonyms.push((def.broker_key.to_string(), v.clone(), DEFAULT_CONFIG))
                }
                None => synonyms.push((
                    def.broker_key.to_string(),
                    def.default.to_string(),
                    DEFAULT_CONFIG,
                )),
            }
            let (value, source) = (synonyms[0].1.clone(), synonyms[0].2);
            ConfigEntry {
                name: def.name.to_string(),
                value,
                source,
                config_type: type_code(def.kind),
                synonyms,
            }
        })
        .collect()
}

fn broker_config_entries(broker: &Broker, keys: Option<&[String]>) -> Vec<ConfigEntry> {
    broker
        .config
        .settings
        .iter()
        .filter(|(name, _)| keys.is_none_or(|keys| keys.contains(name)))
        .map(|(name, (value, explicit))| {
            let source = if *explicit {
                STATIC_BROKER_CONFIG
            } else {
                DEFAULT_CONFIG
            };
            ConfigEntry {
                name: name.clone(),
                value: value.clone(),
                source,
                config_type: TYPE_STRING,
                synonyms: vec![(name.clone(), value.clone(), source)],
            }
        })
        .collect()
}

/// The dynamic configs of the topics among `resources` (type, name) that
/// this broker knows, from the metadata store where it answers for itself
/// (ZooKeeper mode), else from the image. A topic whose configs could not
/// be read maps to the error.
async fn current_topic_configs<'a>(
    broker: &Broker,
    image: &MetadataImage,
    resources: impl Iterator<Item = (i8, &'a StrBytes)>,
) -> HashMap<String, Result<TopicConfig, ControllerError>> {
    let known: Vec<String> = resources
        .filter(|(kind, name)| *kind == RESOURCE_TOPIC && image.topic(name).is_some())
        .map(|(_, name)| name.to_string())
        .collect();
    match broker.controller.stored_topic_configs(known.clone()).await {
        Some(stored) => known.into_iter().zip(stored).collect(),
        None => known
            .into_iter()
            .map(|name| {
                let config = image.topic_config(&name).cloned().unwrap_or_default();
                (name, Ok(config))
            })
            .collect(),
    }
}

pub async fn describe_configs(
    broker: &Broker,
    request: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let image = broker.replicas.image();
    let topic_configs = current_topic_configs(
        broker,
        &image,
        request
            .resources
            .iter()
            .map(|r| (r.resource_type, &r.resource_name)),
    )
    .await;
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            // Null asks for every config; an empty list for none (as in Kafka).
            let keys: Option<Vec<String>> = resource
                .configuration_keys
                .as_ref()
                .map(|k| k.iter().map(|s| s.to_string()).collect());
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entries = match resource.resource_type {
                RESOURCE_TOPIC => match topic_configs.get(&name) {
                    Some(Ok(config)) => {
                        Ok(topic_config_entries(broker, Some(config), keys.as_deref()))
                    }
                    Some(Err(e)) => Err((controller_error(e), e.to_string())),
                    None => Err((
                        ResponseError::UnknownTopicOrPartition,
                        format!("Topic {name} does not exist"),
                    )),
                },
                RESOURCE_BROKER => {
                    if name.is_empty() || name == broker.config.node_id.to_string() {
                        Ok(broker_config_entries(broker, keys.as_deref()))
                    } else {
                        Err((
                            ResponseError::InvalidRequest,
                            format!(
                                "Unexpected broker id, expected {} but received {name}",
                                broker.config.node_id
                            ),
                        ))
                    }
                }
                other => Err((
                    ResponseError::InvalidRequest,
                    format!("Unsupported resource type {other}"),
                )),
            };
            match entries {
                Ok(entries) => result.with_configs(
                    entries
                        .into_iter()
                        .map(|e| e.into_described(request.include_synonyms))
                        .collect(),
                ),
                Err((error, text)) => result
                    .with_error_code(error.code())
                    .with_error_message(message(text)),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn resource_of(resource_type: i8, name: &str) -> Result<ConfigResource, ControllerError> {
    match resource_type {
        RESOURCE_TOPIC => Ok(ConfigResource::Topic(name.to_string())),
        RESOURCE_BROKER if name.is_empty() => Ok(ConfigResource::Broker(None)),
        RESOURCE_BROKER => name
            .parse()
            .map(|id| ConfigResource::Broker(Some(id)))
            .map_err(|_| ControllerError::InvalidRequest(format!("Invalid broker id {name}"))),
        other => Err(ControllerError::InvalidRequest(format!(
            "Unsupported resource type {other}"
        ))),
    }
}

/// Sends the well-formed resources to the controller and merges the answers
/// with the ones refused here, in request order.
async fn alter(
    controller: &dyn ControllerApi,
    planned: Vec<Result<(ConfigResource, Vec<ConfigChange>), ControllerError>>,
    validate_only: bool,
) -> Vec<Result<(), ControllerError>> {
    let valid: Vec<_> = planned
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let mut answers = controller
        .alter_configs(valid, validate_only)
        .await
        .into_iter();
    planned
        .into_iter()
        .map(|p| match p {
            Ok(_) => answers
                .next()
                .unwrap_or(Err(ControllerError::Internal("missing answer".into()))),
            Err(e) => Err(e),
        })
        .collect()
}

fn alter_response(
    resource_type: i8,
    name: &StrBytes,
    result: Result<(), ControllerError>,
) -> incremental_alter_configs_response::AlterConfigsResourceResponse {
    let response = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
        .with_resource_type(resource_type)
        .with_resource_name(name.clone());
    match result {
        Ok(()) => response,
        Err(e) => response
            .with_error_code(controller_error(&e).code())
            .with_error_message(message(e.to_string())),
    }
}

pub async fn incremental_alter_configs(
    broker: &Broker,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    incremental_alter_configs_with(broker.controller.as_ref(), request).await
}

/// IncrementalAlterConfigs against `controller`: a broker's own, or, on the
/// controller listener, the request a broker forwarded.
pub async fn incremental_alter_configs_with(
    controller: &dyn ControllerApi,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    let planned = request
        .resources
        .iter()
        .map(|r| {
            let resource = resource_of(r.resource_type, r.resource_name.as_str())?;
            let changes = r
                .configs
                .iter()
                .map(|c| match c.config_operation {
                    SET => match &c.value {
                        Some(value) => Ok(ConfigChange {
                            name: c.name.to_string(),
                            value: Some(value.to_string()),
                        }),
                        None => Err(ControllerError::InvalidRequest(format!(
                            "Null value not supported for: {}",
                            c.name
                        ))),
                    },
                    DELETE => Ok(ConfigChange {
                        name: c.name.to_string(),
                        value: None,
                    }),
                    _ => Err(ControllerError::InvalidRequest(format!(
                        "Config operation {} on {} is not supported (only SET and DELETE)",
                        c.config_operation, c.name
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((resource, changes))
        })
        .collect();
    let results = alter(controller, planned, request.validate_only).await;
    let responses = request
        .resources
        .iter()
        .zip(results)
        .map(|(r, result)| alter_response(r.resource_type, &r.resource_name, result))
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// The legacy AlterConfigs replaces a resource's whole set of dynamic configs.
pub async fn alter_configs(broker: &Broker, request: AlterConfigsRequest) -> AlterConfigsResponse {
    let image = broker.replicas.image();
    let topic_configs = current_topic_configs(
        broker,
        &image,
        request
            .resources
            .iter()
            .map(|r| (r.resource_type, &r.resource_name)),
    )
    .await;
    let planned = request
        .resources
        .iter()
        .map(|r| {
            let resource = resource_of(r.resource_type, r.resource_name.as_str())?;
            let current = match &resource {
                ConfigResource::Topic(name) => match topic_configs.get(name) {
                    Some(Ok(config)) => Some(config),
                    Some(Err(e)) => return Err(e.clone()),
                    None => None,
                },
                other => image.configs.get(other),
            };
            let mut changes: Vec<ConfigChange> = current
                .map(|current| {
                    current
                        .keys()
                        .filter(|k| !r.configs.iter().any(|c| c.name.as_str() == k.as_str()))
                        .map(|k| ConfigChange {
                            name: k.clone(),
                            value: None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            changes.extend(r.configs.iter().map(|c| ConfigChange {
                name: c.name.to_string(),
                value: c.value.as_ref().map(|v| v.to_string()),
            }));
            Ok((resource, changes))
        })
        .collect();
    let results = alter(broker.controller.as_ref(), planned, request.validate_only).await;
    let responses = request
        .resources
        .iter()
        .zip(results)
        .map(|(r, result)| {
            let response = kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            match result {
                Ok(()) => response,
                Err(e) => response
                    .with_error_code(controller_error(&e).code())
                    .with_error_message(message(e.to_string())),
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}
