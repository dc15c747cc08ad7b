//! Helpers shared by the unit tests of the controller operations.

use std::sync::Arc;

use sluice_metadata::controller_api::BrokerRegistrationRequest;
use sluice_metadata::{Endpoint, MetadataDelta, MetadataImage, MetadataRecord, Uuid};

use crate::lifecycle::{register_broker, unfence_broker};

/// The image after `records` commit as the next entry.
pub fn apply(image: &Arc<MetadataImage>, records: &[MetadataRecord]) -> Arc<MetadataImage> {
    let mut delta = MetadataDelta::new(image.clone());
    delta.replay_all(records).expect("records replay");
    delta.apply(image.offset + 1)
}

/// A registration of broker `id` with one PLAINTEXT endpoint.
pub fn registration(id: i32) -> BrokerRegistrationRequest {
    BrokerRegistrationRequest {
        broker_id: id,
        incarnation_id: Uuid::new_v4(),
        endpoints: vec![Endpoint {
            listener: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9000 + id as u16,
        }],
        rack: None,
    }
}

/// An image with `brokers` registered and unfenced.
pub fn unfenced_brokers(brokers: &[i32]) -> Arc<MetadataImage> {
    let mut image = MetadataImage::empty();
    for &id in brokers {
        image = apply(
            &image,
            &register_broker(&image, registration(id), false).records,
        );
        image = apply(&image, &unfence_broker(&image, id, false).records);
    }
    image
}
