//! Consumer-group requests: the Kafka side of [`crate::group`]. Each handler
//! turns a request into calls on the group coordinator and the answers into
//! a response of the version the client speaks.

use std::net::SocketAddr;
use std::time::Duration;

use kafka_protocol::messages::{
    delete_groups_response, describe_groups_response, find_coordinator_response,
    join_group_response, leave_group_response, list_groups_response, offset_commit_response,
    offset_delete_response, offset_fetch_response, BrokerId, DeleteGroupsRequest,
    DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{message, Broker};
use crate::group::state::{GroupState, JoinRequest, MemberSpec, SyncRequest};
use crate::group::OffsetToCommit;

const GROUP_KEY: i8 = 0;
/// DescribeGroups' value for "authorized operations not asked for".
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn code(result: Result<(), ResponseError>) -> i16 {
    result.err().map_or(0, |e| e.code())
}

/// Kafka reports a client's address with a leading slash.
fn client_host(peer: SocketAddr) -> String {
    format!("/{}", peer.ip())
}

/// The coordinator of one key: (node, host, port) on `listener`, the
/// listener the client came in on, or the error.
fn locate(
    broker: &Broker,
    key: &str,
    key_type: i8,
    listener: &str,
) -> Result<(i32, String, u16), (ResponseError, String)> {
    if key_type != GROUP_KEY {
        return Err((
            ResponseError::InvalidRequest,
            "Sluice has no transaction coordinator".into(),
        ));
    }
    if key.is_empty() {
        return Err((
            ResponseError::InvalidRequest,
            "the group id is empty".into(),
        ));
    }
    let image = broker.replicas.image();
    let unavailable = || {
        (
            ResponseError::CoordinatorNotAvailable,
            "no broker is available to coordinate the group".to_string(),
        )
    };
    let id = image.group_coordinator(key).ok_or_else(unavailable)?;
    let endpoint = image
        .brokers
        .get(&id)
        .and_then(|b| b.endpoint(listener))
        .ok_or_else(unavailable)?;
    Ok((id, endpoint.host.clone(), endpoint.port))
}

pub fn find_coordinator(
    broker: &Broker,
    request: FindCoordinatorRequest,
    version: i16,
    listener: &str,
) -> FindCoordinatorResponse {
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(
                |key| match locate(broker, key, request.key_type, listener) {
                    Ok((id, host, port)) => find_coordinator_response::Coordinator::default()
                        .with_key(key.clone())
                        .with_node_id(BrokerId(id))
                        .with_host(text(&host))
                        .with_port(port as i32),
                    Err((error, why)) => find_coordinator_response::Coordinator::default()
                        .with_key(key.clone())
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(error.code())
                        .with_error_message(message(why)),
                },
            )
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let response = FindCoordinatorResponse::default();
    match locate(broker, &request.key, request.key_type, listener) {
        Ok((id, host, port)) => response
            .with_node_id(BrokerId(id))
            .with_host(text(&host))
            .with_port(port as i32),
        Err((error, why)) => response
            .with_error_code(error.code())
            .with_error_message((version >= 1).then(|| text(&why)))
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
}

pub async fn join_group(
    broker: &Broker,
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
    peer: SocketAddr,
) -> JoinGroupResponse {
    let session_timeout = Duration::from_millis(request.session_timeout_ms.max(0) as u64);
    // Version 0 has no rebalance timeout: the session timeout serves for both.
    let rebalance_timeout = if version >= 1 {
        Duration::from_millis(request.rebalance_timeout_ms.max(0) as u64)
    } else {
        session_timeout
    };
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        spec: MemberSpec {
            client_id: client_id.to_string(),
            client_host: client_host(peer),
            session_timeout,
            rebalance_timeout,
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
        },
        require_known_member_id: version >= 4,
        supports_skip_assignment: version >= 9,
    };
    let result = broker.groups.join(request.group_id.as_str(), join).await;
    let optional = |s: Option<String>| s.map(|s| text(&s));
    JoinGroupResponse::default()
        .with_error_code(result.error.map_or(0, |e| e.code()))
        .with_generation_id(result.generation)
        .with_protocol_type(if version >= 7 {
            optional(result.protocol_type)
        } else {
            None
        })
        // Before version 7 the protocol name is not nullable.
        .with_protocol_name(if version >= 7 {
            optional(result.protocol_name)
        } else {
            Some(text(&result.protocol_name.unwrap_or_default()))
        })
        .with_leader(text(&result.leader))
        .with_skip_assignment(version >= 9 && result.skip_assignment)
        .with_member_id(text(&result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|(member_id, instance_id, metadata)| {
                    join_group_response::JoinGroupResponseMember::default()
                        .with_member_id(text(&member_id))
                        .with_group_instance_id(if version >= 5 {
                            instance_id.map(|s| text(&s))
                        } else {
                            None
                        })
                        .with_metadata(metadata)
                })
                .collect(),
        )
}

pub async fn sync_group(
    broker: &Broker,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let sync = SyncRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
        generation: request.generation_id,
        protocol_type: request.protocol_type.as_ref().map(|s| s.to_string()),
        protocol_name: request.protocol_name.as_ref().map(|s| s.to_string()),
        assignments: request
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    let result = broker.groups.sync(request.group_id.as_str(), sync).await;
    let with_protocol = version >= 5 && result.error.is_none();
    SyncGroupResponse::default()
        .with_error_code(result.error.map_or(0, |e| e.code()))
        .with_protocol_type(
            result
                .protocol_type
                .filter(|_| with_protocol)
                .map(|s| text(&s)),
        )
        .with_protocol_name(
            result
                .protocol_name
                .filter(|_| with_protocol)
                .map(|s| text(&s)),
        )
        .with_assignment(result.assignment)
}

pub fn heartbeat(broker: &Broker, request: HeartbeatRequest) -> HeartbeatResponse {
    let result = broker.groups.heartbeat(
        request.group_id.as_str(),
        request.member_id.as_str(),
        request.group_instance_id.as_deref(),
        request.generation_id,
    );
    HeartbeatResponse::default().with_error_code(code(result))
}

pub fn leave_group(
    broker: &Broker,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let results = match broker.groups.leave(request.group_id.as_str(), &members) {
        Ok(results) => results,
        Err(e) => return LeaveGroupResponse::default().with_error_code(e.code()),
    };
    if version < 3 {
        let error = results.first().copied().unwrap_or(Ok(()));
        return LeaveGroupResponse::default().with_error_code(code(error));
    }
    LeaveGroupResponse::default().with_members(
        members
            .into_iter()
            .zip(results)
            .map(|((member_id, instance_id), result)| {
                leave_group_response::MemberResponse::default()
                    .with_member_id(text(&member_id))
                    .with_group_instance_id(instance_id.map(|s| text(&s)))
                    .with_error_code(code(result))
            })
            .collect(),
    )
}

pub async fn offset_commit(
    broker: &Broker,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let mut offsets = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            offsets.push(OffsetToCommit {
                topic: topic.name.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: if version >= 6 {
                    p.committed_leader_epoch
                } else {
                    -1
                },
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            });
        }
    }
    let results = broker
        .groups
        .commit_offsets(
            request.group_id.as_str(),
            request.generation_id_or_member_epoch,
            request.member_id.as_str(),
            request.group_instance_id.as_deref(),
            offsets,
        )
        .await;
    let mut results = results.into_iter();
    OffsetCommitResponse::default().with_topics(
        request
            .topics
            .iter()
            .map(|topic| {
                offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_name(topic.name.clone())
                    .with_partitions(
                        topic
                            .partitions
                            .iter()
                            .map(|p| {
                                let result = results.next().unwrap_or(Ok(()));
                                offset_commit_response::OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code(result))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// The offsets of one group, per topic, or the group's error.
async fn fetch_group_offsets(
    broker: &Broker,
    group_id: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    version: i16,
) -> Result<Vec<offset_fetch_response::OffsetFetchResponseTopics>, ResponseError> {
    let offsets = broker.groups.fetch_offsets(group_id, topics).await?;
    let mut out: Vec<offset_fetch_response::OffsetFetchResponseTopics> = Vec::new();
    for (topic, partition, committed) in offsets {
        let (offset, epoch, metadata) = match committed {
            Some(c) => (c.offset, c.leader_epoch, c.metadata.unwrap_or_default()),
            None => (-1, -1, String::new()),
        };
        let entry = offset_fetch_response::OffsetFetchResponsePartitions::default()
            .with_partition_index(partition)
            .with_committed_offset(offset)
            .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
            .with_metadata(Some(text(&metadata)));
        match out.iter_mut().find(|t| t.name.as_str() == topic) {
            Some(t) => t.partitions.push(entry),
            None => out.push(
                offset_fetch_response::OffsetFetchResponseTopics::default()
                    .with_name(TopicName(text(&topic)))
                    .with_partitions(vec![entry]),
            ),
        }
    }
    Ok(out)
}

pub async fn offset_fetch(
    broker: &Broker,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::new();
        for group in &request.groups {
            let topics = group.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let entry = offset_fetch_response::OffsetFetchResponseGroup::default()
                .with_group_id(group.group_id.clone());
            groups.push(
                match fetch_group_offsets(broker, group.group_id.as_str(), topics, version).await {
                    Ok(topics) => entry.with_topics(topics),
                    Err(e) => entry.with_error_code(e.code()),
                },
            );
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let requested: Option<Vec<(String, Vec<i32>)>> = request.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    match fetch_group_offsets(
        broker,
        request.group_id.as_str(),
        requested.clone(),
        version,
    )
    .await
    {
        Ok(topics) => OffsetFetchResponse::default().with_topics(
            topics
                .into_iter()
                .map(|t| {
                    offset_fetch_response::OffsetFetchResponseTopic::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    offset_fetch_response::OffsetFetchResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_committed_offset(p.committed_offset)
                                        .with_committed_leader_epoch(p.committed_leader_epoch)
                                        .with_metadata(p.metadata)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(e) if version >= 2 => OffsetFetchResponse::default().with_error_code(e.code()),
        // Version 1 has no group-level error: each partition carries it.
        Err(e) => OffsetFetchResponse::default().with_topics(
            requested
                .unwrap_or_default()
                .into_iter()
                .map(|(topic, partitions)| {
                    offset_fetch_response::OffsetFetchResponseTopic::default()
                        .with_name(TopicName(text(&topic)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|p| {
                                    offset_fetch_response::OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_metadata(Some(text("")))
                                        .with_error_code(e.code())
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    }
}

pub fn list_groups(
    broker: &Broker,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let groups = broker
        .groups
        .list_groups()
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.name().to_lowercase()))
        // Every group here speaks the classic protocol.
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|g| {
            let entry = list_groups_response::ListedGroup::default()
                .with_group_id(GroupId(text(&g.group_id)))
                .with_protocol_type(text(&g.protocol_type));
            let entry = if version >= 4 {
                entry.with_group_state(text(g.state.name()))
            } else {
                entry
            };
            if version >= 5 {
                entry.with_group_type(text("classic"))
            } else {
                entry
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub fn describe_groups(
    broker: &Broker,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let operations = if version >= 3 && request.include_authorized_operations {
        // Every operation: Sluice has no authorization.
        0b1111_1111_1110
    } else {
        OPERATIONS_NOT_REQUESTED
    };
    let groups = request
        .groups
        .iter()
        .map(|group_id| {
            let entry = describe_groups_response::DescribedGroup::default()
                .with_group_id(group_id.clone())
                .with_authorized_operations(operations);
            match broker.groups.describe(group_id.as_str()) {
                Err(e) => entry.with_error_code(e.code()),
                Ok(None) => entry.with_group_state(text(GroupState::Dead.name())),
                Ok(Some(d)) => entry
                    .with_group_state(text(d.state.name()))
                    .with_protocol_type(text(&d.protocol_type))
                    .with_protocol_data(text(&d.protocol_name))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                describe_groups_response::DescribedGroupMember::default()
                                    .with_member_id(text(&m.member_id))
                                    .with_group_instance_id(if version >= 4 {
                                        m.instance_id.map(|s| text(&s))
                                    } else {
                                        None
                                    })
                                    .with_client_id(text(&m.client_id))
                                    .with_client_host(text(&m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn delete_groups(broker: &Broker, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for group_id in &request.groups_names {
        let result = broker.groups.delete_group(group_id.as_str()).await;
        results.push(
            delete_groups_response::DeletableGroupResult::default()
                .with_group_id(group_id.clone())
                .with_error_code(code(result)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(broker: &Broker, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let results = match broker
        .groups
        .delete_offsets(request.group_id.as_str(), partitions)
        .await
    {
        Ok(results) => results,
        Err(e) => return OffsetDeleteResponse::default().with_error_code(e.code()),
    };
    let mut results = results.into_iter();
    OffsetDeleteResponse::default().with_topics(
        request
            .topics
            .iter()
            .map(|t| {
                offset_delete_response::OffsetDeleteResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                offset_delete_response::OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code(results.next().unwrap_or(Ok(()))))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}
