//! The seam between the broker's data plane and a ZooKeeper-mode control
//! plane: a controller's pushes (LeaderAndIsr, UpdateMetadata,
//! StopReplica) and brokers' ControlledShutdown requests arrive on the
//! Kafka listener as [`ControlRequest`]s in an Envelope, and go to whatever
//! [`ControlPlane`] the node runs. A KRaft node has none and refuses them.

use bytes::Bytes;
use kafka_protocol::messages::{EnvelopeRequest, EnvelopeResponse};
use kafka_protocol::ResponseError;
use sluice_metadata::control_requests::{ControlRequest, ControlResponse};
use sluice_metadata::controller_api::BoxFuture;
use tracing::warn;

/// Takes control requests: applies a controller's pushes to this broker's
/// metadata, or (on the controller) serves a broker's controlled shutdown.
pub trait ControlPlane: Send + Sync {
    fn handle(&self, request: ControlRequest) -> BoxFuture<'_, ControlResponse>;
}

/// Answers an Envelope carrying a control request.
pub(crate) async fn serve(
    plane: Option<&dyn ControlPlane>,
    request: EnvelopeRequest,
) -> EnvelopeResponse {
    let refuse = |error: ResponseError, message: String| {
        warn!(%message, "control request refused");
        let response = ControlResponse {
            error_code: error.code(),
            message,
            remaining_leaderships: 0,
        };
        EnvelopeResponse::default()
            .with_error_code(error.code())
            .with_response_data(Some(Bytes::from(response.encode())))
    };
    let Some(plane) = plane else {
        return refuse(
            ResponseError::UnsupportedVersion,
            "this broker does not run in ZooKeeper mode".into(),
        );
    };
    let request = match ControlRequest::decode(&request.request_data) {
        Ok(request) => request,
        Err(e) => {
            return refuse(
                ResponseError::InvalidRequest,
                format!("not a control request: {e}"),
            )
        }
    };
    let response = plane.handle(request).await;
    EnvelopeResponse::default()
        .with_error_code(response.error_code)
        .with_response_data(Some(Bytes::from(response.encode())))
}
