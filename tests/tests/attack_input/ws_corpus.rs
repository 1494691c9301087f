//! The WebSocket corpus of `attack_input`: bad frames, each with the `ERROR` the contract
//! requires, and raw frames for what a well-behaved client library cannot send.

use super::{MAX_FRAME, MAX_ITEM, WS_FIXTURE, cuts, num};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

#[derive(Debug, Clone, Copy)]
pub(crate) enum WsExpect {
    /// `ERROR` "Invalid JSON format".
    Json,
    /// `ERROR` "Invalid sync event format".
    Format,
    /// `ERROR` naming the entity the mutation was refused for.
    Entity,
}

pub(crate) fn text(frame: impl Into<String>) -> Message {
    Message::text(frame.into())
}

pub(crate) fn ws_corpus() -> Vec<(String, Vec<Message>, WsExpect)> {
    use WsExpect::*;
    let mut cases: Vec<(String, Vec<Message>, WsExpect)> = Vec::new();
    let mut one = |name: &str, frame: Message, expect| {
        cases.push((name.to_owned(), vec![frame], expect));
    };
    let fixture = WS_FIXTURE.trim();
    for at in cuts(fixture) {
        one(&format!("truncated at {at}"), text(&fixture[..at]), Json);
    }
    for (name, frame) in [
        ("not JSON", "{not json"),
        ("empty", ""),
        ("blank", "  \n"),
        ("NaN", "NaN"),
        ("single quotes", "{'type':'PING'}"),
        ("trailing garbage", "{\"type\":\"PING\"} x"),
        ("a BOM", "\u{feff}{\"type\":\"PING\"}"),
        (
            "a lone surrogate",
            "{\"type\":\"ENTRY_CREATED\",\"entry\":{\"id\":\"\\ud800\"}}",
        ),
        ("a bad escape", "{\"type\":\"PI\\NG\"}"),
        ("a raw control char", "{\"type\":\"PI\u{1}NG\"}"),
    ] {
        one(name, text(frame), Json);
    }
    one("100k [", text("[".repeat(100_000)), Json);
    one("100k {\"a\":", text("{\"a\":".repeat(100_000)), Json);
    one(
        "129 levels inside an entry",
        text(format!(
            "{{\"type\":\"ENTRY_CREATED\",\"entry\":{{\"id\":\"e1\",\"x\":{}0{}}}}}",
            "[".repeat(129),
            "]".repeat(129)
        )),
        Json,
    );
    one("binary", Message::binary(vec![1, 2, 3]), Json);
    one("empty binary", Message::binary(Vec::new()), Json);
    one(
        "a PING as binary",
        Message::binary(&b"{\"type\":\"PING\"}"[..]),
        Json,
    );
    one(
        "a mutation as binary",
        Message::binary(fixture.as_bytes().to_vec()),
        Json,
    );
    // The same, sent as ten fragments (reassembled under the limit).
    let fragment = |i: usize, last: bool| {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        Message::Frame(Frame::message("{".repeat(100 * 1024), opcode, last))
    };
    cases.push((
        "ten fragments, 1000 KiB in all".into(),
        (0..10).map(|i| fragment(i, i == 9)).collect(),
        Json,
    ));
    let mut one = |name: &str, frame: Value, expect| {
        cases.push((name.to_owned(), vec![text(frame.to_string())], expect));
    };
    for (name, frame) in [
        ("null", json!(null)),
        ("a number", json!(1)),
        ("a string", json!("PING")),
        ("an array", json!([{"type": "PING"}])),
        ("true", json!(true)),
        ("no type", json!({})),
        ("type a number", json!({"type": 5})),
        ("type null", json!({"type": null})),
        ("type an array", json!({"type": ["PING"]})),
        ("type an object", json!({"type": {"PING": 1}})),
        ("type unknown", json!({"type": "HELLO"})),
        ("type lower case", json!({"type": "ping"})),
        ("type empty", json!({"type": ""})),
        ("type with NUL", json!({"type": "PING\u{0}"})),
        ("type padded", json!({"type": " PING"})),
        ("a server type: WELCOME", json!({"type": "WELCOME"})),
        ("a server type: PONG", json!({"type": "PONG"})),
        (
            "a server type: ERROR",
            json!({"type": "ERROR", "error": "x"}),
        ),
        (
            "a server type: SYNC_RESPONSE",
            json!({"type": "SYNC_RESPONSE"}),
        ),
        (
            "a server type: BULK_SYNC",
            json!({"type": "BULK_SYNC", "entries": [{"id": "e1"}]}),
        ),
        (
            "a server type: REPERTOIRE_BULK_SYNC",
            json!({"type": "REPERTOIRE_BULK_SYNC", "pieces": [{"id": "p1"}]}),
        ),
        (
            "ENTRY_CREATED without entry",
            json!({"type": "ENTRY_CREATED"}),
        ),
        (
            "ENTRY_CREATED entry null",
            json!({"type": "ENTRY_CREATED", "entry": null}),
        ),
        (
            "ENTRY_CREATED entry a string",
            json!({"type": "ENTRY_CREATED", "entry": "e1"}),
        ),
        (
            "ENTRY_CREATED entry an array",
            json!({"type": "ENTRY_CREATED", "entry": [{"id": "e1"}]}),
        ),
        (
            "ENTRY_UPDATED entry a number",
            json!({"type": "ENTRY_UPDATED", "entry": 5}),
        ),
        (
            "ENTRY_DELETED without entryId",
            json!({"type": "ENTRY_DELETED"}),
        ),
        (
            "ENTRY_DELETED entryId a number",
            json!({"type": "ENTRY_DELETED", "entryId": 5}),
        ),
        (
            "ENTRY_DELETED entryId empty",
            json!({"type": "ENTRY_DELETED", "entryId": ""}),
        ),
        (
            "ENTRY_DELETED entryId an array",
            json!({"type": "ENTRY_DELETED", "entryId": ["e1"]}),
        ),
        ("PIECE_ADDED without piece", json!({"type": "PIECE_ADDED"})),
        (
            "PIECE_ADDED piece a string",
            json!({"type": "PIECE_ADDED", "piece": "p"}),
        ),
        (
            "PIECE_ADDED piece without ids",
            json!({"type": "PIECE_ADDED", "piece": {"title": "x"}}),
        ),
        (
            "PIECE_ADDED blank scoreId",
            json!({"type": "PIECE_ADDED", "piece": {"scoreId": "   "}}),
        ),
        (
            "PIECE_UPDATED scoreId a number",
            json!({"type": "PIECE_UPDATED", "piece": {"id": "", "scoreId": 5}}),
        ),
        (
            "PIECE_REMOVED without scoreId",
            json!({"type": "PIECE_REMOVED"}),
        ),
        (
            "PIECE_REMOVED scoreId a number",
            json!({"type": "PIECE_REMOVED", "scoreId": 5}),
        ),
        (
            "PIECE_REMOVED scoreId blank",
            json!({"type": "PIECE_REMOVED", "scoreId": " \t "}),
        ),
        (
            "PIECE_DISSOCIATED scoreId empty",
            json!({"type": "PIECE_DISSOCIATED", "scoreId": ""}),
        ),
        ("PLAN_CREATED without plan", json!({"type": "PLAN_CREATED"})),
        (
            "PLAN_CREATED plan an array",
            json!({"type": "PLAN_CREATED", "plan": []}),
        ),
        (
            "PLAN_CREATED occurrences a string",
            json!({"type": "PLAN_CREATED", "plan": {"id": "p1"}, "occurrences": "o1"}),
        ),
        (
            "PLAN_UPDATED occurrences of numbers",
            json!({"type": "PLAN_UPDATED", "plan": {"id": "p1"}, "occurrences": [1]}),
        ),
        (
            "PLAN_UPDATED occurrences an object",
            json!({"type": "PLAN_UPDATED", "plan": {"id": "p1"}, "occurrences": {"id": "o1"}}),
        ),
        (
            "PLAN_OCCURRENCE_COMPLETED without occurrence",
            json!({"type": "PLAN_OCCURRENCE_COMPLETED"}),
        ),
        (
            "PLAN_OCCURRENCE_COMPLETED occurrence an array",
            json!({"type": "PLAN_OCCURRENCE_COMPLETED", "occurrence": [{"id": "o1"}]}),
        ),
        (
            "SYNC_REQUEST lastSeq a string",
            json!({"type": "SYNC_REQUEST", "lastSeq": "5"}),
        ),
        (
            "SYNC_REQUEST lastSeq -1",
            json!({"type": "SYNC_REQUEST", "lastSeq": -1}),
        ),
        (
            "SYNC_REQUEST lastSeq 1.5",
            json!({"type": "SYNC_REQUEST", "lastSeq": 1.5}),
        ),
        (
            "SYNC_REQUEST lastSeq true",
            json!({"type": "SYNC_REQUEST", "lastSeq": true}),
        ),
        (
            "SYNC_REQUEST lastSeq 1e999",
            json!({"type": "SYNC_REQUEST", "lastSeq": num("1e999")}),
        ),
        (
            "SYNC_REQUEST lastSeq 2^64",
            json!({"type": "SYNC_REQUEST", "lastSeq": num("18446744073709551616")}),
        ),
    ] {
        one(name, frame, Format);
    }
    // Well-formed messages whose items the contract refuses: an ERROR naming the entity.
    let entry = |e: Value| json!({"type": "ENTRY_CREATED", "entry": e});
    for (name, frame) in [
        ("entry without id", entry(json!({"duration": 5}))),
        ("entry id a number", entry(json!({"id": 5}))),
        ("entry id empty", entry(json!({"id": ""}))),
        ("entry id 257 bytes", entry(json!({"id": "x".repeat(257)}))),
        ("entry id NUL", entry(json!({"id": "e\u{0}"}))),
        (
            "entry updatedAt a word",
            entry(json!({"id": "e1", "updatedAt": "soon"})),
        ),
        (
            "entry updatedAt -1",
            entry(json!({"id": "e1", "updatedAt": -1})),
        ),
        (
            "entry updatedAt 1e999",
            entry(json!({"id": "e1", "updatedAt": num("1e999")})),
        ),
        (
            "entry updatedAt an object",
            entry(json!({"id": "e1", "updatedAt": {}})),
        ),
        (
            "entry deletedAt a word",
            entry(json!({"id": "e1", "deletedAt": "soon"})),
        ),
        (
            "entry over the item limit",
            entry(json!({"id": "e1", "notes": "x".repeat(MAX_ITEM)})),
        ),
        (
            "ENTRY_UPDATED updatedAt before 1970",
            json!({"type": "ENTRY_UPDATED", "entry": {"id": "e1", "updatedAt": "1969-01-01"}}),
        ),
        (
            "ENTRY_DELETED id too long",
            json!({"type": "ENTRY_DELETED", "entryId": "e".repeat(300)}),
        ),
        (
            "ENTRY_DELETED id with a newline",
            json!({"type": "ENTRY_DELETED", "entryId": "e\n1"}),
        ),
        (
            "PIECE_ADDED id too long",
            json!({"type": "PIECE_ADDED", "piece": {"id": "p".repeat(300)}}),
        ),
        (
            "PIECE_REMOVED scoreId too long",
            json!({"type": "PIECE_REMOVED", "scoreId": "s".repeat(300)}),
        ),
        (
            "PLAN_CREATED plan without id",
            json!({"type": "PLAN_CREATED", "plan": {"title": "x"}}),
        ),
        (
            "PLAN_CREATED a good plan, a bad occurrence",
            json!({"type": "PLAN_CREATED", "plan": {"id": "p1"}, "occurrences": [{"planId": "p1"}]}),
        ),
        (
            "PLAN_UPDATED updatedAt a word",
            json!({"type": "PLAN_UPDATED", "plan": {"id": "p1", "updatedAt": "never"}}),
        ),
        (
            "PLAN_OCCURRENCE_COMPLETED id empty",
            json!({"type": "PLAN_OCCURRENCE_COMPLETED", "occurrence": {"id": ""}}),
        ),
    ] {
        one(name, frame, Entity);
    }
    // Frames just under and at the size limit.
    let mut sized = |name: &str, frame: Message, expect| {
        cases.push((name.to_owned(), vec![frame], expect));
    };
    sized(
        "bad JSON, the limit - 1",
        text("{".repeat(MAX_FRAME - 1)),
        Json,
    );
    sized("bad JSON, at the limit", text("{".repeat(MAX_FRAME)), Json);
    sized(
        "binary at the limit",
        Message::binary(vec![0xff; MAX_FRAME]),
        Json,
    );
    let skeleton = json!({"type": "ENTRY_CREATED", "entry": {"id": "e1", "notes": ""}}).to_string();
    let notes = "x".repeat(MAX_FRAME - 1 - skeleton.len());
    sized(
        "an entry over the item limit, frame at the limit - 1",
        text(json!({"type": "ENTRY_CREATED", "entry": {"id": "e1", "notes": notes}}).to_string()),
        Entity,
    );
    cases
}

/// A frame header with any length (masked, zero mask), as raw bytes.
pub(crate) fn raw_frame(first: u8, len: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}
