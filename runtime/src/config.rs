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
    /// How this process writes bus envelopes (`named` or `positional`); every process reads
    /// both. See README, "Upgrading".
    pub envelopes: legato_schema::envelope::Encoding,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            name: "legato".into(),
            connect_timeout_ms: 2_000,
            envelopes: legato_schema::envelope::Encoding::Named,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded, one machine (`store.sqlite`).
    #[default]
    Sqlite,
    /// Production (`store.scylla`); the schema comes from `legato-ingest migrate`.
    Scylla,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    #[default]
    Full,
    Normal,
}

/// Who checkpoints the SQLite WAL (see `legato_store::sqlite::Checkpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteCheckpoint {
    /// A thread of each process that opens the store, off the commit path.
    #[default]
    Background,
    /// The commit that takes the WAL past 1,000 pages (SQLite's default).
    Inline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SqliteConfig {
    /// Database file; default `<data_dir>/legato.db`.
    pub path: Option<PathBuf>,
    pub synchronous: SqliteSync,
    pub busy_timeout_ms: u64,
    pub checkpoint: SqliteCheckpoint,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: None,
            synchronous: SqliteSync::Full,
            busy_timeout_ms: 5_000,
            checkpoint: SqliteCheckpoint::Background,
        }
    }
}

/// The consistency level of the ScyllaDB backend's reads and writes (README "Production").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScyllaConsistency {
    One,
    LocalOne,
    Quorum,
    #[default]
    LocalQuorum,
    EachQuorum,
    All,
}

/// Whether `migrate` creates the keyspace with tablets (`default`: the server decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScyllaTablets {
    #[default]
    Disabled,
    Enabled,
    Default,
}

/// A replication option value: `3` and `"3"` both work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplicationValue {
    Number(u64),
    Text(String),
}

impl fmt::Display for ReplicationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicationValue::Number(n) => write!(f, "{n}"),
            ReplicationValue::Text(t) => f.write_str(t),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScyllaConfig {
    /// Contact points `host:port`: a list, or one string with commas
    /// (`LEGATO_STORE__SCYLLA__NODES=scylla-1:9042,scylla-2:9042`).
    #[serde(deserialize_with = "one_or_many")]
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub consistency: ScyllaConsistency,
    /// Route only to this datacenter (use with the `local_*` levels in multi-DC clusters).
    pub local_datacenter: Option<String>,
    /// The keyspace's replication, used when `migrate` creates it. Empty: the production
    /// default `{class = "NetworkTopologyStrategy", replication_factor = 3}`; a map without
    /// `class` means NetworkTopologyStrategy.
    pub replication: std::collections::BTreeMap<String, ReplicationValue>,
    pub tablets: ScyllaTablets,
    /// How long the change log keeps rows; older cursors are served (slower) from the
    /// entity table, never refused.
    pub cursor_retention_days: u32,
    /// A change-log partition holds the changes of one user in `2^bucket_bits` bus messages.
    pub bucket_bits: u32,
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Set both for `PasswordAuthenticator`.
    pub username: Option<String>,
    pub password: Secret,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        ScyllaConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "legato".into(),
            consistency: ScyllaConsistency::LocalQuorum,
            local_datacenter: None,
            replication: Default::default(),
            tablets: ScyllaTablets::Disabled,
            cursor_retention_days: 30,
            bucket_bits: 16,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            username: None,
            password: Secret::default(),
        }
    }
}

impl ScyllaConfig {
    /// The replication map `migrate` uses, with the defaults described on the field.
    pub fn effective_replication(&self) -> Vec<(String, String)> {
        let mut map: Vec<(String, String)> = self
            .replication
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        if !map.iter().any(|(k, _)| k != "class") {
            map.push(("replication_factor".into(), "3".into()));
        }
        if !map.iter().any(|(k, _)| k == "class") {
            map.insert(0, ("class".into(), "NetworkTopologyStrategy".into()));
        }
        map
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    pub backend: Backend,
    pub sqlite: SqliteConfig,
    pub scylla: ScyllaConfig,
}

#[cfg(test)]
mod tests {
    use super::*;
    use legato_schema::envelope::Encoding;

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
            assert_eq!(s.nats.envelopes, Encoding::Named);
            jail.set_env("LEGATO_NATS__ENVELOPES", "positional");
            let s: Sample = load().map_err(|e| e.to_string())?;
            assert_eq!(s.nats.envelopes, Encoding::Positional);
            jail.set_env("LEGATO_NATS__ENVELOPES", "compact");
            assert!(load::<Sample>().is_err());
            jail.set_env("LEGATO_NATS__ENVELOPES", "named");
            jail.set_env("LEGATO_STORE__BACKEND", "oracle");
            assert!(load::<Sample>().is_err());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn scylla_settings_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            let s: Sample = load().map_err(|e| e.to_string())?;
            assert_eq!(s.store.backend, Backend::Sqlite);
            assert_eq!(s.store.scylla.consistency, ScyllaConsistency::LocalQuorum);
            assert_eq!(
                s.store.scylla.effective_replication(),
                vec![
                    ("class".to_owned(), "NetworkTopologyStrategy".to_owned()),
                    ("replication_factor".to_owned(), "3".to_owned())
                ]
            );
            jail.set_env("LEGATO_STORE__BACKEND", "scylla");
            jail.set_env(
                "LEGATO_STORE__SCYLLA__NODES",
                r#"["scylla-1:9042", "scylla-2:9042"]"#,
            );
            jail.set_env("LEGATO_STORE__SCYLLA__CONSISTENCY", "each_quorum");
            jail.set_env("LEGATO_STORE__SCYLLA__REPLICATION__REPLICATION_FACTOR", "1");
            jail.set_env("LEGATO_STORE__SCYLLA__PASSWORD", "hunter2");
            let s: Sample = load().map_err(|e| e.to_string())?;
            assert_eq!(s.store.backend, Backend::Scylla);
            assert_eq!(s.store.scylla.nodes, vec!["scylla-1:9042", "scylla-2:9042"]);
            assert_eq!(s.store.scylla.consistency, ScyllaConsistency::EachQuorum);
            assert_eq!(
                s.store.scylla.effective_replication(),
                vec![
                    ("class".to_owned(), "NetworkTopologyStrategy".to_owned()),
                    ("replication_factor".to_owned(), "1".to_owned())
                ]
            );
            assert!(!format!("{s:?}").contains("hunter2"));
            jail.clear_env();
            jail.set_env("LEGATO_STORE__SCYLLA__NODES", "a:9042, b:9042");
            jail.set_env(
                "LEGATO_STORE__SCYLLA__REPLICATION",
                r#"{class="NetworkTopologyStrategy",dc1=3,dc2="2"}"#,
            );
            let s: Sample = load().map_err(|e| e.to_string())?;
            assert_eq!(s.store.scylla.nodes, vec!["a:9042", "b:9042"]);
            assert_eq!(
                s.store.scylla.effective_replication(),
                vec![
                    ("class".to_owned(), "NetworkTopologyStrategy".to_owned()),
                    ("dc1".to_owned(), "3".to_owned()),
                    ("dc2".to_owned(), "2".to_owned())
                ]
            );
            jail.set_env("LEGATO_STORE__SCYLLA__CONSISTENCY", "eventually");
            assert!(load::<Sample>().is_err());
            Ok(())
        });
    }
}
