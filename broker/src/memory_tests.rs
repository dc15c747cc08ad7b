//! The memory pool (`queued.max.request.bytes`) and `fetch.max.bytes` bound
//! what requests and fetch responses in flight hold, on a broker serving
//! real connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use sluice_metadata::{MetadataRecord, TopicRecord, Uuid};
use sluice_storage::batch::BatchBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::handlers::fetch;
use crate::replication_tests::{partition_record, produce_batches, two_brokers_with, TOPIC};
use crate::test_alloc;
use crate::KafkaClient;

const MIB: usize = 1 << 20;

/// A whole Produce v9 frame (size prefix included) carrying `records`.
fn produce_frame(records: Bytes) -> Bytes {
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("no-such-topic")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("memory-test")));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, ApiKey::Produce.request_header_version(9))
        .unwrap();
    request.encode(&mut buf, 9).unwrap();
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.freeze()
}

/// Many clients send large requests at once: the broker reads no more of
/// them than `queued.max.request.bytes` allows, answers every one, and
/// still answers new connections afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_large_requests_stay_within_the_memory_pool() {
    const POOL: usize = 16 * MIB;
    const CLIENTS: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, _controller, nodes) = two_brokers_with(dir.path(), |config| {
        config.queued_max_request_bytes = POOL as i64;
    })
    .await;
    let address = nodes[0].address;
    // One 8 MiB frame, shared by every client.
    let frame = produce_frame(Bytes::from(vec![0u8; 8 * MIB]));

    let baseline = test_alloc::live();
    test_alloc::reset_peak();
    let (go, go_rx) = watch::channel(false);
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let frame = frame.clone();
        let mut go = go_rx.clone();
        let sent = sent.clone();
        clients.push(tokio::spawn(async move {
            let mut socket = TcpStream::connect(address).await.unwrap();
            // All but the last byte: the request stays in flight.
            socket.write_all(&frame[..frame.len() - 1]).await.unwrap();
            sent.fetch_add(1, Ordering::SeqCst);
            go.wait_for(|go| *go).await.unwrap();
            socket.write_all(&frame[frame.len() - 1..]).await.unwrap();
            let size = socket.read_i32().await.unwrap();
            let mut body = vec![0u8; size as usize];
            socket.read_exact(&mut body).await.unwrap();
            let mut body = Bytes::from(body);
            let header =
                ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(9))
                    .unwrap();
            assert_eq!(header.correlation_id, 7);
            let response = ProduceResponse::decode(&mut body, 9).unwrap();
            response.responses[0].partition_responses[0].error_code
        }));
    }
    // Without a bound every request is read at once; with one, most writes
    // wait for the broker to read them. Either way, go on after a while:
    // what is checked below does not depend on how long this took.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while sent.load(Ordering::SeqCst) < CLIENTS && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    go.send_replace(true);
    for client in clients {
        assert_eq!(
            client.await.unwrap(),
            ResponseError::UnknownTopicOrPartition.code(),
            "every request is answered"
        );
    }
    let peak = test_alloc::peak().saturating_sub(baseline);
    assert!(
        nodes[0].broker.memory.peak() <= POOL,
        "the pool lent {} bytes",
        nodes[0].broker.memory.peak()
    );
    // The pool, plus what decoding and other tests of this binary hold.
    assert!(
        peak < POOL + 48 * MIB,
        "{CLIENTS} requests of 8 MiB held {} MiB at once with a pool of {} MiB",
        peak / MIB,
        POOL / MIB
    );
    // The node still answers.
    let mut client = KafkaClient::connect(&address.to_string(), "test")
        .await
        .unwrap();
    assert_eq!(
        fetch_bytes(&mut client, 0).await.0,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

/// A fetch of the test partition from `offset` asking for up to 50 MiB,
/// answered at once.
fn fetch_request(offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(50 * MIB as i32)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(50 * MIB as i32)])])
}

/// (error code, record bytes) of the first partition of a fetch response.
fn fetched(response: &FetchResponse) -> (i16, usize) {
    let p = &response.responses[0].partitions[0];
    (p.error_code, p.records.as_ref().map_or(0, Bytes::len))
}

/// [`fetch_request`] sent over a connection.
async fn fetch_bytes(client: &mut KafkaClient, offset: i64) -> (i16, usize) {
    fetched(
        &client
            .send_version(fetch_request(offset), 12)
            .await
            .unwrap(),
    )
}

/// A fetch carries at most `fetch.max.bytes` whatever the client asks, and
/// no more than the memory pool lends: nothing while it is used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_is_bounded_by_fetch_max_bytes_and_the_memory_pool() {
    const POOL: usize = 4 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _controller, nodes) = two_brokers_with(dir.path(), |config| {
        config.queued_max_request_bytes = POOL as i64;
        config.fetch_max_bytes = MIB as i32;
    })
    .await;
    let topic_id = Uuid::new_v4();
    cluster.lock().unwrap().commit(&[
        MetadataRecord::Topic(TopicRecord {
            name: TOPIC.into(),
            topic_id,
        }),
        partition_record(topic_id, 0, 1, 0, vec![1], 0),
    ]);
    // 3 MiB of committed records, in batches of 100 KiB.
    let value = vec![b'v'; 100 << 10];
    for i in 0..30 {
        let batch = Bytes::from(
            BatchBuilder::new(1_000)
                .record(1_000, None, Some(&value))
                .build(),
        );
        assert_eq!(
            produce_batches(nodes[0].address, 1, &[(0, batch)]).await,
            vec![(0, i)]
        );
    }
    assert_eq!(nodes[0].log().1, 30);

    let mut client = KafkaClient::connect(&nodes[0].address.to_string(), "test")
        .await
        .unwrap();
    let (error, bytes) = fetch_bytes(&mut client, 0).await;
    assert_eq!(error, 0);
    assert!(
        bytes > 0 && bytes <= MIB,
        "asked for 50 MiB with fetch.max.bytes=1 MiB, got {bytes} bytes"
    );

    // While the pool is lent out, a fetch carries no records (and no error:
    // the client simply fetches again). A connection would not even get its
    // request read then, so the handler is called directly.
    let broker = &nodes[0].broker;
    let held = broker.memory.acquire(POOL).await;
    let (response, lease) = fetch::fetch(broker, fetch_request(0), 12).await;
    assert_eq!((fetched(&response), lease.bytes()), ((0, 0), 0));
    drop(held);
    let (response, lease) = fetch::fetch(broker, fetch_request(0), 12).await;
    let (error, bytes) = fetched(&response);
    assert_eq!(error, 0);
    assert!(bytes > 0 && bytes <= MIB);
    assert_eq!(
        lease.bytes(),
        bytes,
        "the lease covers the records it carries"
    );
    assert!(nodes[0].broker.memory.peak() <= POOL);
}
