//! Canonical JSON and the content checksum (CONTRACT.md §3): SHA-256 hex of the payload with
//! object keys sorted (by their UTF-8 bytes) and no whitespace.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Serializes `value` canonically. `serde_json::Map` without `preserve_order` is a `BTreeMap`,
/// so keys already come out sorted; this function is the one place that relies on it.
pub fn canonical_json(value: &Value) -> String {
    serde_json::to_string(value).expect("a serde_json::Value always serializes")
}

pub fn checksum(value: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(value).as_bytes()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"y": [1, 2], "x": null} }"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
        assert_eq!(checksum(&a), checksum(&b));
    }

    #[test]
    fn any_content_change_changes_the_checksum() {
        assert_ne!(checksum(&json!({"a": 1})), checksum(&json!({"a": 2})));
        assert_ne!(
            checksum(&json!({"a": [1, 2]})),
            checksum(&json!({"a": [2, 1]}))
        );
        assert_eq!(
            checksum(&json!({})),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
