//! The oracles of `fuzz_decoders`: run a decoder the way the edge does and check what it
//! yields against the contract's rules.

use super::{MAX_ITEM_BYTES, SKEW_US, opts};
use legato_schema::api::{self, PullRequest};
use legato_schema::checksum::{canonical_json, checksum};
use legato_schema::clock::{MAX_CLOCK_US, MIN_CLOCK_US};
use legato_schema::envelope::{
    self, CommitReply, CommittedBatch, Delivery, ENVELOPE_VERSION, Encoding, IngestEnvelope,
    ItemView, RequestKind,
};
use legato_schema::score_id::{self, Kind};
use legato_schema::write::{self, ItemError, WriteItem};
use legato_schema::ws::{self, ClientError, ClientMessage};
use legato_schema::{Clock, EntityId, EntityType, UserId};
use serde_json::Value;

/// An accepted write must satisfy every rule of CONTRACT.md §3 and survive the bus.
pub(crate) fn check_item(item: &WriteItem, reported: &Value) {
    let o = opts();
    let id = item.id.as_str();
    assert!(!id.is_empty() && id.len() <= 256, "id length: {id:?}");
    assert!(!id.chars().any(char::is_control), "control char in {id:?}");
    assert_eq!(reported.as_str(), Some(id), "the id is the one sent");
    let payload: Value = serde_json::from_str(&item.payload).expect("stored payload is JSON");
    assert!(payload.is_object(), "stored payload is an object");
    assert_eq!(
        canonical_json(&payload),
        item.payload,
        "payload is canonical"
    );
    assert_eq!(checksum(&payload), item.checksum, "checksum of the payload");
    assert!(item.payload.len() <= MAX_ITEM_BYTES, "item size limit");
    assert!(
        (MIN_CLOCK_US..=o.now.0 + SKEW_US).contains(&item.clock.0),
        "clock {} out of range",
        item.clock.0
    );
    assert_eq!(item.deleted, write::is_truthy(payload.get("deletedAt")));
    assert_eq!(item.deleted, item.deleted_at.is_some());
    if let Some(at) = item.deleted_at {
        assert!((MIN_CLOCK_US..=MAX_CLOCK_US).contains(&at.0));
    }
    // Whatever the edge accepts, the ingest worker decodes unchanged.
    let envelope = IngestEnvelope {
        v: ENVELOPE_VERSION,
        request_id: "r".into(),
        user: UserId::parse("user_fuzz").unwrap(),
        device_id: None,
        session_id: None,
        kind: RequestKind::Push,
        received_at: o.now,
        items: vec![item.clone()],
        idempotency: None,
    };
    for encoding in [Encoding::Named, Encoding::Positional] {
        assert_eq!(
            envelope::decode::<IngestEnvelope>(&envelope::encode(&envelope, encoding)).as_ref(),
            Ok(&envelope)
        );
    }
    // ... and fanout can render it for WebSocket clients.
    let rendered = ws::render_change(
        item.entity_type,
        id,
        &item.payload,
        item.deleted,
        1,
        item.clock,
    );
    match item.entity_type {
        EntityType::Goal | EntityType::PlanTemplate | EntityType::UserPreferences => {
            assert_eq!(rendered, None)
        }
        _ => {
            let frame: Value = serde_json::from_str(&rendered.expect("a frame")).unwrap();
            assert!(frame["type"].is_string() && frame["seq"] == 1, "{frame}");
        }
    }
}

thread_local! {
    /// Items `check_prepare` saw accepted on this thread.
    pub(crate) static ACCEPTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `write::prepare` and checks the outcome against the rules. Returns whether the item
/// was accepted.
pub(crate) fn check_prepare(entity_type: EntityType, id: Option<&Value>, payload: Value) -> bool {
    let _ = write::reported_id(id);
    let mut normalized = payload.clone();
    match entity_type {
        EntityType::LogbookEntry => score_id::normalize_payload(Kind::Entry, &mut normalized),
        EntityType::RepertoireItem => {
            score_id::normalize_payload(Kind::Repertoire, &mut normalized)
        }
        _ => {}
    }
    match write::prepare(entity_type, id, payload.clone(), &opts()) {
        Ok(prepared) => {
            assert!(payload.is_object(), "a non-object was accepted: {payload}");
            check_item(&prepared.item, id.expect("accepted items have an id"));
            assert_eq!(prepared.item.payload, canonical_json(&normalized));
            ACCEPTED.set(ACCEPTED.get() + 1);
            let clock_field = |name| match payload.get(name) {
                None | Some(Value::Null) => true,
                Some(v) => Clock::from_json(v).is_ok(),
            };
            assert!(
                clock_field("updatedAt"),
                "bad updatedAt accepted: {payload}"
            );
            true
        }
        Err(e) => {
            let broken = match e {
                ItemError::NotAnObject => !payload.is_object(),
                ItemError::MissingId => !matches!(id, Some(Value::String(s)) if !s.is_empty()),
                ItemError::IdTooLong => id.and_then(Value::as_str).is_some_and(|s| s.len() > 256),
                ItemError::IdControl => id
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.chars().any(char::is_control)),
                ItemError::TooLarge(max) => canonical_json(&normalized).len() > max,
                ItemError::BadDate(field) => payload
                    .get(field)
                    .is_some_and(|v| !v.is_null() && Clock::from_json(v).is_err()),
                ItemError::InvalidJson => false,
            };
            assert!(broken, "refused for a rule it keeps ({e}): {payload}");
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

/// The push path of the edge: envelope shape, then every item on its own.
pub(crate) fn check_push_value(body: Value) -> usize {
    let was_object = body.is_object();
    let had_changes_object = body.get("changes").is_some_and(Value::is_object);
    match api::push_from_value(body) {
        Err(e) => {
            assert!(!e.details.is_empty() && !e.message.is_empty());
            0
        }
        Ok(push) => {
            assert!(was_object && had_changes_object);
            let mut accepted = 0;
            for group in push.groups {
                assert_eq!(
                    group.entity_type,
                    EntityType::from_collection_key(&group.key)
                );
                let Some(t) = group.entity_type else {
                    continue;
                };
                for item in group.items {
                    let id = item.get("id").cloned();
                    accepted += usize::from(check_prepare(t, id.as_ref(), item));
                }
            }
            accepted
        }
    }
}

/// The batch path of the edge: envelope shape, entity envelope, then the item.
pub(crate) fn check_batch_value(body: Value) -> usize {
    match api::batch_from_value(body) {
        Err(e) => {
            assert!(!e.details.is_empty());
            0
        }
        Ok(batch) => {
            let mut accepted = 0;
            for entity in batch.entities {
                match api::batch_entity(entity.clone()) {
                    Ok(e) => {
                        assert!(e.data.is_object());
                        assert_eq!(e.entity_type.as_str(), entity["type"]);
                        assert!(e.version.is_none_or(|v| v > 0));
                        let id = e.id.clone().or_else(|| e.data.get("id").cloned());
                        accepted += usize::from(check_prepare(e.entity_type, id.as_ref(), e.data));
                    }
                    Err(rejected) => assert!(!rejected.reason.is_empty()),
                }
            }
            accepted
        }
    }
}

pub(crate) fn check_pull_bytes(body: &[u8]) {
    match api::parse_pull(body) {
        Ok(request) => {
            if request != PullRequest::default() {
                let value: Value = serde_json::from_slice(body).expect("accepted pulls are JSON");
                let allowed = ["since", "types", "limit"];
                assert!(
                    value
                        .as_object()
                        .unwrap()
                        .keys()
                        .all(|k| allowed.contains(&k.as_str()))
                );
            }
        }
        Err(e) => assert!(!e.details.is_empty()),
    }
}

/// The edge's push path, which reads the body without building a tree, against the tree: the
/// same error, or the same request hash, groups and prepared items.
pub(crate) fn check_push_text(body: &[u8]) {
    let parsed = api::parse_json(body);
    let text = match (api::push_text(body), &parsed) {
        (Err(a), Err(b)) => return assert_eq!(&a, b),
        (Ok(text), Ok(value)) => {
            assert_eq!(
                text.canonical(),
                canonical_json(value),
                "request hash input"
            );
            text
        }
        (text, parsed) => panic!("{text:?} against {parsed:?}"),
    };
    let (read, parsed) = match (text.read(), api::push_from_value(parsed.unwrap())) {
        (Err(a), Err(b)) => return assert_eq!(a, b),
        (Ok(read), Ok(parsed)) => (read, parsed),
        (read, parsed) => panic!("{read:?} against {parsed:?}"),
    };
    assert_eq!(read.last_sync_token, parsed.last_sync_token);
    assert_eq!(read.groups.len(), parsed.groups.len());
    for (raw, tree) in read.groups.into_iter().zip(parsed.groups) {
        assert_eq!((&raw.key, raw.entity_type), (&tree.key, tree.entity_type));
        assert_eq!(raw.items.len(), tree.items.len());
        let t = tree.entity_type.unwrap_or(EntityType::Goal);
        for (raw, tree) in raw.items.into_iter().zip(tree.items) {
            let fields = write::Fields::read(raw).expect("items of a valid body read");
            assert_eq!(fields.get("id"), tree.get("id"));
            let id = tree.get("id").cloned();
            assert_eq!(
                write::prepare_fields(t, id.as_ref(), fields, &opts()),
                write::prepare(t, id.as_ref(), tree, &opts())
            );
        }
    }
}

/// The body decoders over raw bytes, as the edge runs them.
pub(crate) fn check_body_bytes(body: &[u8]) {
    check_push_text(body);
    match api::parse_json(body) {
        Err(e) => {
            assert!(!e.details.is_empty());
            assert!(api::parse_push(body).is_err());
        }
        Ok(value) => {
            assert!(value.is_object());
            let _ = api::request_hash("POST", "/api/sync/push", &value);
            check_push_value(value.clone());
            check_batch_value(value);
        }
    }
    check_pull_bytes(body);
}

/// The WebSocket frame parser and, for mutations, the items it would write.
pub(crate) fn check_ws_text(text: &str) -> Option<ClientMessage> {
    let parsed = ws::parse_client(text, opts().now);
    let json = serde_json::from_str::<Value>(text);
    match &parsed {
        Err(ClientError::InvalidJson) => assert!(json.is_err(), "valid JSON refused: {text}"),
        Err(ClientError::InvalidFormat) => assert!(json.is_ok()),
        Ok(message) => {
            let json = json.expect("accepted frames are JSON");
            let kind = json["type"].as_str().expect("accepted frames have a type");
            match message {
                ClientMessage::Ping => assert_eq!(kind, "PING"),
                ClientMessage::SyncRequest { last_seq } => {
                    assert_eq!(kind, "SYNC_REQUEST");
                    assert_eq!(json["lastSeq"].as_u64().unwrap_or(0), *last_seq);
                }
                ClientMessage::Mutation {
                    kind: k, writes, ..
                } => {
                    assert_eq!(k, kind);
                    assert!(!writes.is_empty());
                    for (t, payload) in writes {
                        assert!(payload.is_object());
                        let id = payload.get("id").cloned();
                        check_prepare(*t, id.as_ref(), payload.clone());
                    }
                }
            }
        }
    }
    assert!(!ws::error(&format!("{parsed:?}")).is_empty());
    parsed.ok()
}

/// The bus decoders: arbitrary bytes decode to an error or to a well-formed envelope.
pub(crate) fn check_envelope_bytes(bytes: &[u8]) {
    if let Ok(e) = envelope::decode::<IngestEnvelope>(bytes) {
        assert_eq!(e.v, ENVELOPE_VERSION);
        for item in &e.items {
            // Newtypes are validated on decode, so an id from the bus is always legal.
            assert!(!item.id.as_str().is_empty() && item.id.as_str().len() <= 256);
        }
        assert!(!e.user.as_str().is_empty() && e.user.as_str().len() <= 128);
    }
    let _ = envelope::decode::<CommitReply>(bytes);
    let _ = envelope::decode::<CommittedBatch>(bytes);
    if let Ok(view) = envelope::decode_borrowed::<CommittedBatch<ItemView>>(bytes) {
        // What fanout reads: ids checked as the owned decode checks them.
        for change in &view.changes {
            assert!(EntityId::parse(change.item.id.as_str()).is_ok());
        }
    }
    let _ = envelope::decode::<Delivery>(bytes);
}
