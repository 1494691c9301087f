//! What a client knows of a user's logbook entries, built the way a client builds it, and the
//! store's state in the same shape, so a test can compare them.

use legato_schema::{ChangeSeq, UserId};
use legato_store::Store;
use serde_json::Value;
use std::collections::BTreeMap;

/// Per entry id: its payload, or `None` once deleted.
pub type State = BTreeMap<String, Option<Value>>;

/// Every logbook entry of `user` in `store` (tombstones as `None`).
pub async fn stored_state(store: &impl Store, user: &str) -> State {
    let user = UserId::parse(user).expect("valid user id");
    store
        .changes_since(&user, ChangeSeq(0), None, 1_000_000)
        .await
        .expect("read the store")
        .into_iter()
        .map(|e| {
            let payload = (!e.deleted).then(|| serde_json::from_str(&e.payload).expect("JSON"));
            (e.id, payload)
        })
        .collect()
}

/// Applies one pull page (`entries`, `deleted`) to a view.
pub fn apply_page(view: &mut State, page: &Value) {
    for entry in page["entries"].as_array().expect("entries") {
        view.insert(
            entry["id"].as_str().unwrap().to_owned(),
            Some(entry.clone()),
        );
    }
    // A first pull (no `since`) is a snapshot: it has no `deleted`.
    for deleted in page["deleted"].as_array().into_iter().flatten() {
        view.insert(deleted["id"].as_str().unwrap().to_owned(), None);
    }
}

/// A WebSocket device's view: per entry `(clock, state)`, applied by LWW on the clock as a
/// client does (live frames may arrive reordered), and the greatest `seq` seen: its cursor.
#[derive(Default, Debug, Clone)]
pub struct DeviceView {
    pub entries: BTreeMap<String, (i64, Option<Value>)>,
    pub last_seq: u64,
}

fn clock(v: &Value) -> i64 {
    v.as_i64().expect("the tests write epoch-ms clocks")
}

impl DeviceView {
    fn put(&mut self, id: &str, at: i64, state: Option<Value>) {
        let slot = self
            .entries
            .entry(id.to_owned())
            .or_insert((i64::MIN, None));
        if at >= slot.0 {
            *slot = (at, state);
        }
    }

    /// Applies one server frame.
    pub fn apply(&mut self, frame: &Value) {
        match frame["type"].as_str().unwrap_or_default() {
            "ENTRY_CREATED" | "ENTRY_UPDATED" => {
                let entry = &frame["entry"];
                self.put(
                    entry["id"].as_str().unwrap(),
                    clock(&entry["updatedAt"]),
                    Some(entry.clone()),
                );
            }
            "ENTRY_DELETED" => self.put(
                frame["entryId"].as_str().unwrap(),
                clock(&frame["deletedAt"]),
                None,
            ),
            "BULK_SYNC" => {
                for entry in frame["entries"].as_array().unwrap() {
                    self.put(
                        entry["id"].as_str().unwrap(),
                        clock(&entry["updatedAt"]),
                        Some(entry.clone()),
                    );
                }
            }
            _ => {}
        }
        if let Some(seq) = frame["seq"].as_u64().or(frame["lastSeq"].as_u64()) {
            self.last_seq = self.last_seq.max(seq);
        }
    }

    /// The view without clocks, comparable with [`stored_state`].
    pub fn state(&self) -> State {
        self.entries
            .iter()
            .map(|(id, (_, s))| (id.clone(), s.clone()))
            .collect()
    }
}
