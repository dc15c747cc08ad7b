//! The race for `/controller`, and the controller epoch that comes with it.

use tracing::{info, warn};
use zookeeper_client as zk;

use crate::connect::{ephemeral, persistent};
use crate::znodes::{
    decode_controller_epoch, encode_controller_epoch, now_ms, ControllerZnode, CONTROLLER,
    CONTROLLER_EPOCH,
};

pub(super) enum Elected {
    /// This node holds `/controller` under `epoch`; `epoch_version` is the
    /// data version of `/controller_epoch` every write checks.
    Won { epoch: i32, epoch_version: i32 },
    /// Another node holds it; `watcher` fires when `/controller` changes.
    Lost {
        controller_id: Option<i32>,
        watcher: zk::OneshotWatcher,
    },
}

/// The current controller epoch and its znode's version; creates the znode
/// (epoch 0, so the first controller is epoch 1) when missing.
async fn read_epoch(client: &zk::Client) -> Result<(i32, i32), zk::Error> {
    loop {
        match client.get_data(CONTROLLER_EPOCH).await {
            Ok((data, stat)) => {
                let epoch = decode_controller_epoch(&data).unwrap_or_else(|e| {
                    warn!(error = %e, "starting the controller epoch again from 0");
                    0
                });
                return Ok((epoch, stat.version));
            }
            Err(zk::Error::NoNode) => {
                match client
                    .create(CONTROLLER_EPOCH, &encode_controller_epoch(0), &persistent())
                    .await
                {
                    Ok(_) | Err(zk::Error::NodeExists) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One round of the election: create `/controller` and bump the epoch in
/// one multi-op, conditional on the epoch's version; or learn who won.
pub(super) async fn elect(client: &zk::Client, node_id: i32) -> Result<Elected, zk::Error> {
    loop {
        let (epoch, version) = read_epoch(client).await?;
        let next = epoch + 1;
        let mut multi = client.new_multi_writer();
        multi.add_create(
            CONTROLLER,
            &ControllerZnode::new(node_id, now_ms()).encode(),
            &ephemeral(),
        )?;
        multi.add_set_data(
            CONTROLLER_EPOCH,
            &encode_controller_epoch(next),
            Some(version),
        )?;
        match multi.commit().await {
            Ok(results) => return Ok(won(next, &results)),
            Err(zk::MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::NodeExists,
            }) => {}
            // The epoch moved under us: read it again.
            Err(zk::MultiWriteError::OperationFailed {
                index: 1,
                source: zk::Error::BadVersion | zk::Error::NoNode,
            }) => continue,
            Err(e) => return Err(e.into()),
        }
        let (data, stat, watcher) = match client.get_and_watch_data(CONTROLLER).await {
            Ok(read) => read,
            // Gone since: race again.
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(e),
        };
        if stat.ephemeral_owner == client.session_id().0 {
            // Still ours from an earlier round in this session (this node
            // stopped acting after an error, or found the epoch moved): take
            // it up again under a new epoch, which fences what went before.
            drop(watcher);
            let mut multi = client.new_multi_writer();
            multi.add_check_version(CONTROLLER, stat.version)?;
            multi.add_set_data(
                CONTROLLER_EPOCH,
                &encode_controller_epoch(next),
                Some(version),
            )?;
            match multi.commit().await {
                Ok(results) => return Ok(won(next, &results)),
                Err(zk::MultiWriteError::OperationFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let controller_id = match ControllerZnode::decode(CONTROLLER, &data) {
            Ok(znode) => Some(znode.brokerid),
            Err(e) => {
                warn!(error = %e, "cannot tell who the controller is");
                None
            }
        };
        return Ok(Elected::Lost {
            controller_id,
            watcher,
        });
    }
}

fn won(epoch: i32, results: &[zk::MultiWriteResult]) -> Elected {
    let epoch_version = results
        .iter()
        .rev()
        .find_map(|r| match r {
            zk::MultiWriteResult::SetData { stat } => Some(stat.version),
            _ => None,
        })
        // A committed multi answers every operation.
        .unwrap_or_default();
    Elected::Won {
        epoch,
        epoch_version,
    }
}

/// Gives `/controller` up on the way out (when this session still holds
/// it), so another broker need not wait for the session to expire.
pub(super) async fn resign(client: &zk::Client, node_id: i32) {
    let attempt = async {
        let (_, stat) = client.get_data(CONTROLLER).await?;
        if stat.ephemeral_owner == client.session_id().0 {
            client.delete(CONTROLLER, Some(stat.version)).await?;
            info!(node = node_id, "resigned as controller");
        }
        Ok::<_, zk::Error>(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), attempt).await {
        Ok(Ok(())) | Ok(Err(zk::Error::NoNode)) => {}
        Ok(Err(e)) => warn!(error = %e, "could not resign as controller"),
        Err(_) => warn!("could not resign as controller in time"),
    }
}
