//! A broker whose metadata stays behind the log (it follows a voter cut
//! off from the quorum, say) is fenced once it has been behind for longer
//! than its session, though it heartbeats; it is unfenced once it has
//! caught up again.

use std::time::Duration;

use sluice_controller::{Controller, ControllerConfig, TopicDefaults};
use sluice_metadata::controller_api::{
    BrokerHeartbeat, BrokerRegistrationRequest, ControllerApi, HeartbeatReply, NewTopic,
};
use sluice_metadata::{Endpoint, Uuid};

const SESSION: Duration = Duration::from_millis(1500);

async fn heartbeat(controller: &Controller, epoch: i64, offset: u64) -> HeartbeatReply {
    controller
        .broker_heartbeat(BrokerHeartbeat {
            broker_id: 1,
            broker_epoch: epoch,
            metadata_offset: offset,
            want_fence: false,
            want_shutdown: false,
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_metadata_stays_behind_is_fenced_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ControllerConfig::standalone(
        1,
        dir.path().to_path_buf(),
        TopicDefaults {
            num_partitions: 1,
            replication_factor: 1,
        },
    );
    config.broker_session_timeout = SESSION;
    let controller = Controller::start(config, Vec::new()).unwrap();
    controller
        .wait_ready(Duration::from_secs(30))
        .await
        .unwrap();
    let epoch = controller
        .register_broker(BrokerRegistrationRequest {
            broker_id: 1,
            incarnation_id: Uuid::new_v4(),
            endpoints: vec![Endpoint {
                listener: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            rack: None,
        })
        .await
        .unwrap();
    let reply = heartbeat(&controller, epoch, controller.image().offset).await;
    assert!(!reply.is_fenced && reply.is_caught_up, "{reply:?}");

    // The log moves on; the broker keeps heartbeating (its session never
    // expires) but its metadata stays where it was.
    let stale = controller.image().offset;
    let created = controller
        .create_topics(
            vec![NewTopic {
                name: "after".into(),
                num_partitions: -1,
                replication_factor: -1,
                ..NewTopic::default()
            }],
            false,
        )
        .await;
    created[0].as_ref().unwrap();
    assert!(controller.image().offset > stale);
    let deadline = tokio::time::Instant::now() + SESSION * 4;
    let reply = loop {
        let reply = heartbeat(&controller, epoch, stale).await;
        if reply.is_fenced || tokio::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reply.is_fenced && !reply.is_caught_up,
        "a broker behind the log for {:?} is still unfenced: {reply:?}",
        SESSION * 4
    );
    assert!(controller.image().brokers[&1].fenced);

    // Caught up again, it is unfenced.
    let reply = heartbeat(&controller, epoch, controller.image().offset).await;
    assert!(!reply.is_fenced && reply.is_caught_up, "{reply:?}");
    assert!(!controller.image().brokers[&1].fenced);
    controller.shutdown().await;
}
