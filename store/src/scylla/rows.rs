//! Rows as the ScyllaDB backend stores them: the single-cell entity state and its encoding, the
//! bound values of every write, and decoding what the driver returns. Pure functions, so the
//! storage format is tested without a node.
//!
//! ## The entity state cell
//!
//! One `blob`, laid out so that comparing two encodings byte by byte (what ScyllaDB does to
//! break a tie between cells with equal write timestamps) orders them like the writes'
//! [`Version`]s:
//!
//! ```text
//! clock       8 bytes  big-endian, sign bit flipped (byte order == i64 order)
//! deleted     1 byte   0 | 1 (a delete wins on equal clocks)
//! checksum    n bytes  then 0x00 (a prefix sorts first, as in string order)
//! format      1 byte   STATE_FORMAT
//! seq         8 bytes  big-endian
//! committed   8 bytes  like clock
//! deleted_at  1 byte tag (0 | 1), then 8 bytes like clock when 1
//! device_id   1 byte tag (0 | 1), then u32 length + UTF-8 when 1
//! payload     the rest, UTF-8
//! ```

use crate::{StoreError, StoredEntity};
use legato_schema::write::WriteItem;
use legato_schema::{ChangeSeq, Clock, EntityType, Version};
use scylla::value::{CqlValue, Row};

/// Bumped if the layout after the LWW prefix ever changes; decoding refuses unknown formats.
pub const STATE_FORMAT: u8 = 1;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn put_clock(out: &mut Vec<u8>, clock: i64) {
    out.extend_from_slice(&((clock as u64) ^ (1 << 63)).to_be_bytes());
}

/// The fields of one write that live in the state cell (everything but the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub payload: String,
    pub clock: Clock,
    pub deleted: bool,
    pub deleted_at: Option<Clock>,
    pub checksum: String,
    pub seq: ChangeSeq,
    pub device_id: Option<String>,
    pub committed_at: Clock,
}

impl State {
    pub fn of_write(
        item: &WriteItem,
        seq: ChangeSeq,
        device_id: Option<&str>,
        committed_at: Clock,
    ) -> State {
        State {
            payload: item.payload.clone(),
            clock: item.clock,
            deleted: item.deleted,
            deleted_at: item.deleted_at,
            checksum: item.checksum.clone(),
            seq,
            device_id: device_id.map(str::to_owned),
            committed_at,
        }
    }

    pub fn version(&self) -> Version {
        Version {
            clock: self.clock,
            deleted: self.deleted,
            checksum: self.checksum.clone(),
        }
    }

    pub fn into_entity(self, entity_type: EntityType, id: String) -> StoredEntity {
        StoredEntity {
            entity_type,
            id,
            payload: self.payload,
            clock: self.clock,
            deleted: self.deleted,
            deleted_at: self.deleted_at,
            checksum: self.checksum,
            seq: self.seq,
            device_id: self.device_id,
            committed_at: self.committed_at,
        }
    }
}

/// Encodes a state cell. Fails only for a checksum containing NUL, which a SHA-256 hex string
/// never does.
pub fn encode_state(state: &State) -> Result<Vec<u8>, StoreError> {
    if state.checksum.as_bytes().contains(&0) {
        return Err(corrupt("checksum contains a NUL byte"));
    }
    let device = state.device_id.as_deref().map(str::as_bytes);
    let mut out = Vec::with_capacity(
        40 + state.checksum.len() + state.payload.len() + device.map_or(0, <[u8]>::len),
    );
    put_clock(&mut out, state.clock.as_micros());
    out.push(u8::from(state.deleted));
    out.extend_from_slice(state.checksum.as_bytes());
    out.push(0);
    out.push(STATE_FORMAT);
    out.extend_from_slice(&state.seq.0.to_be_bytes());
    put_clock(&mut out, state.committed_at.as_micros());
    match state.deleted_at {
        Some(at) => {
            out.push(1);
            put_clock(&mut out, at.as_micros());
        }
        None => out.push(0),
    }
    match device {
        Some(d) => {
            let len = u32::try_from(d.len()).map_err(|_| corrupt("device id too long"))?;
            out.push(1);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(d);
        }
        None => out.push(0),
    }
    out.extend_from_slice(state.payload.as_bytes());
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("state cell is truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn clock(&mut self) -> Result<Clock, StoreError> {
        Ok(Clock((self.u64()? ^ (1 << 63)) as i64))
    }

    fn flag(&mut self) -> Result<bool, StoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(corrupt(format!("bad flag byte {b}"))),
        }
    }

    fn text(bytes: &[u8]) -> Result<String, StoreError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("state cell text is not UTF-8"))
    }
}

pub fn decode_state(cell: &[u8]) -> Result<State, StoreError> {
    let mut r = Reader(cell);
    let clock = r.clock()?;
    let deleted = r.flag()?;
    let end =
        r.0.iter()
            .position(|&b| b == 0)
            .ok_or_else(|| corrupt("state cell checksum is not terminated"))?;
    let checksum = Reader::text(r.take(end)?)?;
    r.take(1)?;
    let format = r.u8()?;
    if format != STATE_FORMAT {
        return Err(corrupt(format!("unknown state cell format {format}")));
    }
    let seq = ChangeSeq(r.u64()?);
    let committed_at = r.clock()?;
    let deleted_at = if r.flag()? { Some(r.clock()?) } else { None };
    let device_id = if r.flag()? {
        let len = u32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
        Some(Reader::text(r.take(len)?)?)
    } else {
        None
    };
    let payload = Reader::text(r.0)?;
    Ok(State {
        payload,
        clock,
        deleted,
        deleted_at,
        checksum,
        seq,
        device_id,
        committed_at,
    })
}

/// Whether a state cell is a tombstone, without decoding the rest of it.
pub fn is_deleted(cell: &[u8]) -> Result<bool, StoreError> {
    let mut r = Reader(cell);
    r.take(8)?;
    r.flag()
}

/// A row of `SELECT type, id, state FROM entities` as the driver returns it.
pub fn entity_from_row(
    (type_name, id, cell): (String, String, Vec<u8>),
) -> Result<StoredEntity, StoreError> {
    let entity_type = type_name
        .parse::<EntityType>()
        .map_err(|_| corrupt(format!("unknown entity type {type_name:?}")))?;
    Ok(decode_state(&cell)?.into_entity(entity_type, id))
}

/// Bound values of `INSERT INTO entities (user, type, id, state) … USING TIMESTAMP ?`.
pub type EntityValues = (String, &'static str, String, Vec<u8>, i64);

pub fn entity_values(
    user: &str,
    item: &WriteItem,
    state: &State,
) -> Result<EntityValues, StoreError> {
    Ok((
        user.to_owned(),
        item.entity_type.as_str(),
        item.id.as_str().to_owned(),
        encode_state(state)?,
        super::timestamp::write_timestamp(&state.version()),
    ))
}

/// Bound values of `INSERT INTO changes (user, bucket, seq, type, id) … USING TTL ?`.
pub type ChangeValues = (String, i64, i64, &'static str, String, i32);

pub fn change_values(
    user: &str,
    item: &WriteItem,
    seq: ChangeSeq,
    bucket_bits: u32,
    ttl: i32,
) -> ChangeValues {
    (
        user.to_owned(),
        super::timestamp::bucket(seq, bucket_bits),
        seq.0 as i64,
        item.entity_type.as_str(),
        item.id.as_str().to_owned(),
        ttl,
    )
}

/// A change-log row: `SELECT seq, type, id FROM changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub seq: ChangeSeq,
    pub entity_type: EntityType,
    pub id: String,
}

pub fn log_row((seq, type_name, id): (i64, String, String)) -> Result<LogRow, StoreError> {
    let entity_type = type_name
        .parse::<EntityType>()
        .map_err(|_| corrupt(format!("unknown entity type {type_name:?}")))?;
    let seq = u64::try_from(seq).map_err(|_| corrupt("negative change sequence"))?;
    Ok(LogRow {
        seq: ChangeSeq(seq),
        entity_type,
        id,
    })
}

/// An idempotency record as stored (`idempotency` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemRow {
    pub request_hash: String,
    pub done: bool,
    pub status: Option<i32>,
    pub body: Option<String>,
    pub claimed_at: Clock,
    pub expires_at: Clock,
}

/// Decodes the row a conditional statement returns next to `[applied]`, by column name:
/// ScyllaDB returns the old row for every conditional statement, Cassandra only when the
/// condition failed, and the column order is not part of either contract. `None` when the
/// statement found no row.
pub fn lwt_result(names: &[&str], row: Row) -> Result<(bool, Option<IdemRow>), StoreError> {
    let mut applied = None;
    let mut fields: [Option<CqlValue>; 6] = Default::default();
    const COLS: [&str; 6] = [
        "request_hash",
        "done",
        "status",
        "body",
        "claimed_at",
        "expires_at",
    ];
    if names.len() != row.columns.len() {
        return Err(corrupt("conditional result has mismatched metadata"));
    }
    for (name, value) in names.iter().zip(row.columns) {
        if *name == "[applied]" {
            applied = value.and_then(|v| v.as_boolean());
        } else if let Some(i) = COLS.iter().position(|c| c == name) {
            fields[i] = value;
        }
    }
    let applied = applied.ok_or_else(|| corrupt("conditional result without [applied]"))?;
    let [hash, done, status, body, claimed_at, expires_at] = fields;
    let Some(request_hash) = hash.and_then(CqlValue::into_string) else {
        return Ok((applied, None));
    };
    let bigint = |v: Option<CqlValue>, what: &str| {
        v.and_then(|v| v.as_bigint())
            .map(Clock)
            .ok_or_else(|| corrupt(format!("idempotency record without {what}")))
    };
    Ok((
        applied,
        Some(IdemRow {
            request_hash,
            done: done.and_then(|v| v.as_boolean()).unwrap_or(false),
            status: status.and_then(|v| v.as_int()),
            body: body.and_then(CqlValue::into_string),
            claimed_at: bigint(claimed_at, "claimed_at")?,
            expires_at: bigint(expires_at, "expires_at")?,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use legato_schema::EntityId;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = State> {
        (
            (0i64..5, any::<bool>(), "[0-9a-f]{0,3}"),
            (
                0u64..4,
                proptest::option::of(0i64..5),
                proptest::option::of("[a-z\\-]{0,6}"),
            ),
            ("\\PC{0,12}", 0i64..3),
        )
            .prop_map(
                |((clock, deleted, checksum), (seq, deleted_at, device_id), (payload, c))| State {
                    payload,
                    clock: Clock(clock),
                    deleted,
                    deleted_at: deleted_at.map(Clock),
                    checksum,
                    seq: ChangeSeq(seq),
                    device_id,
                    committed_at: Clock(c),
                },
            )
    }

    /// ScyllaDB's reconciliation of two live, non-expiring cells of one column: the higher
    /// write timestamp wins, then the greater value, compared as unsigned bytes.
    fn reconcile(a: (i64, Vec<u8>), b: (i64, Vec<u8>)) -> (i64, Vec<u8>) {
        if (b.0, &b.1) > (a.0, &a.1) { b } else { a }
    }

    fn cell(s: &State) -> (i64, Vec<u8>) {
        (
            super::super::timestamp::write_timestamp(&s.version()),
            encode_state(s).unwrap(),
        )
    }

    proptest! {
        #[test]
        fn state_cells_round_trip(s in state()) {
            prop_assert_eq!(decode_state(&encode_state(&s).unwrap()).unwrap(), s);
        }

        #[test]
        fn byte_order_of_cells_follows_the_lww_order(a in state(), b in state()) {
            if a.version() < b.version() {
                prop_assert!(encode_state(&a).unwrap() < encode_state(&b).unwrap());
            }
        }

        /// The no-torn-row argument: whatever order replicas merge concurrent writes in, the
        /// surviving cell decodes to exactly one of the writes (never a mix), and that write
        /// has the LWW-greatest version.
        #[test]
        fn any_merge_order_keeps_one_whole_lww_winner(
            writes in proptest::collection::vec(state(), 1..10),
            seed in any::<u64>(),
        ) {
            let mut order: Vec<usize> = (0..writes.len()).collect();
            let mut s = seed;
            for i in (1..order.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            let merged = order
                .iter()
                .map(|&i| cell(&writes[i]))
                .reduce(reconcile)
                .unwrap();
            let survivor = decode_state(&merged.1).unwrap();
            prop_assert!(writes.contains(&survivor), "{survivor:?} is no single write");
            let best = writes.iter().map(State::version).max().unwrap();
            prop_assert_eq!(survivor.version(), best);
        }
    }

    fn sample() -> State {
        State {
            payload: r#"{"id":"e1"}"#.into(),
            clock: Clock(1_750_717_972_797_000),
            deleted: true,
            deleted_at: Some(Clock(1_750_717_972_797_000)),
            checksum: "ab".into(),
            seq: ChangeSeq::new(7, 3),
            device_id: Some("dev-1".into()),
            committed_at: Clock(1_750_717_973_000_000),
        }
    }

    #[test]
    fn the_lww_prefix_leads_the_cell() {
        let cell = encode_state(&sample()).unwrap();
        assert_eq!(
            &cell[..8],
            &((1_750_717_972_797_000u64) | (1 << 63)).to_be_bytes()
        );
        assert_eq!(cell[8], 1);
        assert_eq!(&cell[9..12], b"ab\0");
        assert_eq!(cell[12], STATE_FORMAT);
        assert!(cell.ends_with(br#"{"id":"e1"}"#));
        assert!(is_deleted(&cell).unwrap());
        assert!(is_deleted(&cell[..8]).is_err());
    }

    #[test]
    fn damaged_cells_are_corrupt_not_panics() {
        let cell = encode_state(&sample()).unwrap();
        for cut in 0..cell.len() - 11 {
            assert!(
                matches!(decode_state(&cell[..cut]), Err(StoreError::Corrupt(_))),
                "cut at {cut}"
            );
        }
        let mut unknown = cell.clone();
        unknown[12] = 9;
        assert!(matches!(
            decode_state(&unknown),
            Err(StoreError::Corrupt(_))
        ));
        let bad = State {
            checksum: "a\0b".into(),
            ..sample()
        };
        assert!(encode_state(&bad).is_err());
    }

    fn write_item() -> WriteItem {
        WriteItem {
            entity_type: EntityType::Goal,
            id: EntityId::parse("g1").unwrap(),
            payload: r#"{"id":"g1"}"#.into(),
            clock: Clock(2_000),
            deleted: false,
            deleted_at: None,
            checksum: "cc".into(),
        }
    }

    #[test]
    fn entity_values_bind_the_clock_as_write_timestamp() {
        let item = write_item();
        let state = State::of_write(&item, ChangeSeq::new(9, 1), Some("d"), Clock(5));
        let (user, t, id, cell, ts) = entity_values("u1", &item, &state).unwrap();
        assert_eq!(
            (user.as_str(), t, id.as_str(), ts),
            ("u1", "goal", "g1", 2_000)
        );
        assert_eq!(decode_state(&cell).unwrap(), state);
    }

    #[test]
    fn change_values_carry_bucket_seq_and_ttl() {
        let seq = ChangeSeq::new(70_000, 2);
        let v = change_values("u1", &write_item(), seq, 16, 86_400);
        assert_eq!(
            v,
            ("u1".into(), 1, seq.0 as i64, "goal", "g1".into(), 86_400)
        );
    }

    #[test]
    fn driver_rows_decode_to_entities_and_log_rows() {
        let cell = encode_state(&sample()).unwrap();
        let e = entity_from_row(("logbook_entry".into(), "e1".into(), cell.clone())).unwrap();
        assert_eq!(e.entity_type, EntityType::LogbookEntry);
        assert_eq!(e.id, "e1");
        assert_eq!(e.seq, ChangeSeq::new(7, 3));
        assert_eq!(e.device_id.as_deref(), Some("dev-1"));
        assert!(entity_from_row(("widget".into(), "e1".into(), cell)).is_err());
        assert_eq!(
            log_row((42, "goal".into(), "g".into())).unwrap(),
            LogRow {
                seq: ChangeSeq(42),
                entity_type: EntityType::Goal,
                id: "g".into()
            }
        );
        assert!(log_row((-1, "goal".into(), "g".into())).is_err());
    }

    #[test]
    fn conditional_results_decode_by_column_name() {
        let names = [
            "[applied]",
            "user",
            "key",
            "body",
            "claimed_at",
            "done",
            "expires_at",
            "request_hash",
            "status",
        ];
        let row = |applied: bool, hash: Option<&str>| Row {
            columns: vec![
                Some(CqlValue::Boolean(applied)),
                Some(CqlValue::Text("u".into())),
                Some(CqlValue::Text("k".into())),
                hash.map(|_| CqlValue::Text("{}".into())),
                hash.map(|_| CqlValue::BigInt(10)),
                hash.map(|_| CqlValue::Boolean(true)),
                hash.map(|_| CqlValue::BigInt(20)),
                hash.map(|h| CqlValue::Text(h.into())),
                hash.map(|_| CqlValue::Int(200)),
            ],
        };
        assert_eq!(lwt_result(&names, row(true, None)).unwrap(), (true, None));
        let (applied, existing) = lwt_result(&names, row(false, Some("h1"))).unwrap();
        assert!(!applied);
        assert_eq!(
            existing,
            Some(IdemRow {
                request_hash: "h1".into(),
                done: true,
                status: Some(200),
                body: Some("{}".into()),
                claimed_at: Clock(10),
                expires_at: Clock(20),
            })
        );
        // Cassandra's shape for an applied statement: only [applied]
        assert_eq!(
            lwt_result(
                &["[applied]"],
                Row {
                    columns: vec![Some(CqlValue::Boolean(true))]
                }
            )
            .unwrap(),
            (true, None)
        );
        assert!(
            lwt_result(
                &["user"],
                Row {
                    columns: vec![None]
                }
            )
            .is_err()
        );
    }
}
