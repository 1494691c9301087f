//! The store: the source of truth for entity state (DESIGN.md "Store").
//!
//! [`Store`] is the one interface the workers and the edge use. Backends: [`sqlite`] (the
//! embedded default) and [`scylla`] (production). Every backend must pass the [`conformance`]
//! suite, which states the trait's contract as executable checks.

pub mod conformance;
pub mod scylla;
pub mod sqlite;

use async_trait::async_trait;
use legato_schema::envelope::ItemOutcome;
use legato_schema::write::WriteItem;
use legato_schema::{ChangeSeq, Clock, DeviceId, EntityType, UserId, Version};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or refuses writes now; the caller retries later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored data violates an invariant; retrying will not help.
    #[error("store data invalid: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The writes of one bus message: its items get change sequences
/// `ChangeSeq::new(message_seq, index)`.
#[derive(Debug, Clone)]
pub struct MessageWrites {
    pub user: UserId,
    pub message_seq: u64,
    pub device_id: Option<DeviceId>,
    /// Shared with the caller, which keeps them for what follows the commit.
    pub items: Arc<[WriteItem]>,
    /// Keep this message's outcomes under a request id, in the same transaction, so a retry
    /// of an idempotent request can read them (see [`Store::request_outcomes`]).
    pub record: Option<OutcomeRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeRecord {
    pub request_id: String,
    pub expires_at: Clock,
}

/// The stored answer of an idempotent request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub status: u16,
    pub body: String,
}

/// The result of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key and must complete or release it.
    Claimed,
    /// Another request with this key is executing.
    InFlight { request_hash: String },
    /// A request with this key ran; its answer is stored.
    Done(IdempotencyRecord),
}

/// An entity as stored: the state of its LWW-greatest write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntity {
    pub entity_type: EntityType,
    pub id: String,
    /// Canonical JSON text of the winning write's payload.
    pub payload: String,
    pub clock: Clock,
    pub deleted: bool,
    pub deleted_at: Option<Clock>,
    pub checksum: String,
    pub seq: ChangeSeq,
    pub device_id: Option<String>,
    pub committed_at: Clock,
}

impl StoredEntity {
    pub fn version(&self) -> Version {
        Version {
            clock: self.clock,
            deleted: self.deleted,
            checksum: self.checksum.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserStatus {
    /// Live (non-deleted) entities.
    pub entity_count: u64,
    /// When a write of this user was last committed.
    pub last_commit: Option<Clock>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"scylla"`, for metrics and logs.
    fn backend(&self) -> &'static str;

    /// A stable id of this store's data set; cursors carry it so a cursor from another
    /// deployment is recognised.
    async fn deployment_id(&self) -> Result<String>;

    /// Applies the writes of several messages atomically per message, under LWW, and
    /// returns one outcome per item in order. `Duplicate` and `Superseded` carry the stored
    /// write's sequence, so a caller can tell a redelivery of its own message
    /// (`seq == ChangeSeq::new(message_seq, index)`) from a true duplicate.
    async fn apply(
        &self,
        batch: Vec<MessageWrites>,
        committed_at: Clock,
    ) -> Result<Vec<Vec<ItemOutcome>>>;

    async fn get(
        &self,
        user: &UserId,
        entity_type: EntityType,
        id: &str,
    ) -> Result<Option<StoredEntity>>;

    /// Every live entity of the user (of `types`, if given), ordered by sequence.
    async fn snapshot(
        &self,
        user: &UserId,
        types: Option<&[EntityType]>,
    ) -> Result<Vec<StoredEntity>>;

    /// Entities (tombstones included) whose sequence is greater than `since`, ordered by
    /// sequence, at most `limit`.
    async fn changes_since(
        &self,
        user: &UserId,
        since: ChangeSeq,
        types: Option<&[EntityType]>,
        limit: usize,
    ) -> Result<Vec<StoredEntity>>;

    async fn status(&self, user: &UserId) -> Result<UserStatus>;

    /// The highest change sequence stored, for keeping sequences monotonic when the bus
    /// stream is re-created.
    async fn max_seq(&self) -> Result<ChangeSeq>;

    /// Claims `(user, key)` for a request with `request_hash`. An absent or expired record is
    /// claimed; a pending claim older than `stale_before` with the same hash is taken over
    /// (its owner died); otherwise the existing state is returned. Atomic per key: of two
    /// concurrent claims exactly one gets [`Claim::Claimed`].
    async fn claim_idempotency(
        &self,
        user: &UserId,
        key: &str,
        request_hash: &str,
        now: Clock,
        stale_before: Clock,
        expires_at: Clock,
    ) -> Result<Claim>;

    /// Stores the answer of a claimed key.
    async fn complete_idempotency(
        &self,
        user: &UserId,
        key: &str,
        record: IdempotencyRecord,
        expires_at: Clock,
    ) -> Result<()>;

    /// Drops a pending claim (the request failed, so a retry may run it again).
    async fn release_idempotency(&self, user: &UserId, key: &str, request_hash: &str)
    -> Result<()>;

    /// The outcomes recorded by [`MessageWrites::record`], unless expired.
    async fn request_outcomes(
        &self,
        user: &UserId,
        request_id: &str,
    ) -> Result<Option<Vec<ItemOutcome>>>;

    /// Deletes expired idempotency records and outcomes; returns how many.
    async fn purge_expired(&self, now: Clock) -> Result<u64>;

    /// Ok when the store can serve reads and writes now.
    async fn health(&self) -> Result<()>;
}

pub type SharedStore = Arc<dyn Store>;
