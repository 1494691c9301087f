//! A push body read from its canonical text, without a tree: the text the idempotency hash
//! covers is made once, checking the body exactly as parsing it into a `Value` would, and the
//! canonicalizer outlines the envelope and the items' members on the way, so the items are
//! parts of that text and nothing is read twice.

use crate::api::{
    BadRequest, ChangeGroup, PushBody, invalid_json, not_an_object, push_from_value, utf8,
};
use crate::canonical_item::{CanonicalItem, ITEM_DEPTH};
use crate::checksum::{Canonical, Outline};
use crate::write::Payload;

/// Depth of the containers a push body's outline covers: the body, `changes` and each group,
/// then what an item needs.
const OUTLINE_DEPTH: usize = 3 + ITEM_DEPTH;

/// A push body checked and put in canonical form, before its envelope is taken apart: the
/// canonical text is what the request hash covers, and the items are read out of it.
#[derive(Debug)]
pub struct PushText<'a> {
    body: &'a str,
    canonical: Canonical,
    /// `None` when the envelope is read from a tree instead: the canonical text does not read
    /// back as the body, or holds text the outline does not see into.
    outline: Option<Outline>,
}

/// The first half of [`crate::api::parse_push`] without building a tree: the same errors for a
/// body that is not UTF-8, not JSON (serde_json's message included) or not an object.
pub fn push_text(body: &[u8]) -> Result<PushText<'_>, BadRequest> {
    let body = utf8(body)?;
    let (canonical, outline) = Canonical::outlined(body, OUTLINE_DEPTH).map_err(invalid_json)?;
    if !canonical.as_str().starts_with('{') {
        return Err(not_an_object());
    }
    let outline = outline.filter(|_| canonical.reads_back());
    Ok(PushText {
        body,
        canonical,
        outline,
    })
}

impl PushText<'_> {
    /// The body's canonical JSON, for [`crate::api::request_hash_canonical`].
    pub fn canonical(&self) -> &str {
        self.canonical.as_str()
    }

    /// The second half of [`crate::api::parse_push`]: the same errors, and the same groups in
    /// the same order, their items being parts of the canonical text.
    pub fn read(&self) -> Result<PushBody<Payload<'_>>, BadRequest> {
        let text = self.canonical.as_str();
        let Some((outline, body)) = self
            .outline
            .as_ref()
            .and_then(|o| Some((o, o.root().filter(|r| r.object)?)))
        else {
            return self.read_tree();
        };
        let changes = match body.member(text, "changes") {
            Some(child) => match outline.get(child.container) {
                Some(changes) if changes.object => changes,
                _ => return Err(BadRequest::at("changes", "must be an object")),
            },
            None => return Err(BadRequest::at("changes", "is required")),
        };
        let last_sync_token = match body.member(text, "lastSyncToken") {
            None => None,
            Some(child) => match &text[child.value.clone()] {
                "null" => None,
                token if token.starts_with('"') => {
                    Some(serde_json::from_str(token).map_err(invalid_json)?)
                }
                _ => return Err(BadRequest::at("lastSyncToken", "must be a string")),
            },
        };
        let mut groups = Vec::with_capacity(changes.children.len());
        // In key order, as `push_from_value` walks its map: the first bad group is reported.
        for child in &changes.children {
            let key: String =
                serde_json::from_str(&text[child.key.clone()]).map_err(invalid_json)?;
            let items = match outline.get(child.container) {
                Some(group) if !group.object => group
                    .children
                    .iter()
                    .map(|item| {
                        Payload::Canonical(CanonicalItem::at(text, outline, item.container))
                    })
                    .collect(),
                None if &text[child.value.clone()] == "null" => Vec::new(),
                _ => return Err(BadRequest::at(format!("changes.{key}"), "must be an array")),
            };
            groups.push(ChangeGroup::new(key, items));
        }
        Ok(PushBody::in_contract_order(groups, last_sync_token))
    }

    /// The body as `Value` reads it, for what the outline cannot stand for.
    fn read_tree(&self) -> Result<PushBody<Payload<'_>>, BadRequest> {
        let value = serde_json::from_str(self.body).map_err(invalid_json)?;
        let body = push_from_value(value)?;
        Ok(PushBody {
            groups: body
                .groups
                .into_iter()
                .map(|g| ChangeGroup {
                    key: g.key,
                    entity_type: g.entity_type,
                    items: g.items.into_iter().map(Payload::Value).collect(),
                })
                .collect(),
            last_sync_token: body.last_sync_token,
        })
    }
}
