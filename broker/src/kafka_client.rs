//! A Kafka protocol client over one connection, versions negotiated with
//! ApiVersions: what a broker uses to fetch from a partition leader and to
//! reach the active controller, and what the command line uses.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server does not support API key {0}")]
    Unsupported(i16),
    #[error("no common version for API key {0}")]
    NoCommonVersion(i16),
    #[error("protocol: {0}")]
    Protocol(String),
}

pub struct KafkaClient {
    stream: TcpStream,
    address: String,
    client_id: StrBytes,
    correlation_id: i32,
    /// The server's (min, max) version for each API.
    versions: HashMap<i16, (i16, i16)>,
    /// How long one answer may take.
    request_timeout: Duration,
}

impl KafkaClient {
    /// Connects to `address` (host:port) and negotiates versions.
    pub async fn connect(address: &str, client_id: &'static str) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            address: address.to_string(),
            source,
        };
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address))
            .await
            .map_err(|_| ClientError::Timeout("connecting"))?
            .map_err(connect_error)?;
        stream.set_nodelay(true)?;
        let mut client = Self {
            stream,
            address: address.to_string(),
            client_id: StrBytes::from_static_str(client_id),
            correlation_id: 0,
            versions: HashMap::new(),
            request_timeout: Duration::from_secs(60),
        };
        let response: ApiVersionsResponse = client
            .send_version(ApiVersionsRequest::default(), 0)
            .await?;
        client.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(client)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// How long to wait for each answer (60 s unless set).
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// The highest version of `R` both sides speak, capped at `max`.
    pub fn version_for<R: Request>(&self, max: i16) -> Result<i16, ClientError> {
        let (server_min, server_max) = *self
            .versions
            .get(&R::KEY)
            .ok_or(ClientError::Unsupported(R::KEY))?;
        let version = server_max.min(R::VERSIONS.max).min(max);
        if version < server_min.max(R::VERSIONS.min) {
            return Err(ClientError::NoCommonVersion(R::KEY));
        }
        Ok(version)
    }

    /// Sends `request` at the highest version both sides speak.
    pub async fn send<R: Request>(&mut self, request: R) -> Result<R::Response, ClientError> {
        let version = self.version_for::<R>(i16::MAX)?;
        self.send_version(request, version).await
    }

    /// Sends `request` at exactly `version`.
    pub async fn send_version<R: Request>(
        &mut self,
        request: R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        let protocol = |e: anyhow::Error| ClientError::Protocol(e.to_string());
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(protocol)?;
        request.encode(&mut buf, version).map_err(protocol)?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf).await?;

        let size = tokio::time::timeout(self.request_timeout, self.stream.read_i32())
            .await
            .map_err(|_| ClientError::Timeout("waiting for the server's answer"))??;
        if size < 0 {
            return Err(ClientError::Protocol("negative frame size".into()));
        }
        let mut body = BytesMut::zeroed(size as usize);
        tokio::time::timeout(self.request_timeout, self.stream.read_exact(&mut body))
            .await
            .map_err(|_| ClientError::Timeout("reading the server's answer"))??;
        let mut body = body.freeze();
        let api_key = ApiKey::try_from(R::KEY)
            .map_err(|_| ClientError::Protocol(format!("unknown api key {}", R::KEY)))?;
        let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))
            .map_err(protocol)?;
        if header.correlation_id != self.correlation_id {
            return Err(ClientError::Protocol(format!(
                "response for request {} arrived for {}",
                header.correlation_id, self.correlation_id
            )));
        }
        R::Response::decode(&mut body, version).map_err(protocol)
    }
}
