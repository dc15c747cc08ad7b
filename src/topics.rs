//! `sluice topics ...`: topic administration over the Kafka admin protocol,
//! against any Kafka-compatible cluster.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::client::KafkaClient;
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Partition count (the cluster's num.partitions when omitted).
        #[arg(long, short)]
        partitions: Option<i32>,
        /// Replication factor (the cluster's default.replication.factor when omitted).
        #[arg(long, short)]
        replication_factor: Option<i16>,
        /// A topic config, key=value; repeatable.
        #[arg(long = "config", short)]
        configs: Vec<String>,
        /// Succeed without change when the topic exists.
        #[arg(long)]
        if_not_exists: bool,
        /// Only check that the topic could be created.
        #[arg(long)]
        validate_only: bool,
    },
    /// List topic names.
    List,
    /// Show partitions, leaders, replicas and configs.
    Describe {
        /// Topics to describe (all when none given).
        names: Vec<String>,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Add partitions or change topic configs.
    Alter {
        name: String,
        /// The new total partition count.
        #[arg(long, short)]
        partitions: Option<i32>,
        /// Set a topic config, key=value; repeatable.
        #[arg(long = "config", short)]
        configs: Vec<String>,
        /// Remove a topic config (back to the broker default); repeatable.
        #[arg(long = "delete-config")]
        delete_configs: Vec<String>,
    },
}

pub(crate) fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_string()))
}

pub(crate) fn check(code: i16, message: Option<&StrBytes>, what: &str) -> Result<()> {
    if let Some(error) = ResponseError::try_from_code(code) {
        match message {
            Some(m) if !m.is_empty() => bail!("{what}: {error:?}: {m}"),
            _ => bail!("{what}: {error:?}: {error}"),
        }
    }
    Ok(())
}

fn key_value(pair: &str) -> Result<(String, String)> {
    let (k, v) = pair
        .split_once('=')
        .with_context(|| format!("expected key=value, got {pair:?}"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

pub async fn run(bootstrap: &str, command: TopicsCommand) -> Result<()> {
    let mut client = crate::client::connect(bootstrap).await?;
    match command {
        TopicsCommand::Create {
            name: topic,
            partitions,
            replication_factor,
            configs,
            if_not_exists,
            validate_only,
        } => {
            let configs = configs
                .iter()
                .map(|c| {
                    key_value(c).map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k))
                            .with_value(Some(StrBytes::from_string(v)))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let request = CreateTopicsRequest::default()
                .with_topics(vec![CreatableTopic::default()
                    .with_name(name(&topic))
                    .with_num_partitions(partitions.unwrap_or(-1))
                    .with_replication_factor(replication_factor.unwrap_or(-1))
                    .with_configs(configs)])
                .with_timeout_ms(30_000)
                .with_validate_only(validate_only);
            let response = client.send(request).await?;
            for t in &response.topics {
                if if_not_exists && t.error_code == ResponseError::TopicAlreadyExists.code() {
                    println!("Topic {topic} already exists.");
                    continue;
                }
                check(
                    t.error_code,
                    t.error_message.as_ref(),
                    &format!("creating {topic}"),
                )?;
                let verb = if validate_only {
                    "Would create"
                } else {
                    "Created"
                };
                println!(
                    "{verb} topic {topic} with {} partition(s), replication factor {}.",
                    t.num_partitions, t.replication_factor
                );
            }
        }
        TopicsCommand::List => {
            let metadata = fetch_metadata(&mut client, &[]).await?;
            let mut names: Vec<String> = metadata
                .topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
                .collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
        TopicsCommand::Describe { names } => describe(&mut client, &names).await?,
        TopicsCommand::Delete { names } => {
            let request = DeleteTopicsRequest::default()
                .with_topic_names(names.iter().map(|n| name(n)).collect())
                .with_topics(
                    names
                        .iter()
                        .map(|n| DeleteTopicState::default().with_name(Some(name(n))))
                        .collect(),
                )
                .with_timeout_ms(30_000);
            let response = client.send(request).await?;
            let mut failed = false;
            for r in &response.responses {
                let topic = r.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                match check(
                    r.error_code,
                    r.error_message.as_ref(),
                    &format!("deleting {topic}"),
                ) {
                    Ok(()) => println!("Deleted topic {topic}."),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some topics were not deleted");
            }
        }
        TopicsCommand::Alter {
            name: topic,
            partitions,
            configs,
            delete_configs,
        } => {
            if partitions.is_none() && configs.is_empty() && delete_configs.is_empty() {
                bail!("nothing to alter: give --partitions, --config or --delete-config");
            }
            if let Some(count) = partitions {
                let request = CreatePartitionsRequest::default()
                    .with_topics(vec![CreatePartitionsTopic::default()
                        .with_name(name(&topic))
                        .with_count(count)
                        .with_assignments(None)])
                    .with_timeout_ms(30_000);
                let response = client.send(request).await?;
                for r in &response.results {
                    check(
                        r.error_code,
                        r.error_message.as_ref(),
                        &format!("adding partitions to {topic}"),
                    )?;
                }
                println!("Topic {topic} now has {count} partitions.");
            }
            if !configs.is_empty() || !delete_configs.is_empty() {
                let mut entries = Vec::new();
                for c in &configs {
                    let (k, v) = key_value(c)?;
                    entries.push(
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string(k))
                            .with_config_operation(0)
                            .with_value(Some(StrBytes::from_string(v))),
                    );
                }
                for k in &delete_configs {
                    entries.push(
                        AlterableConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_config_operation(1),
                    );
                }
                let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
                    AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(StrBytes::from_string(topic.clone()))
                        .with_configs(entries),
                ]);
                let response = client.send(request).await?;
                for r in &response.responses {
                    check(
                        r.error_code,
                        r.error_message.as_ref(),
                        &format!("altering configs of {topic}"),
                    )?;
                }
                println!("Updated configs of topic {topic}.");
            }
        }
    }
    Ok(())
}

async fn fetch_metadata(client: &mut KafkaClient, names: &[String]) -> Result<MetadataResponse> {
    let topics = if names.is_empty() {
        None
    } else {
        Some(
            names
                .iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(name(n))))
                .collect(),
        )
    };
    client
        .send(
            MetadataRequest::default()
                .with_topics(topics)
                .with_allow_auto_topic_creation(false),
        )
        .await
        .context("fetching metadata")
}

async fn describe(client: &mut KafkaClient, names: &[String]) -> Result<()> {
    let metadata = fetch_metadata(client, names).await?;
    let mut topics: Vec<_> = metadata.topics.iter().collect();
    topics.sort_by_key(|t| t.name.as_ref().map(|n| n.0.to_string()));
    let ids = |v: &[kafka_protocol::messages::BrokerId]| {
        v.iter()
            .map(|b| b.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    for t in topics {
        let topic = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        check(t.error_code, None, &format!("describing {topic}"))?;
        let configs = client
            .send(DescribeConfigsRequest::default().with_resources(
                vec![DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(topic.clone()))
                .with_configuration_keys(None)],
            ))
            .await?;
        let dynamic: Vec<String> = configs
            .results
            .iter()
            .flat_map(|r| r.configs.iter())
            .filter(|c| c.config_source == 1)
            .map(|c| format!("{}={}", c.name, c.value.as_deref().unwrap_or("")))
            .collect();
        let rf = t.partitions.first().map_or(0, |p| p.replica_nodes.len());
        println!(
            "Topic: {topic}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {rf}\tConfigs: {}",
            t.topic_id,
            t.partitions.len(),
            dynamic.join(",")
        );
        let mut table = Table::new(&["PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "OFFLINE"]);
        let mut partitions: Vec<_> = t.partitions.iter().collect();
        partitions.sort_by_key(|p| p.partition_index);
        for p in partitions {
            table.row(vec![
                p.partition_index.to_string(),
                p.leader_id.0.to_string(),
                p.leader_epoch.to_string(),
                ids(&p.replica_nodes),
                ids(&p.isr_nodes),
                ids(&p.offline_replicas),
            ]);
        }
        print!("{}", table.render());
        println!();
    }
    Ok(())
}
