//! The input generators of `fuzz_decoders`: arbitrary JSON biased towards the contract's
//! names and edge cases, request-shaped values, and byte- and tree-level mutations.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

pub(crate) const FIELD_NAMES: &[&str] = &[
    "id",
    "updatedAt",
    "deletedAt",
    "createdAt",
    "type",
    "data",
    "version",
    "checksum",
    "entities",
    "changes",
    "entries",
    "goals",
    "practicePlans",
    "planOccurrences",
    "planTemplates",
    "repertoire",
    "preferences",
    "pieces",
    "scoreId",
    "title",
    "composer",
    "syncToken",
    "lastSyncToken",
    "since",
    "types",
    "limit",
    "lastSeq",
    "entryId",
    "entry",
    "piece",
    "plan",
    "occurrences",
    "occurrence",
    "timestamp",
    "status",
    "completedAt",
];

pub(crate) const WORDS: &[&str] = &[
    "",
    " ",
    "PING",
    "SYNC_REQUEST",
    "ENTRY_CREATED",
    "ENTRY_UPDATED",
    "ENTRY_DELETED",
    "PIECE_ADDED",
    "PIECE_UPDATED",
    "PIECE_REMOVED",
    "PIECE_DISSOCIATED",
    "PLAN_CREATED",
    "PLAN_UPDATED",
    "PLAN_OCCURRENCE_COMPLETED",
    "BULK_SYNC",
    "logbook_entry",
    "goal",
    "practice_plan",
    "plan_occurrence",
    "plan_template",
    "repertoire_item",
    "user_preferences",
    "widget",
    "2025-06-24T10:00:00.000Z",
    "2025-06-24T10:00:00",
    "2025-06-24",
    "2025-13-45T99:99:99Z",
    "9999-12-31T23:59:59.999Z",
    "+275760-09-13T00:00:00Z",
    "-000001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "soon",
    "score_abc-def",
    "Moonlight Sonata-Beethoven",
    "a||b",
    "||",
    "-",
    "Ave Maria||Schubert-Liszt",
    "\u{0}",
    "e\u{1}1",
    "\u{2028}",
    "\u{feff}",
    "\u{10ffff}",
    "İ",
    "ß",
    "Σ",
    "\u{301}",
    "d.1",
    "completed",
];

pub(crate) const COLLECTION_KEYS: &[&str] = &[
    "entries",
    "goals",
    "practicePlans",
    "planOccurrences",
    "planTemplates",
    "repertoire",
    "preferences",
    "widgets",
];

pub(crate) const ENTITY_TYPES: &[&str] = &[
    "logbook_entry",
    "goal",
    "practice_plan",
    "plan_occurrence",
    "plan_template",
    "repertoire_item",
    "user_preferences",
    "widget",
];

pub(crate) const MESSAGE_TYPES: &[&str] = &[
    "PING",
    "SYNC_REQUEST",
    "ENTRY_CREATED",
    "ENTRY_UPDATED",
    "ENTRY_DELETED",
    "PIECE_ADDED",
    "PIECE_UPDATED",
    "PIECE_REMOVED",
    "PIECE_DISSOCIATED",
    "PLAN_CREATED",
    "PLAN_UPDATED",
    "PLAN_OCCURRENCE_COMPLETED",
];

pub(crate) const CLOCK_WORDS: &[&str] = &[
    "2025-06-24T10:00:00.000Z",
    "2025-06-24T10:00:00",
    "2025-06-24",
    "2025-06-24T13:00:00+02:00",
    "2025-13-45T99:99:99Z",
    "9999-12-31T23:59:59.999Z",
    "+275760-09-13T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "",
    "soon",
];

pub(crate) fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(str::to_owned),
        2 => "[a-zA-Z0-9_ .|-]{0,16}",
        2 => any::<String>(),
        1 => (250usize..=260, prop::sample::select(&["x", "é", "\u{10000}"][..]))
            .prop_map(|(n, c)| c.repeat(n)),
        1 => (0usize..300).prop_map(|n| "e".repeat(n)),
    ]
}

pub(crate) fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(
            &[
                "0",
                "-0",
                "1",
                "-1",
                "1.5",
                "1750717972797",
                "1750717972797.5",
                "253402300799999",
                "253402300800000",
                "9223372036854775807",
                "9223372036854775808",
                "18446744073709551616",
                "-9223372036854775809",
                "1e308",
                "1e309",
                "-1e999",
                "1e-999",
                "123456789012345678901234567890123456789",
                "0.000000000000000000000000001",
            ][..]
        )
        .prop_map(|n| serde_json::from_str::<Value>(n).expect("a JSON number")),
    ]
}

pub(crate) fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELD_NAMES).prop_map(str::to_owned),
        1 => arb_string(),
    ]
}

pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

pub(crate) fn arb_clock() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => prop::sample::select(CLOCK_WORDS).prop_map(|w| json!(w)),
        1 => (0i64..4_000_000_000_000).prop_map(Value::from),
        1 => arb_number(),
        1 => arb_json(),
    ]
}

/// An item that is often valid: a plausible id and clocks, score-id material, and arbitrary
/// other fields.
pub(crate) fn arb_item() -> impl Strategy<Value = Value> {
    let piece = (
        arb_string(),
        prop::option::of(arb_string()),
        prop::option::of(arb_json()),
    )
        .prop_map(|(title, composer, id)| json!({"title": title, "composer": composer, "id": id}));
    (
        prop_oneof![3 => "[a-z0-9_]{1,24}".prop_map(Value::String), 1 => arb_json()],
        prop::option::of(arb_clock()),
        prop::option::weighted(0.3, arb_clock()),
        prop::collection::vec(piece, 0..3),
        prop::collection::vec((arb_key(), arb_json()), 0..4),
    )
        .prop_map(|(id, updated, deleted, pieces, rest)| {
            let mut item: Map<String, Value> = rest.into_iter().collect();
            item.insert("id".into(), id);
            item.insert("pieces".into(), Value::Array(pieces));
            if let Some(at) = updated {
                item.insert("updatedAt".into(), at);
            }
            if let Some(at) = deleted {
                item.insert("deletedAt".into(), at);
            }
            Value::Object(item)
        })
}

/// A request-shaped value: the right skeleton with arbitrary contents, read as a push, a
/// batch and (with each client message type) a WebSocket frame.
pub(crate) fn arb_shaped() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(COLLECTION_KEYS),
        prop::sample::select(WORDS),
        prop::sample::select(ENTITY_TYPES),
        prop::collection::vec(arb_item(), 0..4),
        arb_json(),
        prop_oneof![
            Just(Value::Null),
            (1u64..100).prop_map(Value::from),
            arb_json()
        ],
    )
        .prop_map(|(key, word, entity_type, items, extra, version)| {
            let entities: Vec<Value> = items
                .iter()
                .map(|d| json!({"id": d["id"], "type": entity_type, "data": d, "version": version}))
                .collect();
            let first = items.first().cloned().unwrap_or(Value::Null);
            json!({
                "changes": {key: items, "entries": [extra.clone()]},
                "entities": entities,
                "type": word,
                "entry": first,
                "piece": items.last().cloned().unwrap_or(Value::Null),
                "plan": first,
                "occurrence": first,
                "occurrences": items,
                "entryId": first["id"],
                "scoreId": word,
                "lastSeq": extra,
            })
        })
}

pub(crate) fn json_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(&b"{}[]\":,0123456789.eE+- truefalsnull\\u\xff\x00"[..]),
        0..256,
    )
}

pub(crate) fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), json_bytes()]
}

/// Fragments worth splicing into a request: lone surrogates (escaped and encoded), NULs,
/// nesting, out-of-range numbers, stray quotes and braces.
pub(crate) const SNIPPETS: &[&[u8]] = &[
    b"\\ud800",
    b"\\u0000",
    b"\x00",
    b"\xed\xa0\x80",
    b"[[[[[[[[",
    b"1e999",
    b"-",
    b"null",
    b"\"",
    b"}",
    b"{\"id\":5}",
];

/// One byte-level edit of a text.
#[derive(Debug, Clone)]
pub(crate) enum ByteEdit {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

pub(crate) fn arb_byte_edits() -> impl Strategy<Value = Vec<ByteEdit>> {
    let edit = prop_oneof![
        any::<usize>().prop_map(ByteEdit::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                json_bytes(),
                prop::sample::select(SNIPPETS).prop_map(<[u8]>::to_vec),
            ]
        )
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| ByteEdit::Duplicate(i, n)),
    ];
    prop::collection::vec(edit, 1..4)
}

pub(crate) fn apply_byte_edits(original: &[u8], edits: &[ByteEdit]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for edit in edits {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match edit {
            ByteEdit::Truncate(i) => bytes.truncate(at(*i)),
            ByteEdit::Flip(i, b) => {
                if len > 0 {
                    bytes[i % len] ^= b.max(&1);
                }
            }
            ByteEdit::Insert(i, b) => {
                let i = at(*i);
                bytes.splice(i..i, b.iter().copied());
            }
            ByteEdit::Delete(i, n) => {
                let i = at(*i);
                bytes.drain(i..(i + n).min(len));
            }
            ByteEdit::Duplicate(i, n) => {
                let i = at(*i);
                let part = bytes[i..(i + n).min(len)].to_vec();
                bytes.splice(i..i, part);
            }
        }
    }
    bytes
}

/// One tree-level edit: at the node chosen by `pick` (modulo the node count), replace it,
/// remove it from its parent, or wrap it in an array.
#[derive(Debug, Clone)]
pub(crate) enum TreeEdit {
    Replace(usize, Value),
    Remove(usize),
    Wrap(usize),
    Stringify(usize),
}

pub(crate) fn arb_tree_edits() -> impl Strategy<Value = Vec<TreeEdit>> {
    let edit = prop_oneof![
        3 => (any::<usize>(), arb_json()).prop_map(|(i, v)| TreeEdit::Replace(i, v)),
        1 => any::<usize>().prop_map(TreeEdit::Remove),
        1 => any::<usize>().prop_map(TreeEdit::Wrap),
        1 => any::<usize>().prop_map(TreeEdit::Stringify),
    ];
    prop::collection::vec(edit, 1..5)
}

/// JSON pointers of every node below the root.
pub(crate) fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    let children: Vec<(String, &Value)> = match value {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v))
            .collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (key, child) in children {
        let path = format!("{at}/{key}");
        out.push(path.clone());
        pointers(child, path, out);
    }
}

pub(crate) fn apply_tree_edits(mut value: Value, edits: &[TreeEdit]) -> Value {
    for edit in edits {
        let mut all = Vec::new();
        pointers(&value, String::new(), &mut all);
        if all.is_empty() {
            break;
        }
        let pick = |i: &usize| all[i % all.len()].clone();
        match edit {
            TreeEdit::Replace(i, v) => *value.pointer_mut(&pick(i)).unwrap() = v.clone(),
            TreeEdit::Wrap(i) => {
                let node = value.pointer_mut(&pick(i)).unwrap();
                *node = Value::Array(vec![node.take()]);
            }
            TreeEdit::Stringify(i) => {
                let node = value.pointer_mut(&pick(i)).unwrap();
                *node = Value::String(node.to_string());
            }
            TreeEdit::Remove(i) => {
                let path = pick(i);
                let (parent, key) = path.rsplit_once('/').unwrap();
                let key = key.replace("~1", "/").replace("~0", "~");
                match value.pointer_mut(parent).unwrap() {
                    Value::Object(m) => {
                        m.remove(&key);
                    }
                    Value::Array(a) => {
                        a.remove(key.parse::<usize>().unwrap());
                    }
                    _ => unreachable!("a parent is a container"),
                }
            }
        }
    }
    value
}
