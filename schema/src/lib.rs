//! The Legato contract as types, with no I/O.
//!
//! Everything that two processes must agree on lives here: the entity model and its
//! last-write-wins order ([`clock`]), the canonical checksum ([`checksum`]), user and entity
//! identifiers ([`ids`]), NATS subject names ([`subject`]), the MessagePack bus envelopes
//! ([`envelope`]), cursors ([`cursor`]), item preparation at the edge ([`write`]) and the HTTP
//! JSON shapes of CONTRACT.md ([`api`]).

pub mod api;
mod canonical_item;
pub mod checksum;
pub mod clock;
pub mod cursor;
pub mod entity;
pub mod envelope;
pub mod ids;
mod push_text;
pub mod score_id;
pub mod subject;
pub mod write;
pub mod ws;

pub use clock::{Clock, Version};
pub use cursor::{ChangeSeq, Cursor};
pub use entity::EntityType;
pub use ids::{DeviceId, EntityId, UserId};
