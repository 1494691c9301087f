//! Change sequences and the cursor tokens clients hold (DESIGN.md "Cursors").
//!
//! A change's sequence is the JetStream stream sequence of the message that carried it, with
//! the item's index inside that message in the low [`ITEM_BITS`] bits, so one `u64` orders
//! every change of a deployment. A cursor names the deployment it came from, so a token from
//! another deployment is recognised and answered with `cursor expired`.

use std::fmt;

/// Bits reserved for the item index inside one message (up to 1024 items per message).
pub const ITEM_BITS: u32 = 10;
pub const MAX_ITEMS_PER_MESSAGE: usize = 1 << ITEM_BITS;

/// The sequence of one committed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChangeSeq(pub u64);

impl ChangeSeq {
    pub fn new(message_seq: u64, item_index: usize) -> ChangeSeq {
        debug_assert!(item_index < MAX_ITEMS_PER_MESSAGE);
        ChangeSeq((message_seq << ITEM_BITS) | item_index as u64)
    }

    /// The largest change sequence of every message up to and including `message_seq`: the
    /// change-level form of a stream watermark.
    pub fn through_message(message_seq: u64) -> ChangeSeq {
        ChangeSeq((message_seq << ITEM_BITS) | (MAX_ITEMS_PER_MESSAGE as u64 - 1))
    }

    pub fn message_seq(self) -> u64 {
        self.0 >> ITEM_BITS
    }
}

/// An opaque client cursor: `<deployment>.<change seq>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub deployment: String,
    pub seq: ChangeSeq,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor")]
pub struct CursorError;

impl Cursor {
    pub fn parse(token: &str) -> Result<Cursor, CursorError> {
        let (deployment, seq) = token.rsplit_once('.').ok_or(CursorError)?;
        if deployment.is_empty()
            || deployment.len() > 64
            || !deployment.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(CursorError);
        }
        let seq = seq.parse::<u64>().map_err(|_| CursorError)?;
        Ok(Cursor {
            deployment: deployment.to_owned(),
            seq: ChangeSeq(seq),
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.deployment, self.seq.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_seqs_order_by_message_then_item() {
        assert!(ChangeSeq::new(1, 1023) < ChangeSeq::new(2, 0));
        assert!(ChangeSeq::new(2, 0) < ChangeSeq::new(2, 1));
        assert_eq!(ChangeSeq::new(7, 3).message_seq(), 7);
        assert!(ChangeSeq::new(7, 1023) <= ChangeSeq::through_message(7));
        assert!(ChangeSeq::through_message(7) < ChangeSeq::new(8, 0));
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            deployment: "a1b2".into(),
            seq: ChangeSeq(42),
        };
        assert_eq!(Cursor::parse(&c.to_string()), Ok(c));
        for bad in [
            "",
            "42",
            ".42",
            "a1.",
            "a1.-3",
            "a.b.c",
            "x y.1",
            "a1.99999999999999999999999",
        ] {
            assert_eq!(Cursor::parse(bad), Err(CursorError), "{bad}");
        }
    }
}
