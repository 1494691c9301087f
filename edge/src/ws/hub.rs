//! The edge's session hub: which sessions of which user live here, and the NATS interest
//! that follows them. While it holds at least one session of a user, the edge subscribes to
//! `sync.deliver.<user>` (live changes from fanout, and presence requests asking for session counts
//! for `deviceCount`); after the last one leaves, it unsubscribes.
//!
//! Delivery never blocks: each session has a bounded queue. A full queue marks the session
//! as lagging and wakes it; the session drops what is queued and catches up from the store.

use async_nats::Subscriber;
use bytes::Bytes;
use futures::StreamExt;
use legato_schema::envelope::{self, Delivery, ORIGIN_DEVICE, ORIGIN_SESSION};
use legato_schema::{UserId, subject};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// What the hub sends a session: live frames from fanout, shared by the user's sessions. A
/// pointer, so a session's queue block (32 slots, allocated with the queue) is 256 bytes
/// rather than the 768 an enum of it and a `String` took: every idle session pays for it.
/// The answers to a session's own mutations go their own way (see `session::drive`).
pub type Outbound = Arc<Delivery>;

/// The hub's handle on one session.
pub struct SessionLink {
    /// Unique across edges; travels as the origin session of this session's writes.
    pub session_id: String,
    pub device: Option<String>,
    pub tx: mpsc::Sender<Outbound>,
    /// Set when a delivery found the queue full; the session then catches up.
    pub lagging: AtomicBool,
    pub wake: Notify,
    /// Cancelled to close the session (shutdown: 1012).
    pub close: CancellationToken,
    /// The highest `seq`/`lastSeq` sent to the client: a cursor it can safely resume from,
    /// since everything below it was either delivered live or read by a catch-up.
    pub delivered: AtomicU64,
    /// `delivered` as it was when the broker connection broke (`u64::MAX`: not lost): live
    /// frames published before the subscriptions were back never arrived, so the session
    /// catches up from here once [`Hub::broker_back`] says so.
    pub resync_from: AtomicU64,
}

impl SessionLink {
    pub fn new(
        session_id: String,
        device: Option<String>,
        queue: usize,
    ) -> (Arc<SessionLink>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let link = SessionLink {
            session_id,
            device,
            tx,
            lagging: AtomicBool::new(false),
            wake: Notify::new(),
            close: CancellationToken::new(),
            delivered: AtomicU64::new(0),
            resync_from: AtomicU64::new(u64::MAX),
        };
        (Arc::new(link), rx)
    }

    /// Records that the client has been sent everything up to `seq` (a frame's, or a
    /// catch-up's cursor).
    pub fn saw(&self, seq: u64) {
        self.delivered.fetch_max(seq, Ordering::SeqCst);
    }

    /// Keeps the current cursor to catch up from after the broker comes back (the oldest one
    /// kept wins, across repeated breaks).
    pub fn keep_cursor(&self) {
        let delivered = self.delivered.load(Ordering::SeqCst);
        self.resync_from.fetch_min(delivered, Ordering::SeqCst);
    }

    /// Whether a cursor is kept for a catch-up after the broker came back.
    pub fn lost_frames(&self) -> bool {
        self.resync_from.load(Ordering::SeqCst) != u64::MAX
    }

    /// Marks the session to catch up and wakes it (a full queue, or frames lost).
    pub fn lag(&self) {
        self.lagging.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("too many sessions for this user")]
    TooMany,
    #[error("this edge holds as many sessions as it may")]
    Full,
    #[error("broker unavailable")]
    Unavailable,
}

/// The broker did not take the user's subscriptions in time.
struct SubscribeFailed;

struct UserEntry {
    sessions: Vec<Arc<SessionLink>>,
    /// `true` once the user's subscriptions are live.
    ready: watch::Receiver<bool>,
    pump: Option<tokio::task::AbortHandle>,
}

/// The sessions of every user, and how many there are in all.
#[derive(Default)]
struct Users {
    by_user: HashMap<UserId, UserEntry>,
    sessions: usize,
}

pub struct Hub {
    client: async_nats::Client,
    users: Mutex<Users>,
    instance: String,
    next_session: AtomicU64,
    queue: usize,
    max_per_user: usize,
    max_sessions: usize,
    this: Weak<Hub>,
}

const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

impl Hub {
    pub fn new(
        client: async_nats::Client,
        queue: usize,
        max_per_user: usize,
        max_sessions: usize,
    ) -> Arc<Hub> {
        Arc::new_cyclic(|this| Hub {
            client,
            users: Mutex::default(),
            instance: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            next_session: AtomicU64::new(1),
            queue,
            max_per_user,
            max_sessions,
            this: this.clone(),
        })
    }

    /// Adds a session; returns once the user's subscriptions are live, so nothing committed
    /// after this returns can be missed.
    pub async fn register(
        &self,
        user: &UserId,
        device: Option<String>,
    ) -> Result<(Arc<SessionLink>, mpsc::Receiver<Outbound>), RegisterError> {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (link, rx) = SessionLink::new(format!("{}-{n}", self.instance), device, self.queue);
        let (mut ready, subscribe) = {
            let mut users = self.users.lock().expect("hub lock");
            let users = &mut *users;
            let entry = users.by_user.get_mut(user);
            if entry
                .as_ref()
                .is_some_and(|e| e.sessions.len() >= self.max_per_user)
            {
                return Err(RegisterError::TooMany);
            }
            if users.sessions >= self.max_sessions {
                return Err(RegisterError::Full);
            }
            users.sessions += 1;
            match entry {
                Some(entry) => {
                    entry.sessions.push(link.clone());
                    (entry.ready.clone(), None)
                }
                None => {
                    let (tx, rx) = watch::channel(false);
                    users.by_user.insert(
                        user.clone(),
                        UserEntry {
                            sessions: vec![link.clone()],
                            ready: rx.clone(),
                            pump: None,
                        },
                    );
                    (rx, Some(tx))
                }
            }
        };
        if let Some(ready_tx) = subscribe {
            match self.subscribe(user).await {
                Ok(pump) => {
                    let mut users = self.users.lock().expect("hub lock");
                    match users.by_user.get_mut(user) {
                        Some(entry) => entry.pump = Some(pump),
                        // Everyone left while we subscribed.
                        None => pump.abort(),
                    }
                    let _ = ready_tx.send(true);
                }
                Err(_) => {
                    self.unregister(user, &link);
                    return Err(RegisterError::Unavailable);
                }
            }
        }
        let live = tokio::time::timeout(SUBSCRIBE_WAIT, ready.wait_for(|r| *r)).await;
        if !matches!(live, Ok(Ok(_))) {
            self.unregister(user, &link);
            return Err(RegisterError::Unavailable);
        }
        Ok((link, rx))
    }

    /// Removes a session; the last one of a user ends the user's subscriptions.
    pub fn unregister(&self, user: &UserId, link: &Arc<SessionLink>) {
        let mut users = self.users.lock().expect("hub lock");
        let users = &mut *users;
        if let Some(entry) = users.by_user.get_mut(user) {
            let before = entry.sessions.len();
            entry.sessions.retain(|s| !Arc::ptr_eq(s, link));
            users.sessions -= before - entry.sessions.len();
            if entry.sessions.is_empty() {
                if let Some(pump) = &entry.pump {
                    pump.abort();
                }
                users.by_user.remove(user);
            }
        }
    }

    pub fn local_count(&self, user: &UserId) -> usize {
        self.users
            .lock()
            .expect("hub lock")
            .by_user
            .get(user)
            .map_or(0, |e| e.sessions.len())
    }

    async fn subscribe(&self, user: &UserId) -> Result<tokio::task::AbortHandle, SubscribeFailed> {
        if !legato_runtime::nats::is_connected(&self.client) {
            return Err(SubscribeFailed);
        }
        let deliveries = self
            .client
            .subscribe(subject::deliver(user))
            .await
            .map_err(|_| SubscribeFailed)?;
        // Make the interest known to the server before any session is told it is live.
        match tokio::time::timeout(SUBSCRIBE_WAIT, self.client.flush()).await {
            Ok(Ok(())) => {}
            _ => return Err(SubscribeFailed),
        }
        let hub = self.this.clone();
        let task = tokio::spawn(pump(hub, user.clone(), deliveries, self.client.clone()));
        Ok(task.abort_handle())
    }

    fn sessions_of(&self, user: &UserId) -> Vec<Arc<SessionLink>> {
        self.users
            .lock()
            .expect("hub lock")
            .by_user
            .get(user)
            .map(|e| e.sessions.clone())
            .unwrap_or_default()
    }

    /// Hands a delivery to every session of the user except the origin session and the
    /// origin device's sessions.
    fn deliver(
        &self,
        user: &UserId,
        delivery: Arc<Delivery>,
        origin_device: Option<&str>,
        origin_session: Option<&str>,
    ) {
        for session in self.sessions_of(user) {
            if origin_session == Some(session.session_id.as_str())
                || (origin_device.is_some() && origin_device == session.device.as_deref())
            {
                continue;
            }
            match session.tx.try_send(delivery.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => session.lag(),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Closes every session with 1012, `batch` at a time, `pause` apart.
    pub async fn close_all(&self, batch: usize, pause: Duration) {
        let all = self.sessions();
        for chunk in all.chunks(batch.max(1)) {
            for session in chunk {
                session.close.cancel();
            }
            tokio::time::sleep(pause).await;
        }
    }
}

impl Hub {
    fn sessions(&self) -> Vec<Arc<SessionLink>> {
        self.users
            .lock()
            .expect("hub lock")
            .by_user
            .values()
            .flat_map(|e| e.sessions.clone())
            .collect()
    }

    /// The broker connection broke: live frames published until the subscriptions are back
    /// are lost to every session here. Each keeps the cursor it has now to catch up from.
    pub fn broker_lost(&self) {
        for link in self.sessions() {
            link.keep_cursor();
        }
    }

    /// Whether a session lost live frames to a broken connection and has not caught up yet.
    pub fn any_lost(&self) -> bool {
        self.sessions().iter().any(|link| link.lost_frames())
    }

    /// The subscriptions are back and the commit watermark covers every change whose frame
    /// could have been lost: the sessions that lost frames catch up from their kept cursor.
    pub fn broker_back(&self) {
        for link in self.sessions().iter().filter(|link| link.lost_frames()) {
            link.lag();
        }
    }
}

/// Reads the user's one subscription: deliveries from fanout, and presence requests (the only
/// messages on the subject with a reply address). One subscription per user, not two: each
/// costs a channel block of about 6 KiB in the client.
async fn pump(
    hub: Weak<Hub>,
    user: UserId,
    mut deliveries: Subscriber,
    client: async_nats::Client,
) {
    while let Some(message) = deliveries.next().await {
        let Some(hub) = hub.upgrade() else { return };
        if let Some(reply) = message.reply {
            let count = hub.local_count(&user).to_string();
            let _ = client.publish(reply, Bytes::from(count)).await;
            continue;
        }
        let delivery = match envelope::decode::<Delivery>(&message.payload) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable delivery");
                continue;
            }
        };
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let (device, session) = (header(ORIGIN_DEVICE), header(ORIGIN_SESSION));
        hub.deliver(&user, delivery, device.as_deref(), session.as_deref());
    }
}

/// Sessions of `user` across all edges: every edge holding some answers the presence request
/// with its count; answers are collected for `wait`.
pub async fn device_count(
    client: &async_nats::Client,
    user: &UserId,
    wait: Duration,
) -> Result<u64, async_nats::Error> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subject::deliver(user), inbox, Bytes::new())
        .await?;
    tokio::time::timeout(SUBSCRIBE_WAIT, client.flush())
        .await
        .map_err(|_| "flush timed out")??;
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
        total += std::str::from_utf8(&reply.payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}
