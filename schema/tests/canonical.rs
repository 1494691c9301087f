//! The tree-free paths held to the tree-building ones, byte for byte: `checksum::canonicalize`
//! against `canonical_json(&from_str(text)?)` (errors included), `write::prepare_raw` against
//! `write::prepare`, and `api::push_text` against `api::parse_push` with `prepare` per item.
//!
//! Inputs are JSON documents rendered as text the way clients might send them: keys in any
//! order and repeated (the last one counts), whitespace anywhere, strings with and without
//! escapes (`\u00e9`, `\/`, surrogate pairs), numbers at the u64/i64 edges and beyond, with
//! fractions and exponents. Invalid text comes from byte-level edits of valid text.
//!
//! Cases per property: 512 by default, 20 000 with `LEGATO_SOAK=1`, or `PROPTEST_CASES`.

mod common;
use common::config;
use legato_schema::api;
use legato_schema::checksum::{Canonical, NUMBER_TOKEN, RAW_TOKEN, canonical_json, canonicalize};
use legato_schema::write::{self, Fields, Payload, PrepareOptions, Prepared};
use legato_schema::{Clock, EntityType};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// A small item limit, so generated items fall on both sides of it.
const MAX_ITEM_BYTES: usize = 400;

fn opts() -> PrepareOptions {
    PrepareOptions {
        now: Clock::parse_iso("2025-06-24T12:00:00Z").unwrap(),
        max_skew_us: 300_000_000,
        max_item_bytes: MAX_ITEM_BYTES,
    }
}

// ---------------------------------------------------------------------------------------
// Documents and their renderings
// ---------------------------------------------------------------------------------------

/// A JSON document as written: object members in text order, repeated keys allowed.
#[derive(Debug, Clone)]
enum Doc {
    Null,
    Bool(bool),
    /// Number text as sent.
    Number(String),
    String(String),
    Array(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

impl Doc {
    /// The `Value` the text means: the last of repeated keys wins.
    fn value(&self) -> Value {
        match self {
            Doc::Null => Value::Null,
            Doc::Bool(b) => Value::Bool(*b),
            Doc::Number(n) => serde_json::from_str(n).expect("number text"),
            Doc::String(s) => Value::String(s.clone()),
            Doc::Array(items) => Value::Array(items.iter().map(Doc::value).collect()),
            Doc::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value()))
                    .collect(),
            ),
        }
    }

    fn object(members: Vec<(&str, Doc)>) -> Doc {
        Doc::Object(
            members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "1.0",
    "-0.0",
    "1e2",
    "1E2",
    "1e+2",
    "1E-2",
    "-1.5e-300",
    "0.5",
    "2.50",
    "1750717972797",
    "1750717972797.5",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    "1e308",
    "1e309",
    "-1e999",
    "1e-999",
    "0.000000000000000000000000001",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "a",
    "b",
    "id",
    "é",
    "日本語",
    "\u{10ffff}",
    "\u{1f3b9}",
    "\u{0}",
    "\u{1f}",
    "\u{7f}",
    "\"",
    "\\",
    "/",
    "</script>",
    "\u{2028}\u{2029}",
    "\u{feff}",
    "a\tb\nc",
    "ß",
    "Σ",
    "e\u{301}",
    "Moonlight Sonata",
    "Ave Maria-Schubert-Liszt",
    "Waltz – No. 2",
    "score_abc-def",
    "  J. S.  Bach ",
];

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(STRINGS).prop_map(str::to_owned),
        2 => "[a-zA-Z0-9 _.|/\\\\\"-]{0,12}",
        1 => any::<String>(),
    ]
}

fn arb_number() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(NUMBERS).prop_map(str::to_owned),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(|n| n.to_string())
        }),
    ]
}

fn arb_leaf() -> impl Strategy<Value = Doc> {
    prop_oneof![
        Just(Doc::Null),
        any::<bool>().prop_map(Doc::Bool),
        arb_number().prop_map(Doc::Number),
        arb_text().prop_map(Doc::String),
    ]
}

/// Keys from a small pool (so they repeat within an object) plus any text.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&["a", "b", "c", "id", "é", "A", "", "a\"", "a\\", "aa"][..])
            .prop_map(str::to_owned),
        1 => arb_text(),
    ]
}

fn arb_doc() -> impl Strategy<Value = Doc> {
    arb_leaf().prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Doc::Array),
            prop::collection::vec((arb_key(), inner), 0..7).prop_map(Doc::Object),
        ]
    })
}

/// Deterministic choices for one rendering.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        // xorshift64*: plenty for picking renderings.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.roll(n) == 0
    }
}

/// Renders `doc` as JSON text with random whitespace and escapes. With `junk`, some members
/// get an earlier member of the same key in front of them, which the last one overrides.
fn render(doc: &Doc, dice: &mut Dice, junk: bool) -> String {
    let mut out = String::new();
    render_into(doc, dice, junk, &mut out);
    out
}

fn render_into(doc: &Doc, dice: &mut Dice, junk: bool, out: &mut String) {
    match doc {
        Doc::Null => out.push_str("null"),
        Doc::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Doc::Number(n) => out.push_str(n),
        Doc::String(s) => render_str(s, dice, out),
        Doc::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(dice, out);
                render_into(item, dice, junk, out);
                space(dice, out);
            }
            if items.is_empty() {
                space(dice, out);
            }
            out.push(']');
        }
        Doc::Object(members) => {
            out.push('{');
            let mut first = true;
            for (key, value) in members {
                let mut member = |value: &Doc, dice: &mut Dice, out: &mut String| {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    space(dice, out);
                    render_str(key, dice, out);
                    space(dice, out);
                    out.push(':');
                    space(dice, out);
                    render_into(value, dice, junk, out);
                    space(dice, out);
                };
                if junk && dice.one_in(4) {
                    member(&Doc::Array(vec![Doc::Null, value.clone()]), dice, out);
                }
                member(value, dice, out);
            }
            if members.is_empty() {
                space(dice, out);
            }
            out.push('}');
        }
    }
}

fn space(dice: &mut Dice, out: &mut String) {
    out.push_str(match dice.roll(8) {
        0 => " ",
        1 => "\n  ",
        2 => "\t",
        3 => "\r\n",
        _ => "",
    });
}

fn render_str(s: &str, dice: &mut Dice, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let hex = |out: &mut String, unit: u32, dice: &mut Dice| {
            if dice.one_in(2) {
                out.push_str(&format!("\\u{unit:04x}"));
            } else {
                out.push_str(&format!("\\u{unit:04X}"));
            }
        };
        match c {
            '"' if dice.one_in(3) => hex(out, 0x22, dice),
            '"' => out.push_str("\\\""),
            '\\' if dice.one_in(3) => hex(out, 0x5c, dice),
            '\\' => out.push_str("\\\\"),
            '/' if dice.one_in(2) => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' if dice.one_in(2) => out.push_str("\\t"),
            c if (c as u32) < 0x20 => hex(out, c as u32, dice),
            c if dice.one_in(4) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    hex(out, u32::from(*unit), dice);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The reference: what the code before the tree-free paths computed.
fn reference(text: &str) -> Result<String, String> {
    serde_json::from_str::<Value>(text)
        .map(|v| canonical_json(&v))
        .map_err(|e| e.to_string())
}

fn streamed(text: &str) -> Result<String, String> {
    canonicalize(text).map_err(|e| e.to_string())
}

/// Byte edits that usually break the text somewhere interesting.
fn arb_edit() -> impl Strategy<Value = (usize, u8, Option<&'static str>)> {
    (
        any::<usize>(),
        0u8..5,
        prop::option::of(prop::sample::select(
            &[
                "\\ud800",
                "\\udc00\\ud800",
                "\\x",
                "\u{0}",
                "[[[",
                "]",
                "}",
                ",",
                ":",
                "\"",
                "1e",
                "-",
                "01",
                "tru",
                "nul",
                " x",
                "{\"$serde_json::private::Number\":\"1.5\"}",
                "{\"$serde_json::private::RawValue\":\"[1, {\\\"b\\\":2,\\\"a\\\":1}]\"}",
            ][..],
        )),
    )
}

fn apply_edit(text: &str, (at, op, snippet): &(usize, u8, Option<&str>)) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let at = at % (bytes.len() + 1);
    match (op, snippet) {
        (0, _) => bytes.truncate(at),
        (1, _) if at < bytes.len() => {
            bytes.remove(at);
        }
        (_, Some(s)) => {
            bytes.splice(at..at, s.bytes());
        }
        _ => bytes.insert(at, b'x'),
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---------------------------------------------------------------------------------------
// canonicalize
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn canonicalize_equals_canonical_json_of_the_parsed_value(
        doc in arb_doc(),
        seed in any::<u64>(),
    ) {
        let mut dice = Dice(seed | 1);
        let expected = canonical_json(&doc.value());
        let plain = render(&doc, &mut dice, false);
        prop_assert_eq!(streamed(&plain), Ok(expected.clone()), "{}", plain);
        let noisy = render(&doc, &mut dice, true);
        prop_assert_eq!(reference(&noisy), Ok(expected.clone()), "{}", noisy);
        prop_assert_eq!(streamed(&noisy), Ok(expected), "{}", noisy);
        prop_assert!(Canonical::of(&noisy).unwrap().reads_back());
    }

    #[test]
    fn canonicalize_refuses_what_value_refuses_with_the_same_error(
        doc in arb_doc(),
        seed in any::<u64>(),
        edits in prop::collection::vec(arb_edit(), 1..4),
    ) {
        let mut text = render(&doc, &mut Dice(seed | 1), true);
        for edit in &edits {
            text = apply_edit(&text, edit);
        }
        prop_assert_eq!(streamed(&text), reference(&text), "{}", text);
    }

    #[test]
    fn serde_json_special_keys_read_as_value_reads_them(
        doc in arb_doc(),
        number in arb_number(),
        inner in arb_doc(),
        seed in any::<u64>(),
        first in any::<bool>(),
        shape in 0u8..4,
    ) {
        let mut dice = Dice(seed | 1);
        let inner_text = render(&inner, &mut dice, true);
        let (key, special) = match shape {
            0 => (NUMBER_TOKEN, Doc::String(number)),
            1 => (NUMBER_TOKEN, Doc::String(inner_text)),
            2 => (RAW_TOKEN, Doc::String(inner_text)),
            _ => (RAW_TOKEN, Doc::Number(number)),
        };
        let mut members = vec![(key.to_owned(), special)];
        if let Doc::Object(rest) = &doc {
            if first {
                members.extend(rest.iter().cloned());
            } else {
                members.splice(0..0, rest.iter().cloned());
            }
        }
        let wrapped = Doc::Array(vec![Doc::Object(members.clone()), doc.clone()]);
        for text in [render(&Doc::Object(members), &mut dice, false), render(&wrapped, &mut dice, true)] {
            prop_assert_eq!(streamed(&text), reference(&text), "{}", text);
            // Text that says it reads back does: the same value, already canonical.
            if let Some(canonical) = Canonical::of(&text).ok().filter(Canonical::reads_back) {
                let back: Value = serde_json::from_str(canonical.as_str()).unwrap();
                prop_assert_eq!(Some(back), serde_json::from_str::<Value>(&text).ok());
                prop_assert_eq!(streamed(canonical.as_str()), Ok(canonical.into_string()));
            }
        }
    }
}

#[test]
fn hand_picked_texts_canonicalize_as_value_does() {
    let nest =
        |open: &str, close: &str, n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
    let cases = [
        r#"{"b":1,"a":2}"#.to_owned(),
        r#"{"a":1,"a":2,"a":{"z":1,"y":2}}"#.to_owned(),
        r#"{"a\u00e9":"\u00e9\/","aé":1}"#.to_owned(),
        r#"{"\ud83c\udfb9":"\ud83c\udfb9","":[]}"#.to_owned(),
        r#"[-0, 1.0, 1e2, 1E+2, -1.5e-7, 18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809]"#.to_owned(),
        r#"{"a":{"c":{"e":1,"d":2},"b":[{"y":1,"x":2}]},"A":0}"#.to_owned(),
        r#"{"b":{"d":1,"c":2},"a":{"f":1,"e":2}}"#.to_owned(),
        " \n {} \t ".to_owned(),
        r#""\u0000\u001f\u007f\u2028""#.to_owned(),
        r#"{"$serde_json::private::Number":"1.50"}"#.to_owned(),
        r#"{"$serde_json::private::Number":"1.5x"}"#.to_owned(),
        r#"{"$serde_json::private::Number":5}"#.to_owned(),
        r#"{"$serde_json::private::Number":"1","a":1}"#.to_owned(),
        r#"{"a":1,"$serde_json::private::Number":"1"}"#.to_owned(),
        r#"{"$serde_json::private::RawValue":"{\"b\":1,\"a\":2}"}"#.to_owned(),
        r#"{"$serde_json::private::RawValue":"{\"b\":1,"}"#.to_owned(),
        r#"{"\u0024serde_json::private::RawValue":"[1]"}"#.to_owned(),
        r#"{"a":1} x"#.to_owned(),
        r#"{"a":1,}"#.to_owned(),
        r#"[1,]"#.to_owned(),
        r#"{"a":"\ud800"}"#.to_owned(),
        r#"{"a" 1}"#.to_owned(),
        "".to_owned(),
        nest("[", "]", 127),
        nest("[", "]", 128),
        nest("[", "]", 129),
        nest("{\"a\":", "}", 128),
        nest("{\"a\":", "}", 129),
        nest("{\"b\":0,\"a\":", "}", 127),
    ];
    for text in &cases {
        assert_eq!(streamed(text), reference(text), "{text}");
    }
}

#[test]
fn only_special_keys_after_the_first_stop_canonical_text_reading_back() {
    let reads_back = |text: &str| Canonical::of(text).unwrap().reads_back();
    assert!(reads_back(r#"{"$serde_json::private::Number":"1.5"}"#));
    assert!(reads_back(
        r#"{"$serde_json::private::RawValue":"{\"b\":1}"}"#
    ));
    assert!(reads_back(
        r#"["$serde_json::private::Number", 1.5, 1e400]"#
    ));
    assert!(!reads_back(r#"{"a":1,"$serde_json::private::Number":"1"}"#));
    assert!(!reads_back(
        r#"[{"a":{"b":1,"$serde_json::private::RawValue":"2"}}]"#
    ));
    assert!(!reads_back(
        r#"{"$serde_json::private::RawValue":"{\"a\":1,\"$serde_json::private::Number\":\"1\"}"}"#
    ));
}

#[test]
fn deeply_nested_reordered_objects_cost_one_copy_per_byte() {
    // Every level is out of order, with a large string at the bottom: with a copy per level
    // this would move 127 × 1 MB.
    let big = "x".repeat(1 << 20);
    let text = format!(
        "{}\"{big}\"{}",
        "{\"b\":".repeat(127),
        ",\"a\":0}".repeat(127)
    );
    let started = std::time::Instant::now();
    let streamed = canonicalize(&text).unwrap();
    let streamed_time = started.elapsed();
    let started = std::time::Instant::now();
    let reference = canonical_json(&serde_json::from_str(&text).unwrap());
    let reference_time = started.elapsed();
    assert_eq!(streamed, reference);
    assert!(
        streamed_time < reference_time * 4 + std::time::Duration::from_millis(20),
        "{streamed_time:?} against {reference_time:?}"
    );
}

// ---------------------------------------------------------------------------------------
// prepare_raw
// ---------------------------------------------------------------------------------------

const CLOCKS: &[&str] = &[
    "2025-06-24T10:00:00.000Z",
    "2025-06-24T10:00:00",
    "2025-06-24",
    "2030-01-01T00:00:00Z",
    "2025-13-45T99:99:99Z",
    "1969-12-31T23:59:59Z",
    "",
    "soon",
];

fn arb_clock() -> impl Strategy<Value = Doc> {
    prop_oneof![
        3 => prop::sample::select(CLOCKS).prop_map(|c| Doc::String(c.to_owned())),
        2 => (0i64..4_000_000_000_000).prop_map(|n| Doc::Number(n.to_string())),
        1 => arb_number().prop_map(Doc::Number),
        1 => arb_leaf(),
        1 => arb_doc(),
    ]
}

fn arb_piece() -> impl Strategy<Value = Doc> {
    let part = prop_oneof![
        3 => prop::sample::select(STRINGS).prop_map(|s| Doc::String(s.to_owned())),
        2 => "[A-Za-z .’–—-]{0,12}".prop_map(Doc::String),
        1 => arb_leaf(),
    ];
    (
        prop::option::of(part.clone()),
        prop::option::of(part.clone()),
        prop::option::of(part),
        prop::collection::vec((arb_key(), arb_leaf()), 0..2),
    )
        .prop_map(|(title, composer, id, extra)| {
            let mut members: Vec<(String, Doc)> = extra;
            for (k, v) in [("title", title), ("composer", composer), ("id", id)] {
                if let Some(v) = v {
                    members.push((k.to_owned(), v));
                }
            }
            Doc::Object(members)
        })
}

/// An item as a push carries it: often valid, with every field `prepare` reads in all its
/// forms, unknown fields, and sizes around `MAX_ITEM_BYTES`.
fn arb_item() -> impl Strategy<Value = Doc> {
    let id = prop_oneof![
        12 => "[a-z0-9_-]{1,12}".prop_map(Doc::String),
        1 => Just(Doc::String(String::new())),
        1 => Just(Doc::String("x".repeat(257))),
        1 => Just(Doc::String("e\u{1}".into())),
        1 => arb_leaf(),
        1 => arb_doc(),
    ];
    let pieces = prop_oneof![
        4 => prop::collection::vec(arb_piece(), 0..3).prop_map(Doc::Array),
        1 => arb_doc(),
    ];
    let score_id = prop_oneof![
        3 => arb_text().prop_map(Doc::String),
        1 => arb_leaf(),
    ];
    (
        prop::option::weighted(0.9, id),
        prop::option::of(arb_clock()),
        prop::option::weighted(0.3, arb_clock()),
        prop::option::weighted(0.6, pieces),
        prop::option::weighted(0.3, score_id),
        prop::collection::vec((arb_key(), arb_doc()), 0..4),
        prop::option::weighted(
            0.2,
            (0usize..MAX_ITEM_BYTES + 50).prop_map(|n| "n".repeat(n)),
        ),
        any::<u64>(),
    )
        .prop_map(
            |(id, updated, deleted, pieces, score_id, extra, padding, order)| {
                let mut members = extra;
                let fields = [
                    ("id", id),
                    ("updatedAt", updated),
                    ("deletedAt", deleted),
                    ("pieces", pieces),
                    ("scoreId", score_id),
                    ("notes", padding.map(Doc::String)),
                ];
                let mut dice = Dice(order | 1);
                for (key, value) in fields {
                    if let Some(value) = value {
                        let at = dice.roll(members.len() as u64 + 1) as usize;
                        members.insert(at, (key.to_owned(), value));
                    }
                }
                Doc::Object(members)
            },
        )
}

/// Types whose preparation differs: normalized pieces, normalized scoreId, neither.
const TYPES: [EntityType; 3] = [
    EntityType::LogbookEntry,
    EntityType::RepertoireItem,
    EntityType::Goal,
];

fn prepared_both_ways(
    entity_type: EntityType,
    id: Option<&Value>,
    text: &str,
) -> (
    Result<Prepared, write::ItemError>,
    Result<Prepared, write::ItemError>,
) {
    let value: Value = serde_json::from_str(text).unwrap();
    let raw = RawValue::from_string(text.to_owned()).unwrap();
    (
        write::prepare_raw(entity_type, id, &raw, &opts()),
        write::prepare(entity_type, id, value, &opts()),
    )
}

#[test]
fn prepare_raw_equals_prepare_of_the_parsed_item() {
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    let mut runner = TestRunner::new(config());
    runner
        .run(&(arb_item(), any::<u64>()), |(item, seed)| {
            let text = render(&item, &mut Dice(seed | 1), true);
            let value: Value = serde_json::from_str(&text).unwrap();
            for t in TYPES {
                let (raw, tree) = prepared_both_ways(t, value.get("id"), &text);
                prop_assert_eq!(&raw, &tree, "{}", text);
                let outcome = match raw {
                    Ok(_) => "accepted".to_owned(),
                    Err(e) => format!("{e:?}")
                        .chars()
                        .take_while(|c| c.is_alphanumeric())
                        .collect(),
                };
                *outcomes.borrow_mut().entry(outcome).or_default() += 1;
            }
            let (raw, tree) = prepared_both_ways(EntityType::Goal, Some(&json!("outer")), &text);
            prop_assert_eq!(raw, tree, "{}", text);
            let (raw, tree) = prepared_both_ways(EntityType::LogbookEntry, None, &text);
            prop_assert_eq!(raw, tree, "{}", text);
            Ok(())
        })
        .unwrap();
    // Not vacuous: items get accepted, and refused for each reason, size included.
    let outcomes = outcomes.into_inner();
    eprintln!("{outcomes:?}");
    let cases = config().cases as usize;
    // About a third of the 3 × `cases` items are accepted; half of that is far below chance.
    assert!(outcomes["accepted"] >= cases / 2, "{outcomes:?}");
    for reason in ["MissingId", "BadDate", "TooLarge"] {
        assert!(
            outcomes.get(reason).is_some_and(|n| *n >= cases / 100),
            "{outcomes:?}"
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prepare_raw_equals_prepare_for_any_json(doc in arb_doc(), seed in any::<u64>()) {
        let text = render(&doc, &mut Dice(seed | 1), true);
        let value: Value = serde_json::from_str(&text).unwrap();
        for t in TYPES {
            let (raw, tree) = prepared_both_ways(t, value.get("id"), &text);
            prop_assert_eq!(raw, tree, "{}", text);
        }
    }
}

#[test]
fn hand_picked_items_prepare_the_same_raw_and_parsed() {
    let items = [
        r#"{"id":"e1","pieces":[{"title":"Moonlight  Sonata","composer":"Beethoven"}],"updatedAt":1750717972797}"#,
        r#"{"pieces":[{"id":"Ave Maria-Schubert-Liszt"},{"title":"Für Elise"},5],"id":"e1","id":"e2"}"#,
        r#"{"id":"r1","scoreId":"  Clair de Lune-Debussy","scoreId":"Für Elise"}"#,
        r#"{"id":"e1","deletedAt":"2025-06-24T11:00:00Z","updatedAt":null}"#,
        r#"{"id":"e1","deletedAt":0,"updatedAt":"soon"}"#,
        r#"{"id":"e1","deletedAt":{},"updatedAt":1e999}"#,
        r#"{"id":5}"#,
        r#"[{"id":"e1"}]"#,
        r#""e1""#,
        r#"{"$serde_json::private::RawValue":"{\"id\":\"e1\",\"pieces\":[{\"title\":\"T\"}]}"}"#,
        r#"{"$serde_json::private::Number":"12"}"#,
        r#"{"id":"e1","$serde_json::private::Number":"12"}"#,
        r#"{"id":"e1","x":{"$serde_json::private::RawValue":"{\"b\":1,\"a\":2}"}}"#,
    ];
    for text in items {
        let value: Value = serde_json::from_str(text).unwrap();
        for t in TYPES {
            let (raw, tree) = prepared_both_ways(t, value.get("id"), text);
            assert_eq!(raw, tree, "{text}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// push_text
// ---------------------------------------------------------------------------------------

/// The push path before: parse to a tree, take the envelope apart, prepare each item.
type Outcome = (
    String,
    Option<EntityType>,
    String,
    Result<Prepared, write::ItemError>,
);

fn push_by_tree(body: &[u8]) -> Result<(String, Vec<Outcome>), api::BadRequest> {
    let value = api::parse_json(body)?;
    let canonical = canonical_json(&value);
    let push = api::push_from_value(value)?;
    let mut out = Vec::new();
    for group in push.groups {
        for item in group.items {
            let id = item.get("id").cloned();
            let reported = write::reported_id(id.as_ref());
            let t = group.entity_type.unwrap_or(EntityType::Goal);
            let prepared = write::prepare(t, id.as_ref(), item, &opts());
            out.push((group.key.clone(), group.entity_type, reported, prepared));
        }
    }
    Ok((canonical, out))
}

thread_local! {
    /// Items `push_by_text` read as parts of the canonical text, and as trees.
    static ITEMS_BY_TEXT: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// The push path of the edge: canonical text, envelope and items read from it.
fn push_by_text(body: &[u8]) -> Result<(String, Vec<Outcome>), api::BadRequest> {
    let text = api::push_text(body)?;
    let push = text.read()?;
    let mut out = Vec::new();
    for group in push.groups {
        for item in group.items {
            let (canonical, tree) = ITEMS_BY_TEXT.get();
            ITEMS_BY_TEXT.set(match item {
                Payload::Canonical(_) => (canonical + 1, tree),
                Payload::Value(_) => (canonical, tree + 1),
            });
            let fields = Fields::read(item).unwrap();
            let id = fields.get("id").cloned();
            let reported = write::reported_id(id.as_ref());
            let t = group.entity_type.unwrap_or(EntityType::Goal);
            let prepared = write::prepare_fields(t, id.as_ref(), fields, &opts());
            out.push((group.key.clone(), group.entity_type, reported, prepared));
        }
    }
    Ok((text.canonical().to_owned(), out))
}

fn arb_push() -> impl Strategy<Value = Doc> {
    let group = prop_oneof![
        6 => prop::collection::vec(arb_item(), 0..4).prop_map(Doc::Array),
        1 => Just(Doc::Null),
        1 => arb_doc(),
    ];
    let key = prop::sample::select(
        &[
            "entries",
            "repertoire",
            "goals",
            "preferences",
            "widgets",
            "entries",
        ][..],
    );
    let changes = prop_oneof![
        8 => prop::collection::vec((key, group), 0..4).prop_map(|groups| {
            Doc::Object(groups.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
        }),
        1 => arb_doc(),
    ];
    let token = prop_oneof![Just(Doc::String("d.1".into())), Just(Doc::Null), arb_leaf(),];
    (
        prop::option::weighted(0.95, changes),
        prop::option::of(token),
        prop::collection::vec((arb_key(), arb_doc()), 0..2),
        0u8..20,
    )
        .prop_map(|(changes, token, extra, shape)| {
            let mut members = extra;
            if let Some(changes) = changes {
                members.push(("changes".into(), changes));
            }
            if let Some(token) = token {
                members.insert(0, ("lastSyncToken".into(), token));
            }
            match shape {
                0 => Doc::Array(vec![Doc::Object(members)]),
                1 => Doc::object(vec![(RAW_TOKEN, Doc::String("{\"changes\":{}}".into()))]),
                _ => Doc::Object(members),
            }
        })
}

#[test]
fn push_text_equals_parse_push_then_prepare() {
    let strategy = (
        arb_push(),
        any::<u64>(),
        prop::option::weighted(0.2, arb_edit()),
    );
    TestRunner::new(config())
        .run(&strategy, |(body, seed, edit)| {
            let mut text = render(&body, &mut Dice(seed | 1), true);
            if let Some(edit) = &edit {
                text = apply_edit(&text, edit);
            }
            prop_assert_eq!(
                push_by_text(text.as_bytes()),
                push_by_tree(text.as_bytes()),
                "{}",
                text
            );
            Ok(())
        })
        .unwrap();
    // Not vacuous: nearly every item took the path without a tree (only bodies with keys
    // `Value` reads specially do not).
    let (canonical, tree) = ITEMS_BY_TEXT.get();
    eprintln!("{canonical} items read from canonical text, {tree} as trees");
    assert!(
        canonical >= 20 * tree && canonical >= config().cases as usize / 2,
        "{canonical}, {tree}"
    );
}

#[test]
fn hand_picked_pushes_read_the_same_as_parsed() {
    let bodies: [&[u8]; 14] = [
        br#"{"changes":{"entries":[{"id":"e1","pieces":[{"title":"T"}]}],"goals":null}}"#,
        br#"{"changes":{"widgets":[{"id":7}],"entries":[{"id":"e1"},{"id":"e1"}]},"lastSyncToken":"d.4"}"#,
        br#"{"changes":{"entries":{}}}"#,
        br#"{"changes":{"entries":5,"goals":{}}}"#,
        br#"{"changes":[],"changes":{"goals":[]}}"#,
        br#"{"changes":{},"lastSyncToken":5}"#,
        br#"{"lastSyncToken":"a"}"#,
        br#"[{"changes":{}}]"#,
        b"\xff{}",
        br#"{"changes":{"entries":[{"id":"\ud800"}]}}"#,
        br#"{"$serde_json::private::RawValue":"{\"changes\":{\"entries\":[{\"id\":\"e1\"}]}}"}"#,
        br#"{"changes":{"entries":{"$serde_json::private::RawValue":"[{\"id\":\"e1\"}]"}}}"#,
        br#"{"changes":{"entries":{"$serde_json::private::Number":"1"}}}"#,
        br#"{"changes":{"goals":[]},"lastSyncToken":{"$serde_json::private::RawValue":"\"d.1\""}}"#,
    ];
    for body in bodies {
        assert_eq!(
            push_by_text(body),
            push_by_tree(body),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}
