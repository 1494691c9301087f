//! The ScyllaDB backend: the production store (DESIGN.md "Store"), on the `scylla` driver with
//! prepared statements, token-aware routing (the driver's default policy, optionally pinned to
//! a local datacenter) and one configurable consistency level (default `LOCAL_QUORUM`).
//!
//! ## Last-write-wins without lightweight transactions
//!
//! `apply` reads the current state of each touched entity, decides applied / duplicate /
//! superseded in Rust with the contract's [`Version`](legato_schema::Version) order (the
//! answers the SQLite backend gives), and writes only the applied items, each with
//! `USING TIMESTAMP <the write's LWW clock>`. Two workers racing on one entity both may think
//! they won; ScyllaDB's own cell reconciliation then has to keep the LWW winner. It compares
//! write timestamps first, so whenever the clocks differ the later clock wins, as the contract
//! says. Equal clocks are the hard case: two different writes with equal timestamps would be
//! merged column by column (each column keeps its larger value), leaving a *torn row* — one
//! write's payload with the other's checksum.
//!
//! **Choice: the whole write is one cell.** The `state` blob holds the LWW key, payload,
//! sequence, device and times, so reconciliation can only ever keep one write whole. We chose
//! this over making timestamps unique per content (`clock * K + bits of (deleted, checksum)`)
//! because 64 bits cannot hold a microsecond clock and a 256-bit checksum: such timestamps
//! still collide for some pairs of writes (rarely, but then the row tears), and multiplying
//! the clock pushes timestamps decades into the future, which breaks any other writer's or
//! operator's expectations. With one cell the timestamp stays the plain clock, and for equal
//! clocks ScyllaDB breaks the tie by comparing the cell values as unsigned bytes (the rule
//! both ScyllaDB and Cassandra use so replicas converge). The cell is encoded LWW key first —
//! clock, deleted flag, checksum (see [`rows`]) — so that byte order *is* the contract's
//! order: the tie goes to the delete, then to the higher checksum, exactly as in SQLite.
//! Entity cells never carry a TTL, because ScyllaDB compares TTLs before values on a tie.
//! `rows` property-tests this: encodings order like versions, and merging any set of writes
//! in any order leaves one whole write, the LWW-greatest.
//!
//! ## The change log and cursors
//!
//! `changes` is partitioned by `(user, message_seq >> bucket_bits)`, so a partition holds at
//! most `2^bucket_bits` messages' changes of one user, clustered by sequence, and expires with
//! the cursor retention (TTL). `change_buckets` lists a user's non-empty buckets, so a cursor
//! read visits only those. A log row is an index entry: the reader loads the entity and keeps
//! the row only if the entity's current sequence is the row's (a superseded write's row is
//! stale). Phase order in `apply` (log rows before entity states) guarantees the current
//! state always has its row.
//!
//! A cursor older than the retention might need a row that has expired. `commit_marks` keeps,
//! per hour of commit time, the highest sequence committed; a cursor below the highest
//! sequence committed before the retained window is answered from the entity table instead
//! (complete, slower), so no cursor silently skips a change. The same marks give `max_seq`,
//! assuming (as JetStream's `max_deliver` × `ack_wait` guarantees) that no message is
//! committed more than [`statements::MARKS_CONSIDERED`] active hours after a later one.
//!
//! ## Idempotency
//!
//! Claims need per-key atomicity, so the `idempotency` table uses conditional statements
//! (Paxos) — acceptable because it is the idempotency path, not the entity write path: one
//! round per keyed request, none per item. Records carry `USING TTL` and vanish at expiry;
//! `purge_expired` still deletes what a caller considers expired, through a small expiry index
//! (no table scans). See [`idempotency`].
//!
//! ## Atomicity
//!
//! A message's writes span partitions and are not one transaction (a logged batch would be,
//! at twice the write cost and with batch size limits far below 1000 items × 256 KiB). Every
//! write is idempotent and ordered so that a crash between them is completed by redelivery,
//! which is how the bus already treats a crash between commit and ack.

mod apply;
mod idempotency;
pub mod migrate;
mod reads;
mod rows;
mod statements;
mod timestamp;

use crate::{
    Claim, IdempotencyRecord, MessageWrites, Result, Store, StoreError, StoredEntity, UserStatus,
};
use async_trait::async_trait;
use futures::{Stream, TryStreamExt};
use legato_schema::envelope::ItemOutcome;
use legato_schema::{ChangeSeq, Clock, EntityType, UserId};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use statements::{Cql, Prepared};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The consistency level of every read and write (conditional statements use the matching
/// serial level: `LOCAL_SERIAL`, or `SERIAL` for the multi-datacenter levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsistencyLevel {
    One,
    LocalOne,
    Quorum,
    #[default]
    LocalQuorum,
    /// Writes wait for a quorum in every datacenter; reads use `LOCAL_QUORUM`.
    EachQuorum,
    All,
}

/// Whether the keyspace is created with tablets. ScyllaDB before 2025.4 supports LWT (used by
/// idempotency claims) only on vnode keyspaces, hence the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tablets {
    #[default]
    Disabled,
    Enabled,
    /// Say nothing; for servers that do not know the `tablets` option (before 6.0).
    ServerDefault,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub consistency: ConsistencyLevel,
    /// Route to this datacenter's replicas only (required for `LOCAL_*` levels across DCs).
    pub local_datacenter: Option<String>,
    /// The keyspace's replication map, used when `migrate` creates it.
    pub replication: Vec<(String, String)>,
    pub tablets: Tablets,
    /// How long the change log keeps rows (older cursors are served from the entity table).
    pub cursor_retention: Duration,
    /// A change-log partition holds `2^bucket_bits` bus messages' changes of one user.
    pub bucket_bits: u32,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// `(username, password)` for `PasswordAuthenticator`.
    pub credentials: Option<(String, String)>,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        ScyllaOptions {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "legato".into(),
            consistency: ConsistencyLevel::LocalQuorum,
            local_datacenter: None,
            replication: vec![
                ("class".into(), "NetworkTopologyStrategy".into()),
                ("replication_factor".into(), "3".into()),
            ],
            tablets: Tablets::Disabled,
            cursor_retention: Duration::from_secs(30 * 86_400),
            bucket_bits: 16,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            credentials: None,
        }
    }
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Opens a driver session with the configured routing, timeouts and credentials.
pub(crate) async fn session(options: &ScyllaOptions) -> Result<Session> {
    if options.nodes.is_empty() {
        return Err(StoreError::Unavailable(
            "store.scylla.nodes is empty".into(),
        ));
    }
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &options.local_datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(policy.build())
        .request_timeout(Some(options.request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&options.nodes)
        .connection_timeout(options.connect_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some((user, password)) = &options.credentials {
        builder = builder.user(user, password);
    }
    builder
        .build()
        .await
        .map_err(|e| unavailable(format!("connecting to {:?}: {e}", options.nodes)))
}

/// Runs a statement whose result is not needed.
pub(crate) async fn execute(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
) -> Result<()> {
    session
        .execute_unpaged(statement, values)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// Runs a single-page read and decodes its rows.
pub(crate) async fn rows_of<R>(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
) -> Result<Vec<R>>
where
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    let result = session
        .execute_unpaged(statement, values)
        .await
        .map_err(unavailable)?
        .into_rows_result()
        .map_err(unavailable)?;
    result
        .rows::<R>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
        .map(|r| r.map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect()
}

/// Runs a paged read; rows arrive page by page as the stream is polled.
pub(crate) async fn stream_of<R>(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
) -> Result<impl Stream<Item = Result<R>> + Send + Unpin + 'static>
where
    R: for<'f, 'm> DeserializeRow<'f, 'm> + Send + 'static,
{
    let pager = session
        .execute_iter(statement.clone(), values)
        .await
        .map_err(unavailable)?;
    Ok(pager
        .rows_stream::<R>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
        .map_err(unavailable))
}

pub struct ScyllaStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    session: Session,
    st: Prepared,
    options: ScyllaOptions,
    deployment: String,
    /// The last computed change-log floor and when (see `reads::log_floor`).
    floor: Mutex<Option<(Instant, ChangeSeq)>>,
}

impl ScyllaStore {
    /// Connects to a keyspace that `migrate::run` has brought to this build's schema version.
    pub async fn connect(options: ScyllaOptions) -> Result<ScyllaStore> {
        statements::valid_keyspace(&options.keyspace).map_err(StoreError::Unavailable)?;
        if options.bucket_bits > 40 {
            return Err(StoreError::Unavailable(format!(
                "store.scylla.bucket_bits {} is above 40",
                options.bucket_bits
            )));
        }
        let session = session(&options).await?;
        let versions = migrate::applied_versions(&session, &options.keyspace).await?;
        let have = versions.keys().max().copied().unwrap_or(0);
        if have < migrate::latest_version() {
            return Err(StoreError::Unavailable(format!(
                "keyspace {} is at schema version {have}, this build needs {}: run `legato-ingest migrate`",
                options.keyspace,
                migrate::latest_version()
            )));
        }
        let cql = Cql::new(&options.keyspace);
        let st = Prepared::new(&session, &cql, options.consistency).await?;
        let deployment = deployment_id(&session, &st).await?;
        Ok(ScyllaStore {
            inner: Arc::new(Inner {
                session,
                st,
                options,
                deployment,
                floor: Mutex::new(None),
            }),
        })
    }
}

/// Reads the deployment id, creating it on first use (a one-time conditional insert, so two
/// processes starting together agree on one id).
async fn deployment_id(session: &Session, st: &Prepared) -> Result<String> {
    for _ in 0..2 {
        let found: Vec<(Option<String>,)> =
            rows_of(session, &st.read_meta, ("deployment",)).await?;
        if let Some((Some(id),)) = found.into_iter().next() {
            return Ok(id);
        }
        let fresh = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        execute(session, &st.create_deployment, (fresh,)).await?;
    }
    Err(StoreError::Unavailable(
        "deployment id not readable after creating it".into(),
    ))
}

#[async_trait]
impl Store for ScyllaStore {
    fn backend(&self) -> &'static str {
        "scylla"
    }

    async fn deployment_id(&self) -> Result<String> {
        Ok(self.inner.deployment.clone())
    }

    async fn apply(
        &self,
        batch: Vec<MessageWrites>,
        committed_at: Clock,
    ) -> Result<Vec<Vec<ItemOutcome>>> {
        apply::apply(&self.inner, &batch, committed_at).await
    }

    async fn get(
        &self,
        user: &UserId,
        entity_type: EntityType,
        id: &str,
    ) -> Result<Option<StoredEntity>> {
        reads::get(&self.inner, user, entity_type, id).await
    }

    async fn snapshot(
        &self,
        user: &UserId,
        types: Option<&[EntityType]>,
    ) -> Result<Vec<StoredEntity>> {
        reads::snapshot(&self.inner, user, types).await
    }

    async fn changes_since(
        &self,
        user: &UserId,
        since: ChangeSeq,
        types: Option<&[EntityType]>,
        limit: usize,
    ) -> Result<Vec<StoredEntity>> {
        reads::changes_since(&self.inner, user, since, types, limit).await
    }

    async fn status(&self, user: &UserId) -> Result<UserStatus> {
        reads::status(&self.inner, user).await
    }

    async fn max_seq(&self) -> Result<ChangeSeq> {
        reads::max_seq(&self.inner).await
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
        idempotency::claim(
            &self.inner,
            user,
            key,
            request_hash,
            now,
            stale_before,
            expires_at,
        )
        .await
    }

    async fn complete_idempotency(
        &self,
        user: &UserId,
        key: &str,
        record: IdempotencyRecord,
        expires_at: Clock,
    ) -> Result<()> {
        idempotency::complete(&self.inner, user, key, &record, expires_at).await
    }

    async fn release_idempotency(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
    ) -> Result<()> {
        idempotency::release(&self.inner, user, key, request_hash).await
    }

    async fn request_outcomes(
        &self,
        user: &UserId,
        request_id: &str,
    ) -> Result<Option<Vec<ItemOutcome>>> {
        idempotency::outcomes(&self.inner, user, request_id).await
    }

    /// Deletes records whose `expires_at` has passed `now` before their TTL does. Records
    /// past their TTL are already gone and not counted.
    async fn purge_expired(&self, now: Clock) -> Result<u64> {
        idempotency::purge(&self.inner, now).await
    }

    /// A write probe at the configured consistency: too few replicas turns readiness red.
    async fn health(&self) -> Result<()> {
        execute(
            &self.inner.session,
            &self.inner.st.write_meta,
            ("health", Clock::now().to_iso()),
        )
        .await
    }
}

#[cfg(test)]
mod tests;
