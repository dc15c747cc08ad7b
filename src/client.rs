//! The command line's Kafka connection: the broker crate's client, opened on
//! the first bootstrap server.

use anyhow::{Context, Result};
pub use sluice_broker::KafkaClient;

pub async fn connect(bootstrap: &str) -> Result<KafkaClient> {
    let address = bootstrap.split(',').next().unwrap_or(bootstrap).trim();
    KafkaClient::connect(address, "sluice-cli")
        .await
        .with_context(|| format!("connecting to {address}"))
}
