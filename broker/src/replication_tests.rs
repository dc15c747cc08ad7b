//! Two brokers in one process, each with its own replica manager, Kafka
//! listener and metadata loader, fed the same metadata records by a test
//! controller that commits AlterPartition itself: a follower replicates, the
//! high watermark waits for it, the ISR shrinks and grows, and a divergent
//! tail is truncated after a leader change.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_metadata::controller_api::{
    BoxFuture, BrokerHeartbeat, BrokerRegistrationRequest, ConfigChange, ControllerApi,
    ControllerError, CreatedTopic, GroupWrite, GroupWriteOutcome, GroupWriter, HeartbeatReply,
    IsrChange, NewPartitions, NewTopic, PartitionState, TopicRef,
};
use sluice_metadata::{
    encode_batch, BrokerRecord, ConfigRecord, ConfigResource, Endpoint, MetadataLoader,
    MetadataRecord, PartitionRecord, PartitionRegistration, Publisher, TopicRecord, Uuid,
};
use sluice_storage::batch::BatchBuilder;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{server, start_replication, Broker, BrokerConfig, KafkaClient, ReplicaManager};

/// The metadata log of the test: every committed batch goes to every broker's loader.
pub(crate) struct Cluster {
    loaders: Vec<MetadataLoader>,
    offset: u64,
}

impl Cluster {
    pub(crate) fn commit(&mut self, records: &[MetadataRecord]) {
        self.offset += 1;
        let data = encode_batch(records);
        for loader in &mut self.loaders {
            loader.load_entry(self.offset, &data).unwrap();
        }
    }

    fn registration(&self, topic_id: Uuid, partition: i32) -> Option<PartitionRegistration> {
        self.loaders[0]
            .image()
            .topic_by_id(&topic_id)?
            .partitions
            .get(&partition)
            .cloned()
    }
}

/// A controller that answers AlterPartition, validating it as the real
/// one does and committing the new ISR to the test's metadata log; and
/// registrations (at [`TestController::BROKER_EPOCH`]) and heartbeats, which
/// it unfences at once and records. Nothing else.
pub(crate) struct TestController {
    cluster: Arc<Mutex<Cluster>>,
    pub(crate) calls: Mutex<Vec<(i32, i64, IsrChange)>>,
    pub(crate) heartbeats: Mutex<Vec<BrokerHeartbeat>>,
}

impl TestController {
    pub(crate) const BROKER_EPOCH: i64 = 7;

    /// One with an empty log, for tests that need a controller but ask nothing of it.
    pub(crate) fn idle() -> Self {
        Self {
            cluster: Arc::new(Mutex::new(Cluster {
                loaders: Vec::new(),
                offset: 0,
            })),
            calls: Mutex::new(Vec::new()),
            heartbeats: Mutex::new(Vec::new()),
        }
    }
}

fn refuse<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T, ControllerError>> {
    Box::pin(async { Err(ControllerError::Internal("not in this test".into())) })
}

fn refuse_all<'a, T: Send + 'a>(n: usize) -> BoxFuture<'a, Vec<Result<T, ControllerError>>> {
    Box::pin(async move {
        (0..n)
            .map(|_| Err(ControllerError::Internal("not in this test".into())))
            .collect()
    })
}

impl ControllerApi for TestController {
    fn active_controller_id(&self) -> Option<i32> {
        None
    }
    fn create_topics(
        &self,
        topics: Vec<NewTopic>,
        _validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<CreatedTopic, ControllerError>>> {
        refuse_all(topics.len())
    }
    fn delete_topics(
        &self,
        topics: Vec<TopicRef>,
    ) -> BoxFuture<'_, Vec<Result<(String, Uuid), ControllerError>>> {
        refuse_all(topics.len())
    }
    fn create_partitions(
        &self,
        requests: Vec<NewPartitions>,
        _validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        refuse_all(requests.len())
    }
    fn alter_configs(
        &self,
        changes: Vec<(ConfigResource, Vec<ConfigChange>)>,
        _validate_only: bool,
    ) -> BoxFuture<'_, Vec<Result<(), ControllerError>>> {
        refuse_all(changes.len())
    }
    fn register_broker(
        &self,
        _request: BrokerRegistrationRequest,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        Box::pin(async { Ok(Self::BROKER_EPOCH) })
    }
    fn allocate_producer_ids(
        &self,
        _broker_id: i32,
        _count: i64,
    ) -> BoxFuture<'_, Result<i64, ControllerError>> {
        refuse()
    }
    fn broker_heartbeat(
        &self,
        heartbeat: BrokerHeartbeat,
    ) -> BoxFuture<'_, Result<HeartbeatReply, ControllerError>> {
        self.heartbeats.lock().unwrap().push(heartbeat);
        Box::pin(async {
            Ok(HeartbeatReply {
                is_caught_up: true,
                is_fenced: false,
                should_shutdown: false,
            })
        })
    }
    fn write_group(
        &self,
        _writer: GroupWriter,
        _write: GroupWrite,
    ) -> BoxFuture<'_, Result<GroupWriteOutcome, ControllerError>> {
        refuse()
    }
    fn alter_partition(
        &self,
        broker_id: i32,
        broker_epoch: i64,
        changes: Vec<IsrChange>,
    ) -> BoxFuture<'_, Vec<Result<PartitionState, ControllerError>>> {
        Box::pin(async move {
            let mut results = Vec::new();
            for change in changes {
                self.calls
                    .lock()
                    .unwrap()
                    .push((broker_id, broker_epoch, change.clone()));
                let mut cluster = self.cluster.lock().unwrap();
                let Some(reg) = cluster.registration(change.topic_id, change.partition) else {
                    results.push(Err(ControllerError::UnknownTopicId(change.topic_id)));
                    continue;
                };
                if reg.leader != broker_id {
                    results.push(Err(ControllerError::NotLeader("not the leader".into())));
                } else if reg.leader_epoch != change.leader_epoch {
                    results.push(Err(ControllerError::FencedLeaderEpoch("fenced".into())));
                } else if reg.partition_epoch != change.partition_epoch {
                    results.push(Err(ControllerError::InvalidUpdateVersion("stale".into())));
                } else {
                    let record = PartitionRecord {
                        topic_id: change.topic_id,
                        partition: change.partition,
                        replicas: reg.replicas.clone(),
                        isr: change.new_isr.clone(),
                        leader: reg.leader,
                        leader_epoch: reg.leader_epoch,
                        partition_epoch: reg.partition_epoch + 1,
                    };
                    cluster.commit(&[MetadataRecord::Partition(record)]);
                    results.push(Ok(PartitionState {
                        leader: reg.leader,
                        leader_epoch: reg.leader_epoch,
                        isr: change.new_isr,
                        partition_epoch: reg.partition_epoch + 1,
                    }));
                }
            }
            results
        })
    }
}

pub(crate) struct Node {
    pub(crate) id: i32,
    pub(crate) replicas: Arc<ReplicaManager>,
    pub(crate) broker: Arc<Broker>,
    pub(crate) address: SocketAddr,
    replication_stop: watch::Sender<bool>,
}

impl Node {
    pub(crate) fn start_replication(&mut self) {
        let (tx, rx) = watch::channel(false);
        self.replication_stop = tx;
        start_replication(&self.broker, rx);
    }

    fn stop_replication(&self) {
        let _ = self.replication_stop.send(true);
    }

    /// (log end, high watermark, latest epoch) of the test partition.
    pub(crate) fn log(&self) -> (i64, i64, Option<i32>) {
        self.log_of(0)
    }

    /// (log end, high watermark, latest epoch) of a partition of the test topic.
    pub(crate) fn log_of(&self, index: i32) -> (i64, i64, Option<i32>) {
        let partition = self.replicas.partition(TOPIC, index).unwrap();
        let state = partition.state();
        (
            state.log.log_end_offset(),
            state.log.high_watermark(),
            state.log.latest_epoch(),
        )
    }

    fn bytes(&self, end: i64) -> Bytes {
        self.bytes_of(0, end)
    }

    fn bytes_of(&self, index: i32, end: i64) -> Bytes {
        let partition = self.replicas.partition(TOPIC, index).unwrap();
        let state = partition.state();
        state.log.read(0, usize::MAX, end).unwrap().records
    }
}

pub(crate) const TOPIC: &str = "replicated";

pub(crate) fn batch(value: &str) -> Bytes {
    batch_at(value, 1_000)
}

/// A one-record batch with the given timestamp.
fn batch_at(value: &str, timestamp: i64) -> Bytes {
    Bytes::from(
        BatchBuilder::new(timestamp)
            .record(timestamp, None, Some(value.as_bytes()))
            .build(),
    )
}

/// Produces one record; returns (error code, base offset).
async fn produce(address: SocketAddr, acks: i16, value: &str) -> (i16, i64) {
    produce_many(address, acks, &[(0, value)]).await[0]
}

/// Produces one record to each of the given partitions in one request;
/// returns (error code, base offset) per partition.
pub(crate) async fn produce_many(
    address: SocketAddr,
    acks: i16,
    values: &[(i32, &str)],
) -> Vec<(i16, i64)> {
    let batches: Vec<(i32, Bytes)> = values.iter().map(|&(i, v)| (i, batch(v))).collect();
    produce_batches(address, acks, &batches).await
}

/// Produces a batch to each of the given partitions in one request;
/// returns (error code, base offset) per partition.
pub(crate) async fn produce_batches(
    address: SocketAddr,
    acks: i16,
    values: &[(i32, Bytes)],
) -> Vec<(i16, i64)> {
    let mut client = KafkaClient::connect(&address.to_string(), "test")
        .await
        .unwrap();
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partition_data(
                values
                    .iter()
                    .map(|(index, records)| {
                        PartitionProduceData::default()
                            .with_index(*index)
                            .with_records(Some(records.clone()))
                    })
                    .collect(),
            )]);
    let version = client.version_for::<ProduceRequest>(9).unwrap();
    let response = client.send_version(request, version).await.unwrap();
    values
        .iter()
        .map(|(index, _)| {
            let index = *index;
            let p = response.responses[0]
                .partition_responses
                .iter()
                .find(|p| p.index == index)
                .unwrap();
            (p.error_code, p.base_offset)
        })
        .collect()
}

pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two brokers, 1 and 2, registered in the test's metadata log; neither
/// replicates until the test starts it.
pub(crate) async fn two_brokers(
    dir: &std::path::Path,
) -> (Arc<Mutex<Cluster>>, Arc<TestController>, Vec<Node>) {
    two_brokers_with(dir, |_| {}).await
}

/// [`two_brokers`], with settings of the test's own.
pub(crate) async fn two_brokers_with(
    dir: &std::path::Path,
    configure: impl Fn(&mut BrokerConfig),
) -> (Arc<Mutex<Cluster>>, Arc<TestController>, Vec<Node>) {
    let cluster = Arc::new(Mutex::new(Cluster {
        loaders: Vec::new(),
        offset: 0,
    }));
    let controller = Arc::new(TestController {
        cluster: cluster.clone(),
        calls: Mutex::new(Vec::new()),
        heartbeats: Mutex::new(Vec::new()),
    });
    let mut nodes = Vec::new();
    let mut broker_records = Vec::new();
    for id in [1, 2] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let log_dir = dir.join(format!("node-{id}"));
        let replicas =
            Arc::new(ReplicaManager::new(id, log_dir.clone(), Default::default()).unwrap());
        replicas.set_broker_epoch(10 + id as i64);
        let mut config = BrokerConfig::for_dev(log_dir, address);
        config.node_id = id;
        config.replica_lag_time_max = Duration::from_secs(3);
        config.replica_fetch_wait_max = Duration::from_millis(100);
        config.replica_fetch_backoff = Duration::from_millis(100);
        configure(&mut config);
        let broker = Arc::new(Broker::new(
            config,
            replicas.clone(),
            controller.clone() as Arc<dyn ControllerApi>,
            crate::GroupCoordinator::new(id, crate::GroupConfig::default()),
            address.port(),
        ));
        let (server_stop, server_stop_rx) = watch::channel(false);
        std::mem::forget(server_stop); // serve until the test ends
        tokio::spawn(server::run(
            listener,
            "PLAINTEXT".into(),
            broker.clone(),
            server_stop_rx,
        ));
        // An empty log: caught up from the start, every entry is published.
        let mut loader = MetadataLoader::new(vec![replicas.clone() as Arc<dyn Publisher>]);
        loader.set_committed_offset(0);
        cluster.lock().unwrap().loaders.push(loader);
        broker_records.push(MetadataRecord::Broker(BrokerRecord {
            broker_id: id,
            incarnation_id: Uuid::new_v4(),
            broker_epoch: 10 + id as i64,
            endpoints: vec![Endpoint {
                listener: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: address.port(),
            }],
            rack: None,
            fenced: false,
        }));
        nodes.push(Node {
            id,
            replicas,
            broker,
            address,
            replication_stop: watch::channel(true).0,
        });
    }
    cluster.lock().unwrap().commit(&broker_records);
    (cluster, controller, nodes)
}

pub(crate) fn partition_record(
    topic_id: Uuid,
    index: i32,
    leader: i32,
    leader_epoch: i32,
    isr: Vec<i32>,
    partition_epoch: i32,
) -> MetadataRecord {
    MetadataRecord::Partition(PartitionRecord {
        topic_id,
        partition: index,
        replicas: vec![1, 2],
        isr,
        leader,
        leader_epoch,
        partition_epoch,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_replicates_and_truncates_after_a_leader_change() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, controller, mut nodes) = two_brokers(dir.path()).await;
    let topic_id = Uuid::new_v4();
    let partition = |leader: i32, leader_epoch: i32, isr: Vec<i32>, partition_epoch: i32| {
        partition_record(topic_id, 0, leader, leader_epoch, isr, partition_epoch)
    };
    cluster.lock().unwrap().commit(&[
        MetadataRecord::Topic(TopicRecord {
            name: TOPIC.into(),
            topic_id,
        }),
        partition(1, 0, vec![1, 2], 0),
    ]);
    let isr = || {
        cluster
            .lock()
            .unwrap()
            .registration(topic_id, 0)
            .unwrap()
            .isr
    };

    // The leader runs; the follower does not fetch yet. acks=1 writes are
    // not committed while an in-sync follower lacks them.
    nodes[0].start_replication();
    for i in 0..3 {
        assert_eq!(produce(nodes[0].address, 1, &format!("a{i}")).await, (0, i));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(nodes[0].log().0, 3);
    assert_eq!(
        nodes[0].log().1,
        0,
        "the high watermark waits for the follower"
    );

    // The follower starts: it copies the log, and the leader's high
    // watermark never runs ahead of what the follower holds.
    nodes[1].start_replication();
    let (leader, follower) = (&nodes[0], &nodes[1]);
    eventually("the leader's high watermark to reach 3", || {
        let hw = leader.log().1;
        let follower_end = follower.log().0;
        assert!(
            hw <= follower_end,
            "hw {hw} ahead of the follower's log end {follower_end}"
        );
        hw == 3
    })
    .await;
    eventually("the follower's high watermark to reach 3", || {
        follower.log().1 == 3
    })
    .await;
    // acks=all completes once the follower has fetched the batch.
    assert_eq!(produce(leader.address, -1, "b").await, (0, 3));
    assert!(follower.log().0 >= 4);
    assert_eq!(leader.bytes(4), follower.bytes(4));

    // A consumer may not read from the follower.
    let mut client = KafkaClient::connect(&follower.address.to_string(), "test")
        .await
        .unwrap();
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_partition_max_bytes(1 << 20)])]);
    let response = client.send_version(fetch, 12).await.unwrap();
    assert_eq!(
        response.responses[0].partitions[0].error_code,
        ResponseError::NotLeaderOrFollower.code()
    );

    // The follower stops; the leader takes two more records it alone has.
    nodes[1].stop_replication();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(produce(nodes[0].address, 1, "c0").await, (0, 4));
    assert_eq!(produce(nodes[0].address, 1, "c1").await, (0, 5));
    assert_eq!(nodes[0].log(), (6, 4, Some(0)));
    assert_eq!(nodes[1].log().0, 4);

    // Node 1 is lost; node 2, in the ISR, leads in epoch 1 and writes.
    let epoch = cluster
        .lock()
        .unwrap()
        .registration(topic_id, 0)
        .unwrap()
        .partition_epoch;
    nodes[0].stop_replication();
    cluster
        .lock()
        .unwrap()
        .commit(&[partition(2, 1, vec![2], epoch + 1)]);
    nodes[1].start_replication();
    assert_eq!(produce(nodes[1].address, 1, "d0").await, (0, 4));
    assert_eq!(nodes[1].log(), (5, 5, Some(1)));

    // Node 1 comes back as a follower: its tail (offsets 4 and 5 of epoch 0)
    // goes, and it copies the new leader's epoch 1.
    nodes[0].start_replication();
    let (leader, follower) = (&nodes[1], &nodes[0]);
    eventually("the old leader to converge on the new leader's log", || {
        follower.log().0 == 5 && follower.log().2 == Some(1)
    })
    .await;
    assert_eq!(leader.bytes(5), follower.bytes(5));
    eventually("node 1 to rejoin the ISR", || isr() == vec![2, 1]).await;
    assert!(controller
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|(broker, epoch, c)| *broker == 2
            && *epoch == 12
            && c.new_isr == vec![2, 1]
            // Node 1 is added on the strength of fetches of its registration (KIP-903).
            && c.broker_epochs == vec![(2, 12), (1, 11)]));
    assert_eq!(produce(leader.address, -1, "e").await, (0, 5));

    // The follower stops fetching and falls behind: after
    // replica.lag.time.max.ms it leaves the ISR (a stopped follower at the
    // leader's log end stays in sync), and with min.insync.replicas=2
    // acks=all is refused.
    nodes[0].stop_replication();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(produce(nodes[1].address, 1, "f0").await, (0, 6));
    assert_eq!(
        nodes[1].log().1,
        6,
        "the lagging follower holds the high watermark"
    );
    eventually("node 1 to leave the ISR", || isr() == vec![2]).await;
    eventually("the high watermark to move on without node 1", || {
        nodes[1].log().1 == 7
    })
    .await;
    cluster
        .lock()
        .unwrap()
        .commit(&[MetadataRecord::Config(ConfigRecord {
            resource: ConfigResource::Topic(TOPIC.into()),
            name: "min.insync.replicas".into(),
            value: Some("2".into()),
        })]);
    let (error, _) = produce(nodes[1].address, -1, "f").await;
    assert_eq!(error, ResponseError::NotEnoughReplicas.code());
    // acks=1 still works, and with the ISR of one the high watermark follows the leader.
    assert_eq!(produce(nodes[1].address, 1, "g").await, (0, 7));
    assert_eq!(nodes[1].log().1, 8);
    assert_eq!(nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![1, 2]);
}

/// An acks=all request waits on two partitions. While the first waits for
/// its follower, the second loses and regains leadership (leader 1 → 2 → 1);
/// meanwhile its batch is truncated and replaced by another producer's.
/// The second partition must fail with NOT_LEADER_OR_FOLLOWER, never be
/// acknowledged with an offset holding the other batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_all_fails_a_partition_whose_leadership_bounced_during_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _controller, mut nodes) = two_brokers(dir.path()).await;
    let topic_id = Uuid::new_v4();
    cluster.lock().unwrap().commit(&[
        MetadataRecord::Topic(TopicRecord {
            name: TOPIC.into(),
            topic_id,
        }),
        partition_record(topic_id, 0, 1, 0, vec![1, 2], 0),
        partition_record(topic_id, 1, 1, 0, vec![1, 2], 0),
    ]);
    // Node 1 leads both partitions; node 2 does not fetch, so the acks=all
    // request waits.
    nodes[0].start_replication();
    let leader = nodes[0].address;
    let request =
        tokio::spawn(
            async move { produce_many(leader, -1, &[(0, "mine-0"), (1, "mine-1")]).await },
        );
    eventually("both batches to be appended on node 1", || {
        nodes[0].log_of(0).0 == 1 && nodes[0].log_of(1).0 == 1
    })
    .await;

    // Partition 1 moves to node 2 (epoch 1), which never had the batch and
    // writes another producer's record at offset 0. Node 1 follows it:
    // truncates its batch and copies the other record.
    let epoch = cluster
        .lock()
        .unwrap()
        .registration(topic_id, 1)
        .unwrap()
        .partition_epoch;
    cluster
        .lock()
        .unwrap()
        .commit(&[partition_record(topic_id, 1, 2, 1, vec![2], epoch + 1)]);
    assert_eq!(
        produce_many(nodes[1].address, 1, &[(1, "theirs")]).await,
        vec![(0, 0)]
    );
    eventually("node 1 to hold node 2's record of partition 1", || {
        nodes[0].log_of(1) == (1, 1, Some(1))
    })
    .await;
    assert_eq!(nodes[0].bytes_of(1, 1), nodes[1].bytes_of(1, 1));

    // Node 1 leads partition 1 again (epoch 2), its high watermark already
    // past offset 0. Then node 2 replicates partition 0, which completes.
    cluster
        .lock()
        .unwrap()
        .commit(&[partition_record(topic_id, 1, 1, 2, vec![1, 2], epoch + 2)]);
    eventually("node 1 to lead partition 1 in epoch 2", || {
        let partition = nodes[0].replicas.partition(TOPIC, 1).unwrap();
        let state = partition.state();
        state.leader == 1 && state.leader_epoch == 2
    })
    .await;
    nodes[1].start_replication();
    let answers = request.await.unwrap();
    assert_eq!(answers[0], (0, 0), "partition 0 was replicated");
    assert_eq!(
        answers[1].0,
        ResponseError::NotLeaderOrFollower.code(),
        "partition 1's batch was replaced by another; the answer was {:?}",
        answers[1]
    );
}

/// ListOffsets MAX_TIMESTAMP tells a client only of records below the high
/// watermark; a follower sees up to the log end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_timestamp_is_bounded_by_the_high_watermark_for_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _controller, nodes) = two_brokers(dir.path()).await;
    let topic_id = Uuid::new_v4();
    cluster.lock().unwrap().commit(&[
        MetadataRecord::Topic(TopicRecord {
            name: TOPIC.into(),
            topic_id,
        }),
        partition_record(topic_id, 0, 1, 0, vec![1], 0),
    ]);
    // Neither node replicates (so neither does ISR changes of its own) and
    // node 2 never fetches: with the ISR {1} the first record is committed
    // at once; once node 2 joins the ISR, the next one stays above the high
    // watermark.
    let leader = nodes[0].address;
    assert_eq!(
        produce_batches(leader, -1, &[(0, batch_at("committed", 1_000))]).await,
        vec![(0, 0)]
    );
    cluster
        .lock()
        .unwrap()
        .commit(&[partition_record(topic_id, 0, 1, 0, vec![1, 2], 1)]);
    assert_eq!(
        produce_batches(leader, 1, &[(0, batch_at("uncommitted", 5_000))]).await,
        vec![(0, 1)]
    );
    assert_eq!(nodes[0].log(), (2, 1, Some(0)));

    let mut client = KafkaClient::connect(&leader.to_string(), "test")
        .await
        .unwrap();
    let mut max_timestamp = async |replica_id: i32| {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(replica_id))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-3)])]);
        let response = client.send_version(request, 7).await.unwrap();
        let p = &response.topics[0].partitions[0];
        (p.error_code, p.offset, p.timestamp)
    };
    assert_eq!(
        max_timestamp(-1).await,
        (0, 0, 1_000),
        "a consumer's answer"
    );
    assert_eq!(max_timestamp(2).await, (0, 1, 5_000), "a follower's answer");
}
