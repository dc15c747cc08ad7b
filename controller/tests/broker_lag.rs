//! A broker whose metadata stays behind the log (it follows a voter cut
//! off from the quorum, say) is fenced once it has been behind for longer
//! than its session, though it heartbeats; it is unfenced once it has
//! caught up again.

use std::time::Duration;

mod common;

use common::{register, standalone_controller};
use sluice_controller::Controller;
use sluice_metadata::controller_api::{BrokerHeartbeat, ControllerApi, HeartbeatReply, NewTopic};

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
    let controller = standalone_controller(dir.path(), 1, |config| {
        config.broker_session_timeout = SESSION;
    })
    .await;
    let epoch = register(&controller, 1).await;
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
