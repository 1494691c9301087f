//! Bus envelopes: MessagePack with an explicit version, written as maps of named fields or
//! (with [`Encoding::Positional`]) as arrays of fields by position; both forms are read.
//!
//! - [`IngestEnvelope`]: edge → `sync.in.<user>` (JetStream `SYNC_IN`), one per request.
//! - [`CommitReply`]: ingest worker → `sync.done.<request-id>` (core NATS).
//! - [`CommittedBatch`]: ingest worker → `sync.out.<user>` (JetStream `SYNC_OUT`).

use crate::clock::Clock;
use crate::entity::EntityType;
use crate::ids::{DeviceId, EntityIdRef, UserId};
use crate::write::WriteItem;
use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("undecodable envelope: {0}")]
    Malformed(String),
    #[error("unsupported envelope version {0}")]
    Version(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    Push,
    Batch,
    WebSocket,
}

/// What an idempotency key binds a request to (CONTRACT.md §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRef {
    pub key: String,
    pub request_hash: String,
    /// When the request's record (and its outcomes) may be forgotten.
    pub expires_at: Clock,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestEnvelope {
    pub v: u32,
    pub request_id: String,
    pub user: UserId,
    pub device_id: Option<DeviceId>,
    pub session_id: Option<String>,
    pub kind: RequestKind,
    pub received_at: Clock,
    pub items: Vec<WriteItem>,
    pub idempotency: Option<IdempotencyRef>,
}

/// The effect of one item, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemOutcome {
    /// The write became the entity's state, with this change sequence.
    Applied { seq: u64 },
    /// The stored state already is this write (same clock, flag and checksum).
    Duplicate { seq: u64 },
    /// A greater write is stored; it is described here.
    Superseded {
        seq: u64,
        server_clock: Clock,
        server_deleted: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitReply {
    pub v: u32,
    pub request_id: String,
    /// The JetStream sequence of the message that carried the request.
    pub message_seq: u64,
    pub outcomes: Vec<ItemOutcome>,
}

/// One committed change, as fanout and catch-up need it. The publisher encodes it with the
/// item borrowed (`Change<&WriteItem>`, the same bytes), so items are not copied for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<I = WriteItem> {
    pub item: I,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedBatch<I = WriteItem> {
    pub v: u32,
    pub user: UserId,
    pub origin_device: Option<DeviceId>,
    pub origin_session: Option<String>,
    pub committed_at: Clock,
    pub changes: Vec<Change<I>>,
}

/// What fanout reads of a committed item, borrowed from the message: the fields rendering
/// needs (the clocks and the checksum are skipped), with no string copied out.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct ItemView<'a> {
    pub entity_type: EntityType,
    #[serde(borrow)]
    pub id: EntityIdRef<'a>,
    #[serde(borrow)]
    pub payload: &'a str,
    // The fields are read by position too (see [`encode`]): all of `WriteItem`'s, in order.
    #[serde(default, rename = "clock")]
    _clock: IgnoredAny,
    pub deleted: bool,
    #[serde(default, rename = "deleted_at")]
    _deleted_at: IgnoredAny,
    #[serde(default, rename = "checksum")]
    _checksum: IgnoredAny,
}

/// Rendered client frames for one user: fanout → `sync.deliver.<user>` (core NATS), with
/// the origin device and session in the headers [`ORIGIN_DEVICE`] and [`ORIGIN_SESSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub v: u32,
    pub frames: Vec<DeliveredFrame>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredFrame {
    /// The safe cursor this frame carries (at most the commit watermark).
    pub seq: u64,
    /// The frame's JSON text, as sent to clients.
    pub text: String,
}

pub const ORIGIN_DEVICE: &str = "Legato-Origin-Device";
pub const ORIGIN_SESSION: &str = "Legato-Origin-Session";

/// An envelope's version, read from either form an envelope may have (see [`Encoding`]): the
/// first element of an array or the member `v` of a map.
struct Probe {
    v: u32,
}

/// A map key as the probe tells them apart, matched without copying it (as derived
/// deserializers match field names).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ProbeKey {
    V,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Version;
        impl<'de> Visitor<'de> for Version {
            type Value = Probe;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an envelope")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Probe, A::Error> {
                let v = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Probe { v })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
                let mut v = None;
                while let Some(key) = map.next_key::<ProbeKey>()? {
                    if matches!(key, ProbeKey::V) && v.is_none() {
                        v = Some(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                v.map(|v| Probe { v })
                    .ok_or_else(|| de::Error::missing_field("v"))
            }
        }
        deserializer.deserialize_any(Version)
    }
}

/// How envelopes are written. Every build from this one on reads both forms; builds before it
/// read only [`Encoding::Named`], so that stays the default until no older build is left to
/// read the bus (README, "Upgrading").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// MessagePack maps of named fields: what every build reads.
    #[default]
    Named,
    /// MessagePack arrays, fields by position. The names were a sixth of a committed item's
    /// bytes, carried through the broker twice and matched by every decoder; without them a
    /// 100-item push costs the pipeline ~1.5 µs less CPU per item (docs/BENCHMARKS.md).
    Positional,
}

/// Encodes an envelope in the given form; [`decode`] reads either. A change to the envelope
/// structs is a new [`ENVELOPE_VERSION`] in both forms (positional fields cannot be added
/// without one).
pub fn encode<T: Serialize>(value: &T, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Named => rmp_serde::to_vec_named(value),
        Encoding::Positional => rmp_serde::to_vec(value),
    }
    .expect("envelopes always serialize")
}

/// Deepest nesting a decoded message may have. The envelopes nest at most four levels; the
/// decoder's default (1024) overflows a 2 MiB thread stack in debug builds on a crafted
/// message (unknown fields are skipped recursively), and a message that crashes its consumer
/// is redelivered to crash the next one.
const MAX_DEPTH: usize = 32;

fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, EnvelopeError> {
    let mut decoder = rmp_serde::Deserializer::from_read_ref(bytes);
    decoder.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut decoder).map_err(|e| EnvelopeError::Malformed(e.to_string()))
}

/// Decodes an envelope, refusing versions this build does not know.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    decode_borrowed(bytes)
}

/// [`decode`] for types that borrow from `bytes` (such as `CommittedBatch<ItemView>`).
pub fn decode_borrowed<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, EnvelopeError> {
    let probe: Probe = from_slice(bytes)?;
    if probe.v != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(probe.v));
    }
    from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::EntityType;
    use crate::ids::EntityId;

    fn envelope() -> IngestEnvelope {
        IngestEnvelope {
            v: ENVELOPE_VERSION,
            request_id: "abc".into(),
            user: UserId::parse("user.1 *").unwrap(),
            device_id: Some(DeviceId::parse("dev_1").unwrap()),
            session_id: None,
            kind: RequestKind::Push,
            received_at: Clock(1),
            items: vec![WriteItem {
                entity_type: EntityType::Goal,
                id: EntityId::parse("g1").unwrap(),
                payload: r#"{"id":"g1"}"#.into(),
                clock: Clock(5),
                deleted: false,
                deleted_at: None,
                checksum: "00".into(),
            }],
            idempotency: Some(IdempotencyRef {
                key: "k".into(),
                request_hash: "h".into(),
                expires_at: Clock(9),
            }),
        }
    }

    const BOTH: [Encoding; 2] = [Encoding::Named, Encoding::Positional];

    fn batch_of(e: &IngestEnvelope) -> CommittedBatch<&WriteItem> {
        CommittedBatch {
            v: ENVELOPE_VERSION,
            user: e.user.clone(),
            origin_device: e.device_id.clone(),
            origin_session: Some("s".into()),
            committed_at: Clock(7),
            changes: vec![Change {
                item: &e.items[0],
                seq: 42,
            }],
        }
    }

    #[test]
    fn round_trips_in_both_forms() {
        let e = envelope();
        let reply = CommitReply {
            v: ENVELOPE_VERSION,
            request_id: "r".into(),
            message_seq: 3,
            outcomes: vec![
                ItemOutcome::Applied { seq: 1 },
                ItemOutcome::Superseded {
                    seq: 2,
                    server_clock: Clock(9),
                    server_deleted: true,
                },
            ],
        };
        let delivery = Delivery {
            v: ENVELOPE_VERSION,
            frames: vec![DeliveredFrame {
                seq: 4,
                text: "{}".into(),
            }],
        };
        for encoding in BOTH {
            assert_eq!(
                decode::<IngestEnvelope>(&encode(&e, encoding)),
                Ok(e.clone())
            );
            assert_eq!(
                decode::<CommitReply>(&encode(&reply, encoding)),
                Ok(reply.clone())
            );
            assert_eq!(
                decode::<Delivery>(&encode(&delivery, encoding)),
                Ok(delivery.clone())
            );
        }
        let (named, positional) = (
            encode(&e, Encoding::Named),
            encode(&e, Encoding::Positional),
        );
        assert_eq!(named, rmp_serde::to_vec_named(&e).unwrap());
        assert!(positional.len() < named.len());
    }

    #[test]
    fn named_envelopes_are_what_builds_before_positional_ones_read() {
        // Those builds probed the version with a derived struct and decoded with derive too.
        #[derive(Deserialize)]
        struct OldProbe {
            #[allow(dead_code)]
            v: u32,
        }
        fn old_decode(bytes: &[u8]) -> bool {
            let probe = OldProbe::deserialize(&mut rmp_serde::Deserializer::from_read_ref(bytes));
            let full =
                IngestEnvelope::deserialize(&mut rmp_serde::Deserializer::from_read_ref(bytes));
            probe.is_ok() && full.is_ok()
        }
        let e = envelope();
        assert!(old_decode(&encode(&e, Encoding::Named)));
        // Why `Named` is the default: the older probe refuses arrays.
        assert!(!old_decode(&encode(&e, Encoding::Positional)));
        assert_eq!(Encoding::default(), Encoding::Named);
    }

    #[test]
    fn a_committed_batch_encoded_with_borrowed_items_decodes_as_the_owned_one() {
        let e = envelope();
        let borrowed = batch_of(&e);
        let owned = CommittedBatch {
            v: borrowed.v,
            user: borrowed.user.clone(),
            origin_device: borrowed.origin_device.clone(),
            origin_session: borrowed.origin_session.clone(),
            committed_at: borrowed.committed_at,
            changes: vec![Change {
                item: e.items[0].clone(),
                seq: 42,
            }],
        };
        for encoding in BOTH {
            assert_eq!(encode(&borrowed, encoding), encode(&owned, encoding));
            assert_eq!(
                decode::<CommittedBatch>(&encode(&borrowed, encoding)),
                Ok(owned.clone())
            );
        }
    }

    #[test]
    fn a_committed_batch_reads_as_borrowed_views_of_its_items_in_both_forms() {
        let e = envelope();
        for encoding in BOTH {
            let batch = batch_of(&e);
            let bytes = encode(&batch, encoding);
            let view: CommittedBatch<ItemView> = decode_borrowed(&bytes).unwrap();
            assert_eq!(view.user, e.user);
            assert_eq!(view.origin_session.as_deref(), Some("s"));
            assert_eq!(view.committed_at, Clock(7));
            assert_eq!(view.changes.len(), 1);
            let (change, item) = (&view.changes[0], &e.items[0]);
            assert_eq!(change.seq, 42);
            assert_eq!(change.item.entity_type, item.entity_type);
            assert_eq!(change.item.id.as_str(), item.id.as_str());
            assert_eq!(change.item.payload, item.payload);
            assert_eq!(change.item.deleted, item.deleted);
            // Borrowed from the message, not copied.
            assert!(bytes.as_ptr_range().contains(&change.item.payload.as_ptr()));
            let mut newer = batch;
            newer.v = 2;
            assert_eq!(
                decode_borrowed::<CommittedBatch<ItemView>>(&encode(&newer, encoding)).unwrap_err(),
                EnvelopeError::Version(2)
            );
        }
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let mut e = envelope();
        e.v = 2;
        let reply = CommitReply {
            v: 1,
            request_id: "r".into(),
            message_seq: 1,
            outcomes: vec![],
        };
        for encoding in BOTH {
            assert_eq!(
                decode::<IngestEnvelope>(&encode(&e, encoding)),
                Err(EnvelopeError::Version(2))
            );
            // a valid envelope of the wrong shape
            assert!(matches!(
                decode::<IngestEnvelope>(&encode(&reply, encoding)),
                Err(EnvelopeError::Malformed(_))
            ));
        }
        assert!(matches!(
            decode::<IngestEnvelope>(b"\xc1not an envelope"),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(decode::<IngestEnvelope>(b"\x93not an envelope").is_err());
    }
}
