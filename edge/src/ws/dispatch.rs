//! The edge's [`Dispatch`]: client mutations go through the same durable write path as HTTP
//! (validation, publish, commit), and catch-up pages are read from the store under the
//! safe-cursor rule (every `seq` the client sees is at most the commit watermark).

use super::hub::SessionLink;
use super::session::{Dispatch, Event, Page, PageCursor};
use crate::bus::{Request, Submission};
use crate::http_api::items::{RawItem, prepare_items};
use crate::state::State;
use legato_schema::envelope::{ItemOutcome, RequestKind};
use legato_schema::write::Payload;
use legato_schema::{ChangeSeq, Clock, DeviceId, EntityType, UserId, ws};
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;

/// Changes read from the store per catch-up page.
const PAGE: usize = 1000;
/// A catch-up page also ends once its payloads pass this many bytes, so a session stuck on
/// a slow client holds at most about this much (plus one item) of rendered frames.
const PAGE_BYTES: usize = 1 << 20;

pub struct EdgeDispatch {
    pub state: Arc<State>,
    pub user: UserId,
}

impl Dispatch for EdgeDispatch {
    async fn mutate(
        &self,
        _kind: String,
        entity: String,
        writes: Vec<(EntityType, Value)>,
        link: Arc<SessionLink>,
    ) -> Vec<String> {
        let main_type = writes.first().map_or(EntityType::LogbookEntry, |w| w.0);
        let now = Clock::now();
        let raw = writes
            .into_iter()
            .map(|(t, payload)| RawItem {
                entity_type: Ok(t),
                id: None,
                payload: Payload::Value(payload),
                version: None,
            })
            .collect();
        let prepared = prepare_items(&self.state, raw, now);
        if let Some(rejected) = prepared.rejected.first() {
            let t = rejected.entity_type.parse().unwrap_or(main_type);
            return vec![ws::entity_error(&rejected.reason, t, &rejected.entity_id)];
        }
        let sent = prepared.sent();
        let request = Request {
            user: self.user.clone(),
            device_id: link.device.clone().and_then(|d| DeviceId::parse(d).ok()),
            session_id: Some(link.session_id.clone()),
            kind: RequestKind::WebSocket,
            received_at: now,
            items: prepared.items,
            idempotency: None,
        };
        match self.state.bus.submit(request).await {
            Err(e) => vec![ws::entity_error(
                &format!("Service unavailable: {e}"),
                main_type,
                &entity,
            )],
            Ok((Submission::Pending, _)) => vec![ws::sync_pending()],
            Ok((Submission::Committed(outcomes), _)) => {
                let mut frames = Vec::new();
                for ((t, id), outcome) in sent.iter().zip(outcomes) {
                    match outcome {
                        ItemOutcome::Applied { .. } | ItemOutcome::Duplicate { .. } => {}
                        ItemOutcome::Superseded { server_clock, .. } => {
                            frames.push(ws::entity_error(
                                &format!(
                                    "superseded by a newer version ({})",
                                    server_clock.to_iso()
                                ),
                                *t,
                                id,
                            ))
                        }
                    }
                }
                if frames.is_empty() {
                    // The session's own resume cursor: the change's seq could be ahead of
                    // changes this client has not received yet.
                    let safe = link.delivered.load(std::sync::atomic::Ordering::SeqCst);
                    frames.push(ws::sync_response("Mutation applied", safe));
                }
                frames
            }
        }
    }

    async fn catch_up_page(&self, since: u64, cursor: Option<PageCursor>) -> Result<Page, String> {
        let cursor = match cursor {
            Some(c) => c,
            None => {
                let mut watermark = self
                    .state
                    .bus
                    .watermark()
                    .await
                    .map_err(|e| e.to_string())?
                    .0;
                if since > watermark {
                    // Perhaps only our cached watermark is behind the client's cursor.
                    watermark = self
                        .state
                        .bus
                        .fresh_watermark()
                        .await
                        .map_err(|e| e.to_string())?
                        .0;
                }
                // A cursor beyond the watermark cannot be one we handed out: send everything.
                let position = if since > watermark { 0 } else { since };
                PageCursor {
                    position,
                    watermark,
                }
            }
        };
        let w = cursor.watermark;
        let mut rows = self
            .state
            .store
            .changes_since(&self.user, ChangeSeq(cursor.position), None, PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let mut more = rows.len() == PAGE;
        let mut bytes = 0;
        if let Some(cut) = rows.iter().position(|row| {
            bytes += row.payload.len();
            bytes > PAGE_BYTES
        }) {
            // Keep at least one row, so every page makes progress.
            rows.truncate(cut.max(1));
            more = true;
        }
        // Frames go out in sequence order, each carrying the highest sequence it covers (capped
        // at the watermark): a client that stops reading after any frame and resumes from
        // the last `seq`/`lastSeq` it saw misses nothing. Consecutive live entries (or pieces)
        // share a bulk frame of at most 250.
        let last_position = rows.last().map(|r| r.seq.0);
        let mut out = Frames {
            frames: Vec::new(),
            run: None,
            run_kind: EntityType::LogbookEntry,
            max_seq: 0,
            watermark: w,
        };
        for row in rows {
            let seq = row.seq.0;
            match (row.entity_type, row.deleted) {
                (kind @ (EntityType::LogbookEntry | EntityType::RepertoireItem), false) => {
                    out.push_bulk(kind, seq, row.payload);
                }
                (t, deleted) => {
                    out.flush();
                    if let Some(frame) = ws::render_change(
                        t,
                        &row.id,
                        &row.payload,
                        deleted,
                        seq.min(w),
                        row.committed_at,
                    ) {
                        out.frames.push(frame);
                        out.max_seq = out.max_seq.max(seq.min(w));
                    }
                }
            }
        }
        out.flush();
        let (frames, max_seq) = (out.frames, out.max_seq);
        let next = match (more, last_position) {
            (true, Some(position)) => Some(PageCursor {
                position,
                watermark: w,
            }),
            _ => None,
        };
        Ok(Page {
            frames,
            max_seq,
            next,
            last_seq: w,
        })
    }

    fn observe(&self, event: Event<'_>) {
        let m = &self.state.metrics;
        match event {
            Event::MessageIn(kind) => m.ws_messages_in.with_label_values(&[kind]).inc(),
            Event::FramesOut(n) => m.ws_frames_out.inc_by(n as u64),
            Event::CatchUp(cause) => m.ws_catch_ups.with_label_values(&[cause]).inc(),
        }
    }
}

/// Builds a catch-up page's frames in sequence order.
struct Frames {
    frames: Vec<String>,
    /// The bulk run being filled: its payloads and the highest sequence in it.
    run: Option<(Vec<String>, u64)>,
    run_kind: EntityType,
    max_seq: u64,
    watermark: u64,
}

impl Frames {
    fn push_bulk(&mut self, kind: EntityType, seq: u64, payload: String) {
        if self.run.is_some()
            && (self.run_kind != kind
                || self
                    .run
                    .as_ref()
                    .is_some_and(|(p, _)| p.len() == ws::BULK_SYNC_MAX))
        {
            self.flush();
        }
        self.run_kind = kind;
        let run = self.run.get_or_insert_with(|| (Vec::new(), 0));
        run.0.push(payload);
        run.1 = run.1.max(seq);
    }

    fn flush(&mut self) {
        let Some((payloads, seq)) = self.run.take() else {
            return;
        };
        let raws: Vec<&RawValue> = payloads
            .iter()
            .filter_map(|p| serde_json::from_str(p).ok())
            .collect();
        let seq = seq.min(self.watermark);
        self.max_seq = self.max_seq.max(seq);
        self.frames.push(match self.run_kind {
            EntityType::RepertoireItem => ws::repertoire_bulk_sync(&raws, seq),
            _ => ws::bulk_sync(&raws, seq),
        });
    }
}
