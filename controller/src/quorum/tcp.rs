//! Raft messages between controllers over TCP.
//!
//! Each peer gets one outgoing connection, owned by a task with a bounded
//! queue: [`TcpTransport::send`] only queues (it runs on the quorum loop's
//! thread and must never block), the task writes whatever has queued up in
//! one go, and reconnects with backoff when the peer is down. A full queue
//! drops messages; Raft treats that like a lossy network and retries.
//!
//! Incoming connections arrive on the controller listener, which hands a
//! connection that opens with the stream magic to [`serve_peer_stream`].
//! A stream starts with the sender's node id; every frame after it is a
//! 4-byte length and one protobuf-encoded Raft message.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use sluice_metadata::controller_api::STREAM_MAGIC;

use super::{QuorumHandle, Transport};

/// The largest Raft message accepted: a snapshot of a very large cluster.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;
/// Messages queued for one peer before new ones are dropped.
const QUEUE_DEPTH: usize = 4096;
/// Bytes written to a peer in one batch, at most.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Sends Raft messages to the other voters over TCP.
pub struct TcpTransport {
    node_id: u64,
    peers: HashMap<u64, mpsc::Sender<Message>>,
}

impl TcpTransport {
    /// Starts one sender task per peer (on the current tokio runtime).
    /// `peers` maps each other voter's id to its controller address.
    pub fn start(node_id: u64, peers: HashMap<u64, String>) -> Self {
        let peers = peers
            .into_iter()
            .filter(|(id, _)| *id != node_id)
            .map(|(id, address)| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                tokio::spawn(run_peer(node_id, id, address, rx));
                (id, tx)
            })
            .collect();
        Self { node_id, peers }
    }
}

impl Transport for TcpTransport {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            match self.peers.get(&m.to) {
                Some(queue) => {
                    if queue.try_send(m).is_err() {
                        metrics::counter!("sluice_raft_messages_dropped_total").increment(1);
                    }
                }
                None => debug!(from = self.node_id, to = m.to, "no route to raft peer"),
            }
        }
    }
}

/// Keeps a connection to one peer and writes its queued messages.
async fn run_peer(node_id: u64, peer: u64, address: String, mut queue: mpsc::Receiver<Message>) {
    let mut backoff = Duration::from_millis(50);
    let mut connected_before = false;
    loop {
        let mut stream = match connect(node_id, &address).await {
            Ok(stream) => {
                if connected_before {
                    info!(peer, %address, "reconnected to raft peer");
                }
                connected_before = true;
                backoff = Duration::from_millis(50);
                stream
            }
            Err(e) => {
                debug!(peer, %address, error = %e, "cannot reach raft peer");
                // Messages queued while the peer is down are stale by the
                // time it is back; Raft resends what still matters.
                while queue.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                if queue.is_closed() {
                    return;
                }
                continue;
            }
        };
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            let Some(first) = queue.recv().await else {
                return; // the transport was dropped: the quorum stopped
            };
            buf.clear();
            encode(&first, &mut buf);
            while buf.len() < BATCH_BYTES {
                match queue.try_recv() {
                    Ok(m) => encode(&m, &mut buf),
                    Err(_) => break,
                }
            }
            if let Err(e) = stream.write_all(&buf).await {
                warn!(peer, %address, error = %e, "lost the connection to raft peer");
                break;
            }
        }
    }
}

async fn connect(node_id: u64, address: &str) -> std::io::Result<TcpStream> {
    let mut stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut hello = Vec::with_capacity(12);
    hello.extend_from_slice(&STREAM_MAGIC);
    hello.extend_from_slice(&node_id.to_be_bytes());
    stream.write_all(&hello).await?;
    Ok(stream)
}

fn encode(m: &Message, buf: &mut BytesMut) {
    let start = buf.len();
    buf.put_u32(0);
    // Writing a protobuf message into memory cannot fail.
    if m.write_to_writer(&mut (&mut *buf).writer()).is_err() {
        buf.truncate(start);
        return;
    }
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Why a peer stream was closed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft message of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("malformed raft message: {0}")]
    Malformed(#[from] protobuf::ProtobufError),
    #[error("stream of node {claimed} carried a message from node {from} to node {to}")]
    Misaddressed { claimed: u64, from: u64, to: u64 },
}

/// Reads Raft messages from a peer's stream (the magic already consumed)
/// and steps them into the local node. Any malformed or misaddressed
/// message closes the stream: the peer reconnects and Raft resends.
pub async fn serve_peer_stream(mut reader: impl AsyncRead + Unpin, quorum: QuorumHandle) {
    let outcome = async {
        let claimed = reader.read_u64().await?;
        loop {
            let len = match reader.read_u32().await {
                Ok(len) => len as usize,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(claimed),
                Err(e) => return Err(e.into()),
            };
            if len > MAX_MESSAGE_BYTES {
                return Err(StreamError::TooLarge(len));
            }
            let mut frame = vec![0u8; len];
            reader.read_exact(&mut frame).await?;
            let msg = Message::parse_from_bytes(&frame)?;
            if msg.from != claimed || msg.to != quorum.node_id() {
                return Err(StreamError::Misaddressed {
                    claimed,
                    from: msg.from,
                    to: msg.to,
                });
            }
            quorum.step(msg);
        }
    }
    .await;
    match outcome {
        Ok(peer) => debug!(peer, "raft peer stream closed"),
        Err(e) => warn!(error = %e, "closing a raft peer stream"),
    }
}
