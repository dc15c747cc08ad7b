//! Shared set-up of the controller's integration tests: a standalone
//! controller in a temp dir, and a broker registered with it.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice_controller::{Controller, ControllerConfig, TopicDefaults};
use sluice_metadata::controller_api::{BrokerRegistrationRequest, ControllerApi};
use sluice_metadata::{Endpoint, Uuid};

/// Starts a standalone controller in `dir` with `partitions` per new topic
/// (replication factor 1), after `configure` adjusts its settings, and waits
/// until it leads.
pub async fn standalone_controller(
    dir: &Path,
    partitions: i32,
    configure: impl FnOnce(&mut ControllerConfig),
) -> Arc<Controller> {
    let mut config = ControllerConfig::standalone(
        1,
        dir.to_path_buf(),
        TopicDefaults {
            num_partitions: partitions,
            replication_factor: 1,
        },
    );
    configure(&mut config);
    let controller = Controller::start(config, Vec::new()).expect("controller starts");
    controller
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("controller leads");
    controller
}

/// Registers broker `id` with one PLAINTEXT endpoint; returns its epoch.
pub async fn register(controller: &Controller, id: i32) -> i64 {
    controller
        .register_broker(BrokerRegistrationRequest {
            broker_id: id,
            incarnation_id: Uuid::new_v4(),
            endpoints: vec![Endpoint {
                listener: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9092,
            }],
            rack: None,
        })
        .await
        .expect("registration accepted")
}
