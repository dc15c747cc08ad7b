//! A small Kafka protocol client for the command line: one connection to a
//! bootstrap server, versions negotiated with ApiVersions.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct KafkaClient {
    stream: TcpStream,
    correlation_id: i32,
    /// The server's (min, max) version for each API.
    versions: HashMap<i16, (i16, i16)>,
}

const CLIENT_ID: &str = "sluice-cli";

impl KafkaClient {
    pub async fn connect(bootstrap: &str) -> Result<Self> {
        let address = bootstrap.split(',').next().unwrap_or(bootstrap).trim();
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address))
            .await
            .map_err(|_| anyhow!("timed out connecting to {address}"))?
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        let mut client = Self {
            stream,
            correlation_id: 0,
            versions: HashMap::new(),
        };
        let response: ApiVersionsResponse = client
            .send_version(ApiVersionsRequest::default(), 0)
            .await
            .context("asking the server for its API versions")?;
        client.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(client)
    }

    /// Sends `request` at the highest version both sides speak.
    pub async fn send<R: Request>(&mut self, request: R) -> Result<R::Response> {
        let (server_min, server_max) = *self
            .versions
            .get(&R::KEY)
            .ok_or_else(|| anyhow!("the server does not support API key {}", R::KEY))?;
        let version = server_max.min(R::VERSIONS.max);
        if version < server_min.max(R::VERSIONS.min) {
            bail!("no common version for API key {}", R::KEY);
        }
        self.send_version(request, version).await
    }

    async fn send_version<R: Request>(&mut self, request: R, version: i16) -> Result<R::Response> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, R::header_version(version))?;
        request.encode(&mut buf, version)?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf).await?;

        let size = tokio::time::timeout(Duration::from_secs(60), self.stream.read_i32())
            .await
            .map_err(|_| anyhow!("timed out waiting for the server's answer"))??;
        if size < 0 {
            bail!("the server sent a negative frame size");
        }
        let mut body = BytesMut::zeroed(size as usize);
        self.stream.read_exact(&mut body).await?;
        let mut body = body.freeze();
        let api_key = ApiKey::try_from(R::KEY).map_err(|_| anyhow!("unknown api key"))?;
        let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!(
                "response for request {} arrived for {}",
                header.correlation_id,
                self.correlation_id
            );
        }
        let response = R::Response::decode(&mut body, version)?;
        Ok(response)
    }
}
