//! Score-id normalization for `pieces[].id` in entries and `scoreId` in repertoire items.
//!
//! An id built from a title and composer is `title-composer`, or `title||composer` when either
//! part contains a `-`, so the split point stays recoverable. How the contract's rules are read:
//! - Both parts are lower-cased (Unicode `to_lowercase`), and every run of `char::is_whitespace`
//!   characters (NBSP, tabs and newlines included) becomes one space, with the ends trimmed.
//! - Curly single quotes ‘ ’ become `'` in both parts. Curly double quotes “ ” become `"`, and
//!   en and em dashes – — become `-`, in the title only.
//! - The composer also loses every `.`, after which whitespace is collapsed again
//!   (`J. S. Bach` → `j s bach`). An absent or blank composer becomes `unknown`.
//! - An existing id that matches `^score_[a-z0-9]+([-_][a-z0-9]+)*$` (ignoring case) is only
//!   trimmed. Any other id is lower-cased and trimmed, then split at its first `||`, or else at
//!   its first `-`. With neither, the whole id is the title. Both parts are then normalized and
//!   joined as above. An empty title part is kept, because the contract drops only blank ids.
//! - A blank title or blank id produces no id.
//!
//! Ids from [`from_title`] are fixed points of [`normalize_id`], unless the title or composer
//! contains a `|`. Such a pipe cannot be told apart from the `||` separator.

use crate::entity::EntityType;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Which kind of item payload [`normalize_payload`] is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Entry,
    Repertoire,
}

impl Kind {
    /// The kind of payload an entity type has, if its score ids are normalized.
    pub fn of(entity_type: EntityType) -> Option<Kind> {
        match entity_type {
            EntityType::LogbookEntry => Some(Kind::Entry),
            EntityType::RepertoireItem => Some(Kind::Repertoire),
            _ => None,
        }
    }

    /// The one top-level member normalization rewrites.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Entry => "pieces",
            Kind::Repertoire => "scoreId",
        }
    }
}

/// Id from a title and an optional composer; None when the title is empty after normalization.
pub fn from_title(title: &str, composer: Option<&str>) -> Option<String> {
    let (id, title_len) = joined(title, composer.unwrap_or(""));
    (title_len > 0).then_some(id)
}

/// Normalizes an existing id; None when it is empty after trimming.
pub fn normalize_id(id: &str) -> Option<String> {
    let trimmed = id.trim();
    if trimmed.is_empty() {
        return None;
    }
    if is_canonical(trimmed) {
        return Some(trimmed.to_owned());
    }
    // Lower-casing ASCII text moves no `|` or `-`, so ASCII ids are split as they are (the
    // parts are lower-cased on the way into the id). Other text is lower-cased as a whole
    // first, as the rule says, since `str::to_lowercase` depends on context (final sigma).
    let lower = if trimmed.is_ascii() {
        Cow::Borrowed(trimmed)
    } else {
        Cow::Owned(trimmed.to_lowercase())
    };
    let (title, composer) = lower
        .split_once("||")
        .or_else(|| lower.split_once('-'))
        .unwrap_or((&lower, ""));
    Some(joined(title, composer).0)
}

/// Applies normalization in place to an item payload of the given kind.
///
/// For an entry, each object in `pieces` gets its `id` normalized. If the piece has no usable id,
/// meaning a missing, non-string or blank one, the id is built from the piece's own `title` and
/// `composer`. A piece that yields neither is left unchanged, as is anything in `pieces` that is
/// not an object. For a repertoire item, a non-blank string `scoreId` is normalized.
pub fn normalize_payload(kind: Kind, payload: &mut Value) {
    if let Some(value) = payload.get_mut(kind.field()) {
        normalize_field(kind, value);
    }
}

/// [`normalize_payload`] given the payload's [`Kind::field`] member alone.
fn normalize_field(kind: Kind, value: &mut Value) {
    match (kind, value) {
        (Kind::Entry, Value::Array(pieces)) => pieces
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .for_each(normalize_piece),
        (Kind::Repertoire, Value::String(id)) => {
            if let Some(normalized) = normalize_id(id) {
                *id = normalized;
            }
        }
        _ => {}
    }
}

fn normalize_piece(piece: &mut Map<String, Value>) {
    let string = |key| piece.get(key).and_then(Value::as_str);
    if let Some(id) = piece_id(string("id"), string("title"), string("composer")) {
        piece.insert("id".to_owned(), Value::String(id));
    }
}

/// The id a piece of an entry gets, given its `id`, `title` and `composer` members where they
/// are strings: its own id normalized, else one built from its title and composer; `None`
/// leaves the piece as it is.
pub fn piece_id(id: Option<&str>, title: Option<&str>, composer: Option<&str>) -> Option<String> {
    id.and_then(normalize_id)
        .or_else(|| from_title(title?, composer))
}

/// `title` and `composer` normalized and joined in one buffer, and the title part's length
/// (which may be 0).
fn joined(title: &str, composer: &str) -> (String, usize) {
    let mut id = String::with_capacity(title.len() + composer.len() + 2);
    push_part(&mut id, title, |c| match c {
        '\u{2018}' | '\u{2019}' => Some('\''),
        '\u{201C}' | '\u{201D}' => Some('"'),
        '\u{2013}' | '\u{2014}' => Some('-'),
        c => Some(c),
    });
    let title_len = id.len();
    // Collapsing after removing the dots means "j. s." and "j.s." become "j s" and "js".
    push_part(&mut id, composer, |c| match c {
        '.' => None,
        '\u{2018}' | '\u{2019}' => Some('\''),
        c => Some(c),
    });
    if id.len() == title_len {
        id.push_str("unknown");
    }
    // A `-` inside either part would make the first-`-` split ambiguous, hence `||`.
    let separator = if id.contains('-') { "||" } else { "-" };
    id.insert_str(title_len, separator);
    (id, title_len)
}

/// Appends `part` lower-cased, each char passed through `map` (`None` drops it), with the
/// ends trimmed and each inner run of whitespace turned into one ASCII space.
fn push_part(out: &mut String, part: &str, map: impl Fn(char) -> Option<char>) {
    let start = out.len();
    let mut space = false;
    let mut push = |c: char| {
        let Some(c) = map(c) else { return };
        if c.is_whitespace() {
            space = out.len() > start;
        } else {
            if std::mem::take(&mut space) {
                out.push(' ');
            }
            out.push(c);
        }
    };
    if part.is_ascii() {
        part.chars()
            .map(|c| c.to_ascii_lowercase())
            .for_each(&mut push);
    } else {
        part.to_lowercase().chars().for_each(&mut push);
    }
}

/// `^score_[a-z0-9]+([-_][a-z0-9]+)*$`, ignoring case.
fn is_canonical(id: &str) -> bool {
    let Some((prefix, rest)) = id.split_at_checked(6) else {
        return false;
    };
    if !prefix.eq_ignore_ascii_case("score_") {
        return false;
    }
    // An empty segment means an empty tail, a doubled separator, or one at either end.
    rest.split(['-', '_'])
        .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn id(title: &str, composer: Option<&str>) -> String {
        from_title(title, composer).expect("non-blank title")
    }

    fn nid(raw: &str) -> String {
        normalize_id(raw).expect("non-blank id")
    }

    #[test]
    fn contract_examples_normalize_as_documented() {
        let cases = [
            (
                "Moonlight Sonata",
                Some("Beethoven"),
                "moonlight sonata-beethoven",
            ),
            (
                "Prelude in C Major, BWV 846",
                Some("J.S. Bach"),
                "prelude in c major, bwv 846-js bach",
            ),
            (
                "Ave Maria",
                Some("Schubert-Liszt"),
                "ave maria||schubert-liszt",
            ),
            ("Für Elise", None, "für elise-unknown"),
        ];
        for (title, composer, expected) in cases {
            assert_eq!(id(title, composer), expected);
        }
    }

    #[test]
    fn curly_single_quotes_map_in_both_parts_and_double_quotes_in_title_only() {
        assert_eq!(
            id("Rock ‘n’ Roll", Some("O’Brien")),
            "rock 'n' roll-o'brien"
        );
        assert_eq!(id("“Eroica”", Some("“B”")), "\"eroica\"-“b”");
    }

    #[test]
    fn en_and_em_dashes_become_hyphens_forcing_double_pipe_in_title_only() {
        assert_eq!(id("Waltz – No. 2", Some("Chopin")), "waltz - no. 2||chopin");
        assert_eq!(id("A—B", Some("X")), "a-b||x");
        assert_eq!(id("Song", Some("Schubert–Liszt")), "song-schubert–liszt");
        assert_eq!(id("Song", Some("A—B")), "song-a—b");
    }

    #[test]
    fn nbsp_tab_and_newline_runs_collapse_to_one_space() {
        let title = " Clair\u{a0}\u{a0}de \t\nLune\n";
        let composer = "Claude\t\u{a0} Debussy ";
        assert_eq!(id(title, Some(composer)), "clair de lune-claude debussy");
    }

    #[test]
    fn composer_whitespace_is_collapsed_after_dot_removal() {
        assert_eq!(id("Fugue", Some("J. S. Bach")), "fugue-j s bach");
    }

    #[test]
    fn null_empty_blank_or_dots_only_composer_becomes_unknown() {
        for composer in [None, Some(""), Some(" \t\u{a0}\n"), Some(" . ")] {
            assert_eq!(id("Gymnopédie", composer), "gymnopédie-unknown");
        }
    }

    #[test]
    fn blank_title_or_blank_id_produces_no_id() {
        assert_eq!(from_title(" \u{a0}\t", Some("Satie")), None);
        assert_eq!(normalize_id(""), None);
        assert_eq!(normalize_id(" \n\u{a0}"), None);
    }

    #[test]
    fn existing_id_with_double_pipe_splits_at_first_double_pipe() {
        assert_eq!(
            nid("Ave Maria||Schubert-Liszt "),
            "ave maria||schubert-liszt"
        );
        assert_eq!(nid("A||B||C"), "a-b||c");
    }

    #[test]
    fn existing_plain_id_splits_at_first_hyphen_and_missing_composer_becomes_unknown() {
        assert_eq!(nid("Clair de Lune-Debussy"), "clair de lune-debussy");
        assert_eq!(nid("Prelude-J.S. Bach"), "prelude-js bach");
        assert_eq!(nid("Ave Maria-Schubert-Liszt"), "ave maria||schubert-liszt");
        assert_eq!(nid("moonlight sonata"), "moonlight sonata-unknown");
        assert_eq!(nid("Nocturne-"), "nocturne-unknown");
    }

    #[test]
    fn canonical_score_id_is_kept_trimmed_with_its_case_and_near_misses_are_renormalized() {
        assert_eq!(nid("  score_ABC123-x_9 "), "score_ABC123-x_9");
        assert_eq!(nid("SCORE_a"), "SCORE_a");
        assert_eq!(nid("score_"), "score_-unknown");
        assert_eq!(nid("score_abc-"), "score_abc-unknown");
        assert_eq!(nid("score__a"), "score__a-unknown");
        assert_eq!(nid("Score_é"), "score_é-unknown");
    }

    #[test]
    fn entry_pieces_are_normalized_from_id_or_title_and_non_objects_are_left_alone() {
        let mut payload = json!({"pieces": [
            {"id": "Clair de Lune-Debussy", "title": "Clair de Lune"},
            {"title": "Etude Op. 10 No. 1", "composer": null, "measures": "1-16"},
            5
        ]});
        normalize_payload(Kind::Entry, &mut payload);
        let pieces = payload["pieces"].as_array().expect("pieces");
        assert_eq!(
            pieces[0],
            json!({"id": "clair de lune-debussy", "title": "Clair de Lune"})
        );
        assert_eq!(pieces[1]["id"], "etude op. 10 no. 1-unknown");
        assert_eq!(pieces[1]["measures"], "1-16");
        assert_eq!(pieces[2], 5);
    }

    #[test]
    fn entry_piece_without_usable_id_uses_its_own_title_and_composer() {
        let mut payload = json!({"pieces": [
            {"id": "  ", "title": "Ave Maria", "composer": "Schubert-Liszt"},
            {"id": 7, "title": "Für Elise", "composer": 3},
            {"title": " "}
        ]});
        normalize_payload(Kind::Entry, &mut payload);
        assert_eq!(payload["pieces"][0]["id"], "ave maria||schubert-liszt");
        assert_eq!(payload["pieces"][1]["id"], "für elise-unknown");
        assert_eq!(payload["pieces"][2], json!({"title": " "}));
    }

    #[test]
    fn repertoire_score_id_is_normalized_and_canonical_ids_kept() {
        let mut payload = json!({"scoreId": " Clair de Lune-Debussy", "title": "Clair"});
        normalize_payload(Kind::Repertoire, &mut payload);
        assert_eq!(
            payload,
            json!({"scoreId": "clair de lune-debussy", "title": "Clair"})
        );
        let mut canonical = json!({"scoreId": "score_Abc"});
        normalize_payload(Kind::Repertoire, &mut canonical);
        assert_eq!(canonical, json!({"scoreId": "score_Abc"}));
    }

    #[test]
    fn title_containing_double_pipe_is_resplit_on_renormalization() {
        // The corner the proptests exclude: the first `||` of this id belongs to the title.
        assert_eq!(id("a || b", Some("c")), "a || b-c");
        assert_eq!(nid("a || b-c"), "a||b-c");
    }

    // `|` is left out of the generated text. A `|` in a title or composer, even a single one
    // next to the separator (`a |` + `b-c` → `a |||b-c`), can move the first `||` when the id
    // is normalized again. The parts then change: whitespace beside the pipes is trimmed
    // (`a |||b-c` → `a|||b-c`), dots that land in the composer part are dropped, and an empty
    // tail becomes `unknown` (`t` + `x||` → `t-x||` → `t-x||unknown`).
    const TEXT: &str = concat!(
        "(score_)?[a-zA-Z0-9 _.'\\-\u{a0}\t\n",
        "\u{2013}\u{2014}\u{2018}\u{2019}\u{201c}\u{201d}ÉΣİß]{0,16}"
    );

    /// The rules written the plain way (lower-case, map, split on whitespace and join, each
    /// step its own string): the oracle for the one-pass code above.
    mod plain {
        pub fn from_title(title: &str, composer: Option<&str>) -> Option<String> {
            let title = title_part(title);
            (!title.is_empty()).then(|| join(&title, &composer_part(composer.unwrap_or(""))))
        }

        pub fn normalize_id(id: &str) -> Option<String> {
            let trimmed = id.trim();
            if trimmed.is_empty() {
                return None;
            }
            if super::is_canonical(trimmed) {
                return Some(trimmed.to_owned());
            }
            let lower = trimmed.to_lowercase();
            let (title, composer) = lower
                .split_once("||")
                .or_else(|| lower.split_once('-'))
                .unwrap_or((&lower, ""));
            Some(join(&title_part(title), &composer_part(composer)))
        }

        fn join(title: &str, composer: &str) -> String {
            let separator = if format!("{title}{composer}").contains('-') {
                "||"
            } else {
                "-"
            };
            format!("{title}{separator}{composer}")
        }

        fn title_part(title: &str) -> String {
            let mapped: String = title
                .to_lowercase()
                .chars()
                .map(|c| match c {
                    '\u{2018}' | '\u{2019}' => '\'',
                    '\u{201C}' | '\u{201D}' => '"',
                    '\u{2013}' | '\u{2014}' => '-',
                    c => c,
                })
                .collect();
            collapse(&mapped)
        }

        fn composer_part(composer: &str) -> String {
            let mapped: String = composer
                .to_lowercase()
                .replace('.', "")
                .replace(['\u{2018}', '\u{2019}'], "'");
            let collapsed = collapse(&mapped);
            if collapsed.is_empty() {
                "unknown".to_owned()
            } else {
                collapsed
            }
        }

        fn collapse(s: &str) -> String {
            s.split_whitespace().collect::<Vec<_>>().join(" ")
        }
    }

    /// [`TEXT`] with pipes, the Kelvin sign (lower-cases to ASCII `k`) and a final-sigma
    /// context, for comparing against [`plain`].
    const ANY_TEXT: &str = concat!(
        "(score_)?[a-zA-Z0-9 _.'|\\-\u{a0}\t\n\u{2013}\u{2014}\u{2018}\u{2019}\u{201c}",
        "\u{201d}\u{212a}ÉΣİß]{0,16}(Σ|ΑΣ)?"
    );

    proptest! {
        #[test]
        fn ids_from_titles_are_fixed_points_of_normalize_id(
            title in TEXT,
            composer in proptest::option::of(TEXT),
        ) {
            if let Some(id) = from_title(&title, composer.as_deref()) {
                prop_assert_eq!(normalize_id(&id), Some(id.clone()));
            }
        }

        #[test]
        fn one_pass_ids_equal_the_plain_rules(
            title in ANY_TEXT,
            composer in proptest::option::of(ANY_TEXT),
        ) {
            prop_assert_eq!(
                from_title(&title, composer.as_deref()),
                plain::from_title(&title, composer.as_deref())
            );
            prop_assert_eq!(normalize_id(&title), plain::normalize_id(&title));
            let joined = format!("{title}||{}", composer.unwrap_or_default());
            prop_assert_eq!(normalize_id(&joined), plain::normalize_id(&joined));
        }

        #[test]
        fn normalize_id_is_idempotent_for_ids_without_pipes(raw in TEXT) {
            let once = normalize_id(&raw);
            prop_assert_eq!(once.as_deref().and_then(normalize_id), once);
        }
    }
}
