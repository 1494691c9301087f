//! The ingest worker's configuration (see `legato_runtime::config` for the layering).

use legato_runtime::config::{NatsConfig, StoreConfig};
use legato_runtime::nats::{BusLimits, ConsumerSettings};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    pub admin_listen: String,
    pub data_dir: PathBuf,
    pub nats: NatsConfig,
    pub store: StoreConfig,
    pub bus: BusLimits,
    pub consumer: ConsumerSettings,
    pub batch: BatchSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchSettings {
    /// Messages fetched and applied in one store transaction.
    pub max_messages: usize,
    /// How long a fetch waits for messages before returning what it has.
    pub fetch_expires_ms: u64,
    /// While a batch of at least this many items is applied, the messages already waiting are
    /// fetched and decoded for the next one, so the store's writer does not wait for that
    /// between transactions. Smaller batches are not worth it: a message that arrives during
    /// the apply would then wait for the next batch's apply as well (see the ingest loop).
    /// 0 turns it off.
    pub prefetch_min_items: usize,
    /// A message delivered more often than this is terminated (poison) without processing.
    /// At least 3: the messages a crashing one came with need two deliveries after the crash
    /// to be committed without it (see the ingest loop).
    pub max_deliveries: i64,
    /// How long an undecodable message waits before it is delivered again (it is terminated
    /// after `max_deliveries`).
    pub poison_retry_ms: u64,
    /// Upper bound of the back-off between store retries.
    pub max_retry_backoff_ms: u64,
    /// Chaos knob, 0 in production: sleep a random 0..=N ms before each apply, so tests can
    /// make several workers commit out of order.
    pub apply_jitter_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_messages: 128,
            fetch_expires_ms: 1_000,
            prefetch_min_items: 1_000,
            max_deliveries: 5,
            poison_retry_ms: 1_000,
            max_retry_backoff_ms: 5_000,
            apply_jitter_ms: 0,
        }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.batch.max_messages == 0 {
            return Err("batch.max_messages must be positive".into());
        }
        if self.batch.max_deliveries < 3 {
            return Err("batch.max_deliveries must be at least 3".into());
        }
        Ok(())
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            admin_listen: "127.0.0.1:9788".into(),
            data_dir: PathBuf::from(".data"),
            nats: NatsConfig {
                name: "legato-ingest".into(),
                ..NatsConfig::default()
            },
            store: StoreConfig::default(),
            bus: BusLimits::default(),
            consumer: ConsumerSettings::default(),
            batch: BatchSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IngestConfig;

    #[test]
    fn the_defaults_are_valid_and_too_few_deliveries_are_refused() {
        let mut config = IngestConfig::default();
        assert_eq!(config.validate(), Ok(()));
        config.batch.max_deliveries = 2;
        assert!(config.validate().unwrap_err().contains("max_deliveries"));
        config.batch.max_deliveries = 3;
        config.batch.max_messages = 0;
        assert!(config.validate().unwrap_err().contains("max_messages"));
    }
}
