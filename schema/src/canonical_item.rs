//! An item as part of canonical text that reads back (a push body's, or the item's own): its
//! members straight from the canonicalizer's outline, and its text after score-id
//! normalization written from those parts, without a tree of the item.

use crate::checksum::{Child, Outline, Outlined};
use crate::score_id::{self, Kind};
use std::borrow::Cow;

/// How deep below an item the outline must reach: the item, `pieces` and each piece.
pub(crate) const ITEM_DEPTH: usize = 3;

/// An item cut from canonical text that reads back (see
/// [`Canonical::reads_back`](crate::checksum::Canonical::reads_back)): it is canonical itself
/// and means what the same part of the original text meant. Only this crate makes these.
#[derive(Debug, Clone, Copy)]
pub struct CanonicalItem<'a>(pub(crate) Option<Object<'a>>);

/// An object item: the canonical text it is part of, and its outline there (which reaches
/// [`ITEM_DEPTH`] below it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Object<'a> {
    text: &'a str,
    outline: &'a Outline,
    object: &'a Outlined,
}

impl<'a> CanonicalItem<'a> {
    /// The item at `container` of the outline of `text`, which must reach [`ITEM_DEPTH`]
    /// below it; `None` stands for a value that is not an outlined container.
    pub(crate) fn at(text: &'a str, outline: &'a Outline, container: Option<usize>) -> Self {
        let object = outline.get(container).filter(|c| c.object);
        CanonicalItem(object.map(|object| Object {
            text,
            outline,
            object,
        }))
    }
}

impl<'a> Object<'a> {
    /// The value of a member whose key JSON writes without escapes, as canonical text.
    pub(crate) fn member(&self, key: &str) -> Option<&'a str> {
        let child = self.object.member(self.text, key)?;
        Some(&self.text[child.value.clone()])
    }

    /// The item's canonical text after `score_id::normalize_payload` for `kind`.
    pub(crate) fn normalized(&self, kind: Option<Kind>) -> String {
        let mut out = Vec::with_capacity(self.len() + 64);
        out.push(b'{');
        for (i, member) in self.object.children.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(self.text(&member.key));
            out.push(b':');
            match kind.filter(|k| member.has_key(self.text, k.field())) {
                Some(Kind::Entry) => self.write_pieces(member, &mut out),
                Some(Kind::Repertoire) => self.write_score_id(member, &mut out),
                None => out.extend_from_slice(self.text(&member.value)),
            }
        }
        out.push(b'}');
        String::from_utf8(out).expect("canonical JSON is UTF-8")
    }

    fn len(&self) -> usize {
        let children = &self.object.children;
        match (children.first(), children.last()) {
            (Some(first), Some(last)) => last.value.end - first.key.start + 2,
            _ => 2,
        }
    }

    fn text(&self, span: &std::ops::Range<usize>) -> &'a [u8] {
        self.text[span.clone()].as_bytes()
    }

    /// `pieces`, each object in it with the id `score_id::piece_id` gives it.
    fn write_pieces(&self, pieces: &Child, out: &mut Vec<u8>) {
        let Some(array) = self.outline.get(pieces.container).filter(|c| !c.object) else {
            return out.extend_from_slice(self.text(&pieces.value));
        };
        out.push(b'[');
        for (i, element) in array.children.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match self.outline.get(element.container).filter(|c| c.object) {
                Some(piece) => self.write_piece(piece, element, out),
                None => out.extend_from_slice(self.text(&element.value)),
            }
        }
        out.push(b']');
    }

    fn write_piece(&self, piece: &Outlined, element: &Child, out: &mut Vec<u8>) {
        let string = |key| {
            let child = piece.member(self.text, key)?;
            json_string(&self.text[child.value.clone()])
        };
        let (id, title, composer) = (string("id"), string("title"), string("composer"));
        let Some(id) = score_id::piece_id(id.as_deref(), title.as_deref(), composer.as_deref())
        else {
            return out.extend_from_slice(self.text(&element.value));
        };
        // The members in key order with `id` put in (or replaced) at its place.
        let mut id = Some(id);
        let mut first = true;
        out.push(b'{');
        for member in &piece.children {
            let key = json_string(&self.text[member.key.clone()]).unwrap_or_default();
            if *key >= *"id"
                && let Some(id) = id.take()
            {
                write_id(&id, &mut first, out);
                if key == "id" {
                    continue;
                }
            }
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.extend_from_slice(self.text(&member.key));
            out.push(b':');
            out.extend_from_slice(self.text(&member.value));
        }
        if let Some(id) = id {
            write_id(&id, &mut first, out);
        }
        out.push(b'}');
    }

    /// `scoreId`, normalized if it is a string that normalizes.
    fn write_score_id(&self, score_id: &Child, out: &mut Vec<u8>) {
        let text = &self.text[score_id.value.clone()];
        match json_string(text).and_then(|id| score_id::normalize_id(&id)) {
            Some(id) => serde_json::to_writer(out, &id).expect("a string serializes"),
            None => out.extend_from_slice(text.as_bytes()),
        }
    }
}

fn write_id(id: &str, first: &mut bool, out: &mut Vec<u8>) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.extend_from_slice(b"\"id\":");
    serde_json::to_writer(out, id).expect("a string serializes");
}

/// The string a JSON string literal stands for; `None` for any other JSON.
fn json_string(json: &str) -> Option<Cow<'_, str>> {
    if !json.starts_with('"') {
        return None;
    }
    if !json.contains('\\') {
        return Some(Cow::Borrowed(&json[1..json.len() - 1]));
    }
    serde_json::from_str(json).ok().map(Cow::Owned)
}
