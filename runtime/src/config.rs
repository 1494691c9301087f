//! Typed configuration, layered: defaults < optional TOML file (`LEGATO_CONFIG`) < the fixed
//! environment points (`NATS_URL`, `JWT_SECRET`, `LEGATO_DATA_DIR`) < `LEGATO_…` variables,
//! nested with `__` (`LEGATO_NATS__URL`, `LEGATO_STORE__BACKEND`).

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// Loads a binary's configuration. `T::default()` are the defaults.
pub fn load<T: Serialize + DeserializeOwned + Default>() -> Result<T, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Ok(path) = std::env::var("LEGATO_CONFIG") {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::raw().only(&["NATS_URL"]).map(|_| "nats.url".into()))
        .merge(
            Env::raw()
                .only(&["JWT_SECRET"])
                .map(|_| "auth.jwt_secret".into()),
        )
        .merge(
            Env::raw()
                .only(&["LEGATO_DATA_DIR"])
                .map(|_| "data_dir".into()),
        )
        .merge(
            Env::prefixed("LEGATO_")
                .ignore(&["CONFIG", "DATA_DIR"])
                .split("__"),
        )
        .extract()
        .map_err(Box::new)
}

/// A secret: usable, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    pub url: String,
    /// Client name shown in the server's connection list.
    pub name: String,
    pub connect_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            name: "legato".into(),
            connect_timeout_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sqlite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SqliteConfig {
    /// Database file; default `<data_dir>/legato.db`.
    pub path: Option<PathBuf>,
    pub synchronous: SqliteSync,
    pub busy_timeout_ms: u64,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: None,
            synchronous: SqliteSync::Full,
            busy_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    pub backend: Backend,
    pub sqlite: SqliteConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        data_dir: PathBuf,
        nats: NatsConfig,
        auth: Auth,
        store: StoreConfig,
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Auth {
        jwt_secret: Secret,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn layers_apply_in_order_and_secrets_stay_hidden() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "legato.toml",
                "[nats]\nurl = \"nats://file:1\"\nname = \"from-file\"\n",
            )?;
            jail.set_env("LEGATO_CONFIG", "legato.toml");
            let s: Sample = load().map_err(|e| e.to_string())?;
            assert_eq!(s.nats.url, "nats://file:1");
            jail.set_env("NATS_URL", "nats://fixed:2");
            jail.set_env("JWT_SECRET", "s3cret");
            jail.set_env("LEGATO_DATA_DIR", "/tmp/x");
            let s: Sample = load().map_err(|e| e.to_string())?;
            assert_eq!(s.nats.url, "nats://fixed:2");
            assert_eq!(s.nats.name, "from-file");
            assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(s.auth.jwt_secret.expose(), "s3cret");
            assert!(!format!("{s:?}").contains("s3cret"));
            jail.set_env("LEGATO_NATS__URL", "nats://env:3");
            jail.set_env("LEGATO_STORE__SQLITE__SYNCHRONOUS", "normal");
            let s: Sample = load().map_err(|e| e.to_string())?;
            assert_eq!(s.nats.url, "nats://env:3");
            assert_eq!(s.store.sqlite.synchronous, SqliteSync::Normal);
            jail.set_env("LEGATO_STORE__BACKEND", "oracle");
            assert!(load::<Sample>().is_err());
            Ok(())
        });
    }
}
