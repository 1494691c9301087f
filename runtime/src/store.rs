//! Opens the configured store backend, and migrates the ScyllaDB schema.

use crate::config::{
    Backend, ScyllaConfig, ScyllaConsistency, ScyllaTablets, SqliteCheckpoint, SqliteSync,
    StoreConfig,
};
use legato_store::SharedStore;
use legato_store::scylla::migrate::{self, MigrateError, Report};
use legato_store::scylla::{ConsistencyLevel, ScyllaOptions, ScyllaStore, Tablets};
use legato_store::sqlite::{Checkpoint, SqliteOptions, SqliteStore, Synchronous};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub async fn open(
    config: &StoreConfig,
    data_dir: &Path,
) -> Result<SharedStore, legato_store::StoreError> {
    match config.backend {
        Backend::Sqlite => {
            let path = config
                .sqlite
                .path
                .clone()
                .unwrap_or_else(|| data_dir.join("legato.db"));
            let options = SqliteOptions {
                synchronous: match config.sqlite.synchronous {
                    SqliteSync::Full => Synchronous::Full,
                    SqliteSync::Normal => Synchronous::Normal,
                },
                busy_timeout: Duration::from_millis(config.sqlite.busy_timeout_ms),
                checkpoint: match config.sqlite.checkpoint {
                    SqliteCheckpoint::Background => Checkpoint::default(),
                    SqliteCheckpoint::Inline => Checkpoint::Inline,
                },
                ..SqliteOptions::default()
            };
            Ok(Arc::new(SqliteStore::open(path, options)?))
        }
        Backend::Scylla => Ok(Arc::new(
            ScyllaStore::connect(scylla_options(&config.scylla)).await?,
        )),
    }
}

/// Brings the ScyllaDB keyspace to this build's schema (`legato-ingest migrate`). `None` for
/// the SQLite backend, whose schema is created when it is opened.
pub async fn migrate(config: &StoreConfig) -> Result<Option<Report>, MigrateError> {
    match config.backend {
        Backend::Sqlite => Ok(None),
        Backend::Scylla => migrate::run(&scylla_options(&config.scylla))
            .await
            .map(Some),
    }
}

pub fn scylla_options(config: &ScyllaConfig) -> ScyllaOptions {
    ScyllaOptions {
        nodes: config.nodes.clone(),
        keyspace: config.keyspace.clone(),
        consistency: match config.consistency {
            ScyllaConsistency::One => ConsistencyLevel::One,
            ScyllaConsistency::LocalOne => ConsistencyLevel::LocalOne,
            ScyllaConsistency::Quorum => ConsistencyLevel::Quorum,
            ScyllaConsistency::LocalQuorum => ConsistencyLevel::LocalQuorum,
            ScyllaConsistency::EachQuorum => ConsistencyLevel::EachQuorum,
            ScyllaConsistency::All => ConsistencyLevel::All,
        },
        local_datacenter: config.local_datacenter.clone(),
        replication: config.effective_replication(),
        tablets: match config.tablets {
            ScyllaTablets::Disabled => Tablets::Disabled,
            ScyllaTablets::Enabled => Tablets::Enabled,
            ScyllaTablets::Default => Tablets::ServerDefault,
        },
        cursor_retention: Duration::from_secs(u64::from(config.cursor_retention_days) * 86_400),
        bucket_bits: config.bucket_bits,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        connect_timeout: Duration::from_millis(config.connect_timeout_ms),
        credentials: config
            .username
            .clone()
            .map(|u| (u, config.password.expose().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scylla_settings_map_onto_the_store_options() {
        let config = ScyllaConfig {
            nodes: vec!["n1:9042".into()],
            consistency: ScyllaConsistency::One,
            cursor_retention_days: 2,
            username: Some("legato".into()),
            password: crate::config::Secret::new("pw"),
            tablets: ScyllaTablets::Default,
            ..ScyllaConfig::default()
        };
        let o = scylla_options(&config);
        assert_eq!(o.nodes, vec!["n1:9042"]);
        assert_eq!(o.consistency, ConsistencyLevel::One);
        assert_eq!(o.cursor_retention, Duration::from_secs(2 * 86_400));
        assert_eq!(o.credentials, Some(("legato".into(), "pw".into())));
        assert_eq!(o.tablets, Tablets::ServerDefault);
        assert_eq!(o.keyspace, "legato");
        let d = scylla_options(&ScyllaConfig::default());
        assert_eq!(d.consistency, ConsistencyLevel::LocalQuorum);
        assert_eq!(d.bucket_bits, 16);
        assert!(d.credentials.is_none());
    }

    #[tokio::test]
    async fn sqlite_needs_no_migration() {
        assert!(migrate(&StoreConfig::default()).await.unwrap().is_none());
    }
}
