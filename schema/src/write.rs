//! Turning one client item into a [`WriteItem`]: validation, the LWW clock, the tombstone flag
//! and the checksum. Pure, so the edge (HTTP and WebSocket) and tests share one definition.
//!
//! An item comes either parsed (a `Value`) or as part of canonical text (a push body's, see
//! [`crate::api::push_text`]), which is prepared without building a tree of it. Both take the
//! same checks in `finish`, and the property tests in `tests/canonical.rs` hold the results
//! of the two to each other byte for byte.

pub use crate::canonical_item::CanonicalItem;
use crate::canonical_item::{ITEM_DEPTH, Object};
use crate::checksum::{Canonical, canonical_json, sha256_hex};
use crate::clock::{Clock, Version};
use crate::entity::EntityType;
use crate::ids::EntityId;
use crate::score_id;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// One write as it travels on the bus and into the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteItem {
    pub entity_type: EntityType,
    pub id: EntityId,
    /// The payload as canonical JSON text (stored as sent, keys sorted).
    pub payload: String,
    pub clock: Clock,
    pub deleted: bool,
    pub deleted_at: Option<Clock>,
    pub checksum: String,
}

impl WriteItem {
    pub fn version(&self) -> Version {
        Version {
            clock: self.clock,
            deleted: self.deleted,
            checksum: self.checksum.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PrepareOptions {
    /// Server receive time: the clock of items that carry none.
    pub now: Clock,
    /// How far ahead of `now` a client clock may run before it is clamped.
    pub max_skew_us: i64,
    pub max_item_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub item: WriteItem,
    pub clock_clamped: bool,
}

/// Why one item was refused; reported in `rejected`, never failing its neighbours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("item must be a JSON object")]
    NotAnObject,
    #[error("id must be a non-empty string")]
    MissingId,
    #[error("id is longer than 256 bytes")]
    IdTooLong,
    #[error("id contains a control character")]
    IdControl,
    #[error("item is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0} is not a valid date")]
    BadDate(&'static str),
    /// For [`prepare_raw`] given text that `Value` does not accept (a push body's items were
    /// checked with the body).
    #[error("item is not valid JSON")]
    InvalidJson,
}

/// A deletion marker is any truthy `deletedAt` (JavaScript truthiness).
pub fn is_truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(_) | Value::Object(_)) => true,
    }
}

/// The id of an item as the client gave it, for error reports about invalid items.
pub fn reported_id(id: Option<&Value>) -> String {
    match id {
        Some(Value::String(s)) => s.chars().take(256).collect(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// An item's payload as a request carried it.
#[derive(Debug)]
pub enum Payload<'a> {
    /// Part of canonical text: a push body's, as [`crate::api::PushText::read`] gives it.
    Canonical(CanonicalItem<'a>),
    Value(Value),
}

/// An item's payload, read once: the members preparation looks at (the id and the clocks) as
/// values, so the id can be looked at before preparing.
#[derive(Debug)]
pub struct Fields<'a>(Read<'a>);

#[derive(Debug)]
enum Read<'a> {
    /// An object from canonical text, and its `id`, `updatedAt` and `deletedAt`, parsed.
    Canonical {
        item: Object<'a>,
        parsed: [Option<Value>; 3],
    },
    Value(Value),
    NotAnObject,
}

/// The members of a payload that preparation reads as values.
const READ: [&str; 3] = ["id", "updatedAt", "deletedAt"];

impl<'a> Fields<'a> {
    /// Reads a payload. Fails only if canonical text is not JSON, which would be a bug.
    pub fn read(payload: Payload<'a>) -> Result<Fields<'a>, ItemError> {
        let item = match payload {
            Payload::Value(value) => return Ok(Fields(Read::Value(value))),
            Payload::Canonical(CanonicalItem(None)) => return Ok(Fields(Read::NotAnObject)),
            Payload::Canonical(CanonicalItem(Some(item))) => item,
        };
        let mut parsed = [None, None, None];
        for (slot, key) in parsed.iter_mut().zip(READ) {
            if let Some(text) = item.member(key) {
                *slot = Some(serde_json::from_str(text).map_err(|_| ItemError::InvalidJson)?);
            }
        }
        Ok(Fields(Read::Canonical { item, parsed }))
    }

    /// The payload's `id`, `updatedAt` or `deletedAt` (`None` for any other key).
    pub fn get(&self, key: &str) -> Option<&Value> {
        let slot = READ.iter().position(|k| *k == key)?;
        match &self.0 {
            Read::Canonical { parsed, .. } => parsed[slot].as_ref(),
            Read::Value(value) => value.get(key),
            Read::NotAnObject => None,
        }
    }
}

/// Validates one item and computes its clock and checksum. `id` is the item's id field (for a
/// push, `payload.id`; for a batch entity, its outer `id`).
pub fn prepare(
    entity_type: EntityType,
    id: Option<&Value>,
    payload: Value,
    opts: &PrepareOptions,
) -> Result<Prepared, ItemError> {
    prepare_fields(entity_type, id, Fields(Read::Value(payload)), opts)
}

/// [`prepare`] for a payload given as JSON text: for text `Value` accepts, the same result as
/// `prepare(entity_type, id, serde_json::from_str(payload.get())?, opts)`.
pub fn prepare_raw(
    entity_type: EntityType,
    id: Option<&Value>,
    payload: &RawValue,
    opts: &PrepareOptions,
) -> Result<Prepared, ItemError> {
    let (canonical, outline) =
        Canonical::outlined(payload.get(), ITEM_DEPTH).map_err(|_| ItemError::InvalidJson)?;
    let Some(outline) = outline.filter(|_| canonical.reads_back()) else {
        let value = serde_json::from_str(payload.get()).map_err(|_| ItemError::InvalidJson)?;
        return prepare(entity_type, id, value, opts);
    };
    let item = CanonicalItem::at(canonical.as_str(), &outline, outline.root_index());
    prepare_fields(
        entity_type,
        id,
        Fields::read(Payload::Canonical(item))?,
        opts,
    )
}

/// [`prepare`] for a payload already read, so that its id could be looked at first.
pub fn prepare_fields(
    entity_type: EntityType,
    id: Option<&Value>,
    fields: Fields<'_>,
    opts: &PrepareOptions,
) -> Result<Prepared, ItemError> {
    let kind = score_id::Kind::of(entity_type);
    match fields.0 {
        Read::Value(mut payload) => {
            if let Some(kind) = kind {
                score_id::normalize_payload(kind, &mut payload);
            }
            let Value::Object(members) = &payload else {
                return Err(ItemError::NotAnObject);
            };
            let dates = (members.get("deletedAt"), members.get("updatedAt"));
            finish(entity_type, id, dates, || canonical_json(&payload), opts)
        }
        Read::Canonical { item, parsed } => {
            let [_, updated_at, deleted_at] = &parsed;
            let dates = (deleted_at.as_ref(), updated_at.as_ref());
            finish(entity_type, id, dates, || item.normalized(kind), opts)
        }
        Read::NotAnObject => Err(ItemError::NotAnObject),
    }
}

/// The checks and clocks of an object payload, and its canonical `text` (built last: most
/// refused items never need it).
fn finish(
    entity_type: EntityType,
    id: Option<&Value>,
    (deleted_at, updated_at): (Option<&Value>, Option<&Value>),
    text: impl FnOnce() -> String,
    opts: &PrepareOptions,
) -> Result<Prepared, ItemError> {
    let id = match id {
        Some(Value::String(s)) if !s.is_empty() => {
            EntityId::parse(s.clone()).map_err(|e| match e {
                crate::ids::IdError::Empty(_) => ItemError::MissingId,
                crate::ids::IdError::TooLong { .. } => ItemError::IdTooLong,
                crate::ids::IdError::Control(_) => ItemError::IdControl,
            })?
        }
        _ => return Err(ItemError::MissingId),
    };
    let deleted = is_truthy(deleted_at);
    let deleted_at = match deleted_at {
        Some(v @ (Value::String(_) | Value::Number(_))) if deleted => {
            Some(Clock::from_json(v).map_err(|_| ItemError::BadDate("deletedAt"))?)
        }
        _ => None,
    };
    let updated_at = match updated_at {
        None | Some(Value::Null) => None,
        Some(v) => Some(Clock::from_json(v).map_err(|_| ItemError::BadDate("updatedAt"))?),
    };
    let clock = updated_at.or(deleted_at).unwrap_or(opts.now);
    let (clock, clock_clamped) = clock.clamp_future(opts.now, opts.max_skew_us);
    let text = text();
    if text.len() > opts.max_item_bytes {
        return Err(ItemError::TooLarge(opts.max_item_bytes));
    }
    let deleted_at = deleted.then(|| deleted_at.unwrap_or(clock));
    Ok(Prepared {
        item: WriteItem {
            entity_type,
            id,
            // The checksum is over the canonical text (CONTRACT.md §3), already at hand.
            checksum: sha256_hex(text.as_bytes()),
            payload: text,
            clock,
            deleted,
            deleted_at,
        },
        clock_clamped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> PrepareOptions {
        PrepareOptions {
            now: Clock::parse_iso("2025-06-24T12:00:00Z").unwrap(),
            max_skew_us: 300_000_000,
            max_item_bytes: 256 * 1024,
        }
    }

    fn push(item: Value) -> Result<Prepared, ItemError> {
        let id = item.get("id").cloned();
        prepare(EntityType::LogbookEntry, id.as_ref(), item, &opts())
    }

    #[test]
    fn clock_comes_from_updated_at_then_deleted_at_then_now() {
        let p = push(json!({"id":"e1","updatedAt":"2025-06-24T10:00:00Z"})).unwrap();
        assert_eq!(p.item.clock.to_iso(), "2025-06-24T10:00:00.000Z");
        assert!(!p.item.deleted);
        let d = push(json!({"id":"e1","deletedAt":"2025-06-24T11:00:00Z"})).unwrap();
        assert_eq!(d.item.clock.to_iso(), "2025-06-24T11:00:00.000Z");
        assert!(d.item.deleted);
        assert_eq!(d.item.deleted_at, Some(d.item.clock));
        let n = push(json!({"id":"e1"})).unwrap();
        assert_eq!(n.item.clock, opts().now);
    }

    #[test]
    fn future_clocks_are_clamped() {
        let p = push(json!({"id":"e1","updatedAt":"2030-01-01T00:00:00Z"})).unwrap();
        assert!(p.clock_clamped);
        assert_eq!(p.item.clock.to_iso(), "2025-06-24T12:05:00.000Z");
    }

    #[test]
    fn invalid_items_say_why() {
        assert_eq!(push(json!([1])), Err(ItemError::NotAnObject));
        assert_eq!(push(json!({"id":""})), Err(ItemError::MissingId));
        assert_eq!(push(json!({"id":7})), Err(ItemError::MissingId));
        assert_eq!(
            push(json!({"id":"x".repeat(257)})),
            Err(ItemError::IdTooLong)
        );
        assert_eq!(
            push(json!({"id":"e","updatedAt":"soon"})),
            Err(ItemError::BadDate("updatedAt"))
        );
        let big = json!({"id":"e","notes":"x".repeat(300 * 1024)});
        assert_eq!(push(big), Err(ItemError::TooLarge(256 * 1024)));
    }

    #[test]
    fn unknown_fields_are_kept_and_checksummed() {
        let p = push(json!({"id":"e1","scoreId":"s","measures":"1-16"})).unwrap();
        assert_eq!(
            p.item.payload,
            r#"{"id":"e1","measures":"1-16","scoreId":"s"}"#
        );
        let q = push(json!({"measures":"1-16","scoreId":"s","id":"e1"})).unwrap();
        assert_eq!(p.item.checksum, q.item.checksum);
    }

    #[test]
    fn score_ids_are_normalized_before_the_checksum() {
        let p = push(
            json!({"id":"e1","pieces":[{"title":"Moonlight  Sonata","composer":"Beethoven"}]}),
        )
        .unwrap();
        assert!(
            p.item
                .payload
                .contains(r#""id":"moonlight sonata-beethoven""#),
            "{}",
            p.item.payload
        );
        let q = push(json!({"id":"e1","pieces":[{"id":"moonlight sonata-beethoven","title":"Moonlight  Sonata","composer":"Beethoven"}]})).unwrap();
        assert_eq!(p.item.checksum, q.item.checksum);
        let r = prepare(
            EntityType::RepertoireItem,
            Some(&json!("r1")),
            json!({"id":"r1","scoreId":"Für Elise"}),
            &opts(),
        )
        .unwrap();
        assert!(
            r.item.payload.contains(r#""scoreId":"für elise-unknown""#),
            "{}",
            r.item.payload
        );
    }

    #[test]
    fn truthiness_follows_javascript() {
        for v in [json!(null), json!(false), json!(0), json!("")] {
            assert!(!is_truthy(Some(&v)), "{v}");
        }
        for v in [json!(true), json!(1), json!("x"), json!({})] {
            assert!(is_truthy(Some(&v)), "{v}");
        }
    }
}
