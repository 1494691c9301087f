//! The HTTP corpus of `attack_input`: bad bodies for push, pull and batch, each with the
//! answer the contract requires.

use super::{COLLECTION_KEYS, MAX_BODY, MAX_ITEM, MAX_ITEMS, PUSH_FIXTURE, cuts, num};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Push,
    Pull,
    Batch,
}

impl Route {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Route::Push => "/api/sync/push",
            Route::Pull => "/api/sync/pull",
            Route::Batch => "/api/sync/batch",
        }
    }
}

#[derive(Debug)]
pub(crate) enum Expect {
    /// This 4xx status with the error envelope.
    Error(u16),
    /// 200 with each of the `n` items in `rejected` and nothing applied.
    AllRejected(usize),
    /// 200 and an empty snapshot (pull).
    EmptySnapshot,
}

pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) route: Route,
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: &'static str,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) expect: Expect,
}

pub(crate) fn case(
    name: impl Into<String>,
    route: Route,
    body: impl Into<Vec<u8>>,
    expect: Expect,
) -> Case {
    Case {
        name: name.into(),
        route,
        body: body.into(),
        content_type: "application/json",
        headers: Vec::new(),
        expect,
    }
}

/// Items the contract refuses one by one, each with its reason.
pub(crate) fn bad_items() -> Vec<(&'static str, Value)> {
    vec![
        ("a number", json!(1)),
        ("a string", json!("e1")),
        ("null", Value::Null),
        ("an array", json!([{"id": "e1"}])),
        ("a bool", json!(true)),
        ("no id", json!({"duration": 5})),
        ("id number", json!({"id": 5})),
        ("id float", json!({"id": 1.5})),
        ("id 1e999", json!({"id": num("1e999")})),
        ("id empty", json!({"id": ""})),
        ("id null", json!({"id": null})),
        ("id array", json!({"id": ["e1"]})),
        ("id object", json!({"id": {"id": "e1"}})),
        ("id bool", json!({"id": true})),
        ("id 257 bytes", json!({"id": "x".repeat(257)})),
        ("id 129 two-byte chars", json!({"id": "é".repeat(129)})),
        ("id NUL", json!({"id": "e\u{0}1"})),
        ("id newline", json!({"id": "e\n1"})),
        ("id DEL", json!({"id": "e\u{7f}"})),
        ("id C1 control", json!({"id": "e\u{85}"})),
        (
            "updatedAt a word",
            json!({"id": "e1", "updatedAt": "yesterday"}),
        ),
        ("updatedAt empty", json!({"id": "e1", "updatedAt": ""})),
        ("updatedAt -1", json!({"id": "e1", "updatedAt": -1})),
        ("updatedAt -0.5", json!({"id": "e1", "updatedAt": -0.5})),
        (
            "updatedAt before 1970",
            json!({"id": "e1", "updatedAt": "1969-12-31T23:59:59Z"}),
        ),
        (
            "updatedAt year 10000",
            json!({"id": "e1", "updatedAt": "+10000-01-01T00:00:00Z"}),
        ),
        (
            "updatedAt Feb 30",
            json!({"id": "e1", "updatedAt": "2025-02-30T00:00:00Z"}),
        ),
        (
            "updatedAt NUL",
            json!({"id": "e1", "updatedAt": "2025-06-24\u{0}"}),
        ),
        ("updatedAt 1e300", json!({"id": "e1", "updatedAt": 1e300})),
        (
            "updatedAt 1e999",
            json!({"id": "e1", "updatedAt": num("1e999")}),
        ),
        (
            "updatedAt i64 max",
            json!({"id": "e1", "updatedAt": i64::MAX}),
        ),
        (
            "updatedAt u64 max",
            json!({"id": "e1", "updatedAt": u64::MAX}),
        ),
        ("updatedAt bool", json!({"id": "e1", "updatedAt": true})),
        ("updatedAt object", json!({"id": "e1", "updatedAt": {}})),
        ("updatedAt array", json!({"id": "e1", "updatedAt": [2025]})),
        ("deletedAt a word", json!({"id": "e1", "deletedAt": "soon"})),
        ("deletedAt -5", json!({"id": "e1", "deletedAt": -5})),
        ("deletedAt 1e300", json!({"id": "e1", "deletedAt": 1e300})),
        (
            "over the item limit",
            json!({"id": "e1", "notes": "x".repeat(MAX_ITEM)}),
        ),
    ]
}

pub(crate) fn push_body(key: &str, items: Vec<Value>) -> Vec<u8> {
    json!({"changes": {key: items}}).to_string().into_bytes()
}

pub(crate) fn batch_body(entities: Vec<Value>) -> Vec<u8> {
    json!({"entities": entities}).to_string().into_bytes()
}

/// A body of exactly `size` bytes: one entry whose `notes` fill it.
pub(crate) fn padded_push(size: usize, field: &str) -> Vec<u8> {
    let skeleton = push_body("entries", vec![json!({"id": "e1", field: ""})]);
    let pad = "x".repeat(size - skeleton.len());
    let body = push_body("entries", vec![json!({"id": "e1", field: pad})]);
    assert_eq!(body.len(), size);
    body
}

/// The same shape with the pad as a string in `template`'s `"PAD"` slot.
pub(crate) fn padded(size: usize, template: &str) -> Vec<u8> {
    let pad = "x".repeat(size - (template.len() - 3));
    let body = template.replacen("PAD", &pad, 1).into_bytes();
    assert_eq!(body.len(), size);
    body
}

pub(crate) fn fixture_batch() -> String {
    let push: Value = serde_json::from_str(PUSH_FIXTURE).unwrap();
    let entities: Vec<Value> = push["changes"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!({"id": e["id"], "type": "logbook_entry", "data": e}))
        .collect();
    json!({"entities": entities}).to_string()
}

pub(crate) fn http_corpus() -> Vec<Case> {
    use Expect::*;
    use Route::*;
    let mut cases = Vec::new();
    let push_fixture = PUSH_FIXTURE.trim();
    let batch_fixture = fixture_batch();

    // Malformed on every route.
    for route in [Push, Pull, Batch] {
        let empty = if route == Pull {
            EmptySnapshot
        } else {
            Error(400)
        };
        let shape = if route == Pull {
            "{\"since\":\"x\",\"limit\":5}"
        } else {
            push_fixture
        };
        let shape = if route == Batch {
            batch_fixture.as_str()
        } else {
            shape
        };
        cases.push(case("empty body", route, "", empty));
        let blank = if route == Pull {
            EmptySnapshot
        } else {
            Error(400)
        };
        cases.push(case("blank body", route, " \r\n\t", blank));
        for (name, body) in [
            ("null", "null"),
            ("a number", "1"),
            ("a string", "\"changes\""),
            ("an array", "[]"),
            ("an array of the body", "[{\"changes\":{}}]"),
            ("true", "true"),
            ("NaN", "NaN"),
            ("Infinity", "{\"limit\":Infinity}"),
            ("single quotes", "{'changes':{}}"),
            ("a comment", "{/* c */\"changes\":{}}"),
            ("a trailing comma", "{\"changes\":{},}"),
            ("trailing garbage", "{\"changes\":{}} {}"),
            ("an unquoted key", "{changes:{}}"),
            ("XML", "<changes><entries/></changes>"),
            (
                "a lone surrogate",
                "{\"changes\":{\"entries\":[{\"id\":\"\\ud800\"}]},\"since\":\"\\ud800\",\"entities\":[]}",
            ),
            (
                "a reversed surrogate pair",
                "{\"changes\":{\"entries\":[{\"id\":\"\\udc00\\ud800\"}]},\"since\":\"\\udc00\\ud800\",\"entities\":[]}",
            ),
            (
                "a bad escape",
                "{\"changes\":{\"entries\":[{\"id\":\"\\x41\"}]}}",
            ),
            ("a short unicode escape", "{\"since\":\"\\u12\"}"),
        ] {
            cases.push(case(name, route, body, Error(400)));
        }
        for (name, body) in [
            ("a BOM", [&b"\xef\xbb\xbf"[..], shape.as_bytes()].concat()),
            ("invalid UTF-8", [shape.as_bytes(), b"\xff\xfe"].concat()),
            (
                "an encoded surrogate (CESU-8)",
                b"{\"since\":\"\xed\xa0\x80\",\"changes\":{},\"entities\":[]}".to_vec(),
            ),
            (
                "a UTF-8 sequence cut in two",
                b"{\"since\":\"F\xc3\",\"changes\":{},\"entities\":[]}".to_vec(),
            ),
            ("a raw NUL", [b"\0", shape.as_bytes()].concat()),
            (
                "a raw NUL in a string",
                b"{\"since\":\"a\0b\",\"changes\":{\"entries\":[{\"id\":\"e\0\"}]},\"entities\":[]}"
                    .to_vec(),
            ),
            (
                "a raw newline in a string",
                b"{\"since\":\"a\nb\",\"changes\":{\"entries\":[{\"id\":\"e\n\"}]},\"entities\":[]}"
                    .to_vec(),
            ),
            (
                "UTF-16",
                shape
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<u8>>(),
            ),
            ("100k [", "[".repeat(100_000).into_bytes()),
            ("100k {\"a\":", "{\"a\":".repeat(100_000).into_bytes()),
            (
                "129 levels inside a request",
                format!(
                    "{{\"since\":null,\"changes\":{{\"entries\":[{{\"id\":\"e1\",\"x\":{}0{}}}]}},\"entities\":[]}}",
                    "[".repeat(129),
                    "]".repeat(129)
                )
                .into_bytes(),
            ),
        ] {
            cases.push(case(name, route, body, Error(400)));
        }
        for at in cuts(shape) {
            cases.push(case(
                format!("truncated at {at}"),
                route,
                &shape.as_bytes()[..at],
                Error(400),
            ));
        }
        // Other content types, with bodies in their format.
        for (content_type, body) in [
            (
                "application/x-www-form-urlencoded",
                "changes=%7B%7D&entities=%5B%5D",
            ),
            (
                "multipart/form-data; boundary=X",
                "--X\r\nContent-Disposition: form-data; name=\"changes\"\r\n\r\n{}\r\n--X--\r\n",
            ),
            ("text/plain", "changes: {}"),
            ("application/msgpack", "\u{81}\u{a7}changes\u{80}"),
            ("application/xml", "<changes/>"),
        ] {
            let mut c = case(format!("as {content_type}"), route, body, Error(400));
            c.content_type = content_type;
            cases.push(c);
        }
    }

    // Push: wrong shapes.
    for (name, body) in [
        ("no changes", json!({})),
        ("changes null", json!({"changes": null})),
        ("changes an array", json!({"changes": [{"entries": []}]})),
        ("changes a string", json!({"changes": "entries"})),
        ("changes a number", json!({"changes": 1})),
        (
            "entries an object",
            json!({"changes": {"entries": {"id": "e1"}}}),
        ),
        ("entries a string", json!({"changes": {"entries": "e1"}})),
        ("entries a number", json!({"changes": {"entries": 1}})),
        ("entries true", json!({"changes": {"entries": true}})),
        (
            "goals an object",
            json!({"changes": {"goals": {"0": {"id": "g"}}}}),
        ),
        (
            "an unknown key an object",
            json!({"changes": {"widgets": {}}}),
        ),
        (
            "lastSyncToken a number",
            json!({"changes": {}, "lastSyncToken": 5}),
        ),
        (
            "lastSyncToken an object",
            json!({"changes": {}, "lastSyncToken": {}}),
        ),
    ] {
        cases.push(case(name, Push, body.to_string(), Error(400)));
    }
    cases.push(case(
        "duplicate changes, the last not an object",
        Push,
        r#"{"changes":{"entries":[{"id":"e1"}]},"changes":[]}"#,
        Error(400),
    ));
    // Push: items refused one by one, alone and all together under every key.
    for (name, item) in bad_items() {
        cases.push(case(
            format!("entry: {name}"),
            Push,
            push_body("entries", vec![item]),
            AllRejected(1),
        ));
    }
    let all: Vec<Value> = bad_items().into_iter().map(|(_, v)| v).collect();
    for key in COLLECTION_KEYS {
        cases.push(case(
            format!("{key}: every bad item"),
            Push,
            push_body(key, all.clone()),
            AllRejected(all.len()),
        ));
    }
    cases.push(case(
        "an unknown key",
        Push,
        push_body("widgets", vec![json!({"id": "w1"})]),
        AllRejected(1),
    ));
    cases.push(case(
        "a type name as key",
        Push,
        push_body("logbook_entry", vec![json!({"id": "e1"})]),
        AllRejected(1),
    ));
    cases.push(case(
        "over the item count",
        Push,
        push_body("entries", vec![json!({}); MAX_ITEMS + 1]),
        Error(413),
    ));

    // Pull: wrong shapes.
    for (name, body) in [
        ("since a number", json!({"since": 5})),
        ("since an array", json!({"since": ["a.1"]})),
        ("types a string", json!({"types": "goal"})),
        ("types unknown", json!({"types": ["widget"]})),
        ("types a number", json!({"types": [5]})),
        ("types a key name", json!({"types": ["entries"]})),
        ("limit negative", json!({"limit": -1})),
        ("limit a string", json!({"limit": "10"})),
        ("limit a float", json!({"limit": 1.5})),
        ("limit 1e99", json!({"limit": 1e99})),
        ("limit 2^64", json!({"limit": num("18446744073709551616")})),
        ("an unknown field", json!({"sinse": "a.1"})),
    ] {
        cases.push(case(name, Pull, body.to_string(), Error(400)));
    }
    cases.push(case(
        "limit with a million digits",
        Pull,
        format!("{{\"limit\":{}}}", "9".repeat(1_000_000)),
        Error(400),
    ));
    for (name, since) in [
        ("since garbage", "garbage".to_owned()),
        (
            "since from another deployment",
            "other-deployment.1".to_owned(),
        ),
        ("since far ahead", "x.18446744073709551615".to_owned()),
        ("since negative", "x.-1".to_owned()),
        ("since empty", String::new()),
        ("since NUL", "\0".to_owned()),
    ] {
        cases.push(case(
            name,
            Pull,
            json!({"since": since}).to_string(),
            Error(409),
        ));
    }

    // Batch: wrong shapes.
    for (name, body) in [
        ("no entities", json!({})),
        ("entities null", json!({"entities": null})),
        ("entities an object", json!({"entities": {"id": "g1"}})),
        ("entities a string", json!({"entities": "g1"})),
        (
            "syncToken a number",
            json!({"entities": [], "syncToken": 5}),
        ),
        (
            "the push shape",
            json!({"changes": {"goals": [{"id": "g1"}]}}),
        ),
    ] {
        cases.push(case(name, Batch, body.to_string(), Error(400)));
    }
    cases.push(case(
        "syncToken garbage",
        Batch,
        json!({"entities": [], "syncToken": "garbage"}).to_string(),
        Error(409),
    ));
    // Batch: entities refused one by one.
    for (name, item) in bad_items() {
        cases.push(case(
            format!("entity data: {name}"),
            Batch,
            batch_body(vec![json!({"type": "goal", "data": item})]),
            AllRejected(1),
        ));
    }
    let good = json!({"id": "g1"});
    let entity_cases = vec![
        ("not an object", json!(1)),
        ("a string", json!("g1")),
        ("null", Value::Null),
        ("an array", json!([good])),
        ("no type", json!({"id": "g1", "data": good})),
        (
            "type unknown",
            json!({"id": "g1", "type": "widget", "data": good}),
        ),
        (
            "type a number",
            json!({"id": "g1", "type": 5, "data": good}),
        ),
        (
            "type upper case",
            json!({"id": "g1", "type": "GOAL", "data": good}),
        ),
        (
            "type a key name",
            json!({"id": "g1", "type": "goals", "data": good}),
        ),
        ("no data", json!({"id": "g1", "type": "goal"})),
        (
            "data null",
            json!({"id": "g1", "type": "goal", "data": null}),
        ),
        (
            "data a string",
            json!({"id": "g1", "type": "goal", "data": "{}"}),
        ),
        (
            "data an array",
            json!({"id": "g1", "type": "goal", "data": [good]}),
        ),
        (
            "version 0",
            json!({"id": "g1", "type": "goal", "data": good, "version": 0}),
        ),
        (
            "version -1",
            json!({"id": "g1", "type": "goal", "data": good, "version": -1}),
        ),
        (
            "version 1.5",
            json!({"id": "g1", "type": "goal", "data": good, "version": 1.5}),
        ),
        (
            "version a string",
            json!({"id": "g1", "type": "goal", "data": good, "version": "1"}),
        ),
        (
            "version 1e999",
            json!({"id": "g1", "type": "goal", "data": good, "version": num("1e999")}),
        ),
        (
            "version 2^64",
            json!({"id": "g1", "type": "goal", "data": good, "version": num("18446744073709551616")}),
        ),
        (
            "version true",
            json!({"id": "g1", "type": "goal", "data": good, "version": true}),
        ),
        (
            "checksum a number",
            json!({"id": "g1", "type": "goal", "data": good, "checksum": 5}),
        ),
        (
            "checksum an object",
            json!({"id": "g1", "type": "goal", "data": good, "checksum": {}}),
        ),
        (
            "outer id a number",
            json!({"id": 5, "type": "goal", "data": good}),
        ),
        (
            "outer id empty",
            json!({"id": "", "type": "goal", "data": good}),
        ),
        (
            "outer id too long",
            json!({"id": "g".repeat(257), "type": "goal", "data": good}),
        ),
        (
            "outer id NUL",
            json!({"id": "g\u{0}", "type": "goal", "data": good}),
        ),
    ];
    let n = entity_cases.len();
    let mut every = Vec::new();
    for (name, entity) in entity_cases {
        every.push(entity.clone());
        cases.push(case(
            format!("entity: {name}"),
            Batch,
            batch_body(vec![entity]),
            AllRejected(1),
        ));
    }
    cases.push(case(
        "every bad entity",
        Batch,
        batch_body(every),
        AllRejected(n),
    ));
    cases.push(case(
        "over the item count",
        Batch,
        batch_body(vec![json!({}); MAX_ITEMS + 1]),
        Error(413),
    ));

    // Huge strings: just under and exactly at the body limit, as a field, an id, a key, a
    // cursor. (Bodies over the limit are in `oversized_http_bodies_are_refused_with_413`.)
    for size in [MAX_BODY - 1, MAX_BODY] {
        cases.push(case(
            format!("{size}-byte body, a huge field"),
            Push,
            padded_push(size, "notes"),
            AllRejected(1),
        ));
    }
    cases.push(case(
        "a huge id",
        Push,
        padded(MAX_BODY - 1, r#"{"changes":{"entries":[{"id":"PAD"}]}}"#),
        AllRejected(1),
    ));
    cases.push(case(
        "a huge key",
        Push,
        padded(
            MAX_BODY - 1,
            r#"{"changes":{"entries":[{"id":"e1","PAD":1}]}}"#,
        ),
        AllRejected(1),
    ));
    cases.push(case(
        "a huge changes key",
        Push,
        padded(MAX_BODY - 1, r#"{"changes":{"PAD":[{"id":"e1"}]}}"#),
        AllRejected(1),
    ));
    cases.push(case(
        "a huge lastSyncToken",
        Push,
        padded(MAX_BODY - 1, r#"{"changes":{},"lastSyncToken":"PAD"}"#),
        AllRejected(0),
    ));
    cases.push(case(
        "a huge entity",
        Batch,
        padded(
            MAX_BODY - 1,
            r#"{"entities":[{"type":"goal","data":{"id":"g1","n":"PAD"}}]}"#,
        ),
        AllRejected(1),
    ));
    cases.push(case(
        "a huge type",
        Batch,
        padded(
            MAX_BODY - 1,
            r#"{"entities":[{"type":"PAD","data":{"id":"g1"}}]}"#,
        ),
        AllRejected(1),
    ));
    cases.push(case(
        "a huge syncToken",
        Batch,
        padded(MAX_BODY - 1, r#"{"entities":[],"syncToken":"PAD"}"#),
        Error(409),
    ));
    cases.push(case(
        "a huge since",
        Pull,
        padded(MAX_BODY - 1, r#"{"since":"PAD"}"#),
        Error(409),
    ));
    cases.push(case(
        "a huge types entry",
        Pull,
        padded(MAX_BODY - 1, r#"{"types":["PAD"]}"#),
        Error(400),
    ));

    // Bad headers on a valid write: refused before anything is published.
    let valid = push_body("entries", vec![json!({"id": "e1", "updatedAt": 1})]);
    for (header, value) in [
        ("X-Device-ID", "d".repeat(129)),
        ("X-Idempotency-Key", "k".repeat(257)),
        ("X-Idempotency-Key", "has space".to_owned()),
    ] {
        for route in [Push, Batch] {
            let body = if route == Push {
                valid.clone()
            } else {
                batch_body(vec![json!({"type": "goal", "data": {"id": "g1"}})])
            };
            let mut c = case(format!("{header} {value:.12}…"), route, body, Error(400));
            c.headers.push((header, value.clone()));
            cases.push(c);
        }
    }
    cases
}
