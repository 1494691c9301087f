//! HTTP JSON shapes of CONTRACT.md §2 and §4, and the parsing of request bodies into items
//! with path-precise errors.

use crate::clock::Clock;
use crate::entity::EntityType;
use crate::envelope::ItemOutcome;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub use crate::push_text::{PushText, push_text};

/// `{"path":"changes.entries[3].duration","reason":"..."}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    pub path: String,
    pub reason: String,
}

/// The error envelope of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub success: bool,
    pub error: String,
    pub code: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<bool>,
}

/// A request body that is not JSON or not of the expected top-level shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub message: String,
    pub details: Vec<Detail>,
}

impl BadRequest {
    pub(crate) fn at(path: impl Into<String>, reason: impl Into<String>) -> BadRequest {
        BadRequest {
            message: "Invalid request body".into(),
            details: vec![Detail {
                path: path.into(),
                reason: reason.into(),
            }],
        }
    }
}

/// One group of items under `changes.<key>`; `entity_type` is `None` for a key the contract
/// does not know (its items are reported as rejected, not silently dropped).
#[derive(Debug)]
pub struct ChangeGroup<T = Value> {
    pub key: String,
    pub entity_type: Option<EntityType>,
    pub items: Vec<T>,
}

#[derive(Debug)]
pub struct PushBody<T = Value> {
    pub groups: Vec<ChangeGroup<T>>,
    pub last_sync_token: Option<String>,
}

impl<T> ChangeGroup<T> {
    /// The group under `changes.<key>`, typed by its collection key.
    pub(crate) fn new(key: String, items: Vec<T>) -> ChangeGroup<T> {
        ChangeGroup {
            entity_type: EntityType::from_collection_key(&key),
            key,
            items,
        }
    }
}

impl<T> PushBody<T> {
    /// The body with its groups in the contract's order: entries first, as the client sends
    /// them, unknown keys last (stable otherwise).
    pub(crate) fn in_contract_order(
        mut groups: Vec<ChangeGroup<T>>,
        last_sync_token: Option<String>,
    ) -> PushBody<T> {
        groups.sort_by_key(|g| g.entity_type.map_or(usize::MAX, |t| t as usize));
        PushBody {
            groups,
            last_sync_token,
        }
    }

    pub fn item_count(&self) -> usize {
        self.groups.iter().map(|g| g.items.len()).sum()
    }
}

/// Parses a request body as a JSON object. Nesting deeper than serde_json's limit (128)
/// is refused like any other invalid JSON.
pub fn parse_json(body: &[u8]) -> Result<Value, BadRequest> {
    match serde_json::from_str::<Value>(utf8(body)?) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(not_an_object()),
        Err(e) => Err(invalid_json(e)),
    }
}

pub(crate) fn utf8(body: &[u8]) -> Result<&str, BadRequest> {
    std::str::from_utf8(body).map_err(|e| BadRequest::at("$", format!("body is not UTF-8: {e}")))
}

pub(crate) fn not_an_object() -> BadRequest {
    BadRequest::at("$", "body must be a JSON object")
}

pub(crate) fn invalid_json(e: serde_json::Error) -> BadRequest {
    BadRequest {
        message: "Invalid JSON".into(),
        details: vec![Detail {
            path: "$".into(),
            reason: e.to_string(),
        }],
    }
}

/// The idempotency request hash: SHA-256 over the method, the path and the canonical body.
pub fn request_hash(method: &str, path: &str, body: &Value) -> String {
    request_hash_canonical(method, path, &crate::checksum::canonical_json(body))
}

/// [`request_hash`] given the body's canonical JSON.
pub fn request_hash_canonical(method: &str, path: &str, canonical: &str) -> String {
    crate::checksum::sha256_hex(format!("{method}\n{path}\n{canonical}").as_bytes())
}

/// Parses `POST /api/sync/push`. Only the envelope's shape is checked here; items are
/// validated one by one later.
pub fn parse_push(body: &[u8]) -> Result<PushBody, BadRequest> {
    push_from_value(parse_json(body)?)
}

pub fn push_from_value(body: Value) -> Result<PushBody, BadRequest> {
    let Value::Object(mut top) = body else {
        return Err(BadRequest::at("$", "body must be a JSON object"));
    };
    let changes = match top.remove("changes") {
        Some(Value::Object(changes)) => changes,
        Some(_) => return Err(BadRequest::at("changes", "must be an object")),
        None => return Err(BadRequest::at("changes", "is required")),
    };
    let last_sync_token = match top.remove("lastSyncToken") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(BadRequest::at("lastSyncToken", "must be a string")),
    };
    let mut groups = Vec::with_capacity(changes.len());
    for (key, value) in changes {
        let items = match value {
            Value::Null => Vec::new(),
            Value::Array(items) => items,
            _ => return Err(BadRequest::at(format!("changes.{key}"), "must be an array")),
        };
        groups.push(ChangeGroup::new(key, items));
    }
    Ok(PushBody::in_contract_order(groups, last_sync_token))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullRequest {
    pub since: Option<String>,
    pub types: Option<Vec<EntityType>>,
    pub limit: Option<usize>,
}

/// Parses the optional `POST /api/sync/pull` body (empty means a full snapshot).
pub fn parse_pull(body: &[u8]) -> Result<PullRequest, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(PullRequest::default());
    }
    let top = parse_json(body)?;
    serde_json::from_value(top).map_err(|e| BadRequest::at("$", e.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub entity_id: String,
    pub entity_type: EntityType,
    pub reason: String,
    /// The stored write's clock in microseconds.
    pub server_version: i64,
    pub server_updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejected {
    pub entity_id: String,
    /// The entity type, or the unknown `changes` key the item came under.
    pub entity_type: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushStats {
    pub entries_processed: u64,
    pub duplicates_prevented: u64,
    pub goals_processed: u64,
    pub practice_plans_processed: u64,
    pub plan_occurrences_processed: u64,
    pub plan_templates_processed: u64,
    pub repertoire_processed: u64,
    pub preferences_processed: u64,
}

impl PushStats {
    fn count(&mut self, t: EntityType) {
        let slot = match t {
            EntityType::LogbookEntry => &mut self.entries_processed,
            EntityType::Goal => &mut self.goals_processed,
            EntityType::PracticePlan => &mut self.practice_plans_processed,
            EntityType::PlanOccurrence => &mut self.plan_occurrences_processed,
            EntityType::PlanTemplate => &mut self.plan_templates_processed,
            EntityType::RepertoireItem => &mut self.repertoire_processed,
            EntityType::UserPreferences => &mut self.preferences_processed,
        };
        *slot += 1;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    pub sync_token: String,
    pub conflicts: Vec<Conflict>,
    pub rejected: Vec<Rejected>,
    pub stats: PushStats,
}

/// Builds the push answer from the items sent (in request order) and their outcomes.
pub fn push_response(
    sent: &[(EntityType, String)],
    outcomes: &[ItemOutcome],
    rejected: Vec<Rejected>,
    sync_token: String,
) -> PushResponse {
    let mut stats = PushStats::default();
    let mut conflicts = Vec::new();
    for ((entity_type, id), outcome) in sent.iter().zip(outcomes) {
        stats.count(*entity_type);
        match outcome {
            ItemOutcome::Applied { .. } => {}
            ItemOutcome::Duplicate { .. } => stats.duplicates_prevented += 1,
            ItemOutcome::Superseded { server_clock, .. } => conflicts.push(Conflict {
                entity_id: id.clone(),
                entity_type: *entity_type,
                reason: "superseded".into(),
                server_version: server_clock.as_micros(),
                server_updated_at: server_clock.to_iso(),
            }),
        }
    }
    PushResponse {
        success: true,
        pending: false,
        sync_token,
        conflicts,
        rejected,
        stats,
    }
}

/// `202`: durable in the broker, not yet committed within the wait.
pub fn pending_response(rejected: Vec<Rejected>, sync_token: String) -> PushResponse {
    PushResponse {
        success: true,
        pending: true,
        sync_token,
        conflicts: Vec::new(),
        rejected,
        stats: PushStats::default(),
    }
}

/// A stored entity as pull returns it: the payload is embedded without re-parsing.
#[derive(Debug, Serialize)]
pub struct Deleted {
    #[serde(rename = "type")]
    pub entity_type: EntityType,
    pub id: String,
    #[serde(rename = "deletedAt")]
    pub deleted_at: String,
}

/// Pull answer: a key per entity type, plus the cursor and server time; with `since`, also
/// `deleted` and `hasMore`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullResponse {
    #[serde(flatten)]
    pub collections: std::collections::BTreeMap<&'static str, Vec<Box<RawValue>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Vec<Deleted>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_more: Option<bool>,
    pub sync_token: String,
    pub timestamp: String,
}

impl PullResponse {
    pub fn new(sync_token: String, now: Clock) -> PullResponse {
        PullResponse {
            collections: EntityType::ALL
                .into_iter()
                .map(|t| (t.collection_key(), Vec::new()))
                .collect(),
            deleted: None,
            has_more: None,
            sync_token,
            timestamp: now.to_iso(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    pub last_sync_time: Option<String>,
    pub sync_token: String,
    pub pending_changes: u64,
    pub device_count: u64,
    pub entity_count: u64,
}

/// `POST /api/sync/batch` before per-entity validation.
#[derive(Debug)]
pub struct BatchBody {
    pub entities: Vec<Value>,
    pub sync_token: Option<String>,
}

pub fn batch_from_value(body: Value) -> Result<BatchBody, BadRequest> {
    let Value::Object(mut top) = body else {
        return Err(BadRequest::at("$", "body must be a JSON object"));
    };
    let entities = match top.remove("entities") {
        Some(Value::Array(entities)) => entities,
        Some(_) => return Err(BadRequest::at("entities", "must be an array")),
        None => return Err(BadRequest::at("entities", "is required")),
    };
    let sync_token = match top.remove("syncToken") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(BadRequest::at("syncToken", "must be a string")),
    };
    Ok(BatchBody {
        entities,
        sync_token,
    })
}

/// One validated batch entity.
#[derive(Debug)]
pub struct BatchEntity {
    pub entity_type: EntityType,
    pub id: Option<Value>,
    pub data: Value,
    /// The client's version counter, echoed in conflicts.
    pub version: Option<u64>,
}

/// Checks a batch entity's envelope; the error is `(entity id, type, reason)` for `rejected`.
pub fn batch_entity(value: Value) -> Result<BatchEntity, Rejected> {
    let reported = crate::write::reported_id(value.get("id"));
    let type_name = value
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let reject = |reason: &str| Rejected {
        entity_id: reported.clone(),
        entity_type: type_name.clone(),
        reason: reason.into(),
    };
    let Value::Object(mut fields) = value else {
        return Err(reject("entity must be a JSON object"));
    };
    let entity_type = type_name
        .parse::<EntityType>()
        .map_err(|_| reject("unknown entity type"))?;
    let version = match fields.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|v| *v > 0)
                .ok_or_else(|| reject("version must be a positive integer"))?,
        ),
    };
    if fields
        .get("checksum")
        .is_some_and(|c| !c.is_string() && !c.is_null())
    {
        return Err(reject("checksum must be a string"));
    }
    let data = match fields.remove("data") {
        Some(data @ Value::Object(_)) => data,
        _ => return Err(reject("data must be a JSON object")),
    };
    Ok(BatchEntity {
        entity_type,
        id: fields.remove("id"),
        data,
        version,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchConflict {
    pub entity_id: String,
    /// The client's `version`, else its clock in microseconds.
    pub local_version: i64,
    /// The stored write's clock in microseconds.
    pub remote_version: i64,
}

/// A server entity in a batch answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchEntityOut {
    pub id: String,
    #[serde(rename = "type")]
    pub entity_type: EntityType,
    pub data: Box<RawValue>,
    pub version: i64,
    pub deleted: bool,
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    pub uploaded: u64,
    pub downloaded: u64,
    pub conflicts: Vec<BatchConflict>,
    pub new_sync_token: String,
    pub entities: Vec<BatchEntityOut>,
    pub rejected: Vec<Rejected>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub has_more: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn push_shape_errors_name_the_path() {
        assert_eq!(parse_push(b"[1]").unwrap_err().details[0].path, "$");
        assert_eq!(parse_push(b"{}").unwrap_err().details[0].path, "changes");
        assert_eq!(
            parse_push(br#"{"changes":{"entries":{}}}"#)
                .unwrap_err()
                .details[0]
                .path,
            "changes.entries"
        );
        assert_eq!(
            parse_push(b"{\"changes\":").unwrap_err().message,
            "Invalid JSON"
        );
        assert!(
            parse_push(b"\xff\xfe").unwrap_err().details[0]
                .reason
                .contains("UTF-8")
        );
    }

    #[test]
    fn push_groups_keep_unknown_keys() {
        let body =
            parse_push(br#"{"changes":{"widgets":[{}],"goals":[{"id":"g"}],"entries":null}}"#)
                .unwrap();
        let keys: Vec<_> = body
            .groups
            .iter()
            .map(|g| (g.key.as_str(), g.entity_type))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("entries", Some(EntityType::LogbookEntry)),
                ("goals", Some(EntityType::Goal)),
                ("widgets", None)
            ]
        );
        assert_eq!(body.item_count(), 2);
    }

    #[test]
    fn push_response_counts_and_reports_conflicts() {
        let sent = vec![
            (EntityType::LogbookEntry, "e1".to_string()),
            (EntityType::LogbookEntry, "e2".to_string()),
            (EntityType::Goal, "g1".to_string()),
        ];
        let outcomes = vec![
            ItemOutcome::Applied { seq: 1 },
            ItemOutcome::Duplicate { seq: 1 },
            ItemOutcome::Superseded {
                seq: 3,
                server_clock: Clock(1750717972797000),
                server_deleted: false,
            },
        ];
        let r = push_response(&sent, &outcomes, vec![], "d.1".into());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["stats"]["entriesProcessed"], 2);
        assert_eq!(v["stats"]["duplicatesPrevented"], 1);
        assert_eq!(v["stats"]["goalsProcessed"], 1);
        assert_eq!(
            v["conflicts"][0],
            json!({"entityId":"g1","entityType":"goal","reason":"superseded",
                   "serverVersion":1750717972797000_i64,"serverUpdatedAt":"2025-06-23T22:32:52.797Z"})
        );
        assert!(v.get("pending").is_none());
    }

    #[test]
    fn batch_entities_are_checked_one_by_one() {
        let ok =
            batch_entity(json!({"id":"g1","type":"goal","data":{"id":"g1"},"version":3})).unwrap();
        assert_eq!(ok.entity_type, EntityType::Goal);
        assert_eq!(ok.version, Some(3));
        let reason = |v: Value| batch_entity(v).unwrap_err().reason;
        assert_eq!(
            reason(json!({"id":"x","type":"widget","data":{}})),
            "unknown entity type"
        );
        assert_eq!(
            reason(json!({"id":"x","type":"goal","data":[1]})),
            "data must be a JSON object"
        );
        assert_eq!(
            reason(json!({"id":"x","type":"goal","data":{},"version":0})),
            "version must be a positive integer"
        );
        assert_eq!(
            reason(json!({"id":"x","type":"goal","data":{},"version":-2})),
            "version must be a positive integer"
        );
        assert_eq!(
            reason(json!({"id":"x","type":"goal","data":{},"checksum":5})),
            "checksum must be a string"
        );
        assert_eq!(reason(json!(7)), "entity must be a JSON object");
        assert!(batch_from_value(json!({"entities":{}})).is_err());
        assert_eq!(
            batch_from_value(json!({"entities":[],"syncToken":"a.1"}))
                .unwrap()
                .sync_token
                .as_deref(),
            Some("a.1")
        );
    }

    #[test]
    fn request_hash_ignores_key_order_but_not_content_or_route() {
        let a = request_hash("POST", "/api/sync/push", &json!({"a":1,"b":2}));
        assert_eq!(
            a,
            request_hash(
                "POST",
                "/api/sync/push",
                &serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap()
            )
        );
        assert_ne!(
            a,
            request_hash("POST", "/api/sync/batch", &json!({"a":1,"b":2}))
        );
        assert_ne!(
            a,
            request_hash("POST", "/api/sync/push", &json!({"a":1,"b":3}))
        );
    }

    #[test]
    fn pull_body_is_optional_and_strict() {
        assert_eq!(parse_pull(b"").unwrap(), PullRequest::default());
        let p = parse_pull(br#"{"since":"a.1","types":["goal"],"limit":5}"#).unwrap();
        assert_eq!(p.types, Some(vec![EntityType::Goal]));
        assert!(parse_pull(br#"{"types":["nope"]}"#).is_err());
        assert!(parse_pull(br#"{"limit":-1}"#).is_err());
    }
}
