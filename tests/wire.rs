//! Requests built by hand with the Kafka codecs, for behaviour the client
//! libraries hide: idempotent-producer sequence errors and duplicates,
//! fetch long polling and size limits.

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::Server;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse,
    OffsetForLeaderEpochRequest, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use sluice_storage::batch::BatchBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Wire {
    stream: TcpStream,
    correlation_id: i32,
}

impl Wire {
    async fn connect(server: &Server) -> Self {
        Self {
            stream: TcpStream::connect(server.bootstrap())
                .await
                .expect("connect"),
            correlation_id: 0,
        }
    }

    async fn send<R: Request>(&mut self, request: R, version: i16) -> R::Response {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("wire-test")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, R::header_version(version)).unwrap();
        request.encode(&mut buf, version).unwrap();
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf).await.unwrap();
        let size = self.stream.read_i32().await.expect("response size");
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body).await.unwrap();
        let mut body = Bytes::from(body);
        let key = ApiKey::try_from(R::KEY).unwrap();
        let header =
            ResponseHeader::decode(&mut body, key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, self.correlation_id);
        R::Response::decode(&mut body, version).unwrap()
    }
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn produce_request(topic_name: &str, records: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_transactional_id(None)
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic(topic_name))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])])
}

/// (error code, base offset) of the single partition answered.
fn produce_result(response: &ProduceResponse) -> (i16, i64) {
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn batch(producer_id: i64, epoch: i16, sequence: i32, count: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(1_700_000_000_000).producer(producer_id, epoch, sequence);
    for i in 0..count {
        b = b.record(
            1_700_000_000_000,
            None,
            Some(format!("v{sequence}-{i}").as_bytes()),
        );
    }
    b.build()
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_sequences_duplicates_and_gaps() {
    let server = Server::start();
    assert!(server
        .cli(&["create", "seq", "--partitions", "1"])
        .status
        .success());
    let mut wire = Wire::connect(&server).await;
    let init: InitProducerIdResponse = wire
        .send(
            InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000),
            4,
        )
        .await;
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert!(pid >= 0);

    // Sequences 0..3 then 3..5: offsets 0 and 3.
    assert_eq!(
        produce_result(
            &wire
                .send(produce_request("seq", batch(pid, epoch, 0, 3)), 9)
                .await
        ),
        (0, 0)
    );
    assert_eq!(
        produce_result(
            &wire
                .send(produce_request("seq", batch(pid, epoch, 3, 2)), 9)
                .await
        ),
        (0, 3)
    );
    // A retry of the first batch is answered with its original offset and not written again.
    assert_eq!(
        produce_result(
            &wire
                .send(produce_request("seq", batch(pid, epoch, 0, 3)), 9)
                .await
        ),
        (0, 0)
    );
    // A gap in the sequence: OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    assert_eq!(
        produce_result(
            &wire
                .send(produce_request("seq", batch(pid, epoch, 9, 1)), 9)
                .await
        )
        .0,
        45
    );
    // An older epoch than the partition has seen: INVALID_PRODUCER_EPOCH (47).
    let bumped = epoch + 1;
    assert_eq!(
        produce_result(
            &wire
                .send(produce_request("seq", batch(pid, bumped, 0, 1)), 9)
                .await
        ),
        (0, 5)
    );
    assert_eq!(
        produce_result(
            &wire
                .send(produce_request("seq", batch(pid, epoch, 5, 1)), 9)
                .await
        )
        .0,
        47
    );
    // A corrupted batch: CORRUPT_MESSAGE (2), and nothing is written.
    let mut corrupt = batch(pid, bumped, 1, 1);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        produce_result(&wire.send(produce_request("seq", corrupt), 9).await).0,
        2
    );

    // Exactly 6 records are in the log.
    let fetched = fetch(&mut wire, "seq", 0, 1, 0, 1 << 20).await;
    let p = &fetched.responses[0].partitions[0];
    assert_eq!(p.high_watermark, 6);

    // OffsetForLeaderEpoch: epoch 0 (the only one) ends at the log end;
    // a current epoch newer than the leader's is UNKNOWN_LEADER_EPOCH (75).
    let ask = |current: i32| {
        OffsetForLeaderEpochRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(topic("seq"))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(current)
                    .with_leader_epoch(0)])])
    };
    let answer = wire.send(ask(0), 4).await;
    let e = &answer.topics[0].partitions[0];
    assert_eq!((e.error_code, e.leader_epoch, e.end_offset), (0, 0, 6));
    let answer = wire.send(ask(7), 4).await;
    assert_eq!(answer.topics[0].partitions[0].error_code, 75);
}

async fn fetch(
    wire: &mut Wire,
    topic_name: &str,
    offset: i64,
    min_bytes: i32,
    max_wait_ms: i32,
    partition_max: i32,
) -> FetchResponse {
    wire.send(
        FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(50 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic(topic_name))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(partition_max)
                    .with_current_leader_epoch(-1)])]),
        11,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_long_polls_and_serves_whole_batches() {
    let server = Server::start();
    assert!(server
        .cli(&["create", "poll", "--partitions", "1"])
        .status
        .success());
    let mut reader = Wire::connect(&server).await;

    // Nothing to read: the fetch waits out max_wait_ms.
    let started = Instant::now();
    let empty = fetch(&mut reader, "poll", 0, 1, 600, 1 << 20).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "returned after {:?}",
        started.elapsed()
    );
    assert_eq!(
        empty.responses[0].partitions[0]
            .records
            .as_ref()
            .map_or(0, |r| r.len()),
        0
    );

    // A waiting fetch returns as soon as a batch arrives.
    let mut producer = Wire::connect(&server).await;
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let r = fetch(&mut reader, "poll", 0, 1, 10_000, 1 << 20).await;
        (started.elapsed(), r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let big = {
        let mut b = BatchBuilder::new(1_700_000_000_000);
        for i in 0..100 {
            b = b.record(
                1_700_000_000_000,
                None,
                Some(format!("{i:0>100}").as_bytes()),
            );
        }
        b.build()
    };
    let response = producer
        .send(produce_request("poll", big.clone()).with_acks(1), 9)
        .await;
    assert_eq!(produce_result(&response), (0, 0));
    let (waited, got) = waiting.await.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "the waiting fetch took {waited:?}"
    );
    assert_eq!(
        got.responses[0].partitions[0]
            .records
            .as_ref()
            .map(|r| r.len()),
        Some(big.len())
    );

    // A partition limit smaller than the first batch still returns it whole.
    let mut reader = Wire::connect(&server).await;
    let small = fetch(&mut reader, "poll", 0, 1, 0, 100).await;
    let records = small.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    assert_eq!(
        records.len(),
        big.len(),
        "one whole batch despite partition_max_bytes=100"
    );
    // Reading from inside the batch also starts at the batch.
    let middle = fetch(&mut reader, "poll", 50, 1, 0, 1 << 20).await;
    assert_eq!(
        middle.responses[0].partitions[0]
            .records
            .as_ref()
            .map(|r| r.len()),
        Some(big.len())
    );
    // Past the end: OFFSET_OUT_OF_RANGE (1).
    let past = fetch(&mut reader, "poll", 1000, 1, 0, 1 << 20).await;
    assert_eq!(past.responses[0].partitions[0].error_code, 1);
}
