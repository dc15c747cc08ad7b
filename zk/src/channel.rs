//! Control requests over a broker's Kafka listener: the controller's pushes
//! to brokers, and a broker's ControlledShutdown to the controller.

use bytes::Bytes;
use kafka_protocol::messages::EnvelopeRequest;
use sluice_broker::kafka_client::{ClientError, KafkaClient};
use sluice_metadata::control_requests::{ControlRequest, ControlResponse};

/// Sends one control request and reads the answer. A refusal (a stale
/// epoch, say) is an `Ok` answer with its error code set.
pub async fn send_control(
    client: &mut KafkaClient,
    request: &ControlRequest,
) -> Result<ControlResponse, ClientError> {
    let envelope = EnvelopeRequest::default()
        .with_request_data(Bytes::from(request.encode()))
        .with_client_host_address(Bytes::new());
    // Brokers list Envelope only in ZooKeeper mode, so the version is fixed
    // rather than negotiated.
    let response = client.send_version(envelope, 0).await?;
    let data = response.response_data.unwrap_or_default();
    if data.is_empty() {
        return Ok(ControlResponse {
            error_code: response.error_code,
            ..Default::default()
        });
    }
    ControlResponse::decode(&data)
        .map_err(|e| ClientError::Protocol(format!("control response is not valid: {e}")))
}
