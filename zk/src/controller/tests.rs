//! The controller against a real ZooKeeper server, with fake brokers: a
//! small Kafka listener that answers ApiVersions and Envelope, records the
//! control requests it gets, and applies them to a real [`ZkMetadata`], so
//! a test sees the image a broker would build from the pushes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, EnvelopeRequest, EnvelopeResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use kafka_protocol::ResponseError;
use sluice_broker::control_plane::ControlPlane;
use sluice_metadata::control_requests::ControlRequest;
use sluice_metadata::{Endpoint, MetadataImage, Uuid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

use super::active::{guarded_write, ActError, Op};
use super::{ZkController, ZkControllerConfig};
use crate::connect::{ephemeral, persistent, sequential};
use crate::source::{ShutdownRequests, ZkMetadata};
use crate::test_support::{eventually, TestZk};
use crate::znodes::*;

/// Where the controller and the brokers keep the cluster, on a server of
/// the test's own.
const CHROOT: &str = "/sluice";

/// A broker's controller, on a session of its own.
struct Node {
    controller: Arc<ZkController>,
    stop: watch::Sender<bool>,
    clients: watch::Sender<Option<zk::Client>>,
}

async fn start_node(server: &TestZk, node_id: i32) -> Node {
    start_node_with(server, node_id, |_| {}).await
}

async fn start_node_with(
    server: &TestZk,
    node_id: i32,
    configure: impl FnOnce(&mut ZkControllerConfig),
) -> Node {
    let (clients, clients_rx) = watch::channel(Some(server.client(CHROOT).await));
    let (stop, stop_rx) = watch::channel(false);
    let metadata = ZkMetadata::new(node_id, vec![]).unwrap();
    let mut config = ZkControllerConfig::new(stop_rx);
    config.controller_socket_timeout = Duration::from_secs(5);
    configure(&mut config);
    let controller = ZkController::start(node_id, clients_rx, metadata, config);
    Node {
        controller,
        stop,
        clients,
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A broker as far as the controller can tell: a registration in
/// `/brokers/ids` and a listener that takes pushes.
struct FakeBroker {
    id: i32,
    port: u16,
    metadata: Arc<ZkMetadata>,
    received: Arc<Mutex<Vec<ControlRequest>>>,
    session: zk::Client,
    server: JoinHandle<()>,
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeBroker {
    async fn start(zk: &TestZk, id: i32) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let metadata = ZkMetadata::new(id, vec![]).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let server = tokio::spawn(serve(listener, metadata.clone(), received.clone()));
        let broker = FakeBroker {
            id,
            port,
            metadata,
            received,
            session: zk.client(CHROOT).await,
            server,
        };
        broker.register().await;
        broker
    }

    /// Creates `/brokers/ids/<id>`; its czxid becomes this broker's epoch.
    async fn register(&self) -> i64 {
        let endpoint = Endpoint {
            listener: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: self.port,
        };
        let znode = BrokerZnode::new(&[endpoint], None, now_ms());
        let (stat, _) = self
            .session
            .create(&broker_path(self.id), &znode.encode(), &ephemeral())
            .await
            .unwrap();
        self.metadata.set_broker_epoch(stat.czxid);
        stat.czxid
    }

    async fn deregister(&self) {
        self.session
            .delete(&broker_path(self.id), None)
            .await
            .unwrap();
    }

    fn image(&self) -> Arc<MetadataImage> {
        self.metadata.image()
    }

    fn received(&self) -> Vec<ControlRequest> {
        self.received.lock().unwrap().clone()
    }

    /// The leader and ISR of a partition in this broker's image, once a
    /// full UpdateMetadata has arrived.
    fn view(&self, topic: &str, partition: i32) -> Option<(i32, Vec<i32>)> {
        if !self.metadata.is_caught_up() {
            return None;
        }
        let image = self.image();
        let p = image.topic(topic)?.partitions.get(&partition)?.clone();
        Some((p.leader, p.isr))
    }
}

async fn serve(
    listener: TcpListener,
    metadata: Arc<ZkMetadata>,
    received: Arc<Mutex<Vec<ControlRequest>>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(connection(stream, metadata.clone(), received.clone()));
    }
}

async fn connection(
    mut stream: TcpStream,
    metadata: Arc<ZkMetadata>,
    received: Arc<Mutex<Vec<ControlRequest>>>,
) {
    loop {
        let Ok(size) = stream.read_i32().await else {
            return;
        };
        let mut frame = BytesMut::zeroed(size as usize);
        if stream.read_exact(&mut frame).await.is_err() {
            return;
        }
        let mut frame = frame.freeze();
        let key = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).unwrap();
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let header =
            RequestHeader::decode(&mut frame, key.request_header_version(version)).unwrap();
        let mut body = BytesMut::new();
        match key {
            ApiKey::ApiVersions => {
                let versions = [(ApiKey::ApiVersions, 0, 3), (ApiKey::Envelope, 0, 2)]
                    .into_iter()
                    .map(|(key, min, max)| {
                        ApiVersion::default()
                            .with_api_key(key as i16)
                            .with_min_version(min)
                            .with_max_version(max)
                    })
                    .collect();
                ApiVersionsResponse::default()
                    .with_api_keys(versions)
                    .encode(&mut body, version)
                    .unwrap();
            }
            ApiKey::Envelope => {
                let envelope = EnvelopeRequest::decode(&mut frame, version).unwrap();
                let request = ControlRequest::decode(&envelope.request_data).unwrap();
                received.lock().unwrap().push(request.clone());
                let response = metadata.handle(request).await;
                EnvelopeResponse::default()
                    .with_error_code(response.error_code)
                    .with_response_data(Some(Bytes::from(response.encode())))
                    .encode(&mut body, version)
                    .unwrap();
            }
            other => panic!("the fake broker got {other:?}"),
        }
        let mut out = BytesMut::new();
        out.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(header.correlation_id)
            .encode(&mut out, key.response_header_version(version))
            .unwrap();
        out.extend_from_slice(&body);
        let size = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&size.to_be_bytes());
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

// ---- ZooKeeper as an admin (or a partition leader) would write it ----

async fn create_topic(admin: &zk::Client, topic: &str, replicas: &[(i32, Vec<i32>)]) -> Uuid {
    let id = Uuid::new_v4();
    let replicas: BTreeMap<i32, Vec<i32>> = replicas.iter().cloned().collect();
    admin
        .create(
            &topic_path(topic),
            &TopicZnode::new(id, &replicas).encode(),
            &persistent(),
        )
        .await
        .unwrap();
    id
}

async fn write_state(admin: &zk::Client, topic: &str, partition: i32, state: PartitionStateZnode) {
    crate::connect::mkdir(admin, &partition_path(topic, partition))
        .await
        .unwrap();
    admin
        .create(
            &partition_state_path(topic, partition),
            &state.encode(),
            &persistent(),
        )
        .await
        .unwrap();
}

/// A partition's state znode and its version (the partition epoch).
async fn read_state(
    admin: &zk::Client,
    topic: &str,
    partition: i32,
) -> Option<(PartitionStateZnode, i32)> {
    let path = partition_state_path(topic, partition);
    let (data, stat) = admin.get_data(&path).await.ok()?;
    Some((
        PartitionStateZnode::decode(&path, &data).unwrap(),
        stat.version,
    ))
}

async fn controller_epoch(admin: &zk::Client) -> (i32, i32) {
    let (data, stat) = admin.get_data(CONTROLLER_EPOCH).await.unwrap();
    (decode_controller_epoch(&data).unwrap(), stat.version)
}

async fn exists(admin: &zk::Client, path: &str) -> bool {
    admin.check_stat(path).await.unwrap().is_some()
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_bumps_the_epoch_and_a_deposed_controller_cannot_write() {
    let server = TestZk::start();
    let admin = server.client(CHROOT).await;
    let one = start_node(&server, 1).await;
    eventually!("node 1 to win", one.controller.is_active().then_some(()));
    assert_eq!(controller_epoch(&admin).await.0, 1);
    assert_eq!(one.controller.controller_epoch(), 1);
    let (data, _) = admin.get_data(CONTROLLER).await.unwrap();
    assert_eq!(
        ControllerZnode::decode(CONTROLLER, &data).unwrap().brokerid,
        1
    );

    let two = start_node(&server, 2).await;
    eventually!(
        "node 2 to see node 1 lead",
        (two.controller.active_controller_id() == Some(1)).then_some(())
    );
    assert!(!two.controller.is_active());
    assert_eq!(two.controller.controller_epoch(), 1);

    // Bump the epoch behind the controller's back: a write guarded by the
    // version it won with is refused, and changes nothing.
    let (_, version) = controller_epoch(&admin).await;
    admin
        .set_data(CONTROLLER_EPOCH, &encode_controller_epoch(7), Some(version))
        .await
        .unwrap();
    let refused = guarded_write(&admin, version, &[Op::Create("/zombie".into(), vec![])]).await;
    assert!(matches!(refused, Err(ActError::Deposed)), "{refused:?}");
    assert!(!exists(&admin, "/zombie").await);

    // The controller learns it on its next write (a new topic's states),
    // and, still holding /controller, takes over again under a new epoch:
    // nothing is written under the old one.
    create_topic(&admin, "t", &[(0, vec![1])]).await;
    let (state, _) = eventually!("t's state", read_state(&admin, "t", 0).await);
    assert_eq!(state.controller_epoch, 8);
    assert_eq!(controller_epoch(&admin).await.0, 8);
    eventually!(
        "node 1 to act under epoch 8",
        (one.controller.controller_epoch() == 8 && one.controller.is_active()).then_some(())
    );

    // Node 1 stops: it gives /controller up and node 2 wins, epoch 9.
    one.stop.send(true).unwrap();
    eventually!("node 2 to win", two.controller.is_active().then_some(()));
    assert_eq!(two.controller.controller_epoch(), 9);
    assert_eq!(controller_epoch(&admin).await.0, 9);
    assert_eq!(one.controller.active_controller_id(), None);

    // Node 2's session is replaced by a new one (as after an expiry; the
    // old one closes with its last handle): it resigns and, racing again
    // on the new session, wins under epoch 10.
    two.clients.send_replace(Some(server.client(CHROOT).await));
    eventually!(
        "node 2 to win on its new session",
        (two.controller.is_active() && two.controller.controller_epoch() == 10).then_some(())
    );
    assert_eq!(controller_epoch(&admin).await.0, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reads_the_cluster_and_elects_leaders_for_offline_partitions() {
    let server = TestZk::start();
    let admin = server.client(CHROOT).await;
    let one = FakeBroker::start(&server, 1).await;
    let two = FakeBroker::start(&server, 2).await;
    // Partition a/0 was led by broker 3, which is gone; a/1 is healthy;
    // b has no states yet; "bad" is garbage.
    let a = create_topic(&admin, "a", &[(0, vec![3, 1]), (1, vec![1, 2])]).await;
    write_state(
        &admin,
        "a",
        0,
        PartitionStateZnode::new(4, 3, 4, vec![3, 1]),
    )
    .await;
    write_state(
        &admin,
        "a",
        1,
        PartitionStateZnode::new(4, 1, 2, vec![1, 2]),
    )
    .await;
    let b = create_topic(&admin, "b", &[(0, vec![2, 1])]).await;
    admin
        .create(&topic_path("bad"), b"{not json", &persistent())
        .await
        .unwrap();

    let node = start_node(&server, 100).await;
    eventually!("node 100 to win", node.controller.is_active().then_some(()));

    // a/0: the live in-sync replica leads, under a new leader epoch.
    let (a0, version) = eventually!(
        "a/0 to get a live leader",
        read_state(&admin, "a", 0)
            .await
            .filter(|(s, _)| s.leader == 1)
    );
    assert_eq!(
        (a0.isr.clone(), a0.leader_epoch, a0.controller_epoch),
        (vec![1], 5, 1)
    );
    assert_eq!(version, 1);
    let (a1, version) = read_state(&admin, "a", 1).await.unwrap();
    assert_eq!(
        (a1.leader, a1.leader_epoch, version),
        (1, 2, 0),
        "untouched"
    );
    let (b0, version) = eventually!("b/0's state", read_state(&admin, "b", 0).await);
    assert_eq!(
        (b0.leader, b0.isr.clone(), b0.leader_epoch, version),
        (2, vec![2, 1], 0, 0)
    );
    assert!(!exists(&admin, &partitions_path("bad")).await);

    // Every broker gets the whole cluster.
    for broker in [&one, &two] {
        eventually!(
            "the pushes to reach the broker",
            (broker.view("a", 0) == Some((1, vec![1]))
                && broker.view("b", 0) == Some((2, vec![2, 1])))
            .then_some(())
        );
        let image = broker.image();
        assert_eq!(image.topic("a").unwrap().id, a);
        assert_eq!(image.topic("b").unwrap().id, b);
        assert!(image.topic("bad").is_none());
        assert_eq!(image.topic("a").unwrap().partitions[&0].partition_epoch, 1);
        let live: Vec<i32> = image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.broker_id)
            .collect();
        assert_eq!(live, vec![1, 2]);
        let received = broker.received();
        let full = received
            .iter()
            .find_map(|r| match r {
                ControlRequest::UpdateMetadata {
                    header,
                    full: true,
                    partitions,
                    live_brokers,
                } => Some((header, partitions.len(), live_brokers.len())),
                _ => None,
            })
            .unwrap();
        assert_eq!((full.0.controller_id, full.0.controller_epoch), (100, 1));
        assert_eq!(full.0.broker_epoch, broker.metadata.broker_epoch());
        assert_eq!((full.1, full.2), (3, 2));
        assert!(received.iter().any(|r| matches!(r,
            ControlRequest::LeaderAndIsr { partitions, .. }
                if partitions.iter().all(|p| p.replicas.contains(&broker.id)))));
    }

    // The garbage topic did not stop the controller: it still acts.
    create_topic(&admin, "c", &[(0, vec![1, 2])]).await;
    eventually!("c/0's state", read_state(&admin, "c", 0).await);
    eventually!("c to reach broker 2", two.view("c", 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_broker_loses_its_leaderships_and_controlled_shutdown_moves_them() {
    let server = TestZk::start();
    let admin = server.client(CHROOT).await;
    let one = FakeBroker::start(&server, 1).await;
    let two = FakeBroker::start(&server, 2).await;
    let three = FakeBroker::start(&server, 3).await;
    create_topic(&admin, "t", &[(0, vec![1, 2, 3]), (1, vec![2, 3, 1])]).await;
    let node = start_node(&server, 100).await;
    eventually!(
        "t/0 led by 1 at broker 2",
        (two.view("t", 0) == Some((1, vec![1, 2, 3]))).then_some(())
    );

    // Broker 1's registration goes (its session expired).
    one.deregister().await;
    let (t0, _) = eventually!(
        "t/0 to move to broker 2",
        read_state(&admin, "t", 0)
            .await
            .filter(|(s, _)| s.leader == 2)
    );
    assert_eq!((t0.isr, t0.leader_epoch), (vec![2, 3], 1));
    let (t1, _) = eventually!(
        "broker 1 to leave t/1's ISR",
        read_state(&admin, "t", 1)
            .await
            .filter(|(s, _)| s.isr == vec![2, 3])
    );
    assert_eq!((t1.leader, t1.leader_epoch), (2, 0));
    for broker in [&two, &three] {
        eventually!(
            "the new leader to reach the broker",
            (broker.view("t", 0) == Some((2, vec![2, 3]))).then_some(())
        );
        assert!(broker.image().brokers[&1].fenced);
        assert!(broker.received().iter().any(|r| matches!(r,
            ControlRequest::LeaderAndIsr { partitions, .. }
                if partitions.iter().any(|p| p.partition == 0 && p.leader == 2))));
    }

    // It registers again (a new epoch): it gets the whole cluster.
    let epoch = one.register().await;
    eventually!(
        "broker 1 to catch up",
        (one.view("t", 0) == Some((2, vec![2, 3]))).then_some(())
    );
    eventually!(
        "broker 2 to see broker 1 back",
        two.image()
            .brokers
            .get(&1)
            .filter(|b| !b.fenced && b.broker_epoch == epoch)
    );

    // Controlled shutdown of broker 2 moves its leaderships to broker 3.
    let stale = node.controller.controlled_shutdown(2, 12345).await;
    assert_eq!(stale.unwrap_err().0, ResponseError::StaleBrokerEpoch);
    let remaining = node
        .controller
        .controlled_shutdown(2, two.metadata.broker_epoch())
        .await
        .unwrap();
    assert_eq!(remaining, 0);
    for p in [0, 1] {
        let (state, _) = read_state(&admin, "t", p).await.unwrap();
        assert_eq!((state.leader, state.isr), (3, vec![3]), "t/{p}");
    }
    // The answer came after the other brokers took the change: they route
    // around broker 2 already, and see it gone, so no leader adds it back
    // to an ISR while it still fetches.
    for broker in [&one, &three] {
        for p in [0, 1] {
            assert_eq!(broker.view("t", p), Some((3, vec![3])), "t/{p}");
        }
        assert!(broker.image().brokers[&2].fenced);
    }

    // Not the controller: refused.
    let other = start_node(&server, 200).await;
    eventually!(
        "node 200 to follow",
        (other.controller.active_controller_id() == Some(100)).then_some(())
    );
    let refused = other.controller.controlled_shutdown(3, -1).await;
    assert_eq!(refused.unwrap_err().0, ResponseError::NotController);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_grown_and_deleted_and_isr_changes_are_pushed() {
    let server = TestZk::start();
    let admin = server.client(CHROOT).await;
    let one = FakeBroker::start(&server, 1).await;
    let two = FakeBroker::start(&server, 2).await;
    let node = start_node(&server, 100).await;
    eventually!("node 100 to win", node.controller.is_active().then_some(()));
    eventually!(
        "broker 2 to get the cluster",
        two.metadata.is_caught_up().then_some(())
    );

    // A new topic gets its states, and the brokers hear of it.
    let id = create_topic(&admin, "t", &[(0, vec![1, 2]), (1, vec![2, 1])]).await;
    let (t0, _) = eventually!("t/0's state", read_state(&admin, "t", 0).await);
    assert_eq!((t0.leader, t0.isr, t0.leader_epoch), (1, vec![1, 2], 0));
    let (t1, _) = eventually!("t/1's state", read_state(&admin, "t", 1).await);
    assert_eq!((t1.leader, t1.isr), (2, vec![2, 1]));
    eventually!(
        "t/1 at broker 1",
        (one.view("t", 1) == Some((2, vec![2, 1]))).then_some(())
    );
    assert_eq!(one.image().topic("t").unwrap().id, id);

    // CreatePartitions rewrites the assignment: the new partition gets a state.
    let (_, stat) = admin.get_data(&topic_path("t")).await.unwrap();
    let grown = BTreeMap::from([(0, vec![1, 2]), (1, vec![2, 1]), (2, vec![1, 2])]);
    admin
        .set_data(
            &topic_path("t"),
            &TopicZnode::new(id, &grown).encode(),
            Some(stat.version),
        )
        .await
        .unwrap();
    let (t2, _) = eventually!("t/2's state", read_state(&admin, "t", 2).await);
    assert_eq!((t2.leader, t2.isr), (1, vec![1, 2]));
    eventually!("t/2 at broker 2", two.view("t", 2));

    // The leader of t/0 shrinks its ISR and says so.
    let (_, version) = read_state(&admin, "t", 0).await.unwrap();
    admin
        .set_data(
            &partition_state_path("t", 0),
            &PartitionStateZnode::new(1, 1, 0, vec![1]).encode(),
            Some(version),
        )
        .await
        .unwrap();
    let notice = IsrChangeZnode::new(vec![IsrChangedPartition {
        topic: "t".into(),
        partition: 0,
    }]);
    admin
        .create(ISR_CHANGE_PREFIX, &notice.encode(), &sequential())
        .await
        .unwrap();
    eventually!(
        "t/0's ISR at broker 2",
        (two.view("t", 0) == Some((1, vec![1]))).then_some(())
    );
    assert_eq!(
        two.image().topic("t").unwrap().partitions[&0].partition_epoch,
        version + 1
    );
    eventually!(
        "the notification to go",
        admin
            .list_children(ISR_CHANGES)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    );

    // Deletion: StopReplica to every broker, then the znodes go.
    admin
        .create(
            &topic_config_path("t"),
            &ConfigZnode::default().encode(),
            &persistent(),
        )
        .await
        .unwrap();
    admin
        .create(&delete_topic_path("t"), &[], &persistent())
        .await
        .unwrap();
    eventually!(
        "t's znodes to go",
        (!exists(&admin, &topic_path("t")).await).then_some(())
    );
    assert!(!exists(&admin, &topic_config_path("t")).await);
    eventually!(
        "the marker to go",
        (!exists(&admin, &delete_topic_path("t")).await).then_some(())
    );
    for broker in [&one, &two] {
        eventually!(
            "t to leave the broker",
            broker.image().topic("t").is_none().then_some(())
        );
        assert!(
            broker.received().iter().any(|r| matches!(r,
            ControlRequest::StopReplica { topics, .. } if topics.iter().any(|t| t.topic_id == id)))
        );
    }

    // A marker for a topic that does not exist is just removed.
    admin
        .create(&delete_topic_path("ghost"), &[], &persistent())
        .await
        .unwrap();
    eventually!(
        "the ghost marker to go",
        (!exists(&admin, &delete_topic_path("ghost")).await).then_some(())
    );

    // The topic can be created again under its name, with a new id.
    let again = create_topic(&admin, "t", &[(0, vec![2])]).await;
    eventually!("t again at broker 1", one.view("t", 0));
    assert_eq!(one.image().topic("t").unwrap().id, again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_goes_back_to_preferred_replicas_in_sync() {
    let server = TestZk::start();
    let admin = server.client(CHROOT).await;
    let one = FakeBroker::start(&server, 1).await;
    let two = FakeBroker::start(&server, 2).await;
    // t/0: broker 2 leads, the preferred broker 1 is in sync again.
    // t/1: the preferred broker 2 leads already.
    // t/2: the preferred broker 1 is not in sync, so it must not lead.
    create_topic(
        &admin,
        "t",
        &[(0, vec![1, 2]), (1, vec![2, 1]), (2, vec![1, 2])],
    )
    .await;
    write_state(
        &admin,
        "t",
        0,
        PartitionStateZnode::new(1, 2, 3, vec![1, 2]),
    )
    .await;
    write_state(
        &admin,
        "t",
        1,
        PartitionStateZnode::new(1, 2, 0, vec![1, 2]),
    )
    .await;
    write_state(&admin, "t", 2, PartitionStateZnode::new(1, 2, 5, vec![2])).await;

    let node = start_node_with(&server, 100, |config| {
        config.leader_imbalance_check_interval = Duration::from_millis(200);
    })
    .await;
    let (t0, _) = eventually!(
        "t/0 to go back to broker 1",
        read_state(&admin, "t", 0)
            .await
            .filter(|(s, _)| s.leader == 1)
    );
    assert_eq!((t0.leader_epoch, t0.isr), (4, vec![1, 2]));
    for broker in [&one, &two] {
        eventually!(
            "the move to reach the broker",
            (broker.view("t", 0) == Some((1, vec![1, 2]))).then_some(())
        );
    }
    // Later checks change nothing else.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (t1, version) = read_state(&admin, "t", 1).await.unwrap();
    assert_eq!((t1.leader, t1.leader_epoch, version), (2, 0, 0));
    let (t2, version) = read_state(&admin, "t", 2).await.unwrap();
    assert_eq!((t2.leader, t2.leader_epoch, version), (2, 5, 0));
    let (_, version) = read_state(&admin, "t", 0).await.unwrap();
    assert_eq!(version, 1);

    // With auto.leader.rebalance.enable=false, leadership stays put.
    drop(node);
    write_state_again(
        &admin,
        "t",
        0,
        PartitionStateZnode::new(1, 2, 5, vec![1, 2]),
    )
    .await;
    let _node = start_node_with(&server, 200, |config| {
        config.auto_leader_rebalance = false;
        config.leader_imbalance_check_interval = Duration::from_millis(100);
    })
    .await;
    eventually!(
        "broker 1 to hear from node 200",
        one.received()
            .iter()
            .any(|r| r.header().is_some_and(|h| h.controller_id == 200))
            .then_some(())
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (t0, _) = read_state(&admin, "t", 0).await.unwrap();
    assert_eq!((t0.leader, t0.leader_epoch), (2, 5));
}

/// Overwrites a partition's state znode, whatever its version.
async fn write_state_again(
    admin: &zk::Client,
    topic: &str,
    partition: i32,
    state: PartitionStateZnode,
) {
    admin
        .set_data(
            &partition_state_path(topic, partition),
            &state.encode(),
            None,
        )
        .await
        .unwrap();
}
