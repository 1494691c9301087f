//! Every CQL statement the ScyllaDB backend runs, as text built from the keyspace name, and
//! their prepared forms. The text is pure and tested: the entity write path carries
//! `USING TIMESTAMP` and no `IF`; only the idempotency statements are conditional.

use super::ConsistencyLevel;
use crate::StoreError;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

/// The partition key value of the single `commit_marks` partition.
pub const COMMITS: &str = "commits";

/// How many of the most recent commit marks `max_seq` and the log floor look at (see the
/// module doc of [`super`]: a message is committed within minutes of its publish, so the
/// highest sequence is always among the last few active hours).
pub const MARKS_CONSIDERED: i32 = 48;

/// Checks a keyspace name: a CQL identifier ScyllaDB accepts unquoted (letters, digits and
/// `_`, starting with a letter, at most 48 characters). It is spliced into statement text, so
/// nothing else may pass.
pub fn valid_keyspace(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid keyspace name {name:?}: use letters, digits and _ (at most 48)"
        ))
    }
}

/// The statement texts, one field per statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cql {
    pub read_state: String,
    pub write_entity: String,
    pub write_change: String,
    pub write_bucket: String,
    pub write_mark: String,
    pub write_last_commit: String,
    pub snapshot: String,
    pub snapshot_types: String,
    pub read_buckets: String,
    pub read_changes: String,
    pub read_marks: String,
    pub read_marks_before: String,
    pub read_last_commit: String,
    pub read_meta: String,
    pub write_meta: String,
    pub create_deployment: String,
    pub read_outcomes: String,
    pub read_outcomes_writetime: String,
    pub write_outcomes: String,
    pub delete_outcomes: String,
    pub claim_insert: String,
    pub claim_takeover: String,
    pub complete: String,
    pub release: String,
    pub delete_expired_claim: String,
    pub write_expiry: String,
    pub read_expiry: String,
    pub delete_expiry: String,
}

impl Cql {
    pub fn new(ks: &str) -> Cql {
        Cql {
            read_state: format!(
                "SELECT state FROM {ks}.entities WHERE user = ? AND type = ? AND id = ?"
            ),
            write_entity: format!(
                "INSERT INTO {ks}.entities (user, type, id, state) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
            ),
            write_change: format!(
                "INSERT INTO {ks}.changes (user, bucket, seq, type, id) VALUES (?, ?, ?, ?, ?) USING TTL ?"
            ),
            write_bucket: format!(
                "INSERT INTO {ks}.change_buckets (user, bucket) VALUES (?, ?) USING TTL ?"
            ),
            write_mark: format!(
                "UPDATE {ks}.commit_marks USING TIMESTAMP ? SET max_seq = ? WHERE k = ? AND hour = ?"
            ),
            write_last_commit: format!(
                "UPDATE {ks}.users USING TIMESTAMP ? SET last_commit = ? WHERE user = ?"
            ),
            snapshot: format!("SELECT type, id, state FROM {ks}.entities WHERE user = ?"),
            snapshot_types: format!(
                "SELECT type, id, state FROM {ks}.entities WHERE user = ? AND type IN ?"
            ),
            read_buckets: format!(
                "SELECT bucket FROM {ks}.change_buckets WHERE user = ? AND bucket >= ?"
            ),
            read_changes: format!(
                "SELECT seq, type, id FROM {ks}.changes WHERE user = ? AND bucket = ? AND seq > ?"
            ),
            read_marks: format!(
                "SELECT max_seq FROM {ks}.commit_marks WHERE k = ? ORDER BY hour DESC LIMIT {MARKS_CONSIDERED}"
            ),
            read_marks_before: format!(
                "SELECT max_seq FROM {ks}.commit_marks WHERE k = ? AND hour < ? ORDER BY hour DESC LIMIT {MARKS_CONSIDERED}"
            ),
            read_last_commit: format!("SELECT last_commit FROM {ks}.users WHERE user = ?"),
            read_meta: format!("SELECT value FROM {ks}.meta WHERE key = ?"),
            write_meta: format!("INSERT INTO {ks}.meta (key, value) VALUES (?, ?)"),
            create_deployment: format!(
                "INSERT INTO {ks}.meta (key, value) VALUES ('deployment', ?) IF NOT EXISTS"
            ),
            read_outcomes: format!(
                "SELECT outcomes, expires_at FROM {ks}.request_outcomes WHERE user = ? AND request_id = ?"
            ),
            read_outcomes_writetime: format!(
                "SELECT expires_at, WRITETIME(outcomes) FROM {ks}.request_outcomes WHERE user = ? AND request_id = ?"
            ),
            write_outcomes: format!(
                "INSERT INTO {ks}.request_outcomes (user, request_id, outcomes, expires_at) VALUES (?, ?, ?, ?) USING TTL ?"
            ),
            delete_outcomes: format!(
                "DELETE FROM {ks}.request_outcomes USING TIMESTAMP ? WHERE user = ? AND request_id = ?"
            ),
            claim_insert: format!(
                "INSERT INTO {ks}.idempotency (user, key, request_hash, done, claimed_at, expires_at) \
                 VALUES (?, ?, ?, false, ?, ?) IF NOT EXISTS USING TTL ?"
            ),
            claim_takeover: format!(
                "UPDATE {ks}.idempotency USING TTL ? SET request_hash = ?, done = false, status = null, \
                 body = null, claimed_at = ?, expires_at = ? WHERE user = ? AND key = ? \
                 IF request_hash = ? AND done = ? AND claimed_at = ? AND expires_at = ?"
            ),
            complete: format!(
                "UPDATE {ks}.idempotency USING TTL ? SET request_hash = ?, done = true, status = ?, \
                 body = ?, claimed_at = ?, expires_at = ? WHERE user = ? AND key = ? IF request_hash = ?"
            ),
            release: format!(
                "DELETE FROM {ks}.idempotency WHERE user = ? AND key = ? IF request_hash = ? AND done = false"
            ),
            delete_expired_claim: format!(
                "DELETE FROM {ks}.idempotency WHERE user = ? AND key = ? IF expires_at <= ?"
            ),
            write_expiry: format!(
                "INSERT INTO {ks}.expiry_index (hour, shard, expires_at, kind, user, key) \
                 VALUES (?, ?, ?, ?, ?, ?) USING TTL ?"
            ),
            read_expiry: format!(
                "SELECT expires_at, kind, user, key FROM {ks}.expiry_index \
                 WHERE hour = ? AND shard = ? AND expires_at <= ?"
            ),
            delete_expiry: format!(
                "DELETE FROM {ks}.expiry_index WHERE hour = ? AND shard = ? AND expires_at = ? \
                 AND kind = ? AND user = ? AND key = ?"
            ),
        }
    }

    #[cfg(test)]
    /// The statements of the entity write path (`Store::apply` minus the outcome record of an
    /// idempotent request): these must never be conditional.
    pub fn write_path(&self) -> [&str; 6] {
        [
            &self.write_entity,
            &self.write_change,
            &self.write_bucket,
            &self.write_mark,
            &self.write_last_commit,
            &self.write_outcomes,
        ]
    }

    #[cfg(test)]
    /// The conditional (Paxos) statements: only the idempotency key table and the one-time
    /// deployment id.
    pub fn conditional(&self) -> [&str; 6] {
        [
            &self.create_deployment,
            &self.claim_insert,
            &self.claim_takeover,
            &self.complete,
            &self.release,
            &self.delete_expired_claim,
        ]
    }
}

/// Whether a statement is a lightweight transaction (has an `IF` clause).
pub fn is_conditional(cql: &str) -> bool {
    cql.split_whitespace().any(|w| w.eq_ignore_ascii_case("IF"))
}

impl ConsistencyLevel {
    fn for_writes(self) -> Consistency {
        match self {
            ConsistencyLevel::One => Consistency::One,
            ConsistencyLevel::LocalOne => Consistency::LocalOne,
            ConsistencyLevel::Quorum => Consistency::Quorum,
            ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyLevel::EachQuorum => Consistency::EachQuorum,
            ConsistencyLevel::All => Consistency::All,
        }
    }

    /// EACH_QUORUM is a write-only level; its reads use LOCAL_QUORUM, which still sees every
    /// write acknowledged by a quorum in each datacenter.
    fn for_reads(self) -> Consistency {
        match self {
            ConsistencyLevel::EachQuorum => Consistency::LocalQuorum,
            other => other.for_writes(),
        }
    }

    /// Paxos scope of the conditional statements: local unless the level spans datacenters.
    fn serial(self) -> SerialConsistency {
        match self {
            ConsistencyLevel::Quorum | ConsistencyLevel::EachQuorum | ConsistencyLevel::All => {
                SerialConsistency::Serial
            }
            _ => SerialConsistency::LocalSerial,
        }
    }
}

/// The prepared statements, one per [`Cql`] field.
pub struct Prepared {
    pub read_state: PreparedStatement,
    pub write_entity: PreparedStatement,
    pub write_change: PreparedStatement,
    pub write_bucket: PreparedStatement,
    pub write_mark: PreparedStatement,
    pub write_last_commit: PreparedStatement,
    pub snapshot: PreparedStatement,
    pub snapshot_types: PreparedStatement,
    pub read_buckets: PreparedStatement,
    pub read_changes: PreparedStatement,
    pub read_marks: PreparedStatement,
    pub read_marks_before: PreparedStatement,
    pub read_last_commit: PreparedStatement,
    pub read_meta: PreparedStatement,
    pub write_meta: PreparedStatement,
    pub create_deployment: PreparedStatement,
    pub read_outcomes: PreparedStatement,
    pub read_outcomes_writetime: PreparedStatement,
    pub write_outcomes: PreparedStatement,
    pub delete_outcomes: PreparedStatement,
    pub claim_insert: PreparedStatement,
    pub claim_takeover: PreparedStatement,
    pub complete: PreparedStatement,
    pub release: PreparedStatement,
    pub delete_expired_claim: PreparedStatement,
    pub write_expiry: PreparedStatement,
    pub read_expiry: PreparedStatement,
    pub delete_expiry: PreparedStatement,
}

/// Page size of the paged reads (snapshot, change log).
pub const PAGE_SIZE: i32 = 1_000;

impl Prepared {
    pub async fn new(
        session: &Session,
        cql: &Cql,
        level: ConsistencyLevel,
    ) -> Result<Prepared, StoreError> {
        let prepare = |text: &str| {
            let text = text.to_owned();
            async move {
                let mut p = session
                    .prepare(text.as_str())
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("preparing {text:?}: {e}")))?;
                let read = text.starts_with("SELECT");
                p.set_consistency(if read {
                    level.for_reads()
                } else {
                    level.for_writes()
                });
                p.set_serial_consistency(Some(level.serial()));
                // Fixed timestamps and TTL-bounded rows make every plain statement safe to
                // retry or speculate; a conditional one is not.
                p.set_is_idempotent(!is_conditional(&text));
                p.set_page_size(PAGE_SIZE);
                Ok::<_, StoreError>(p)
            }
        };
        Ok(Prepared {
            read_state: prepare(&cql.read_state).await?,
            write_entity: prepare(&cql.write_entity).await?,
            write_change: prepare(&cql.write_change).await?,
            write_bucket: prepare(&cql.write_bucket).await?,
            write_mark: prepare(&cql.write_mark).await?,
            write_last_commit: prepare(&cql.write_last_commit).await?,
            snapshot: prepare(&cql.snapshot).await?,
            snapshot_types: prepare(&cql.snapshot_types).await?,
            read_buckets: prepare(&cql.read_buckets).await?,
            read_changes: prepare(&cql.read_changes).await?,
            read_marks: prepare(&cql.read_marks).await?,
            read_marks_before: prepare(&cql.read_marks_before).await?,
            read_last_commit: prepare(&cql.read_last_commit).await?,
            read_meta: prepare(&cql.read_meta).await?,
            write_meta: prepare(&cql.write_meta).await?,
            create_deployment: prepare(&cql.create_deployment).await?,
            read_outcomes: prepare(&cql.read_outcomes).await?,
            read_outcomes_writetime: prepare(&cql.read_outcomes_writetime).await?,
            write_outcomes: prepare(&cql.write_outcomes).await?,
            delete_outcomes: prepare(&cql.delete_outcomes).await?,
            claim_insert: prepare(&cql.claim_insert).await?,
            claim_takeover: prepare(&cql.claim_takeover).await?,
            complete: prepare(&cql.complete).await?,
            release: prepare(&cql.release).await?,
            delete_expired_claim: prepare(&cql.delete_expired_claim).await?,
            write_expiry: prepare(&cql.write_expiry).await?,
            read_expiry: prepare(&cql.read_expiry).await?,
            delete_expiry: prepare(&cql.delete_expiry).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entity_write_path_has_no_lightweight_transactions() {
        let cql = Cql::new("legato");
        for text in cql.write_path() {
            assert!(!is_conditional(text), "{text}");
        }
        assert!(cql.write_entity.ends_with("USING TIMESTAMP ?"));
        assert!(
            cql.write_entity
                .contains("(user, type, id, state) VALUES (?, ?, ?, ?)"),
            "the whole write is one cell next to the key"
        );
        for text in cql.conditional() {
            assert!(is_conditional(text), "{text}");
        }
        assert!(!is_conditional("SELECT identifier FROM t"));
    }

    #[test]
    fn only_idempotency_and_the_deployment_id_use_paxos() {
        let cql = Cql::new("ks");
        let all = [
            &cql.read_state,
            &cql.write_entity,
            &cql.write_change,
            &cql.write_bucket,
            &cql.write_mark,
            &cql.write_last_commit,
            &cql.snapshot,
            &cql.snapshot_types,
            &cql.read_buckets,
            &cql.read_changes,
            &cql.read_marks,
            &cql.read_marks_before,
            &cql.read_last_commit,
            &cql.read_meta,
            &cql.write_meta,
            &cql.create_deployment,
            &cql.read_outcomes,
            &cql.read_outcomes_writetime,
            &cql.write_outcomes,
            &cql.delete_outcomes,
            &cql.claim_insert,
            &cql.claim_takeover,
            &cql.complete,
            &cql.release,
            &cql.delete_expired_claim,
            &cql.write_expiry,
            &cql.read_expiry,
            &cql.delete_expiry,
        ];
        let conditional: Vec<&String> = all.into_iter().filter(|t| is_conditional(t)).collect();
        assert_eq!(conditional.len(), cql.conditional().len());
        for text in conditional {
            assert!(
                text.contains(".idempotency ") || text.contains("'deployment'"),
                "{text}"
            );
        }
        for text in all {
            assert!(text.contains(" ks."), "unqualified table in {text}");
        }
    }

    #[test]
    fn records_with_a_lifetime_are_written_with_ttls() {
        let cql = Cql::new("ks");
        for text in [
            &cql.write_change,
            &cql.write_bucket,
            &cql.write_outcomes,
            &cql.claim_insert,
            &cql.claim_takeover,
            &cql.complete,
            &cql.write_expiry,
        ] {
            assert!(text.contains("USING TTL ?"), "{text}");
        }
        // entity cells never expire: a TTL would change how ScyllaDB breaks timestamp ties
        assert!(!cql.write_entity.contains("TTL"));
        // max registers: the highest sequence / commit time wins by timestamp
        assert!(cql.write_mark.contains("USING TIMESTAMP ?"));
        assert!(cql.write_last_commit.contains("USING TIMESTAMP ?"));
    }

    #[test]
    fn claims_rewrite_every_column_so_expiry_stays_whole() {
        let cql = Cql::new("ks");
        for text in [&cql.claim_takeover, &cql.complete] {
            for col in [
                "request_hash = ?",
                "done =",
                "status =",
                "body =",
                "claimed_at = ?",
                "expires_at = ?",
            ] {
                assert!(text.contains(col), "{col} missing in {text}");
            }
        }
    }

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        for ok in ["legato", "legato_test_1a2b", "L"] {
            assert!(valid_keyspace(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1legato",
            "legato; DROP",
            "leg-ato",
            "\"quoted\"",
            &"x".repeat(49),
        ] {
            assert!(valid_keyspace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_quorum_reads_locally_and_serial_scope_follows_the_level() {
        assert_eq!(
            ConsistencyLevel::EachQuorum.for_reads(),
            Consistency::LocalQuorum
        );
        assert_eq!(
            ConsistencyLevel::EachQuorum.for_writes(),
            Consistency::EachQuorum
        );
        assert_eq!(
            ConsistencyLevel::LocalQuorum.serial(),
            SerialConsistency::LocalSerial
        );
        assert_eq!(ConsistencyLevel::Quorum.serial(), SerialConsistency::Serial);
        assert_eq!(ConsistencyLevel::One.for_reads(), Consistency::One);
    }
}
