//! Canonical JSON and the content checksum (CONTRACT.md §3): SHA-256 hex of the payload with
//! object keys sorted (by their UTF-8 bytes) and no whitespace.
//!
//! [`canonical_json`] renders a parsed [`Value`]. [`canonicalize`] goes from text to the same
//! bytes without building the tree, and fails on the same input with the same error: it drives
//! serde_json's parser through the calls `Value`'s own visitor makes (the parser's depth limit
//! and its number and string handling come with them), renders scalars as serde_json's
//! serializer does, and puts each object's members in order at the end. The property tests in
//! `tests/canonical.rs` hold it to `canonical_json(&from_str(text)?)`.

use serde::Serialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// Serializes `value` canonically. `serde_json::Map` without `preserve_order` is a `BTreeMap`,
/// so keys already come out sorted; this function is the one place that relies on it.
pub fn canonical_json(value: &Value) -> String {
    serde_json::to_string(value).expect("a serde_json::Value always serializes")
}

pub fn checksum(value: &Value) -> String {
    sha256_hex(canonical_json(value).as_bytes())
}

/// Lower-case hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hex = [0; 64];
    hex::encode_to_slice(Sha256::digest(bytes), &mut hex).expect("32 bytes are 64 hex digits");
    String::from_utf8(hex.to_vec()).expect("hex digits are UTF-8")
}

/// `canonical_json(&serde_json::from_str::<Value>(json)?)`, without the tree.
pub fn canonicalize(json: &str) -> Result<String, serde_json::Error> {
    Canonical::of(json).map(Canonical::into_string)
}

/// Canonical JSON text, and whether reading it back gives the value it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    text: String,
    reads_back: bool,
}

impl Canonical {
    /// [`canonicalize`], telling whether the text reads back.
    pub fn of(json: &str) -> Result<Canonical, serde_json::Error> {
        Canonical::outlined(json, 0).map(|(canonical, _)| canonical)
    }

    /// [`Canonical::of`], with the outline of the containers shallower than `depth` (the whole
    /// text is at depth 0); `None` for the outline when the text holds an object `Value` reads
    /// as the JSON text in its [`RAW_TOKEN`] member, which the outline does not see into.
    pub(crate) fn outlined(
        json: &str,
        depth: usize,
    ) -> Result<(Canonical, Option<Outline>), serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(json);
        let mut canon = Canon::new(json.len(), depth);
        Node::new(&mut canon, 0).deserialize(&mut de)?;
        de.end()?;
        let embedded = canon.embedded;
        let (canonical, outline) = canon.finish();
        Ok((canonical, (!embedded).then_some(outline)))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }

    /// Whether `serde_json::from_str::<Value>` of the text gives the value it was made from.
    /// It does unless an object kept a [`NUMBER_TOKEN`] or [`RAW_TOKEN`] key (one that did not
    /// come first in the input), which could come first in the canonical order.
    pub fn reads_back(&self) -> bool {
        self.reads_back
    }
}

/// Keys that serde_json's `Value` reads specially when one comes first in an object (with the
/// `arbitrary_precision` and `raw_value` features this workspace enables): the object is then
/// the number in its string value, or the JSON text in its string value. Numbers that fit
/// neither `u64` nor `i64` reach `Value`'s visitor in this form too.
pub const NUMBER_TOKEN: &str = "$serde_json::private::Number";
/// See [`NUMBER_TOKEN`].
pub const RAW_TOKEN: &str = "$serde_json::private::RawValue";

fn write<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(buf, value).expect("JSON scalars serialize into a Vec");
}

/// Writes a string serde_json's parser borrowed from the input: it had no escapes, so it holds
/// nothing the serializer escapes (`"`, `\\`, control characters) and goes out as it came.
fn write_borrowed(buf: &mut Vec<u8>, s: &str) {
    debug_assert!(!s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
}

/// The containers of canonical text down to a depth, with where their parts went in it: what
/// the text's structure is, without reading the text again.
#[derive(Debug, Default)]
pub(crate) struct Outline {
    containers: Vec<Outlined>,
    /// The container the whole text is, if it is one.
    root: Option<usize>,
}

impl Outline {
    pub(crate) fn root(&self) -> Option<&Outlined> {
        self.get(self.root)
    }

    pub(crate) fn root_index(&self) -> Option<usize> {
        self.root
    }

    pub(crate) fn get(&self, index: Option<usize>) -> Option<&Outlined> {
        index.map(|i| &self.containers[i])
    }
}

/// An object or array of an [`Outline`].
#[derive(Debug)]
pub(crate) struct Outlined {
    pub object: bool,
    /// Its members (or elements), in canonical order.
    pub children: Vec<Child>,
}

impl Outlined {
    /// The member under a key that JSON writes without escapes.
    pub(crate) fn member(&self, text: &str, key: &str) -> Option<&Child> {
        self.children.iter().find(|c| c.has_key(text, key))
    }
}

/// A member of an outlined object (or an element of an array), as spans of the canonical text.
#[derive(Debug)]
pub(crate) struct Child {
    /// The key as canonical JSON, quotes included; empty for an array element.
    pub key: Range<usize>,
    pub value: Range<usize>,
    /// The value's place in the outline, if it is an outlined container.
    pub container: Option<usize>,
}

impl Child {
    /// Whether this member's key is `key`, one that JSON writes without escapes.
    pub(crate) fn has_key(&self, text: &str, key: &str) -> bool {
        let quoted = &text[self.key.clone()];
        quoted.len() == key.len() + 2 && &quoted[1..quoted.len() - 1] == key
    }
}

/// A document rendered in reading order, with what it takes to put it in canonical order.
#[derive(Debug, Default)]
struct Canon<'de> {
    /// Scalars as canonical text; each object's members as `"key":value`, in input order and
    /// repeated keys included.
    buf: Vec<u8>,
    /// The members of the objects being read, innermost last: the key, the member's span and
    /// where its value starts.
    open: Vec<(Cow<'de, str>, Range<usize>, usize)>,
    /// The containers that `emit` writes part by part: objects whose members are out of order
    /// or repeated, and every container shallower than `outline_depth`. Sorted by start before
    /// `emit`.
    containers: Vec<Container>,
    /// Their parts in canonical order: the span of each member (or element) and where its
    /// value starts.
    parts: Vec<(Range<usize>, usize)>,
    /// Containers shallower than this are outlined.
    outline_depth: usize,
    /// Whether an object kept a key `Value` reads specially (see [`Canonical::reads_back`]).
    special_keys: bool,
    /// Whether an object was read as the JSON text in its [`RAW_TOKEN`] member: text that the
    /// outline does not see into.
    embedded: bool,
}

#[derive(Debug)]
struct Container {
    /// The container in `buf`, brackets included.
    span: Range<usize>,
    /// Its parts in `parts`.
    parts: Range<usize>,
    object: bool,
    outlined: bool,
}

impl Canon<'_> {
    fn new(capacity: usize, outline_depth: usize) -> Self {
        Canon {
            buf: Vec::with_capacity(capacity),
            outline_depth,
            ..Canon::default()
        }
    }

    /// The canonical text, and the outline of the containers shallower than `outline_depth`.
    fn finish(mut self) -> (Canonical, Outline) {
        self.containers.sort_unstable_by_key(|c| c.span.start);
        let mut out = Vec::with_capacity(self.buf.len());
        let mut outline = Outline::default();
        outline.root = self.emit(0..self.buf.len(), &mut out, &mut outline);
        let canonical = Canonical {
            text: String::from_utf8(out).expect("canonical JSON is UTF-8"),
            reads_back: !self.special_keys,
        };
        (canonical, outline)
    }

    /// Appends `span` of `buf` to `out` with every object in it in canonical order, outlining
    /// what is to be outlined. Each byte is copied once, however deep the reordered objects
    /// nest. Returns the outline index of the container `span` is, if it is an outlined one.
    fn emit(&self, span: Range<usize>, out: &mut Vec<u8>, outline: &mut Outline) -> Option<usize> {
        let mut at = span.start;
        let mut whole = None;
        let mut next = self.containers.partition_point(|c| c.span.start < at);
        while let Some(c) = self
            .containers
            .get(next)
            .filter(|c| c.span.start < span.end)
        {
            out.extend_from_slice(&self.buf[at..c.span.start]);
            let index = self.emit_container(c, out, outline);
            if c.span == span {
                whole = index;
            }
            at = c.span.end;
            // The containers nested in this one went out with it.
            next += self.containers[next..].partition_point(|n| n.span.start < at);
        }
        out.extend_from_slice(&self.buf[at..span.end]);
        whole
    }

    fn emit_container(
        &self,
        c: &Container,
        out: &mut Vec<u8>,
        outline: &mut Outline,
    ) -> Option<usize> {
        let (open, close) = if c.object { (b'{', b'}') } else { (b'[', b']') };
        out.push(open);
        let mut children = Vec::with_capacity(if c.outlined { c.parts.len() } else { 0 });
        for (i, (part, value_at)) in self.parts[c.parts.clone()].iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let key = out.len();
            // `"key":` (nothing for an element), which holds no container.
            out.extend_from_slice(&self.buf[part.start..*value_at]);
            let value = out.len();
            let container = self.emit(*value_at..part.end, out, outline);
            if c.outlined {
                let key_end = if c.object { value - 1 } else { value };
                children.push(Child {
                    key: key..key_end,
                    value: value..out.len(),
                    container,
                });
            }
        }
        out.push(close);
        c.outlined.then(|| {
            outline.containers.push(Outlined {
                object: c.object,
                children,
            });
            outline.containers.len() - 1
        })
    }
}

/// One JSON value at a depth, read into a [`Canon`] the way `Value`'s visitor reads it.
struct Node<'a, 'de> {
    canon: &'a mut Canon<'de>,
    depth: usize,
}

impl<'a, 'de> Node<'a, 'de> {
    fn new(canon: &'a mut Canon<'de>, depth: usize) -> Self {
        Node { canon, depth }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

// `deserialize_any` of serde_json makes only these calls; with `arbitrary_precision`, numbers
// beyond u64 and i64 (floats included) arrive as a map under NUMBER_TOKEN.
impl<'de> Visitor<'de> for Node<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.canon.buf.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        let text: &[u8] = if v { b"true" } else { b"false" };
        self.canon.buf.extend_from_slice(text);
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        write(&mut self.canon.buf, &v);
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        write(&mut self.canon.buf, &v);
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        match Number::from_f64(v) {
            Some(n) => write(&mut self.canon.buf, &n),
            None => self.canon.buf.extend_from_slice(b"null"),
        }
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        write(&mut self.canon.buf, v);
        Ok(())
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        write_borrowed(&mut self.canon.buf, v);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Node { canon, depth } = self;
        let outlined = depth < canon.outline_depth;
        let start = canon.buf.len();
        canon.buf.push(b'[');
        let base = canon.open.len();
        let mut first = true;
        loop {
            let mark = canon.buf.len();
            if !first {
                canon.buf.push(b',');
            }
            let from = canon.buf.len();
            if seq
                .next_element_seed(Node::new(canon, depth + 1))?
                .is_none()
            {
                canon.buf.truncate(mark);
                break;
            }
            first = false;
            if outlined {
                canon
                    .open
                    .push((Cow::Borrowed(""), from..canon.buf.len(), from));
            }
        }
        canon.buf.push(b']');
        if outlined {
            // Moved only now: nested containers put their parts in `parts` while we read.
            let first = canon.parts.len();
            let elements = canon.open.drain(base..).map(|(_, span, at)| (span, at));
            canon.parts.extend(elements);
            canon.containers.push(Container {
                span: start..canon.buf.len(),
                parts: first..canon.parts.len(),
                object: false,
                outlined,
            });
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Node { canon, depth } = self;
        let Some(mut key) = map.next_key_seed(Key)? else {
            let start = canon.buf.len();
            canon.buf.extend_from_slice(b"{}");
            if depth < canon.outline_depth {
                canon.containers.push(Container {
                    span: start..start + 2,
                    parts: 0..0,
                    object: true,
                    outlined: true,
                });
            }
            return Ok(());
        };
        if key == NUMBER_TOKEN {
            let number = map.next_value_seed(NumberFromString)?;
            write(&mut canon.buf, &number);
            return Ok(());
        }
        if key == RAW_TOKEN {
            let text = map.next_value_seed(RawFromString)?;
            let canonical = Canonical::of(&text).map_err(de::Error::custom)?;
            canon.buf.extend_from_slice(canonical.text.as_bytes());
            canon.special_keys |= !canonical.reads_back;
            canon.embedded = true;
            return Ok(());
        }
        let start = canon.buf.len();
        canon.buf.push(b'{');
        let base = canon.open.len();
        let mut in_order = true;
        loop {
            if canon.open.len() > base {
                canon.buf.push(b',');
            }
            let from = canon.buf.len();
            match &key {
                Cow::Borrowed(k) => write_borrowed(&mut canon.buf, k),
                Cow::Owned(k) => write(&mut canon.buf, k.as_str()),
            }
            canon.buf.push(b':');
            canon.special_keys |= key == NUMBER_TOKEN || key == RAW_TOKEN;
            let value_at = canon.buf.len();
            map.next_value_seed(Node::new(canon, depth + 1))?;
            // Members of nested objects are gone from `open` again: the last is our previous.
            if let Some((previous, ..)) = canon.open[base..].last() {
                in_order &= *previous < key;
            }
            canon.open.push((key, from..canon.buf.len(), value_at));
            match map.next_key_seed(Key)? {
                Some(k) => key = k,
                None => break,
            }
        }
        canon.buf.push(b'}');
        let outlined = depth < canon.outline_depth;
        if !in_order || outlined {
            let members = &mut canon.open[base..];
            if !in_order {
                members.sort_by(|a, b| a.0.cmp(&b.0));
            }
            let first = canon.parts.len();
            for (i, (key, span, value_at)) in members.iter().enumerate() {
                // The last of repeated keys wins, as in `Map::insert`.
                if members.get(i + 1).is_none_or(|(next, ..)| next != key) {
                    canon.parts.push((span.clone(), *value_at));
                }
            }
            canon.containers.push(Container {
                span: start..canon.buf.len(),
                parts: first..canon.parts.len(),
                object: true,
                outlined,
            });
        }
        canon.open.truncate(base);
        Ok(())
    }
}

/// An object key, borrowed from the input unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The value under [`NUMBER_TOKEN`], read as serde_json's private `NumberFromString` does.
struct NumberFromString;

impl<'de> DeserializeSeed<'de> for NumberFromString {
    type Value = Number;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Number, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for NumberFromString {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("string containing a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
        v.parse().map_err(de::Error::custom)
    }
}

/// The value under [`RAW_TOKEN`], read as serde_json's private `BoxedFromString` does.
struct RawFromString;

impl<'de> DeserializeSeed<'de> for RawFromString {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for RawFromString {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("raw value")
    }

    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
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
