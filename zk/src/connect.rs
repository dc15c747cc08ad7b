//! Reaching the ensemble: Kafka's `zookeeper.*` settings, a session under
//! the chroot, and reads pipelined with a bounded number in flight.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use zookeeper_client as zk;

use crate::znodes::PERSISTENT_PATHS;

/// Kafka's `zookeeper.*` broker settings.
#[derive(Clone, Debug)]
pub struct ZkConfig {
    /// `zookeeper.connect`: `host:port,host:port[/chroot]`.
    pub connect: String,
    /// `zookeeper.session.timeout.ms` (18 s in Kafka).
    pub session_timeout: Duration,
    /// `zookeeper.connection.timeout.ms`: how long a new session may take
    /// to connect (Kafka: the session timeout when unset).
    pub connection_timeout: Duration,
}

impl ZkConfig {
    /// The ensemble's addresses and the chroot ("" for none).
    pub fn split(&self) -> (&str, &str) {
        match self.connect.find('/') {
            Some(i) => (&self.connect[..i], self.connect[i..].trim_end_matches('/')),
            None => (self.connect.as_str(), ""),
        }
    }
}

/// Reads in flight at once while loading the cluster (Kafka pipelines its
/// controller's reads the same way, bounded by
/// `zookeeper.max.in.flight.requests`, 10 by default).
pub const MAX_IN_FLIGHT: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("zookeeper.connect is empty")]
    Empty,
    #[error("connecting to ZooKeeper at {connect}: {source}")]
    Connect { connect: String, source: zk::Error },
    #[error("creating {path} in ZooKeeper: {source}")]
    Create { path: String, source: zk::Error },
}

/// A new session with the ensemble, rooted at the chroot (created when
/// missing, as Kafka does), with the persistent paths in place.
pub async fn connect(config: &ZkConfig) -> Result<zk::Client, ConnectError> {
    let (ensemble, chroot) = config.split();
    if ensemble.is_empty() {
        return Err(ConnectError::Empty);
    }
    let client = zk::Client::connector()
        .with_session_timeout(config.session_timeout)
        .with_connection_timeout(config.connection_timeout)
        .connect(ensemble)
        .await
        .map_err(|source| ConnectError::Connect {
            connect: config.connect.clone(),
            source,
        })?;
    let client = if chroot.is_empty() {
        client
    } else {
        mkdir(&client, chroot).await?;
        client
            .chroot(chroot.to_string())
            .map_err(|_| ConnectError::Create {
                path: chroot.to_string(),
                source: zk::Error::BadArguments(&"invalid chroot"),
            })?
    };
    for path in PERSISTENT_PATHS {
        mkdir(&client, path).await?;
    }
    Ok(client)
}

/// `mkdir -p` of persistent znodes.
pub async fn mkdir(client: &zk::Client, path: &str) -> Result<(), ConnectError> {
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client
        .mkdir(path, &options)
        .await
        .map_err(|source| ConnectError::Create {
            path: path.to_string(),
            source,
        })
}

/// Options for a persistent znode anyone may change.
pub fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// Options for an ephemeral znode, gone with the session.
pub fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

/// Options for a persistent sequential znode (change notifications).
pub fn sequential() -> zk::CreateOptions<'static> {
    zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all())
}

/// Runs `read` for every item with at most [`MAX_IN_FLIGHT`] running at
/// once, and returns the results in the items' order.
pub async fn pipelined<I, T, F, Fut>(items: Vec<I>, read: F) -> Vec<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let count = items.len();
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    let mut running = JoinSet::new();
    let mut items = items.into_iter().enumerate();
    loop {
        while running.len() < MAX_IN_FLIGHT {
            let Some((index, item)) = items.next() else {
                break;
            };
            let read = read(item);
            running.spawn(async move { (index, read.await) });
        }
        match running.join_next().await {
            Some(Ok((index, result))) => results[index] = Some(result),
            // A read task only ends by returning.
            Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            None => break,
        }
    }
    results.into_iter().flatten().collect()
}
