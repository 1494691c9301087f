//! Checkpointing the WAL off the commit path.
//!
//! SQLite's own automatic checkpoint runs inside the commit that takes the WAL past 1,000 pages:
//! that commit copies the WAL back into the database file and fsyncs it before it returns, so
//! every few dozen batches one waits several times as long as the others. With
//! [`Checkpoint::Background`] a thread of the store's own does that work instead:
//! - every `interval` a PASSIVE checkpoint copies what the WAL holds, blocking neither the
//!   writer nor readers;
//! - a passive checkpoint alone never lets the WAL start over while writes keep coming (the
//!   writer starts it over only when every frame in it has been copied), so once the WAL holds
//!   `restart_pages`, a RESTART checkpoint follows the passive one. It waits for the current
//!   transaction, copies the few frames the passive one left and waits for readers of the old
//!   frames, for at most [`RESTART_WAIT`] (so a long read cannot hold up the writer), and the
//!   next commit then writes the WAL from its start.
//!
//! A checkpoint that fails or finds the file busy is tried again at the next tick (a run of
//! failures is logged once, and its end). The writer keeps SQLite's automatic checkpoint at
//! [`SAFETY_FACTOR`] × `restart_pages`, so the WAL stays bounded if this thread falls behind
//! or cannot open its connection.

use super::{SqliteOptions, connect};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// How the WAL is checkpointed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// In the commit that takes the WAL past 1,000 pages (SQLite's default).
    Inline,
    /// By a thread of the store's own (see the module docs).
    Background {
        interval: Duration,
        restart_pages: u32,
    },
}

impl Default for Checkpoint {
    /// A page written again before the next checkpoint is copied back once: every 500 ms
    /// rather than 50 the checkpoints cost the pipeline ~0.45 µs less CPU per entry at
    /// 100 × 128 (~2 % more throughput) and cut the 1-item p50 (docs/BENCHMARKS.md). The
    /// WAL starts over at 64 MiB, about a second of writes at that rate.
    fn default() -> Self {
        Checkpoint::Background {
            interval: Duration::from_millis(500),
            restart_pages: 16_384,
        }
    }
}

/// How long a RESTART checkpoint waits for the writer's transaction and for readers.
pub const RESTART_WAIT: Duration = Duration::from_millis(10);

/// The writer's own automatic checkpoint, in multiples of `restart_pages`.
pub const SAFETY_FACTOR: u32 = 4;

/// What one checkpoint reported: PRAGMA wal_checkpoint's three columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The checkpoint could not finish (another connection held what it needed).
    pub busy: bool,
    /// Frames in the WAL.
    pub log: i64,
    /// Frames of those copied into the database file.
    pub checkpointed: i64,
}

pub fn run(conn: &Connection, mode: &str) -> rusqlite::Result<Report> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(Report {
            busy: r.get::<_, i64>(0)? != 0,
            log: r.get(1)?,
            checkpointed: r.get(2)?,
        })
    })
}

/// Starts the checkpointer for the file at `path`, counting the RESTART checkpoints it completes
/// in `restarts`; it stops when the returned sender is dropped (with the store).
pub fn spawn(
    path: PathBuf,
    options: SqliteOptions,
    restarts: Arc<AtomicU64>,
) -> Option<Sender<()>> {
    let Checkpoint::Background {
        interval,
        restart_pages,
    } = options.checkpoint
    else {
        return None;
    };
    let (stop, stopped) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            checkpoint_loop(
                &path,
                &options,
                interval,
                restart_pages,
                &restarts,
                &stopped,
            )
        })
        .inspect_err(|e| {
            tracing::warn!(error = %e, "no checkpointer thread; commits checkpoint the WAL");
        })
        .ok()?;
    Some(stop)
}

fn checkpoint_loop(
    path: &std::path::Path,
    options: &SqliteOptions,
    interval: Duration,
    restart_pages: u32,
    restarts: &AtomicU64,
    stopped: &Receiver<()>,
) {
    let mut conn: Option<Connection> = None;
    // Reported when it starts failing and when it recovers, not at every tick.
    let mut failing = false;
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        let outcome = checkpoint_once(path, options, restart_pages, restarts, &mut conn);
        match (&outcome, failing) {
            (Err(e), false) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; trying again every tick");
            }
            (Ok(()), true) => tracing::info!("WAL checkpoints work again"),
            _ => {}
        }
        failing = outcome.is_err();
        if failing {
            // Opened again at the next tick, in case this one is what went wrong.
            conn = None;
        }
    }
}

/// One tick: a PASSIVE checkpoint, and a RESTART one if the WAL has grown to `restart_pages`.
/// The connection is opened at the first tick and after a failure.
fn checkpoint_once(
    path: &std::path::Path,
    options: &SqliteOptions,
    restart_pages: u32,
    restarts: &AtomicU64,
    conn: &mut Option<Connection>,
) -> rusqlite::Result<()> {
    let c = match conn {
        Some(c) => c,
        None => {
            let c = connect(path, options, false)?;
            c.busy_timeout(RESTART_WAIT)?;
            conn.insert(c)
        }
    };
    let passive = run(c, "PASSIVE")?;
    if passive.log >= i64::from(restart_pages) {
        let restart = run(c, "RESTART")?;
        restarts.fetch_add(u64::from(!restart.busy), Ordering::Relaxed);
    }
    Ok(())
}
