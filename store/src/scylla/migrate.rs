//! Applying `schema/cql/` to a cluster: `legato-ingest migrate`.
//!
//! The files are compiled in (so the binary and its schema cannot drift apart), applied in
//! version order, and recorded in `<keyspace>.schema_migrations`; a recorded version is never
//! run again. Every statement is `IF NOT EXISTS` as well, so a run that died halfway is simply
//! run again. Placeholders (`{keyspace}`, `{replication}`, `{keyspace_options}`,
//! `{cursor_retention_seconds}`) are filled from [`ScyllaOptions`]; each value is validated
//! because it is spliced into CQL text.
//!
//! Replication and retention are fixed when the keyspace and tables are created; changing them
//! later is an `ALTER KEYSPACE` / `ALTER TABLE` (and a repair), not a re-run.

use super::statements::valid_keyspace;
use super::{ScyllaOptions, Tablets, timestamp};
use crate::StoreError;
use scylla::client::session::Session;
use std::collections::BTreeMap;

/// One migration file: `NNNN_name.cql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    pub file: &'static str,
    pub template: &'static str,
}

macro_rules! migration {
    ($file:literal) => {
        ($file, include_str!(concat!("../../../schema/cql/", $file)))
    };
}

/// The files of `schema/cql/`, in order. A test checks this list against the directory.
const FILES: [(&str, &str); 2] = [
    migration!("0001_keyspace.cql"),
    migration!("0002_tables.cql"),
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The configuration cannot be turned into a schema (bad keyspace name, replication, …).
    #[error("invalid schema settings: {0}")]
    Invalid(String),
    /// The cluster cannot be reached or refused a statement; running again is safe.
    #[error("migration {version} ({file}) failed: {error}")]
    Failed {
        version: i32,
        file: &'static str,
        error: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub keyspace: String,
    pub applied: Vec<i32>,
    pub already_applied: Vec<i32>,
}

/// `0002_tables.cql` → `(2, "tables")`.
pub fn parse_file_name(name: &str) -> Option<(i32, &str)> {
    let stem = name.strip_suffix(".cql")?;
    let (digits, label) = stem.split_once('_')?;
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || label.is_empty() {
        return None;
    }
    let version: i32 = digits.parse().ok()?;
    (version > 0).then_some((version, label))
}

/// The compiled-in migrations, checked: versions 1, 2, 3, … in order.
pub fn migrations() -> Vec<Migration> {
    FILES
        .iter()
        .enumerate()
        .map(|(i, (file, template))| {
            let (version, _) = parse_file_name(file).expect("migration file name");
            assert_eq!(
                version as usize,
                i + 1,
                "migrations must be numbered 1, 2, 3, …"
            );
            Migration {
                version,
                file,
                template,
            }
        })
        .collect()
}

/// The schema version this build needs.
pub fn latest_version() -> i32 {
    FILES.len() as i32
}

/// A stable fingerprint of a migration's text (FNV-1a, 64 bit), recorded with the version so
/// an edited, already-applied file is noticed.
pub fn checksum(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Renders a replication map as a CQL map literal. Keys and values may hold only letters,
/// digits, `_`, `-` and `.`: they are quoted into statement text.
pub fn replication_literal(replication: &[(String, String)]) -> Result<String, MigrateError> {
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if !replication.iter().any(|(k, _)| k == "class") {
        return Err(MigrateError::Invalid(
            "replication needs a \"class\" (e.g. NetworkTopologyStrategy)".into(),
        ));
    }
    let mut parts = Vec::with_capacity(replication.len());
    for (k, v) in replication {
        if !safe(k) || !safe(v) {
            return Err(MigrateError::Invalid(format!(
                "replication entry {k:?}: {v:?} may only use letters, digits, _ - ."
            )));
        }
        parts.push(format!("'{k}': '{v}'"));
    }
    Ok(format!("{{{}}}", parts.join(", ")))
}

/// Drops `--` comment lines (before rendering: comments mention placeholders too).
fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fills the placeholders of a migration template, comments removed.
pub fn render(template: &str, options: &ScyllaOptions) -> Result<String, MigrateError> {
    valid_keyspace(&options.keyspace).map_err(MigrateError::Invalid)?;
    let keyspace_options = match options.tablets {
        Tablets::Disabled => "\n    AND tablets = {'enabled': false}",
        Tablets::Enabled => "\n    AND tablets = {'enabled': true}",
        Tablets::ServerDefault => "",
    };
    let values = BTreeMap::from([
        ("{keyspace}", options.keyspace.clone()),
        ("{replication}", replication_literal(&options.replication)?),
        ("{keyspace_options}", keyspace_options.to_owned()),
        (
            "{cursor_retention_seconds}",
            timestamp::retention_ttl(options.cursor_retention).to_string(),
        ),
    ]);
    let mut out = strip_comments(template);
    for (placeholder, value) in values {
        out = out.replace(placeholder, &value);
    }
    Ok(out)
}

/// Splits a rendered file into statements: `--` comment lines dropped, split at `;`.
pub fn statements(rendered: &str) -> Vec<String> {
    strip_comments(rendered)
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The versions recorded in `<keyspace>.schema_migrations`, with their checksums; empty when
/// the keyspace or table does not exist yet.
pub async fn applied_versions(
    session: &Session,
    keyspace: &str,
) -> Result<BTreeMap<i32, String>, StoreError> {
    let exists = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = 'schema_migrations'",
            (keyspace,),
        )
        .await
        .map_err(super::unavailable)?
        .into_rows_result()
        .map_err(super::unavailable)?
        .rows_num()
        > 0;
    if !exists {
        return Ok(BTreeMap::new());
    }
    let rows = session
        .query_unpaged(
            format!("SELECT version, checksum FROM {keyspace}.schema_migrations"),
            (),
        )
        .await
        .map_err(super::unavailable)?
        .into_rows_result()
        .map_err(super::unavailable)?;
    rows.rows::<(i32, Option<String>)>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
        .map(|r| {
            r.map(|(v, c)| (v, c.unwrap_or_default()))
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
}

/// Applies every migration not yet recorded. Safe to run concurrently with itself and with
/// running services (all DDL is `IF NOT EXISTS`; the driver waits for schema agreement).
pub async fn run(options: &ScyllaOptions) -> Result<Report, MigrateError> {
    // Render everything before touching the cluster: a bad setting changes nothing.
    let rendered: Vec<(Migration, Vec<String>)> = migrations()
        .into_iter()
        .map(|m| Ok((m, statements(&render(m.template, options)?))))
        .collect::<Result<_, MigrateError>>()?;
    let session = super::session(options).await?;
    let done = applied_versions(&session, &options.keyspace).await?;
    let mut report = Report {
        keyspace: options.keyspace.clone(),
        ..Report::default()
    };
    for (m, statements) in rendered {
        let sum = checksum(m.template);
        if let Some(recorded) = done.get(&m.version) {
            if *recorded != sum {
                tracing::warn!(
                    version = m.version,
                    file = m.file,
                    "an applied migration changed since; it is not run again"
                );
            }
            report.already_applied.push(m.version);
            continue;
        }
        let failed = |e: &dyn std::fmt::Display| MigrateError::Failed {
            version: m.version,
            file: m.file,
            error: e.to_string(),
        };
        for statement in &statements {
            session
                .query_unpaged(statement.as_str(), ())
                .await
                .map_err(|e| failed(&e))?;
        }
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {}.schema_migrations (version, name, checksum, applied_at) \
                     VALUES (?, ?, ?, toTimestamp(now()))",
                    options.keyspace
                ),
                (m.version, m.file, sum.as_str()),
            )
            .await
            .map_err(|e| failed(&e))?;
        tracing::info!(version = m.version, file = m.file, "migration applied");
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn options() -> ScyllaOptions {
        ScyllaOptions {
            keyspace: "legato_t".into(),
            replication: vec![
                ("class".into(), "NetworkTopologyStrategy".into()),
                ("datacenter1".into(), "3".into()),
            ],
            cursor_retention: Duration::from_secs(7 * 86_400),
            ..ScyllaOptions::default()
        }
    }

    #[test]
    fn file_names_carry_the_version() {
        assert_eq!(parse_file_name("0002_tables.cql"), Some((2, "tables")));
        assert_eq!(
            parse_file_name("0010_more_things.cql"),
            Some((10, "more_things"))
        );
        for bad in [
            "2_tables.cql",
            "0002tables.cql",
            "0002_.cql",
            "0000_x.cql",
            "0002_x.sql",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_file_in_schema_cql_is_compiled_in_and_numbered_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/cql");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cql"))
            .collect();
        on_disk.sort();
        let compiled: Vec<&str> = migrations().iter().map(|m| m.file).collect();
        assert_eq!(on_disk, compiled);
        assert_eq!(latest_version(), compiled.len() as i32);
    }

    #[test]
    fn rendering_fills_every_placeholder() {
        for m in migrations() {
            let text = render(m.template, &options()).unwrap();
            for placeholder in [
                "{keyspace}",
                "{replication}",
                "{keyspace_options}",
                "{cursor_retention_seconds}",
            ] {
                assert!(
                    !text.contains(placeholder),
                    "{placeholder} left in {}",
                    m.file
                );
            }
        }
        let first = statements(&render(migrations()[0].template, &options()).unwrap());
        assert_eq!(
            first[0],
            "CREATE KEYSPACE IF NOT EXISTS legato_t\n    WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'datacenter1': '3'}\n    AND durable_writes = true\n    \
             AND tablets = {'enabled': false}"
        );
        let tables = render(migrations()[1].template, &options()).unwrap();
        assert!(tables.contains("default_time_to_live = 604800"));
    }

    #[test]
    fn every_statement_is_idempotent_ddl_on_the_keyspace() {
        for m in migrations() {
            let all = statements(&render(m.template, &options()).unwrap());
            assert!(!all.is_empty());
            for s in all {
                assert!(s.starts_with("CREATE "), "{s}");
                assert!(s.contains("IF NOT EXISTS legato_t"), "{s}");
                assert!(!s.contains("--"), "comment left in {s}");
            }
        }
    }

    #[test]
    fn statements_split_at_semicolons_without_comments() {
        let text =
            "-- a comment; with a semicolon\nCREATE A;\n\n  -- another\nCREATE B (x int)\n;\n";
        assert_eq!(statements(text), vec!["CREATE A", "CREATE B (x int)"]);
    }

    #[test]
    fn unsafe_settings_are_refused_before_any_cql_is_built() {
        let bad_ks = ScyllaOptions {
            keyspace: "legato; DROP KEYSPACE x".into(),
            ..options()
        };
        assert!(matches!(
            render("{keyspace}", &bad_ks),
            Err(MigrateError::Invalid(_))
        ));
        let bad_rep = ScyllaOptions {
            replication: vec![
                ("class".into(), "SimpleStrategy".into()),
                ("replication_factor".into(), "1'}".into()),
            ],
            ..options()
        };
        assert!(matches!(
            render("x", &bad_rep),
            Err(MigrateError::Invalid(_))
        ));
        let no_class = ScyllaOptions {
            replication: vec![("replication_factor".into(), "1".into())],
            ..options()
        };
        assert!(render("x", &no_class).is_err());
        let server = ScyllaOptions {
            tablets: Tablets::ServerDefault,
            ..options()
        };
        assert_eq!(render("ks{keyspace_options}", &server).unwrap(), "ks");
    }

    #[test]
    fn checksums_are_stable_and_content_sensitive() {
        assert_eq!(checksum(""), "cbf29ce484222325");
        assert_ne!(checksum("a"), checksum("b"));
        assert_eq!(checksum(FILES[0].1), checksum(FILES[0].1));
    }
}
