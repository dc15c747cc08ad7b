//! The Kafka listener: accepts connections, frames requests, hands each to
//! its handler and writes the responses back in request order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use sluice_metadata::controller_api::{BoxFuture, STREAM_MAGIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::handlers::{self, Broker, Reply};
use crate::memory::{MemoryLease, MemoryPool};

/// A set of Kafka APIs served on one listener: the broker's client-facing
/// APIs, or the controller's.
pub trait Service: Send + Sync + 'static {
    /// Frames larger than this close the connection.
    fn max_request_bytes(&self) -> usize;
    /// Bounds the memory of requests (and responses) in flight; none by default.
    fn memory_pool(&self) -> Option<&MemoryPool> {
        None
    }
    fn max_connections(&self) -> usize;
    fn supports(&self, api_key: ApiKey, version: i16) -> bool;
    /// The answer to an ApiVersions request of a version this service does not speak.
    fn api_versions_unsupported(&self) -> ApiVersionsResponse;
    fn dispatch<'a>(
        &'a self,
        header: &'a RequestHeader,
        api_key: ApiKey,
        body: Bytes,
        peer: SocketAddr,
        listener: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Reply>>;
    /// Takes over a connection that opened with [`STREAM_MAGIC`]; `None`
    /// when this service has no such streams (the connection is closed).
    fn accept_stream(
        &self,
        _reader: OwnedReadHalf,
        _peer: SocketAddr,
    ) -> Option<BoxFuture<'static, ()>> {
        None
    }
}

impl Service for Broker {
    fn max_request_bytes(&self) -> usize {
        self.config.socket_request_max_bytes
    }

    fn max_connections(&self) -> usize {
        self.config.max_connections
    }

    fn memory_pool(&self) -> Option<&MemoryPool> {
        Some(&self.memory)
    }

    fn supports(&self, api_key: ApiKey, version: i16) -> bool {
        handlers::supports(api_key, version)
            || (api_key == ApiKey::Envelope && version <= 2 && self.takes_control_requests())
    }

    fn api_versions_unsupported(&self) -> ApiVersionsResponse {
        handlers::api_versions_unsupported()
    }

    fn dispatch<'a>(
        &'a self,
        header: &'a RequestHeader,
        api_key: ApiKey,
        body: Bytes,
        peer: SocketAddr,
        listener: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Reply>> {
        Box::pin(handlers::dispatch(
            self, header, api_key, body, peer, listener,
        ))
    }
}

/// Why a connection was closed by the broker.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("request size {size} is outside 0..={max} bytes")]
    BadFrameSize { size: i32, max: usize },
    #[error("connection closed in the middle of a request")]
    TruncatedFrame,
    #[error("{0}")]
    BadRequest(String),
}

/// Serves Kafka clients on `listener`, the listener named `name` (clients
/// are told the endpoints of the listener they came in on), until
/// `shutdown` turns true.
pub async fn run<S: Service>(
    listener: TcpListener,
    name: String,
    broker: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(broker.max_connections()));
    let name: Arc<str> = name.into();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%peer, "connection limit reached (max.connections); refusing");
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let broker = broker.clone();
        let shutdown = shutdown.clone();
        let name = name.clone();
        tokio::spawn(async move {
            metrics::gauge!("sluice_connections").increment(1.0);
            match serve_connection(socket, peer, &name, broker, shutdown).await {
                Ok(()) => debug!(%peer, "connection closed"),
                Err(e) => info!(%peer, error = %e, "closing connection"),
            }
            metrics::gauge!("sluice_connections").decrement(1.0);
            drop(permit);
        });
    }
}

async fn serve_connection<S: Service>(
    socket: TcpStream,
    peer: SocketAddr,
    listener: &str,
    broker: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let (mut reader, writer) = socket.into_split();
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let max = broker.max_request_bytes();
    let mut first_frame = true;
    loop {
        let mut size_buf = [0u8; 4];
        let first = tokio::select! {
            read = reader.read(&mut size_buf) => read?,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        if first == 0 {
            return Ok(()); // a clean end between requests
        }
        if first < 4 {
            read_exact_or_truncated(&mut reader, &mut size_buf[first..]).await?;
        }
        if std::mem::take(&mut first_frame) && size_buf == STREAM_MAGIC {
            let Some(stream) = broker.accept_stream(reader, peer) else {
                return Err(ConnectionError::BadRequest(
                    "this listener takes no streams".into(),
                ));
            };
            tokio::select! {
                _ = stream => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
            return Ok(());
        }
        let size = i32::from_be_bytes(size_buf);
        if size < 0 || size as usize > max {
            return Err(ConnectionError::BadFrameSize { size, max });
        }
        // The frame's memory is leased before it is allocated, and held
        // until the answer is written.
        let _lease = match broker.memory_pool() {
            Some(pool) => tokio::select! {
                lease = pool.acquire(size as usize) => Some(lease),
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            },
            None => None,
        };
        let mut frame = BytesMut::zeroed(size as usize);
        read_exact_or_truncated(&mut reader, &mut frame).await?;
        metrics::counter!("sluice_bytes_in_total").increment(size as u64 + 4);

        if let Some((response, _response_lease)) =
            handle_frame(broker.as_ref(), frame.freeze(), peer, listener).await?
        {
            metrics::counter!("sluice_bytes_out_total").increment(response.len() as u64);
            writer.write_all(&response).await?;
            writer.flush().await?;
        }
    }
}

async fn read_exact_or_truncated(
    reader: &mut (impl AsyncReadExt + Unpin),
    buf: &mut [u8],
) -> Result<(), ConnectionError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ConnectionError::TruncatedFrame)
        }
        Err(e) => Err(e.into()),
    }
}

/// Decodes one request, runs its handler and encodes the response frame
/// (`None` for produce with acks=0, which gets no answer), with the memory
/// lease of the data it carries.
async fn handle_frame<S: Service>(
    broker: &S,
    mut frame: Bytes,
    peer: SocketAddr,
    listener: &str,
) -> Result<Option<(BytesMut, Option<MemoryLease>)>, ConnectionError> {
    if frame.len() < 8 {
        return Err(ConnectionError::BadRequest(format!(
            "request of {} bytes is too short for a header",
            frame.len()
        )));
    }
    let api_key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(api_key_raw)
        .map_err(|_| ConnectionError::BadRequest(format!("unknown api key {api_key_raw}")))?;

    let span = info_span!("request", api = ?api_key, version = api_version, correlation_id, client_id = tracing::field::Empty, %peer);
    async move {
        // ApiVersions answers any version, so clients can learn what we speak.
        if api_key == ApiKey::ApiVersions && !broker.supports(api_key, api_version) {
            let body = broker.api_versions_unsupported();
            let response = encode_response(api_key, 0, correlation_id, |buf| body.encode(buf, 0))?;
            return Ok(Some((response, None)));
        }
        if !broker.supports(api_key, api_version) {
            return Err(ConnectionError::BadRequest(format!(
                "{api_key:?} version {api_version} is not supported"
            )));
        }
        let header_version = api_key.request_header_version(api_version);
        let header = RequestHeader::decode(&mut frame, header_version)
            .map_err(|e| ConnectionError::BadRequest(format!("bad request header: {e:#}")))?;
        if let Some(client) = &header.client_id {
            tracing::Span::current().record("client_id", client.as_str());
        }
        let started = Instant::now();
        let reply = broker
            .dispatch(&header, api_key, frame, peer, listener)
            .await
            .map_err(|e| {
                ConnectionError::BadRequest(format!("{api_key:?} v{api_version} request: {e:#}"))
            })?;
        let api = format!("{api_key:?}");
        metrics::counter!("sluice_requests_total", "api" => api.clone()).increment(1);
        metrics::histogram!("sluice_request_duration_seconds", "api" => api)
            .record(started.elapsed().as_secs_f64());
        let (response, lease) = match reply {
            Reply::None => return Ok(None),
            Reply::Response(response) => (response, None),
            Reply::Holding(response, lease) => (response, Some(lease)),
        };
        let encoded = encode_response(api_key, api_version, correlation_id, |buf| {
            response.encode(buf, api_version)
        })?;
        Ok(Some((encoded, lease)))
    }
    .instrument(span)
    .await
}

fn encode_response(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    encode_body: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>,
) -> Result<BytesMut, ConnectionError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // size, patched below
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header
        .encode(&mut buf, api_key.response_header_version(api_version))
        .map_err(|e| {
            ConnectionError::BadRequest(format!("cannot encode response header: {e:#}"))
        })?;
    encode_body(&mut buf).map_err(|e| {
        ConnectionError::BadRequest(format!("cannot encode {api_key:?} response: {e:#}"))
    })?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}
