//! The embedded SQLite backend: one file in WAL mode, one writer connection and a small pool
//! of readers. Several processes may open the same file (two ingest workers in tests); the
//! writer takes SQLite's write lock per batch (`BEGIN IMMEDIATE`) and waits on `busy_timeout`.
//!
//! LWW is the row-value comparison in the upsert's `WHERE`: a write replaces the row only when
//! `(clock, deleted, checksum)` is greater. When the upsert changes nothing, one read tells a
//! duplicate from a superseded write.

mod checkpoint;
mod idempotency;

pub use checkpoint::Checkpoint;

use crate::{
    Claim, IdempotencyRecord, MessageWrites, Result, Store, StoreError, StoredEntity, UserStatus,
};
use async_trait::async_trait;
use legato_schema::envelope::ItemOutcome;
use legato_schema::{ChangeSeq, Clock, EntityType, UserId};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entities (
    user         TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    clock        INTEGER NOT NULL,
    deleted      INTEGER NOT NULL,
    deleted_at   INTEGER,
    checksum     TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    device_id    TEXT,
    committed_at INTEGER NOT NULL,
    PRIMARY KEY (user, type, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entities_by_user_seq ON entities (user, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    user         TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    done         INTEGER NOT NULL,
    status       INTEGER,
    body         TEXT,
    claimed_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (user, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS request_results (
    user       TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    outcomes   TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (user, request_id)
) WITHOUT ROWID;
";

const UPSERT: &str = "
INSERT INTO entities (user, type, id, payload, clock, deleted, deleted_at, checksum, seq, device_id, committed_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
ON CONFLICT (user, type, id) DO UPDATE SET
    payload = excluded.payload, clock = excluded.clock, deleted = excluded.deleted,
    deleted_at = excluded.deleted_at, checksum = excluded.checksum, seq = excluded.seq,
    device_id = excluded.device_id, committed_at = excluded.committed_at
WHERE (excluded.clock, excluded.deleted, excluded.checksum)
    > (entities.clock, entities.deleted, entities.checksum)";

/// Dirty pages a write transaction may hold before SQLite spills them (128 MiB at 4 KiB).
const WRITER_SPILL_PAGES: i64 = 32 * 1024;

const COLUMNS: &str =
    "type, id, payload, clock, deleted, deleted_at, checksum, seq, device_id, committed_at";

/// How durable a commit is: `Full` survives power loss, `Normal` (WAL) survives a process
/// crash. Ingest acks a message only after the commit, so `Full` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    pub busy_timeout: Duration,
    pub max_readers: usize,
    pub checkpoint: Checkpoint,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            max_readers: 4,
            checkpoint: Checkpoint::default(),
        }
    }
}

pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    deployment: String,
    /// Stops the background checkpointer when the store is dropped.
    _checkpointer: Option<std::sync::mpsc::Sender<()>>,
    /// RESTART checkpoints the background checkpointer has completed (the tests watch it).
    #[cfg_attr(not(test), expect(dead_code))]
    restarts: Arc<std::sync::atomic::AtomicU64>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its schema.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        // Processes starting together on a new file race to switch it to WAL and create the
        // schema; SQLite answers some of those steps "locked" at once rather than waiting on
        // the busy timeout, so the whole preparation is retried within that timeout.
        let deadline = std::time::Instant::now() + options.busy_timeout;
        let (writer, deployment) = loop {
            match prepare_writer(&path, &options) {
                Ok(prepared) => break prepared,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        let restarts = Arc::default();
        let checkpointer = checkpoint::spawn(path.clone(), options.clone(), Arc::clone(&restarts));
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                options,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                deployment,
                _checkpointer: checkpointer,
                restarts,
            }),
        })
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().expect("writer poisoned");
            f(&mut conn).map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().expect("reader pool poisoned").pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.path, &inner.options, true)?,
            };
            let result = f(&conn).map_err(unavailable);
            let mut pool = inner.readers.lock().expect("reader pool poisoned");
            if pool.len() < inner.options.max_readers {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(unavailable)?
    }
}

/// The writer connection with the schema in place, and the deployment id.
fn prepare_writer(path: &Path, options: &SqliteOptions) -> rusqlite::Result<(Connection, String)> {
    let writer = connect(path, options, false)?;
    // A batch of 128 messages of 100 items dirties thousands of pages. With SQLite's default
    // 2 MB cache they are spilled into the WAL mid-transaction and written again at commit,
    // reading frames back to redo their checksums. Dirty pages stay in memory up to the bound
    // instead (the cache shrinks back to its size once they are written).
    writer.pragma_update(None, "cache_spill", WRITER_SPILL_PAGES)?;
    if let Checkpoint::Background { restart_pages, .. } = options.checkpoint {
        // A safety net only: the checkpointer keeps the WAL well under this.
        let pages = restart_pages.saturating_mul(checkpoint::SAFETY_FACTOR);
        writer.pragma_update(None, "wal_autocheckpoint", pages)?;
    }
    writer.execute_batch(SCHEMA)?;
    writer.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('deployment', ?1)",
        [uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()],
    )?;
    let deployment =
        writer.query_row("SELECT value FROM meta WHERE key = 'deployment'", [], |r| {
            r.get(0)
        })?;
    Ok((writer, deployment))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn open_connection(path: &Path, options: &SqliteOptions, read_only: bool) -> Result<Connection> {
    connect(path, options, read_only).map_err(unavailable)
}

fn connect(path: &Path, options: &SqliteOptions, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(options.busy_timeout)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    let sync = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    Ok(conn)
}

fn row_to_entity(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEntity> {
    let type_name: String = row.get(0)?;
    let entity_type = type_name.parse::<EntityType>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(StoredEntity {
        entity_type,
        id: row.get(1)?,
        payload: row.get(2)?,
        clock: Clock(row.get(3)?),
        deleted: row.get(4)?,
        deleted_at: row.get::<_, Option<i64>>(5)?.map(Clock),
        checksum: row.get(6)?,
        seq: ChangeSeq(row.get::<_, i64>(7)? as u64),
        device_id: row.get(8)?,
        committed_at: Clock(row.get(9)?),
    })
}

fn type_filter(types: Option<&[EntityType]>) -> (String, Vec<String>) {
    match types {
        None => (String::new(), Vec::new()),
        Some(types) => {
            let names: Vec<String> = types.iter().map(|t| t.as_str().to_owned()).collect();
            let marks = vec!["?"; names.len()].join(", ");
            (format!(" AND type IN ({marks})"), names)
        }
    }
}

fn apply_blocking(
    conn: &mut Connection,
    batch: &[MessageWrites],
    committed_at: Clock,
) -> rusqlite::Result<Vec<Vec<ItemOutcome>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut all = Vec::with_capacity(batch.len());
    {
        let mut upsert = tx.prepare_cached(UPSERT)?;
        let mut current = tx.prepare_cached(
            "SELECT clock, deleted, seq, checksum FROM entities WHERE user = ?1 AND type = ?2 AND id = ?3",
        )?;
        for message in batch {
            let mut outcomes = Vec::with_capacity(message.items.len());
            for (index, item) in message.items.iter().enumerate() {
                let seq = ChangeSeq::new(message.message_seq, index);
                let changed = upsert.execute(params![
                    message.user.as_str(),
                    item.entity_type.as_str(),
                    item.id.as_str(),
                    item.payload,
                    item.clock.as_micros(),
                    item.deleted,
                    item.deleted_at.map(Clock::as_micros),
                    item.checksum,
                    seq.0 as i64,
                    message.device_id.as_ref().map(|d| d.as_str()),
                    committed_at.as_micros(),
                ])?;
                if changed == 1 {
                    outcomes.push(ItemOutcome::Applied { seq: seq.0 });
                    continue;
                }
                let (clock, deleted, stored_seq, checksum): (i64, bool, i64, String) = current
                    .query_row(
                        params![
                            message.user.as_str(),
                            item.entity_type.as_str(),
                            item.id.as_str()
                        ],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )?;
                // The upsert changed nothing, so the stored version is >= this write.
                let identical = Clock(clock) == item.clock
                    && deleted == item.deleted
                    && checksum == item.checksum;
                outcomes.push(if identical {
                    ItemOutcome::Duplicate {
                        seq: stored_seq as u64,
                    }
                } else {
                    ItemOutcome::Superseded {
                        seq: stored_seq as u64,
                        server_clock: Clock(clock),
                        server_deleted: deleted,
                    }
                });
            }
            if let Some(record) = &message.record {
                idempotency::record_outcomes(&tx, &message.user, record, &outcomes)?;
            }
            all.push(outcomes);
        }
    }
    tx.commit()?;
    Ok(all)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn deployment_id(&self) -> Result<String> {
        Ok(self.inner.deployment.clone())
    }

    async fn apply(
        &self,
        batch: Vec<MessageWrites>,
        committed_at: Clock,
    ) -> Result<Vec<Vec<ItemOutcome>>> {
        self.write(move |conn| apply_blocking(conn, &batch, committed_at))
            .await
    }

    async fn get(
        &self,
        user: &UserId,
        entity_type: EntityType,
        id: &str,
    ) -> Result<Option<StoredEntity>> {
        let (user, id) = (user.as_str().to_owned(), id.to_owned());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM entities WHERE user = ?1 AND type = ?2 AND id = ?3"
            ))?
            .query_row(params![user, entity_type.as_str(), id], row_to_entity)
            .optional()
        })
        .await
    }

    async fn snapshot(
        &self,
        user: &UserId,
        types: Option<&[EntityType]>,
    ) -> Result<Vec<StoredEntity>> {
        let (filter, names) = type_filter(types);
        let user = user.as_str().to_owned();
        self.read(move |c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM entities WHERE user = ? AND deleted = 0{filter} ORDER BY seq"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let params = std::iter::once(user).chain(names);
            stmt.query_map(rusqlite::params_from_iter(params), row_to_entity)?
                .collect()
        })
        .await
    }

    async fn changes_since(
        &self,
        user: &UserId,
        since: ChangeSeq,
        types: Option<&[EntityType]>,
        limit: usize,
    ) -> Result<Vec<StoredEntity>> {
        let (filter, names) = type_filter(types);
        let user = user.as_str().to_owned();
        self.read(move |c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM entities WHERE user = ? AND seq > ?{filter} ORDER BY seq LIMIT ?"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let mut values: Vec<rusqlite::types::Value> = vec![user.into(), (since.0 as i64).into()];
            values.extend(names.into_iter().map(Into::into));
            values.push((limit.min(i64::MAX as usize) as i64).into());
            stmt.query_map(rusqlite::params_from_iter(values), row_to_entity)?
                .collect()
        })
        .await
    }

    async fn status(&self, user: &UserId) -> Result<UserStatus> {
        let user = user.as_str().to_owned();
        self.read(move |c| {
            c.prepare_cached(
                "SELECT COALESCE(SUM(deleted = 0), 0), MAX(committed_at) FROM entities WHERE user = ?1",
            )?
            .query_row([user], |r| {
                Ok(UserStatus {
                    entity_count: r.get::<_, i64>(0)? as u64,
                    last_commit: r.get::<_, Option<i64>>(1)?.map(Clock),
                })
            })
        })
        .await
    }

    async fn max_seq(&self) -> Result<ChangeSeq> {
        self.read(|c| {
            c.query_row("SELECT COALESCE(MAX(seq), 0) FROM entities", [], |r| {
                Ok(ChangeSeq(r.get::<_, i64>(0)? as u64))
            })
        })
        .await
    }

    async fn claim_idempotency(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
        now: Clock,
        stale_before: Clock,
        expires_at: Clock,
    ) -> Result<Claim> {
        let (user, key, hash) = (user.clone(), key.to_owned(), request_hash.to_owned());
        self.write(move |conn| {
            idempotency::claim(conn, &user, &key, &hash, now, stale_before, expires_at)
        })
        .await
    }

    async fn complete_idempotency(
        &self,
        user: &UserId,
        key: &str,
        record: IdempotencyRecord,
        expires_at: Clock,
    ) -> Result<()> {
        let (user, key) = (user.clone(), key.to_owned());
        self.write(move |conn| idempotency::complete(conn, &user, &key, &record, expires_at))
            .await
    }

    async fn release_idempotency(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
    ) -> Result<()> {
        let (user, key, hash) = (user.clone(), key.to_owned(), request_hash.to_owned());
        self.write(move |conn| idempotency::release(conn, &user, &key, &hash))
            .await
    }

    async fn request_outcomes(
        &self,
        user: &UserId,
        request_id: &str,
    ) -> Result<Option<Vec<ItemOutcome>>> {
        let (user, request_id) = (user.clone(), request_id.to_owned());
        let raw = self
            .read(move |c| idempotency::outcomes(c, &user, &request_id, Clock::now()))
            .await?;
        raw.map(|text| serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn purge_expired(&self, now: Clock) -> Result<u64> {
        self.write(move |conn| idempotency::purge(conn, now)).await
    }

    async fn health(&self) -> Result<()> {
        // A write probe: a read-only or locked file must turn readiness red.
        self.write(|conn| {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('health', '1') ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [],
            )
            .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    crate::conformance_tests!(|| async {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("t.db"), SqliteOptions::default()).unwrap();
        (store, dir)
    });

    #[test]
    fn processes_starting_together_on_a_new_file_all_open_it() {
        // Separate connections, as separate processes would have (edge and ingest start
        // together in `ops/dev.sh` and the benchmarks).
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let ids: Vec<String> = std::thread::scope(|scope| {
                let openers: Vec<_> = (0..6)
                    .map(|_| {
                        scope.spawn(|| {
                            let store = SqliteStore::open(&path, SqliteOptions::default())
                                .expect("open while others open");
                            store.inner.deployment.clone()
                        })
                    })
                    .collect();
                openers.into_iter().map(|o| o.join().unwrap()).collect()
            });
            assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        }
    }

    /// Writes `items` entries of 2 KB each, one message per 4 (each commit adds ~3 pages).
    async fn write_pages(store: &SqliteStore, items: usize) {
        let user = crate::conformance::fresh_user("ckpt");
        for chunk in (0..items).collect::<Vec<_>>().chunks(4) {
            let writes = chunk
                .iter()
                .map(|n| {
                    let body = serde_json::json!("x".repeat(2048));
                    crate::conformance::item(EntityType::Goal, &format!("g{n}"), 1, false, body)
                })
                .collect();
            crate::conformance::apply_one(store, &user, writes).await;
        }
    }

    /// Frames in the WAL (since it last started over), read by a checkpoint of its own.
    fn wal_frames(path: &Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        checkpoint::run(&conn, "PASSIVE").unwrap().log
    }

    #[tokio::test]
    async fn the_background_checkpointer_starts_the_wal_over_off_the_commit_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let options = SqliteOptions {
            checkpoint: Checkpoint::Background {
                interval: Duration::from_millis(5),
                restart_pages: 64,
            },
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(&path, options).unwrap();
        let restarts = Arc::clone(&store.inner.restarts);
        // A reader on an old snapshot: the checkpointer can neither copy what came after it
        // nor start the WAL over, and the writer goes on (it waits 10 ms at most).
        let reader = Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM meta;")
            .unwrap();
        // Past `restart_pages`, under the writer's own automatic checkpoint (4 × 64 pages).
        write_pages(&store, 100).await;
        assert_eq!(restarts.load(Ordering::Relaxed), 0);
        reader.execute_batch("COMMIT").unwrap();
        wait_until(
            || restarts.load(Ordering::Relaxed) > 0,
            "a RESTART checkpoint",
        );
        // The writer's own automatic checkpoint is only a safety net, at 4 × 64 pages.
        let autocheckpoint: i64 = store
            .inner
            .writer
            .lock()
            .unwrap()
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(autocheckpoint, 256);
        // The next commit writes the WAL from its start: it holds that commit's frames only.
        write_pages(&store, 1).await;
        // The thread stops with the store, dropping its share of the count; then nothing else
        // holds the checkpoint lock while the WAL is measured (`reader` keeps the file open,
        // so closing the store's connections leaves the WAL as it is).
        drop(store);
        wait_until(
            || Arc::strong_count(&restarts) == 1,
            "the checkpointer to stop",
        );
        let frames = wal_frames(&path);
        assert!((1..16).contains(&frames), "{frames}");
    }

    fn wait_until(done: impl Fn() -> bool, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "waited 30 s for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn inline_checkpoints_leave_the_wal_to_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let options = SqliteOptions {
            checkpoint: Checkpoint::Inline,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(&path, options).unwrap();
        write_pages(&store, 100).await;
        // Under SQLite's 1,000-page automatic checkpoint nothing went back into the file.
        assert!(wal_frames(&path) > 64, "{}", wal_frames(&path));
        assert!(store.inner._checkpointer.is_none());
    }

    #[tokio::test]
    async fn deployment_id_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let first = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let id = first.deployment_id().await.unwrap();
        drop(first);
        let second = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        assert_eq!(second.deployment_id().await.unwrap(), id);
        assert_eq!(id.len(), 16);
    }

    #[tokio::test]
    async fn read_only_file_fails_health() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store.health().await.unwrap();
        // Another connection holding the write lock makes the probe fail after busy_timeout.
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let fast = SqliteStore::open(
            &path,
            SqliteOptions {
                busy_timeout: Duration::from_millis(50),
                ..Default::default()
            },
        );
        match fast {
            Err(StoreError::Unavailable(_)) => {}
            Ok(s) => assert!(matches!(s.health().await, Err(StoreError::Unavailable(_)))),
            Err(e) => panic!("unexpected {e}"),
        }
        blocker.execute_batch("ROLLBACK").unwrap();
        store.health().await.unwrap();
    }
}
