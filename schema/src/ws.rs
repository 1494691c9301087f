//! The WebSocket protocol of CONTRACT.md §5 as pure functions: parsing client frames into
//! writes, and rendering committed changes and control messages into server frames.
//!
//! Server frames that carry stored payloads embed them as raw JSON, without re-parsing.

use crate::checksum::RAW_TOKEN;
use crate::clock::Clock;
use crate::entity::EntityType;
use crate::score_id;
use crate::write::is_truthy;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Live entries per `BULK_SYNC` frame, at most.
pub const BULK_SYNC_MAX: usize = 250;

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Ping,
    SyncRequest {
        last_seq: u64,
    },
    /// A mutation: the writes it stands for, and the entity it names (for error reports).
    Mutation {
        kind: String,
        entity: String,
        writes: Vec<(EntityType, Value)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("Invalid JSON format")]
    InvalidJson,
    #[error("Invalid sync event format")]
    InvalidFormat,
}

fn object(value: Option<&Value>) -> Result<Value, ClientError> {
    match value {
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        _ => Err(ClientError::InvalidFormat),
    }
}

fn string(value: Option<&Value>) -> Result<String, ClientError> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(ClientError::InvalidFormat),
    }
}

fn id_of(value: &Value) -> String {
    match value.get("id") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// A tombstone write: `deletedAt` is the message's timestamp when it has a valid one.
fn tombstone(id: &str, extra: Option<(&str, &str)>, deleted_at: &str) -> Value {
    let mut payload = serde_json::json!({"id": id, "deletedAt": deleted_at});
    if let Some((k, v)) = extra {
        payload[k] = Value::String(v.to_owned());
    }
    payload
}

/// Parses one text frame. `now` stands in for a missing or invalid message timestamp.
pub fn parse_client(text: &str, now: Clock) -> Result<ClientMessage, ClientError> {
    let value: Value = serde_json::from_str(text).map_err(|_| ClientError::InvalidJson)?;
    let Value::Object(fields) = &value else {
        return Err(ClientError::InvalidFormat);
    };
    let kind = match fields.get("type") {
        Some(Value::String(t)) => t.as_str(),
        _ => return Err(ClientError::InvalidFormat),
    };
    let at = fields
        .get("timestamp")
        .and_then(|t| Clock::from_json(t).ok())
        .unwrap_or(now)
        .to_iso();
    let mutation = |entity: String, writes: Vec<(EntityType, Value)>| {
        Ok(ClientMessage::Mutation {
            kind: kind.to_owned(),
            entity,
            writes,
        })
    };
    match kind {
        "PING" => Ok(ClientMessage::Ping),
        "SYNC_REQUEST" => {
            let last_seq = match fields.get("lastSeq") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_u64().ok_or(ClientError::InvalidFormat)?,
            };
            Ok(ClientMessage::SyncRequest { last_seq })
        }
        "ENTRY_CREATED" | "ENTRY_UPDATED" => {
            let entry = object(fields.get("entry"))?;
            mutation(id_of(&entry), vec![(EntityType::LogbookEntry, entry)])
        }
        "ENTRY_DELETED" => {
            let id = string(fields.get("entryId"))?;
            let payload = tombstone(&id, None, &at);
            mutation(id, vec![(EntityType::LogbookEntry, payload)])
        }
        "PIECE_ADDED" | "PIECE_UPDATED" => {
            let mut piece = object(fields.get("piece"))?;
            // A piece is keyed by its id, else by its normalized score id.
            if !matches!(piece.get("id"), Some(Value::String(s)) if !s.is_empty()) {
                let score = piece
                    .get("scoreId")
                    .and_then(Value::as_str)
                    .and_then(score_id::normalize_id);
                let score = score.ok_or(ClientError::InvalidFormat)?;
                piece["id"] = Value::String(score);
            }
            mutation(id_of(&piece), vec![(EntityType::RepertoireItem, piece)])
        }
        "PIECE_REMOVED" | "PIECE_DISSOCIATED" => {
            let raw = string(fields.get("scoreId"))?;
            let id = score_id::normalize_id(&raw).ok_or(ClientError::InvalidFormat)?;
            let payload = tombstone(&id, Some(("scoreId", &id)), &at);
            mutation(id, vec![(EntityType::RepertoireItem, payload)])
        }
        "PLAN_CREATED" | "PLAN_UPDATED" => {
            let plan = object(fields.get("plan"))?;
            let entity = id_of(&plan);
            let mut writes = vec![(EntityType::PracticePlan, plan)];
            match fields.get("occurrences") {
                None | Some(Value::Null) => {}
                Some(Value::Array(occurrences)) => {
                    for o in occurrences {
                        writes.push((EntityType::PlanOccurrence, object(Some(o))?));
                    }
                }
                Some(_) => return Err(ClientError::InvalidFormat),
            }
            mutation(entity, writes)
        }
        "PLAN_OCCURRENCE_COMPLETED" => {
            let occurrence = object(fields.get("occurrence"))?;
            mutation(
                id_of(&occurrence),
                vec![(EntityType::PlanOccurrence, occurrence)],
            )
        }
        _ => Err(ClientError::InvalidFormat),
    }
}

#[derive(Serialize, Default)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(rename = "entityId", skip_serializing_if = "Option::is_none")]
    entity_id: Option<&'a str>,
    #[serde(rename = "entityType", skip_serializing_if = "Option::is_none")]
    entity_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry: Option<Raw<'a>>,
    #[serde(rename = "entryId", skip_serializing_if = "Option::is_none")]
    entry_id: Option<&'a str>,
    /// (ext) On `ENTRY_DELETED`: the delete's `deletedAt`, so clients can order it by LWW.
    #[serde(rename = "deletedAt", skip_serializing_if = "Option::is_none")]
    deleted_at: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    piece: Option<Raw<'a>>,
    #[serde(rename = "scoreId", skip_serializing_if = "Option::is_none")]
    score_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Raw<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    occurrence: Option<Raw<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<&'a [&'a RawValue]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pieces: Option<&'a [&'a RawValue]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(rename = "lastSeq", skip_serializing_if = "Option::is_none")]
    last_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<bool>,
    timestamp: String,
}

/// JSON text embedded in a frame as it is: serialized the way `RawValue` is (serde_json writes
/// the string under [`RAW_TOKEN`] verbatim). Only for text already known to be one JSON value.
#[derive(Debug, Clone, Copy)]
struct Raw<'a>(&'a str);

impl Serialize for Raw<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct(RAW_TOKEN, 1)?;
        s.serialize_field(RAW_TOKEN, self.0)?;
        s.end()
    }
}

impl Frame<'_> {
    fn render(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }
}

fn now_iso() -> String {
    Clock::now().to_iso()
}

pub fn welcome() -> String {
    Frame {
        kind: "WELCOME",
        message: Some("Connected to sync"),
        timestamp: now_iso(),
        ..Default::default()
    }
    .render()
}

pub fn pong() -> String {
    Frame {
        kind: "PONG",
        timestamp: now_iso(),
        ..Default::default()
    }
    .render()
}

pub fn error(message: &str) -> String {
    Frame {
        kind: "ERROR",
        error: Some(message),
        timestamp: now_iso(),
        ..Default::default()
    }
    .render()
}

/// An `ERROR` naming the entity a mutation could not be applied to.
pub fn entity_error(message: &str, entity_type: EntityType, entity_id: &str) -> String {
    Frame {
        kind: "ERROR",
        error: Some(message),
        entity_type: Some(entity_type.as_str()),
        entity_id: Some(entity_id),
        timestamp: now_iso(),
        ..Default::default()
    }
    .render()
}

pub fn sync_response(message: &str, last_seq: u64) -> String {
    Frame {
        kind: "SYNC_RESPONSE",
        message: Some(message),
        last_seq: Some(last_seq),
        timestamp: now_iso(),
        ..Default::default()
    }
    .render()
}

/// The mutation is durable but was not committed within the wait.
pub fn sync_pending() -> String {
    Frame {
        kind: "SYNC_RESPONSE",
        message: Some("Mutation accepted"),
        pending: Some(true),
        timestamp: now_iso(),
        ..Default::default()
    }
    .render()
}

pub fn bulk_sync(entries: &[&RawValue], last_seq: u64) -> String {
    Frame {
        kind: "BULK_SYNC",
        entries: Some(entries),
        last_seq: Some(last_seq),
        timestamp: now_iso(),
        ..Default::default()
    }
    .render()
}

pub fn repertoire_bulk_sync(pieces: &[&RawValue], last_seq: u64) -> String {
    Frame {
        kind: "REPERTOIRE_BULK_SYNC",
        pieces: Some(pieces),
        last_seq: Some(last_seq),
        timestamp: now_iso(),
        ..Default::default()
    }
    .render()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    created_at: Option<Value>,
    updated_at: Option<Value>,
    deleted_at: Option<Value>,
    score_id: Option<Value>,
    status: Option<Value>,
    completed_at: Option<Value>,
}

impl Probe {
    fn into_value(self) -> Value {
        let mut map = serde_json::Map::new();
        for (key, value) in [
            ("createdAt", self.created_at),
            ("updatedAt", self.updated_at),
            ("deletedAt", self.deleted_at),
            ("scoreId", self.score_id),
            ("status", self.status),
            ("completedAt", self.completed_at),
        ] {
            if let Some(v) = value {
                map.insert(key.into(), v);
            }
        }
        Value::Object(map)
    }
}

/// A created entity has no `updatedAt`, or one equal to its `createdAt`.
fn looks_created(payload: &Value) -> bool {
    match (payload.get("createdAt"), payload.get("updatedAt")) {
        (_, None | Some(Value::Null)) => true,
        (Some(c), Some(u)) => c == u,
        (None, Some(_)) => false,
    }
}

/// Renders one committed change as the client message of CONTRACT.md §5, with `seq` (the
/// caller passes a safe cursor: at most the commit watermark) and the commit time. Types
/// without a WebSocket message (goals, templates, preferences) render to `None`.
pub fn render_change(
    entity_type: EntityType,
    id: &str,
    payload: &str,
    deleted: bool,
    seq: u64,
    at: Clock,
) -> Option<String> {
    // Only these fields steer the rendering; everything else is skipped, not built. Skipping
    // still checks it: a payload that reads as a probe is one JSON value, embedded as it is.
    let probe: Probe = serde_json::from_str(payload).ok()?;
    let raw = Raw(payload.trim_matches([' ', '\t', '\n', '\r']));
    let value = probe.into_value();
    let created = looks_created(&value);
    let mut frame = Frame {
        seq: Some(seq),
        timestamp: at.to_iso(),
        ..Default::default()
    };
    match (entity_type, deleted) {
        (EntityType::LogbookEntry, true) => {
            frame.kind = "ENTRY_DELETED";
            frame.entry_id = Some(id);
            frame.deleted_at = value.get("deletedAt");
            return Some(frame.render());
        }
        (EntityType::LogbookEntry, false) => {
            frame.kind = if created {
                "ENTRY_CREATED"
            } else {
                "ENTRY_UPDATED"
            };
            frame.entry = Some(raw);
        }
        (EntityType::RepertoireItem, true) => {
            frame.kind = "PIECE_REMOVED";
            frame.score_id = Some(value.get("scoreId").and_then(Value::as_str).unwrap_or(id));
            return Some(frame.render());
        }
        (EntityType::RepertoireItem, false) => {
            frame.kind = if created {
                "PIECE_ADDED"
            } else {
                "PIECE_UPDATED"
            };
            frame.piece = Some(raw);
        }
        (EntityType::PracticePlan, _) => {
            frame.kind = if created && !deleted {
                "PLAN_CREATED"
            } else {
                "PLAN_UPDATED"
            };
            frame.plan = Some(raw);
        }
        (EntityType::PlanOccurrence, _) => {
            let completed = value.get("status").and_then(Value::as_str) == Some("completed")
                || is_truthy(value.get("completedAt"));
            frame.kind = if completed && !deleted {
                "PLAN_OCCURRENCE_COMPLETED"
            } else {
                "PLAN_UPDATED"
            };
            frame.occurrence = Some(raw);
        }
        (EntityType::Goal | EntityType::PlanTemplate | EntityType::UserPreferences, _) => {
            return None;
        }
    }
    Some(frame.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Clock {
        Clock::parse_iso("2025-06-24T12:00:00Z").unwrap()
    }

    #[test]
    fn parses_the_fixture_shapes() {
        let created = r#"{"type":"ENTRY_CREATED","timestamp":"2025-06-24T10:00:00.000Z","entry":{"id":"e1","duration":25}}"#;
        let ClientMessage::Mutation { entity, writes, .. } = parse_client(created, now()).unwrap()
        else {
            panic!("mutation")
        };
        assert_eq!(entity, "e1");
        assert_eq!(
            writes,
            vec![(EntityType::LogbookEntry, json!({"id":"e1","duration":25}))]
        );
        let deleted =
            r#"{"type":"ENTRY_DELETED","timestamp":"2025-06-24T10:05:00.000Z","entryId":"e1"}"#;
        let ClientMessage::Mutation { writes, .. } = parse_client(deleted, now()).unwrap() else {
            panic!()
        };
        assert_eq!(
            writes[0].1,
            json!({"id":"e1","deletedAt":"2025-06-24T10:05:00.000Z"})
        );
        assert_eq!(
            parse_client(r#"{"type":"PING","timestamp":"x"}"#, now()),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            parse_client(
                r#"{"type":"SYNC_REQUEST","lastSeq":42,"lastSyncTime":"2025-06-24T10:00:00.000Z"}"#,
                now()
            ),
            Ok(ClientMessage::SyncRequest { last_seq: 42 })
        );
        assert_eq!(
            parse_client(r#"{"type":"SYNC_REQUEST"}"#, now()),
            Ok(ClientMessage::SyncRequest { last_seq: 0 })
        );
    }

    #[test]
    fn pieces_and_plans_map_to_their_entities() {
        let removed = r#"{"type":"PIECE_REMOVED","scoreId":"Clair de Lune-Debussy"}"#;
        let ClientMessage::Mutation { entity, writes, .. } = parse_client(removed, now()).unwrap()
        else {
            panic!()
        };
        assert_eq!(entity, "clair de lune-debussy");
        assert_eq!(writes[0].0, EntityType::RepertoireItem);
        assert_eq!(writes[0].1["deletedAt"], "2025-06-24T12:00:00.000Z");
        let added = r#"{"type":"PIECE_ADDED","piece":{"scoreId":"Moonlight Sonata-Beethoven","status":"learning"}}"#;
        let ClientMessage::Mutation { writes, .. } = parse_client(added, now()).unwrap() else {
            panic!()
        };
        assert_eq!(writes[0].1["id"], "moonlight sonata-beethoven");
        let plan =
            r#"{"type":"PLAN_CREATED","plan":{"id":"p1"},"occurrences":[{"id":"o1"},{"id":"o2"}]}"#;
        let ClientMessage::Mutation { writes, .. } = parse_client(plan, now()).unwrap() else {
            panic!()
        };
        let types: Vec<_> = writes.iter().map(|w| w.0).collect();
        assert_eq!(
            types,
            vec![
                EntityType::PracticePlan,
                EntityType::PlanOccurrence,
                EntityType::PlanOccurrence
            ]
        );
    }

    #[test]
    fn bad_frames_are_json_or_format_errors() {
        assert_eq!(parse_client("{nope", now()), Err(ClientError::InvalidJson));
        for bad in [
            r#"[1]"#,
            r#"{"type":5}"#,
            r#"{"type":"ENTRY_CREATED"}"#,
            r#"{"type":"ENTRY_CREATED","entry":"x"}"#,
            r#"{"type":"ENTRY_DELETED","entryId":""}"#,
            r#"{"type":"SYNC_REQUEST","lastSeq":-1}"#,
            r#"{"type":"PLAN_UPDATED","plan":{},"occurrences":{}}"#,
            r#"{"type":"PIECE_ADDED","piece":{}}"#,
            r#"{"type":"TELEPORT"}"#,
        ] {
            assert_eq!(
                parse_client(bad, now()),
                Err(ClientError::InvalidFormat),
                "{bad}"
            );
        }
    }

    #[test]
    fn payloads_are_embedded_verbatim_and_only_when_they_are_json() {
        let render =
            |payload: &str| render_change(EntityType::PracticePlan, "p1", payload, false, 1, now());
        let text = render(" {\"id\":\"p1\",\"n\":[1.50,\"\\u00e9\"]}\n").unwrap();
        assert!(
            text.contains(r#""plan":{"id":"p1","n":[1.50,"\u00e9"]},"#),
            "{text}"
        );
        let _: Value = serde_json::from_str(&text).unwrap();
        for bad in [
            "{\"id\":\"p1\"",
            "{\"id\":\"p1\"} x",
            "{\"id\":\"p1\",\"n\":[1,}",
            "{\"id\":\"bad \\q\"}",
            "",
        ] {
            assert_eq!(render(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn changes_render_as_contract_messages() {
        let at = now();
        let created = render_change(
            EntityType::LogbookEntry,
            "e1",
            r#"{"createdAt":1,"id":"e1","updatedAt":1}"#,
            false,
            7,
            at,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&created).unwrap();
        assert_eq!(
            v,
            json!({"type":"ENTRY_CREATED","entry":{"createdAt":1,"id":"e1","updatedAt":1},"seq":7,"timestamp":"2025-06-24T12:00:00.000Z"})
        );
        let updated = render_change(
            EntityType::LogbookEntry,
            "e1",
            r#"{"createdAt":1,"id":"e1","updatedAt":2}"#,
            false,
            8,
            at,
        )
        .unwrap();
        assert!(updated.starts_with(r#"{"type":"ENTRY_UPDATED""#));
        let deleted = render_change(
            EntityType::LogbookEntry,
            "e1",
            r#"{"deletedAt":3,"id":"e1"}"#,
            true,
            9,
            at,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&deleted).unwrap();
        assert_eq!(
            v,
            json!({"type":"ENTRY_DELETED","entryId":"e1","deletedAt":3,"seq":9,"timestamp":"2025-06-24T12:00:00.000Z"})
        );
        let removed = render_change(
            EntityType::RepertoireItem,
            "s1",
            r#"{"id":"s1","scoreId":"s1"}"#,
            true,
            1,
            at,
        )
        .unwrap();
        assert!(
            removed.contains(r#""type":"PIECE_REMOVED","scoreId":"s1""#),
            "{removed}"
        );
        let done = render_change(
            EntityType::PlanOccurrence,
            "o1",
            r#"{"id":"o1","status":"completed","updatedAt":5}"#,
            false,
            1,
            at,
        )
        .unwrap();
        assert!(done.contains("PLAN_OCCURRENCE_COMPLETED"));
        assert!(render_change(EntityType::Goal, "g", "{}", false, 1, at).is_none());
    }

    #[test]
    fn control_frames_have_type_and_timestamp() {
        for frame in [
            welcome(),
            pong(),
            error("Invalid JSON format"),
            sync_response("Sync complete", 3),
            sync_pending(),
        ] {
            let v: Value = serde_json::from_str(&frame).unwrap();
            assert!(v["type"].is_string());
            assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        }
        let e: Value =
            serde_json::from_str(&entity_error("superseded", EntityType::LogbookEntry, "e1"))
                .unwrap();
        assert_eq!(e["entityId"], "e1");
        let bulk: Value = serde_json::from_str(&bulk_sync(
            &[serde_json::from_str(r#"{"id":"a"}"#).unwrap()],
            4,
        ))
        .unwrap();
        assert_eq!(bulk["entries"][0]["id"], "a");
        assert_eq!(bulk["lastSeq"], 4);
    }
}
