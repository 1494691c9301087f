//! Opens the configured store backend.

use crate::config::{Backend, SqliteSync, StoreConfig};
use legato_store::SharedStore;
use legato_store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub fn open(
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
                ..SqliteOptions::default()
            };
            Ok(Arc::new(SqliteStore::open(path, options)?))
        }
    }
}
