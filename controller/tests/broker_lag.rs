//! A broker whose metadata stays behind the log (it follows a voter cut
//! off from the quorum, say) is fenced once it has been behind, not
//! moving, for longer than its session, though it heartbeats; it is
//! unfenced once it has caught up again. One that is behind but applying
//! is left alone, and so is one that has received everything and is
//! still applying a long entry.

use std::time::Duration;

mod common;

use common::{register, standalone_controller};
use sluice_controller::Controller;
use sluice_metadata::controller_api::{BrokerHeartbeat, ControllerApi, HeartbeatReply, NewTopic};

const SESSION: Duration = Duration::from_millis(1500);

async fn heartbeat(controller: &Controller, epoch: i64, offset: u64) -> HeartbeatReply {
    heartbeat_replayed(controller, epoch, offset, 0).await
}

/// A heartbeat from a broker that has applied `applied` and received and
/// replayed `replayed`.
async fn heartbeat_replayed(
    controller: &Controller,
    epoch: i64,
    applied: u64,
    replayed: u64,
) -> HeartbeatReply {
    controller
        .broker_heartbeat(BrokerHeartbeat {
            broker_id: 1,
            broker_epoch: epoch,
            metadata_offset: applied,
            metadata_replayed_offset: replayed,
            want_fence: false,
            want_shutdown: false,
        })
        .await
        .unwrap()
}

/// Creates a one-partition topic: the log moves on.
async fn create_topic(controller: &Controller, name: &str) {
    let created = controller
        .create_topics(
            vec![NewTopic {
                name: name.into(),
                num_partitions: -1,
                replication_factor: -1,
                ..NewTopic::default()
            }],
            false,
        )
        .await;
    created[0].as_ref().unwrap();
}

/// Heartbeats at `offset` every 100 ms until the broker is fenced, or four
/// sessions have passed; the last reply.
async fn heartbeat_until_fenced(
    controller: &Controller,
    epoch: i64,
    offset: u64,
) -> HeartbeatReply {
    heartbeat_replayed_until_fenced(controller, epoch, offset, 0).await
}

/// [`heartbeat_until_fenced`] from a broker that has applied `applied` and
/// received `replayed`.
async fn heartbeat_replayed_until_fenced(
    controller: &Controller,
    epoch: i64,
    applied: u64,
    replayed: u64,
) -> HeartbeatReply {
    let deadline = tokio::time::Instant::now() + SESSION * 4;
    loop {
        let reply = heartbeat_replayed(controller, epoch, applied, replayed).await;
        if reply.is_fenced || tokio::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    create_topic(&controller, "after").await;
    assert!(controller.image().offset > stale);
    let reply = heartbeat_until_fenced(&controller, epoch, stale).await;
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

/// A broker far behind after a burst of changes, but applying them (its
/// reported offset keeps moving), is not fenced however long it stays
/// behind; once it stops moving, it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_behind_but_applying_is_not_fenced_until_it_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let controller = standalone_controller(dir.path(), 1, |config| {
        config.broker_session_timeout = SESSION;
    })
    .await;
    let epoch = register(&controller, 1).await;
    let start = controller.image().offset;
    assert!(!heartbeat(&controller, epoch, start).await.is_fenced);

    // A burst: the log moves well ahead of the broker.
    for i in 0..12 {
        create_topic(&controller, &format!("burst-{i}")).await;
    }
    let end = controller.image().offset;
    assert!(end >= start + 12, "{start}..{end}");

    // The broker applies one entry every 2/3 of a session: behind for four
    // sessions and more, yet moving all along.
    let mut reported = start;
    let behind_until = tokio::time::Instant::now() + SESSION * 4;
    while tokio::time::Instant::now() < behind_until {
        reported += 1;
        assert!(reported < end);
        let reply = heartbeat(&controller, epoch, reported).await;
        assert!(
            !reply.is_fenced,
            "fenced while applying (at {reported} of {end}): {reply:?}"
        );
        tokio::time::sleep(SESSION * 2 / 3).await;
    }

    // It stops moving: fenced within a little over a session.
    let reply = heartbeat_until_fenced(&controller, epoch, reported).await;
    assert!(reply.is_fenced, "stalled but still unfenced: {reply:?}");

    // Caught up, it is unfenced.
    let reply = heartbeat(&controller, epoch, controller.image().offset).await;
    assert!(!reply.is_fenced && reply.is_caught_up, "{reply:?}");
    controller.shutdown().await;
}

/// A broker that has received the log's newest entry but takes longer than
/// a session to apply it (leaderships over 100,000 partitions) is busy, not
/// stuck: it stays unfenced. The same broker without the newest entry is
/// fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_applying_a_long_entry_it_has_received_is_not_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let controller = standalone_controller(dir.path(), 1, |config| {
        config.broker_session_timeout = SESSION;
    })
    .await;
    let epoch = register(&controller, 1).await;
    let applied = controller.image().offset;
    assert!(!heartbeat(&controller, epoch, applied).await.is_fenced);

    create_topic(&controller, "long-to-apply").await;
    let end = controller.image().offset;
    let until = tokio::time::Instant::now() + SESSION * 4;
    while tokio::time::Instant::now() < until {
        let reply = heartbeat_replayed(&controller, epoch, applied, end).await;
        assert!(
            !reply.is_fenced,
            "fenced while applying an entry it has received: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without it, the same broker is behind a stale source: fenced.
    create_topic(&controller, "not-received").await;
    let reply = heartbeat_replayed_until_fenced(&controller, epoch, applied, end).await;
    assert!(
        reply.is_fenced,
        "stuck behind the log but unfenced: {reply:?}"
    );
    controller.shutdown().await;
}
