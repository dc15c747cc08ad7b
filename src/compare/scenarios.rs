//! The scenarios, each timed from the fault or request until a client sees
//! it over: every function returns (metric, milliseconds) pairs.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sluice_report::Mode;

use super::bed::{Bed, CONTROLLER_BROKER};
use crate::commit_bench::{self, CommitBenchArgs};

/// The offset-commit scenario: groups committing at once, each for every
/// partition of one topic.
const COMMIT_GROUPS: usize = 8;
const COMMIT_PARTITIONS: u32 = 16;

/// How long any one wait may take before the scenario fails.
const LIMIT: Duration = Duration::from_secs(900);

/// What a new controller logs once it holds the cluster's state: a
/// ZooKeeper-mode controller after reading everything back, a KRaft one
/// after its first committed write of the term.
fn loaded_marker(mode: Mode) -> &'static str {
    match mode {
        Mode::Zk => "controller reloaded the cluster from ZooKeeper",
        Mode::Kraft => "active controller ready",
    }
}

/// A scenario's times (metric, ms), and the node it left stopped.
pub struct Outcome {
    pub times: Vec<(String, f64)>,
    pub stopped: Option<u16>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Topic creation: every partition created, in topics of 100, until every
/// broker answers Metadata with a leader for each.
pub async fn create(bed: &mut Bed, partitions: u32) -> Result<Outcome> {
    let started = Instant::now();
    bed.create_partitions(partitions).await?;
    let created = ms(started);
    let everyone = bed.brokers_but(None);
    bed.wait_for_leaders(&everyone, &bed.all_partitions(), None, LIMIT)
        .await?;
    Ok(Outcome {
        times: vec![
            ("requests answered".into(), created),
            ("leaders on every broker".into(), ms(started)),
        ],
        stopped: None,
    })
}

/// Start-up: the whole cluster stopped and started again from disk, until
/// every partition has a leader that acknowledges a write.
pub async fn restart(bed: &mut Bed) -> Result<Outcome> {
    bed.cluster.stop_all();
    let started = Instant::now();
    bed.cluster.relaunch(&[])?;
    bed.cluster.wait_serving(LIMIT).await?;
    let serving = ms(started);
    super::probe::write_each(&bed.bootstrap(), bed.all_partitions(), LIMIT).await?;
    let writable = ms(started);
    Ok(Outcome {
        times: vec![
            ("every node serving".into(), serving),
            ("every partition takes a write".into(), writable),
        ],
        stopped: None,
    })
}

/// Controller failover: kill -9 of the active controller (in ZooKeeper
/// mode a broker that leads no partitions). Times until a new one is in
/// charge, until it holds the cluster's state, and until a topic created
/// after the kill shows on every broker.
pub async fn controller_failover(bed: &mut Bed, probe: &str) -> Result<Outcome> {
    let (old, old_epoch) = bed.active_controller().await?;
    if bed.mode == Mode::Zk && old != CONTROLLER_BROKER {
        bail!("broker {old} is the controller, not the partition-less broker {CONTROLLER_BROKER}");
    }
    let marker = loaded_marker(bed.mode);
    let before = bed.log_lines(marker);
    // The voters left, asked who leads (KRaft mode).
    let survivors: Vec<String> = bed
        .cluster
        .controller_addresses()
        .into_iter()
        .filter(|(id, _)| *id != old)
        .map(|(_, address)| address)
        .collect();
    let killed = Instant::now();
    bed.cluster.kill9(old)?;

    let bed_ref = &*bed;
    let elected = async {
        if bed_ref.mode == Mode::Zk {
            // A watch, not polling: the wait adds nothing to the ZooKeeper
            // work this scenario is costed by.
            let connect = bed_ref.zookeeper_connect()?;
            let (_, epoch) =
                sluice_zk::inspect::wait_for_new_controller(&connect, old as i32, LIMIT).await?;
            if (epoch as i64) <= old_epoch {
                bail!("the new controller's epoch {epoch} is not above {old_epoch}");
            }
            return Ok(ms(killed));
        }
        loop {
            if let Some((id, epoch)) = bed_ref.quorum_leader(&survivors).await {
                if id != old && epoch > old_epoch {
                    return Ok::<f64, anyhow::Error>(ms(killed));
                }
            }
            if killed.elapsed() > LIMIT {
                bail!("no new controller within {LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let loaded = async {
        loop {
            let now = bed_ref.log_lines(marker);
            let fresh = now
                .iter()
                .any(|(id, count)| *id != old && *count > before.get(id).copied().unwrap_or(0));
            if fresh {
                return Ok::<f64, anyhow::Error>(ms(killed));
            }
            if killed.elapsed() > LIMIT {
                bail!("no new controller logged {marker:?} within {LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let visible = async {
        bed_ref.create_probe_topic(probe, LIMIT).await?;
        let probe_partition = vec![(probe.to_string(), 0)];
        bed_ref
            .wait_for_leaders(
                &bed_ref.brokers_but(Some(old)),
                &probe_partition,
                None,
                LIMIT,
            )
            .await?;
        Ok::<f64, anyhow::Error>(ms(killed))
    };
    let (elected, loaded, visible) = tokio::try_join!(elected, loaded, visible)?;
    Ok(Outcome {
        times: vec![
            ("new controller in charge".into(), elected),
            ("cluster state loaded".into(), loaded),
            ("new topic on every broker".into(), visible),
        ],
        stopped: Some(old),
    })
}

/// Broker failure: kill -9 of the data broker leading the most partitions,
/// until each of them has a new leader on every surviving broker and that
/// leader acknowledges a write.
pub async fn broker_failure(bed: &mut Bed) -> Result<Outcome> {
    let victim = busiest_broker(bed).await?;
    let led = bed.led_by(victim).await?;
    let survivors = bed.brokers_but(Some(victim));
    let killed = Instant::now();
    bed.cluster.kill9(victim)?;
    bed.wait_for_leaders(&survivors, &led, Some(victim as i32), LIMIT)
        .await?;
    let moved = ms(killed);
    super::probe::write_each(&survivors.join(","), led, LIMIT).await?;
    let writable = ms(killed);
    Ok(Outcome {
        times: vec![
            ("new leaders on every broker".into(), moved),
            ("its partitions take writes".into(), writable),
        ],
        stopped: Some(victim),
    })
}

/// Controlled shutdown: SIGTERM to the data broker leading the most
/// partitions, until the other brokers show new leaders for all of them
/// (the part the coordination does), and until it has exited (after
/// closing its logs, the same work in both modes).
pub async fn controlled_shutdown(bed: &mut Bed) -> Result<Outcome> {
    let broker = busiest_broker(bed).await?;
    let led = bed.led_by(broker).await?;
    let survivors = bed.brokers_but(Some(broker));
    let started = Instant::now();
    bed.cluster.terminate_node(broker)?;
    bed.wait_for_leaders(&survivors, &led, Some(broker as i32), LIMIT)
        .await?;
    let handed_off = ms(started);
    bed.cluster.wait_node_exit(broker)?;
    let exited = ms(started);
    Ok(Outcome {
        times: vec![
            ("leaderships handed off".into(), handed_off),
            ("leaderships handed off, exited".into(), exited),
        ],
        stopped: Some(broker),
    })
}

/// Brings back the node a scenario stopped, and the placement: the
/// controller on its broker (ZooKeeper mode) and every partition led by its
/// preferred replica.
pub async fn recover(bed: &mut Bed, stopped: Option<u16>) -> Result<()> {
    if let Some(id) = stopped {
        bed.cluster.restart(id)?;
        bed.cluster.wait_serving_node(id, LIMIT).await?;
    }
    bed.claim_controller().await?;
    bed.wait_balanced(LIMIT).await
}

/// Offset commits through each mode's store (`bench commits`): committed
/// offsets per second, and the p99 of a synchronous commit.
pub async fn commits(bed: &Bed, seconds: u64) -> Result<Vec<(String, f64, &'static str)>> {
    // Its topic is on the data brokers too, so the controller broker of
    // ZooKeeper mode still hosts nothing.
    let topic = "commit-bench";
    bed.create_topic_on_data_brokers(topic, COMMIT_PARTITIONS)
        .await?;
    let args = CommitBenchArgs::for_topic(
        &bed.bootstrap(),
        topic,
        COMMIT_PARTITIONS as i32,
        COMMIT_GROUPS,
        seconds,
    );
    let figures = commit_bench::measure(&args).await?;
    Ok(vec![
        (
            "committed offsets per second".into(),
            figures.commits.offsets_per_sec(),
            "offsets/s",
        ),
        ("commit p99".into(), figures.commits.percentile(0.99), "ms"),
    ])
}

async fn busiest_broker(bed: &Bed) -> Result<u16> {
    let mut best = (0, 0);
    for id in bed.data_brokers() {
        let led = bed.led_by(id).await?.len();
        if led > best.1 {
            best = (id, led);
        }
    }
    if best.1 == 0 {
        bail!("no data broker leads a partition");
    }
    Ok(best.0)
}
