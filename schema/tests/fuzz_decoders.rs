//! Property-driven fuzzing of every decoder that client or bus bytes reach: the HTTP body
//! parsers (push, pull, batch), per-item preparation (`write::prepare`), the WebSocket frame
//! parser and the MessagePack bus envelopes. The push path the edge runs (`api::push_text`,
//! without a tree of the body) is held to the tree-building one on every body.
//!
//! The oracle for each decoder: it never panics, and it either fails with an error or yields
//! items that satisfy the contract's validation rules — an id of 1..=256 bytes without
//! control characters, an object payload stored as canonical JSON within the size limit with
//! its SHA-256 checksum, a clock in range and no further ahead than the allowed skew, the
//! tombstone flag following `deletedAt` — and that travel through the bus envelope unchanged
//! (whatever the edge accepts, the ingest worker can decode). Every refused item is checked
//! to break at least the rule its error names.
//!
//! Inputs: arbitrary bytes, arbitrary JSON values (a recursive strategy biased towards the
//! contract's field names and edge-case strings and numbers), and byte- and tree-level
//! mutations of the Mirubato-shaped fixtures in `tests/fixtures/mirubato/`.
//!
//! Cases per property: 512 by default (the file runs in a few seconds), 20 000 with
//! `LEGATO_SOAK=1`, or `PROPTEST_CASES` when set.

#[path = "common/mod.rs"]
mod common;
use common::config;
use legato_schema::api;
use legato_schema::envelope::{self, ENVELOPE_VERSION, Encoding, IngestEnvelope, RequestKind};
use legato_schema::write::{self, PrepareOptions, WriteItem};
use legato_schema::ws;
use legato_schema::{Clock, EntityType, UserId};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

#[path = "fuzz_decoders/oracles.rs"]
mod oracles;
#[path = "fuzz_decoders/strategies.rs"]
mod strategies;

use oracles::*;
use strategies::*;

const PUSH_CREATE: &str = include_str!("../../tests/fixtures/mirubato/push-create-entry.json");
const PUSH_DELETE: &str = include_str!("../../tests/fixtures/mirubato/push-delete-entry.json");
const PUSH_LOGIN: &str = include_str!("../../tests/fixtures/mirubato/push-after-login.json");
const WS_CREATED: &str = include_str!("../../tests/fixtures/mirubato/ws-entry-created.json");
const WS_DELETED: &str = include_str!("../../tests/fixtures/mirubato/ws-entry-deleted.json");
const WS_PING: &str = include_str!("../../tests/fixtures/mirubato/ws-ping.json");
const WS_SYNC: &str = include_str!("../../tests/fixtures/mirubato/ws-sync-request.json");

const MAX_ITEM_BYTES: usize = 256 * 1024;
const SKEW_US: i64 = 300_000_000;

fn opts() -> PrepareOptions {
    PrepareOptions {
        now: Clock::parse_iso("2025-06-24T12:00:00Z").unwrap(),
        max_skew_us: SKEW_US,
        max_item_bytes: MAX_ITEM_BYTES,
    }
}

fn fixture_batch(push: &str) -> Value {
    let push: Value = serde_json::from_str(push).unwrap();
    let mut entities = Vec::new();
    for (key, items) in push["changes"].as_object().unwrap() {
        let t = EntityType::from_collection_key(key).unwrap();
        for (n, item) in items.as_array().unwrap().iter().enumerate() {
            entities.push(
                json!({"id": item["id"], "type": t.as_str(), "data": item, "version": n + 1}),
            );
        }
    }
    json!({"entities": entities})
}

fn push_fixtures() -> [&'static str; 3] {
    [PUSH_CREATE, PUSH_DELETE, PUSH_LOGIN]
}

fn ws_fixtures() -> [&'static str; 4] {
    [WS_CREATED, WS_DELETED, WS_PING, WS_SYNC]
}

// ---------------------------------------------------------------------------------------
// Fixed corpus: the cases a random search is unlikely to build
// ---------------------------------------------------------------------------------------

#[test]
fn the_unmutated_fixtures_decode_to_valid_items() {
    // The oracles must reach `prepare` and accept good input, or the properties prove little.
    for push in push_fixtures() {
        let value = api::parse_json(push.as_bytes()).unwrap();
        let items = api::parse_push(push.as_bytes()).unwrap().item_count();
        assert_eq!(check_push_value(value), items, "{push}");
        assert_eq!(check_batch_value(fixture_batch(push)), items);
    }
    for frame in ws_fixtures() {
        assert!(check_ws_text(frame).is_some(), "{frame}");
    }
}

#[test]
fn hostile_bodies_are_refused_without_panicking() {
    let deep_arrays = "[".repeat(100_000);
    let deep_objects = "{\"a\":".repeat(100_000);
    let deep_item = |depth: usize| {
        format!(
            "{{\"changes\":{{\"entries\":[{{\"id\":\"e\",\"x\":{}1{}}}]}}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    let huge_id = format!(
        "{{\"changes\":{{\"entries\":[{{\"id\":\"{}\"}}]}}}}",
        "x".repeat(4 << 20)
    );
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"   ".to_vec(),
        deep_arrays.into_bytes(),
        deep_objects.into_bytes(),
        deep_item(200).into_bytes(),
        huge_id.into_bytes(),
        deep_item(120).into_bytes(),
        b"\xef\xbb\xbf{\"changes\":{}}".to_vec(),
        br#"{"changes":{"entries":[{"id":"\ud800"}]}}"#.to_vec(),
        br#"{"changes":{"entries":[{"id":"\udc00\ud800"}]}}"#.to_vec(),
        b"{\"changes\":{\"entries\":[{\"id\":\"e\x00\"}]}}".to_vec(),
        b"{\"changes\":{\"entries\":[{\"id\":\"\xed\xa0\x80\"}]}}".to_vec(),
        br#"{"changes":{"entries":[{"id":"e","updatedAt":1e999999999}]}}"#.to_vec(),
        br#"{"changes":{"entries":[{"id":"e","updatedAt":-1e999999999}]}}"#.to_vec(),
        br#"{"changes":{"entries":[{"id":"e","updatedAt":NaN}]}}"#.to_vec(),
        br#"{"changes":{}} trailing"#.to_vec(),
        br#"{"changes":{},"changes":[]}"#.to_vec(),
        format!(r#"{{"limit":{}}}"#, "9".repeat(100_000)).into_bytes(),
    ];
    for body in &bodies {
        check_body_bytes(body);
        check_ws_text(&String::from_utf8_lossy(body));
    }
    assert!(api::parse_json(&bodies[2]).is_err(), "100k nesting refused");
    assert!(api::parse_json(&bodies[3]).is_err());
    assert!(ws::parse_client(&String::from_utf8_lossy(&bodies[2]), opts().now).is_err());
    assert!(
        api::parse_json(&bodies[4]).is_err(),
        "nesting beyond the limit"
    );
    assert_eq!(check_push_value(api::parse_json(&bodies[5]).unwrap()), 0);
    // Nesting within the limit is a valid item: accepted, canonicalized, checksummed.
    assert_eq!(check_push_value(api::parse_json(&bodies[6]).unwrap()), 1);
    assert!(api::parse_json(&bodies[8]).is_err(), "lone surrogate");
    assert!(api::parse_json(&bodies[11]).is_err(), "encoded surrogate");
}

#[test]
fn hostile_envelopes_are_refused_without_panicking() {
    // A map whose one unknown field nests arrays far beyond the decoder's depth limit: the
    // skipped value must not recurse without bound.
    let mut deep = vec![0x81, 0xa3, b'z', b'z', b'z'];
    deep.extend(std::iter::repeat_n(0x91, 100_000));
    deep.push(0xc0);
    // Claimed lengths far beyond the input: nothing may be preallocated from them.
    let huge_array = [
        0x81, 0xa5, b'i', b't', b'e', b'm', b's', 0xdd, 0xff, 0xff, 0xff, 0xff,
    ];
    let huge_string = [0xdb, 0xff, 0xff, 0xff, 0xff, b'a'];
    let huge_map = [0xdf, 0xff, 0xff, 0xff, 0xff];
    for bytes in [
        &deep[..],
        &huge_array,
        &huge_string,
        &huge_map,
        b"",
        b"\xc1",
    ] {
        check_envelope_bytes(bytes);
        assert!(envelope::decode::<IngestEnvelope>(bytes).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

#[test]
fn request_shaped_json_never_panics_and_accepted_items_are_valid() {
    let mut runner = TestRunner::new(config());
    let before = ACCEPTED.get();
    runner
        .run(
            &(arb_shaped(), prop::sample::select(MESSAGE_TYPES)),
            |(value, kind)| {
                check_body_bytes(value.to_string().as_bytes());
                let mut frame = value;
                frame["type"] = json!(kind);
                check_ws_text(&frame.to_string());
                Ok(())
            },
        )
        .unwrap();
    // Not vacuous: a good share of the generated items got past validation and through the
    // checks on accepted items.
    let accepted = ACCEPTED.get() - before;
    eprintln!("{accepted} items accepted over {} cases", config().cases);
    assert!(
        accepted >= config().cases as usize / 2,
        "only {accepted} items accepted"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_request_decoders(bytes in arb_bytes()) {
        check_body_bytes(&bytes);
        check_ws_text(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_json_never_panics_and_accepted_items_are_valid(value in arb_json()) {
        let text = value.to_string();
        check_body_bytes(text.as_bytes());
        check_push_value(value.clone());
        check_push_value(json!({"changes": {"entries": value.clone()}}));
        check_batch_value(value.clone());
        if let Ok(e) = api::batch_entity(value.clone()) {
            prop_assert!(e.data.is_object());
        }
        check_ws_text(&text);
        for t in EntityType::ALL {
            check_prepare(t, value.get("id"), value.clone());
        }
    }

    #[test]
    fn byte_mutated_mirubato_requests_never_panic(
        which in 0usize..7,
        edits in arb_byte_edits(),
    ) {
        if which < 3 {
            let push = push_fixtures()[which];
            check_body_bytes(&apply_byte_edits(push.as_bytes(), &edits));
            let batch = fixture_batch(push).to_string();
            check_body_bytes(&apply_byte_edits(batch.as_bytes(), &edits));
        } else {
            let bytes = apply_byte_edits(ws_fixtures()[which - 3].as_bytes(), &edits);
            check_ws_text(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn tree_mutated_mirubato_requests_never_panic(
        which in 0usize..7,
        edits in arb_tree_edits(),
    ) {
        if which < 3 {
            let push = push_fixtures()[which];
            let value: Value = serde_json::from_str(push).unwrap();
            check_push_value(apply_tree_edits(value, &edits));
            check_batch_value(apply_tree_edits(fixture_batch(push), &edits));
        } else {
            let value: Value = serde_json::from_str(ws_fixtures()[which - 3]).unwrap();
            check_ws_text(&apply_tree_edits(value, &edits).to_string());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_decoders(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_envelope_bytes(&bytes);
    }

    #[test]
    fn mutated_envelopes_decode_to_an_error_or_a_valid_envelope(
        edits in arb_byte_edits(),
        positional in any::<bool>(),
    ) {
        let push: Value = serde_json::from_str(PUSH_LOGIN).unwrap();
        let items: Vec<WriteItem> = push["changes"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| write::prepare(EntityType::LogbookEntry, i.get("id"), i.clone(), &opts()).unwrap().item)
            .collect();
        let envelope = IngestEnvelope {
            v: ENVELOPE_VERSION,
            request_id: "req-1".into(),
            user: UserId::parse("user_abc").unwrap(),
            device_id: None,
            session_id: Some("s-1".into()),
            kind: RequestKind::Batch,
            received_at: opts().now,
            items,
            idempotency: None,
        };
        let encoding = if positional { Encoding::Positional } else { Encoding::Named };
        check_envelope_bytes(&apply_byte_edits(&envelope::encode(&envelope, encoding), &edits));
    }
}
