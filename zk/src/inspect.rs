//! A read-only look at a ZooKeeper-mode cluster, for `sluice cluster status`:
//! who the controller is, its epoch, and each broker's registration. It
//! writes nothing (not even the persistent paths [`crate::connect`] creates),
//! so looking never changes what is looked at.

use std::time::Duration;

use zookeeper_client as zk;

use crate::znodes::{
    broker_path, decode_controller_epoch, BrokerZnode, ClusterIdZnode, ControllerZnode, BROKER_IDS,
    CLUSTER_ID, CONTROLLER, CONTROLLER_EPOCH,
};

/// What the ensemble holds about the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub cluster_id: Option<String>,
    /// The broker holding `/controller`, if any.
    pub controller: Option<i32>,
    /// `/controller_epoch`, if a controller was ever elected.
    pub controller_epoch: Option<i32>,
    /// Every `/brokers/ids/<id>`, by id.
    pub brokers: Vec<Registration>,
    /// Znodes that could not be parsed, with the reason (a broker's own
    /// is in its [`Registration`]).
    pub problems: Vec<String>,
}

/// One broker's `/brokers/ids/<id>`.
#[derive(Clone, Debug)]
pub struct Registration {
    pub broker_id: i32,
    /// The znode's creation zxid: the broker epoch.
    pub epoch: i64,
    /// `LISTENER://host:port` for each listener.
    pub endpoints: Vec<String>,
    /// Why the znode's data could not be read, if it could not.
    pub problem: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("connecting to ZooKeeper at {connect}: {source}")]
    Connect { connect: String, source: zk::Error },
    #[error("ZooKeeper at {connect} did not answer within {timeout:?}")]
    Timeout { connect: String, timeout: Duration },
    #[error("reading {path} from ZooKeeper: {source}")]
    Read { path: String, source: zk::Error },
}

/// Reads the cluster's state under `connect` (`host:port,...[/chroot]`),
/// giving up after `timeout`.
pub async fn read_cluster(connect: &str, timeout: Duration) -> Result<ClusterView, InspectError> {
    match tokio::time::timeout(timeout, read(connect, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(InspectError::Timeout {
            connect: connect.to_string(),
            timeout,
        }),
    }
}

async fn session(connect: &str, timeout: Duration) -> Result<zk::Client, InspectError> {
    zk::Client::connector()
        .with_session_timeout(timeout.max(Duration::from_secs(2)))
        .with_fail_eagerly()
        .connect(connect)
        .await
        .map_err(|source| InspectError::Connect {
            connect: connect.to_string(),
            source,
        })
}

/// Deletes `/controller`, so every broker races for it again and the
/// winner reloads the cluster: a controller move without killing a broker
/// (for benchmarks of the reload).
pub async fn delete_controller(connect: &str, timeout: Duration) -> Result<(), InspectError> {
    let client = session(connect, timeout).await?;
    match tokio::time::timeout(timeout, client.delete(CONTROLLER, None)).await {
        Ok(Ok(())) | Ok(Err(zk::Error::NoNode)) => Ok(()),
        Ok(Err(source)) => Err(InspectError::Read {
            path: CONTROLLER.to_string(),
            source,
        }),
        Err(_) => Err(InspectError::Timeout {
            connect: connect.to_string(),
            timeout,
        }),
    }
}

/// Waits, on a watch of `/controller` rather than by polling (so it
/// hardly adds to ZooKeeper's load while it is measured), until a broker
/// other than `old` holds `/controller`; returns it and the controller
/// epoch then.
pub async fn wait_for_new_controller(
    connect: &str,
    old: i32,
    timeout: Duration,
) -> Result<(i32, i32), InspectError> {
    let timed_out = || InspectError::Timeout {
        connect: connect.to_string(),
        timeout,
    };
    let wait = async {
        let client = session(connect, timeout).await?;
        loop {
            let read = |source| InspectError::Read {
                path: CONTROLLER.to_string(),
                source,
            };
            let watcher = match client.get_and_watch_data(CONTROLLER).await {
                Ok((data, _, watcher)) => {
                    let holder = ControllerZnode::decode(CONTROLLER, &data)
                        .map(|z| z.brokerid)
                        .ok();
                    if let Some(holder) = holder.filter(|&h| h != old) {
                        let epoch = get(&client, CONTROLLER_EPOCH)
                            .await?
                            .and_then(|(data, _)| decode_controller_epoch(&data).ok())
                            .unwrap_or(0);
                        return Ok((holder, epoch));
                    }
                    watcher
                }
                Err(zk::Error::NoNode) => match client.check_and_watch_stat(CONTROLLER).await {
                    // Created in between: read it now, its watch would
                    // wait for the next change.
                    Ok((Some(_), _)) => continue,
                    Ok((None, watcher)) => watcher,
                    Err(source) => return Err(read(source)),
                },
                Err(source) => return Err(read(source)),
            };
            watcher.changed().await;
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| timed_out())?
}

async fn read(connect: &str, timeout: Duration) -> Result<ClusterView, InspectError> {
    let client = session(connect, timeout).await?;
    let mut view = ClusterView::default();
    if let Some((data, _)) = get(&client, CLUSTER_ID).await? {
        match ClusterIdZnode::decode(&data) {
            Ok(znode) => view.cluster_id = Some(znode.id),
            Err(e) => view.problems.push(e.to_string()),
        }
    }
    if let Some((data, _)) = get(&client, CONTROLLER).await? {
        match ControllerZnode::decode(CONTROLLER, &data) {
            Ok(znode) => view.controller = Some(znode.brokerid),
            Err(e) => view.problems.push(e.to_string()),
        }
    }
    if let Some((data, _)) = get(&client, CONTROLLER_EPOCH).await? {
        match decode_controller_epoch(&data) {
            Ok(epoch) => view.controller_epoch = Some(epoch),
            Err(e) => view.problems.push(e.to_string()),
        }
    }
    let ids = match client.list_children(BROKER_IDS).await {
        Ok(ids) => ids,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(source) => {
            return Err(InspectError::Read {
                path: BROKER_IDS.to_string(),
                source,
            })
        }
    };
    for id in ids {
        let Ok(broker_id) = id.parse::<i32>() else {
            view.problems
                .push(format!("{BROKER_IDS}/{id}: not a broker id"));
            continue;
        };
        let path = broker_path(broker_id);
        // Gone between the listing and the read: the broker just left.
        let Some((data, stat)) = get(&client, &path).await? else {
            continue;
        };
        let (endpoints, problem) = match BrokerZnode::decode(&path, &data) {
            Ok(znode) => (znode.endpoints, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        view.brokers.push(Registration {
            broker_id,
            epoch: stat.czxid,
            endpoints,
            problem,
        });
    }
    view.brokers.sort_by_key(|b| b.broker_id);
    Ok(view)
}

/// A znode's data and stat; `None` when it does not exist.
async fn get(client: &zk::Client, path: &str) -> Result<Option<(Vec<u8>, zk::Stat)>, InspectError> {
    match client.get_data(path).await {
        Ok(found) => Ok(Some(found)),
        Err(zk::Error::NoNode) => Ok(None),
        Err(source) => Err(InspectError::Read {
            path: path.to_string(),
            source,
        }),
    }
}
