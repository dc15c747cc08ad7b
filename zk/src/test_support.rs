//! What the zk crate's tests share: a real ZooKeeper server, and helpers
//! for a broker's metadata, its published session and its logs.
//!
//! The server is Debian's `zookeeper` 3.8 jars run as `QuorumPeerMain` with
//! a generated `zoo.cfg` in a temp dir, on a free port of 127.0.0.1.
//! `tickTime` is 500 ms, so sessions as short as 1 s are allowed. A test
//! either starts a server of its own ([`TestZk::start`]) or works under a
//! chroot of its own on the one server of the test process ([`shared`]).
//!
//! A server dies with its [`TestZk`], and with the test process however
//! that ends (a panic, `kill -9`): the JVM runs under a small shell whose
//! watcher kills it as soon as its stdin, held only by this process,
//! closes. The kernel closes it when this process dies, so nothing polls
//! for this process by an id that could be reused. A server that cannot
//! start is a panic: tests never skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sluice_broker::control_plane::ControlPlane;
use sluice_controller::TopicDefaults;
use sluice_metadata::control_requests::{ControlRequest, LiveBroker, PartitionState, PushHeader};
use sluice_metadata::{Endpoint, Uuid};
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::admin::ZkControllerApi;
use crate::connect::{connect, ZkConfig};
use crate::source::ZkMetadata;

/// Polls `$check` (an `Option`, which may `.await`) until it is `Some`,
/// and gives its value; panics after 30 s.
macro_rules! eventually {
    ($what:expr, $check:expr) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(value) = $check {
                break value;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("gave up waiting for {}", $what);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}
pub(crate) use eventually;

const CLASSPATH: &str = "/usr/share/java/*:/etc/zookeeper/conf";
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestZk {
    shell: Child,
    /// Closing it stops the server (see the module doc).
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl TestZk {
    /// Starts a server of its own and waits until it serves.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for ZooKeeper");
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("ZooKeeper's dataDir");
        let config = format!(
            "tickTime=500\n\
             initLimit=10\n\
             syncLimit=5\n\
             minSessionTimeout=1000\n\
             maxSessionTimeout=60000\n\
             dataDir={}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,mntr\n\
             maxClientCnxns=0\n",
            data.display()
        );
        let config_path = dir.path().join("zoo.cfg");
        std::fs::write(&config_path, config).expect("writing zoo.cfg");
        let log =
            std::fs::File::create(dir.path().join("zookeeper.log")).expect("the server's log");
        let log_err = log.try_clone().expect("the server's log");
        // The watcher's `read` returns when our end of stdin closes (a drop,
        // or this process dying): it kills the JVM and removes the temp dir,
        // which a server in a static is never dropped to remove. The shell
        // ends with the JVM, so a JVM that dies at start is seen at once,
        // and then ends the watcher first, so that it kills nothing else.
        let script = format!(
            "exec 3<&0; \
             java -Xmx256m -cp '{CLASSPATH}' -Dzookeeper.log.dir='{dir}' \
             org.apache.zookeeper.server.quorum.QuorumPeerMain '{cfg}' </dev/null 3<&- & java=$!; \
             {{ read _ignored; kill -9 $java 2>/dev/null; rm -rf '{dir}'; }} <&3 & watcher=$!; \
             exec 3<&-; \
             wait $java; status=$?; kill $watcher 2>/dev/null; exit $status",
            dir = dir.path().display(),
            cfg = config_path.display(),
        );
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("starting ZooKeeper (sh and java)");
        let stdin = shell.stdin.take();
        let mut server = TestZk {
            shell,
            stdin,
            dir,
            port,
        };
        server.wait_until_ready();
        server
    }

    /// `host:port` for a client.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A broker's `zookeeper.*` settings for this server, under `chroot`.
    pub fn config(&self, chroot: &str) -> ZkConfig {
        ZkConfig {
            connect: format!("{}{chroot}", self.connect_string()),
            session_timeout: Duration::from_secs(6),
            connection_timeout: Duration::from_secs(10),
        }
    }

    /// A new session under `chroot`, with the persistent paths in place.
    pub async fn client(&self, chroot: &str) -> zk::Client {
        connect(&self.config(chroot))
            .await
            .expect("a session with the test ZooKeeper")
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let failure = loop {
            if let Ok(Some(status)) = self.shell.try_wait() {
                break format!("exited at start ({status})");
            }
            if four_letter(self.port, "ruok").as_deref() == Some("imok")
                && four_letter(self.port, "srvr").is_some_and(|s| s.contains("Mode:"))
            {
                return;
            }
            if Instant::now() > deadline {
                break format!("did not serve within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log =
            std::fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default();
        panic!(
            "ZooKeeper on port {} {failure}; is Debian's zookeeper package installed? \
             Its log:\n{log}",
            self.port
        );
    }
}

impl Drop for TestZk {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.shell.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// One server for the whole test process; each test works under its own
/// chroot. It stops when the process ends.
pub fn shared() -> &'static TestZk {
    static SERVER: OnceLock<TestZk> = OnceLock::new();
    SERVER.get_or_init(TestZk::start)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Sends a four-letter command; the answer, if the server gave one.
fn four_letter(port: u16, command: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(command.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// A broker's metadata as a ZooKeeper-mode broker holds it after the
/// controller's first full push: `brokers` live (broker epoch 100 + id),
/// this broker registered under its epoch.
pub async fn metadata_with(
    node_id: i32,
    brokers: &[i32],
    partitions: Vec<PartitionState>,
) -> Arc<ZkMetadata> {
    let metadata = new_metadata(node_id);
    push(&metadata, brokers, partitions, true).await;
    metadata
}

/// A broker's metadata before any push, registered under its epoch.
pub fn new_metadata(node_id: i32) -> Arc<ZkMetadata> {
    let metadata = ZkMetadata::new(node_id, Vec::new()).expect("metadata");
    metadata.set_broker_epoch(broker_epoch(node_id));
    metadata
}

pub fn broker_epoch(id: i32) -> i64 {
    100 + id as i64
}

/// An UpdateMetadata push from controller 1, epoch 1.
pub async fn push(
    metadata: &ZkMetadata,
    brokers: &[i32],
    partitions: Vec<PartitionState>,
    full: bool,
) {
    let request = ControlRequest::UpdateMetadata {
        header: PushHeader {
            controller_id: 1,
            controller_epoch: 1,
            broker_epoch: -1,
        },
        full,
        live_brokers: brokers
            .iter()
            .map(|&id| LiveBroker {
                broker_id: id,
                broker_epoch: broker_epoch(id),
                endpoints: vec![Endpoint {
                    listener: "PLAINTEXT".into(),
                    host: "127.0.0.1".into(),
                    port: 9000 + id as u16,
                }],
                rack: None,
            })
            .collect(),
        partitions,
    };
    let response = metadata.handle(request).await;
    assert_eq!(response.error_code, 0, "{}", response.message);
}

/// One partition led by `leader` with every replica in sync, at epoch 0.
pub fn partition(
    topic: &str,
    id: Uuid,
    index: i32,
    leader: i32,
    replicas: &[i32],
) -> PartitionState {
    PartitionState {
        topic: topic.into(),
        topic_id: id,
        partition: index,
        controller_epoch: 1,
        leader,
        leader_epoch: 0,
        isr: replicas.to_vec(),
        partition_epoch: 0,
        replicas: replicas.to_vec(),
    }
}

/// A session as a broker's session publishes it; keep the sender alive.
pub fn publish(client: zk::Client) -> watch::Sender<Option<zk::Client>> {
    watch::channel(Some(client)).0
}

/// A broker's `ControllerApi` on the session `clients` publishes, with
/// topics of 2 partitions of 2 replicas by default; `timeout` bounds each
/// ZooKeeper request and each wait for a push.
pub fn controller_api(
    clients: &watch::Sender<Option<zk::Client>>,
    metadata: Arc<ZkMetadata>,
    timeout: Duration,
) -> Arc<ZkControllerApi> {
    ZkControllerApi::new(
        clients.subscribe(),
        metadata,
        TopicDefaults {
            num_partitions: 2,
            replication_factor: 2,
        },
        timeout,
    )
}

/// Log lines written on this thread while the guard lives.
pub struct CapturedLogs {
    lines: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl CapturedLogs {
    pub fn start() -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        Self {
            lines,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lines.lock().unwrap()).into_owned()
    }
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
