//! Per-item preparation shared by push and batch: validation, clocks, checksums and
//! score-id normalization (in `legato_schema::write`), and the in-request duplicate rule.

use crate::state::State;
use legato_schema::api::Rejected;
use legato_schema::write::{self, Fields, Payload, PrepareOptions, WriteItem};
use legato_schema::{Clock, EntityType};
use serde_json::Value;
use std::collections::HashMap;

/// One item as the client sent it.
pub(crate) struct RawItem<'a> {
    /// The entity type, or the unknown name the item came under.
    pub entity_type: Result<EntityType, String>,
    /// A batch entity's outer `id`; a push item's id is its payload's.
    pub id: Option<Value>,
    pub payload: Payload<'a>,
    /// A batch entity's `version` counter.
    pub version: Option<u64>,
}

/// Items ready to publish, in request order, and what was refused.
pub(crate) struct PreparedItems {
    pub items: Vec<WriteItem>,
    pub versions: Vec<Option<u64>>,
    pub rejected: Vec<Rejected>,
}

impl PreparedItems {
    pub fn sent(&self) -> Vec<(EntityType, String)> {
        self.items
            .iter()
            .map(|i| (i.entity_type, i.id.to_string()))
            .collect()
    }
}

pub(crate) const DUPLICATE_IN_REQUEST: &str =
    "duplicate id in this request: the last item with this id wins";

/// Validates every item on its own. When one request carries the same entity twice, the last
/// one in request order is applied and the earlier ones are reported as rejected.
pub(crate) fn prepare_items(state: &State, raw: Vec<RawItem<'_>>, now: Clock) -> PreparedItems {
    let options = PrepareOptions {
        now,
        max_skew_us: state.config.sync.max_clock_skew_secs * 1_000_000,
        max_item_bytes: state.config.limits.max_item_bytes,
    };
    let mut prepared = Vec::with_capacity(raw.len());
    let mut rejected = Vec::new();
    for item in raw {
        let fields = Fields::read(item.payload);
        let own_id = fields.as_ref().ok().and_then(|f| f.get("id"));
        let reported = write::reported_id(item.id.as_ref().or(own_id));
        let entity_type = match item.entity_type {
            Ok(t) => t,
            Err(name) => {
                rejected.push(Rejected {
                    entity_id: reported,
                    entity_type: name,
                    reason: "unknown entity type".into(),
                });
                continue;
            }
        };
        let outcome = fields.and_then(|fields| {
            let id = item.id.or_else(|| fields.get("id").cloned());
            write::prepare_fields(entity_type, id.as_ref(), fields, &options)
        });
        match outcome {
            Ok(p) => {
                if p.clock_clamped {
                    state.metrics.clock_clamped.inc();
                }
                prepared.push((p.item, item.version));
            }
            Err(e) => rejected.push(Rejected {
                entity_id: reported,
                entity_type: entity_type.as_str().into(),
                reason: e.to_string(),
            }),
        }
    }
    let mut last: HashMap<(EntityType, String), usize> = HashMap::new();
    for (index, (item, _)) in prepared.iter().enumerate() {
        last.insert((item.entity_type, item.id.to_string()), index);
    }
    let mut out = PreparedItems {
        items: Vec::with_capacity(last.len()),
        versions: Vec::with_capacity(last.len()),
        rejected,
    };
    for (index, (item, version)) in prepared.into_iter().enumerate() {
        if last[&(item.entity_type, item.id.to_string())] == index {
            out.items.push(item);
            out.versions.push(version);
        } else {
            out.rejected.push(Rejected {
                entity_id: item.id.to_string(),
                entity_type: item.entity_type.as_str().into(),
                reason: DUPLICATE_IN_REQUEST.into(),
            });
        }
    }
    state
        .metrics
        .items_rejected
        .inc_by(out.rejected.len() as u64);
    out
}
