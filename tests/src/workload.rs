//! Sustained load for the fault suite, and the checks that follow it.
//!
//! Writers behave like real clients: each write carries an idempotency key (HTTP) or is sent
//! again on a new session (WebSocket) until it is acknowledged — a 2xx answer, or a
//! `SYNC_RESPONSE` for the mutation — trying the edges in [`Targets`] in turn. Each writer owns
//! its entries and gives each write a greater clock than the last, so the state an entry must
//! end in is its writer's last acknowledged write ([`Expected`]). A write never acknowledged
//! within [`WRITE_DEADLINE`] fails the test.
//!
//! Readers: [`CursorReader`] follows `syncToken`s with pulls during the whole run;
//! [`Device`] holds a WebSocket session, applies what it receives and resumes from its last
//! `seq` on another edge when its session ends.

use crate::view::{DeviceView, State, apply_page};
use crate::ws_client::WsClient;
use crate::{Pipeline, Rng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long one write may take to be acknowledged, retries included.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// A client's pause before it tries again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Clocks start here (epoch ms); each writer adds its write counter.
const BASE_CLOCK: i64 = 1_750_000_000_000;

/// The edges clients use; a test removes an edge it kills and adds one it starts.
#[derive(Clone, Default)]
pub struct Targets(Arc<RwLock<Vec<SocketAddr>>>);

impl Targets {
    pub fn new(edges: Vec<SocketAddr>) -> Targets {
        Targets(Arc::new(RwLock::new(edges)))
    }

    pub fn set(&self, edges: Vec<SocketAddr>) {
        *self.0.write().unwrap() = edges;
    }

    /// The `n`th edge, round robin.
    pub fn pick(&self, n: u64) -> SocketAddr {
        let edges = self.0.read().unwrap();
        assert!(!edges.is_empty(), "no edge to send to");
        edges[(n % edges.len() as u64) as usize]
    }
}

/// Counts of what the writers saw.
#[derive(Default, Debug)]
pub struct Tally {
    /// Writes acknowledged over HTTP (2xx) and on the WebSocket (`SYNC_RESPONSE`).
    pub acked_http: AtomicU64,
    pub acked_ws: AtomicU64,
    /// HTTP answers by status, and failures by kind (`connect`, `timeout`, `ws-closed`…).
    pub outcomes: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    pub fn acked(&self) -> u64 {
        self.acked_http.load(Ordering::SeqCst) + self.acked_ws.load(Ordering::SeqCst)
    }

    fn count(&self, what: impl Into<String>) {
        *self
            .outcomes
            .lock()
            .unwrap()
            .entry(what.into())
            .or_default() += 1;
    }

    /// Answers and failures other than 2xx.
    pub fn failures(&self) -> u64 {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.starts_with('2'))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Per user, per entry id: the state its last acknowledged write left.
pub type Expected = BTreeMap<String, State>;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub users: Vec<String>,
    /// HTTP writers per user.
    pub http_writers: usize,
    /// WebSocket writers per user.
    pub ws_writers: usize,
    /// Entries each writer cycles through.
    pub entries_per_writer: u64,
    /// Items per HTTP push.
    pub items_per_push: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            users: vec!["fault_user_a".into(), "fault_user_b".into()],
            http_writers: 2,
            ws_writers: 1,
            entries_per_writer: 1_000,
            items_per_push: 3,
        }
    }
}

/// Writers running until [`Load::stop`].
pub struct Load {
    stop: CancellationToken,
    writers: Vec<(String, JoinHandle<State>)>,
    pub tally: Arc<Tally>,
}

impl Load {
    pub fn start(http: &reqwest::Client, targets: &Targets, options: &LoadOptions) -> Load {
        let stop = CancellationToken::new();
        let tally = Arc::new(Tally::default());
        let mut writers = Vec::new();
        for (u, user) in options.users.iter().enumerate() {
            for w in 0..options.http_writers + options.ws_writers {
                let writer = Writer {
                    user: user.clone(),
                    tag: format!("u{u}w{w}"),
                    entries: options.entries_per_writer,
                    items: options.items_per_push.max(1),
                    targets: targets.clone(),
                    tally: tally.clone(),
                    stop: stop.clone(),
                    rng: Rng(0x9e37_79b9 + (u as u64) * 7919 + w as u64 * 104_729),
                };
                let task = if w < options.http_writers {
                    tokio::spawn(writer.run_http(http.clone()))
                } else {
                    tokio::spawn(writer.run_ws())
                };
                writers.push((user.clone(), task));
            }
        }
        Load {
            stop,
            writers,
            tally,
        }
    }

    /// Waits until `n` more writes than now are acknowledged (at most [`WRITE_DEADLINE`]:
    /// the writers retry each write that long).
    pub async fn wait_more_acked(&self, n: u64) {
        let target = self.tally.acked() + n;
        let tally = self.tally.clone();
        crate::wait_for(&format!("{target} acked writes"), WRITE_DEADLINE, || {
            let tally = tally.clone();
            async move { (tally.acked() >= target).then_some(()) }
        })
        .await;
    }

    /// Stops the writers; each finishes (and has acknowledged) the write it is on.
    pub async fn stop(self) -> (Expected, Arc<Tally>) {
        self.stop.cancel();
        let mut expected = Expected::new();
        for (user, writer) in self.writers {
            expected
                .entry(user)
                .or_default()
                .extend(writer.await.expect("writer"));
        }
        (expected, self.tally)
    }
}

struct Writer {
    user: String,
    tag: String,
    entries: u64,
    items: u64,
    targets: Targets,
    tally: Arc<Tally>,
    stop: CancellationToken,
    rng: Rng,
}

impl Writer {
    /// The next write to entry `k`: its id and item (every seventh a delete when `deletes`).
    fn next_item(&mut self, k: u64, n: u64, deletes: bool) -> (String, Value) {
        let id = format!("{}-{}", self.tag, k % self.entries);
        let clock = BASE_CLOCK + n as i64;
        let item = if deletes && n.is_multiple_of(7) {
            json!({"id": id, "deletedAt": clock})
        } else {
            json!({"id": id, "updatedAt": clock, "writer": self.tag, "n": n})
        };
        (id, item)
    }

    fn deadline_check(&self, started: tokio::time::Instant, what: &str) {
        assert!(
            started.elapsed() < WRITE_DEADLINE,
            "{}: {what} not acknowledged within {WRITE_DEADLINE:?}; outcomes {:?}",
            self.tag,
            self.tally.outcomes.lock().unwrap()
        );
    }

    async fn run_http(mut self, http: reqwest::Client) -> State {
        let token = Pipeline::token(&self.user);
        let mut state = State::new();
        let mut n = 0;
        let mut attempt = self.rng.next_u64();
        while !self.stop.is_cancelled() {
            let mut items = Vec::new();
            let mut effects = Vec::new();
            // Distinct entries within one push.
            let first = self.rng.next_u64();
            for k in first..first + self.items.min(self.entries) {
                n += 1;
                let (id, item) = self.next_item(k, n, true);
                effects.push((id, (item["deletedAt"].is_null()).then(|| item.clone())));
                items.push(item);
            }
            let body = json!({"changes": {"entries": items}});
            let key = uuid::Uuid::new_v4().to_string();
            let started = tokio::time::Instant::now();
            loop {
                self.deadline_check(started, &format!("push {key}"));
                attempt += 1;
                let edge = self.targets.pick(attempt);
                let answer = http
                    .post(format!("http://{edge}/api/sync/push"))
                    .bearer_auth(&token)
                    .header("X-Idempotency-Key", &key)
                    .header("X-Device-ID", &self.tag)
                    .timeout(Duration::from_secs(10))
                    .json(&body)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        self.tally.count(r.status().as_str());
                        let answer: Value = r.json().await.unwrap_or(Value::Null);
                        assert!(
                            answer["rejected"].as_array().is_none_or(Vec::is_empty),
                            "a write was refused: {answer}"
                        );
                        self.tally
                            .acked_http
                            .fetch_add(effects.len() as u64, Ordering::SeqCst);
                        break;
                    }
                    Ok(r) => self.tally.count(r.status().as_str()),
                    Err(e) if e.is_timeout() => self.tally.count("timeout"),
                    Err(e) if e.is_connect() => self.tally.count("connect"),
                    Err(_) => self.tally.count("http-error"),
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            state.extend(effects);
        }
        state
    }

    async fn run_ws(mut self) -> State {
        let mut state = State::new();
        let mut session: Option<WsClient> = None;
        let mut n = 0;
        let mut attempt = self.rng.next_u64();
        while !self.stop.is_cancelled() {
            n += 1;
            let k = self.rng.next_u64();
            let (id, item) = self.next_item(k, n, false);
            let frame = json!({"type": "ENTRY_UPDATED", "entry": item});
            let started = tokio::time::Instant::now();
            loop {
                self.deadline_check(started, &format!("mutation {id}"));
                if session.is_none() {
                    attempt += 1;
                    let edge = self.targets.pick(attempt);
                    match WsClient::try_connect(edge, &self.user, Some(&self.tag)).await {
                        Ok(s) => session = Some(s),
                        Err(_) => {
                            self.tally.count("ws-connect");
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue;
                        }
                    }
                }
                let s = session.as_mut().expect("session");
                if s.try_send(&frame).await.is_err() {
                    self.tally.count("ws-closed");
                    session = None;
                    continue;
                }
                match Self::await_result(s).await {
                    Some(Ok(())) => {
                        self.tally.acked_ws.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Some(Err(error)) => {
                        // Refused (e.g. the bus is down): the client sends it again.
                        self.tally.count(format!("ws-error {error}"));
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    None => {
                        self.tally.count("ws-closed");
                        session = None;
                    }
                }
            }
            state.insert(id, Some(item));
        }
        state
    }

    /// The answer to the mutation just sent: acknowledged (committed, or durable and pending),
    /// an ERROR (its text), or `None` when the session ended or went silent. A catch-up also
    /// ends with a `SYNC_RESPONSE` ("Sync complete", "No new data to sync"), which the server
    /// sends unasked when it resyncs a session (a slow consumer, a broker reconnect): taking
    /// it for the mutation's answer would shift every later answer by one.
    async fn await_result(session: &mut WsClient) -> Option<Result<(), String>> {
        loop {
            match session.next_within(Duration::from_secs(15)).await? {
                Ok(frame)
                    if frame["type"] == "SYNC_RESPONSE"
                        && matches!(
                            frame["message"].as_str(),
                            Some("Mutation applied" | "Mutation accepted")
                        ) =>
                {
                    return Some(Ok(()));
                }
                Ok(frame) if frame["type"] == "ERROR" => {
                    return Some(Err(frame["error"].as_str().unwrap_or_default().to_owned()));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Follows `syncToken`s with pulls for one user until [`CursorReader::finish`].
pub struct CursorReader {
    stop: CancellationToken,
    task: JoinHandle<State>,
}

impl CursorReader {
    pub fn start(http: &reqwest::Client, targets: &Targets, user: &str) -> CursorReader {
        let stop = CancellationToken::new();
        let (http, targets, user, token) =
            (http.clone(), targets.clone(), user.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let auth = Pipeline::token(&user);
            let mut view = State::new();
            let mut since: Option<String> = None;
            let mut n = 0u64;
            loop {
                let finishing = token.is_cancelled();
                n += 1;
                let edge = targets.pick(n);
                let body = match &since {
                    Some(s) => json!({"since": s, "limit": 50}),
                    None => json!({"limit": 50}),
                };
                let page = async {
                    let r = http
                        .post(format!("http://{edge}/api/sync/pull"))
                        .bearer_auth(&auth)
                        .timeout(Duration::from_secs(10))
                        .json(&body)
                        .send()
                        .await
                        .ok()?;
                    if !r.status().is_success() {
                        return None;
                    }
                    r.json::<Value>().await.ok()
                }
                .await;
                let Some(page) = page else {
                    // An edge or the broker is down: a client tries again.
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                };
                apply_page(&mut view, &page);
                since = page["syncToken"].as_str().map(str::to_owned);
                let caught_up = page["hasMore"] == false;
                if finishing && caught_up {
                    return view;
                }
                if caught_up {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        CursorReader { stop, task }
    }

    /// Call once every write is committed: reads to the end and returns the view.
    pub async fn finish(self) -> State {
        self.stop.cancel();
        self.task.await.expect("cursor reader")
    }
}

/// A device with a WebSocket session (first on the first edge of [`Targets`]) that resumes
/// from its last `seq` on the next edge whenever its session ends.
pub struct Device {
    pub view: Arc<Mutex<DeviceView>>,
    /// Sessions opened after the first.
    pub resumes: Arc<AtomicU64>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Device {
    pub fn start(targets: &Targets, user: &str, device: &str) -> Device {
        let view = Arc::new(Mutex::new(DeviceView::default()));
        let resumes = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = {
            let (targets, user, device) = (targets.clone(), user.to_owned(), device.to_owned());
            let (view, resumes, stop) = (view.clone(), resumes.clone(), stop.clone());
            tokio::spawn(async move {
                let mut attempt = 0u64;
                while !stop.is_cancelled() {
                    // The first session goes to the first edge.
                    let edge = targets.pick(attempt);
                    attempt += 1;
                    let Ok(mut session) = WsClient::try_connect(edge, &user, Some(&device)).await
                    else {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    };
                    if attempt > 1 {
                        resumes.fetch_add(1, Ordering::SeqCst);
                    }
                    let last_seq = view.lock().unwrap().last_seq;
                    let request = json!({"type": "SYNC_REQUEST", "lastSeq": last_seq});
                    if session.try_send(&request).await.is_err() {
                        continue;
                    }
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            frame = session.next_within(Duration::from_secs(3600)) => match frame {
                                Some(Ok(frame)) => view.lock().unwrap().apply(&frame),
                                _ => break,
                            },
                        }
                    }
                }
            })
        };
        Device {
            view,
            resumes,
            stop,
            task,
        }
    }

    pub fn state(&self) -> State {
        self.view.lock().unwrap().state()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("device task");
    }
}

/// Entries whose stored state differs from what the acknowledged writes left (missing,
/// extra, or different), as `(user, id, expected, stored)`.
pub type Mismatch = (String, String, Option<Option<Value>>, Option<Option<Value>>);

async fn mismatches(store: &impl legato_store::Store, expected: &Expected) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (user, want) in expected {
        let have = crate::view::stored_state(store, user).await;
        for id in want.keys().chain(have.keys()) {
            let (w, h) = (want.get(id), have.get(id));
            if w != h && !out.iter().any(|m: &Mismatch| m.0 == *user && m.1 == *id) {
                out.push((user.clone(), id.clone(), w.cloned(), h.cloned()));
            }
        }
    }
    out
}

/// Waits (at most 60 s) until the store holds exactly what the acknowledged writes left —
/// nothing lost, nothing extra, the right LWW state — and panics with the differences if it
/// does not. Returns the number of entries checked.
pub async fn assert_store_converges(
    store: &impl legato_store::Store,
    expected: &Expected,
) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let wrong = mismatches(store, expected).await;
        if wrong.is_empty() {
            return expected.values().map(BTreeMap::len).sum();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} entries differ from the acknowledged writes, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 30 s) until a device's view equals the store's state for `user`.
pub async fn assert_device_converges(
    store: &impl legato_store::Store,
    device: &Device,
    user: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let want = crate::view::stored_state(store, user).await;
    loop {
        let have = device.state();
        if have == want {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let differ: Vec<_> = want
                .keys()
                .chain(have.keys())
                .filter(|id| want.get(*id) != have.get(*id))
                .take(5)
                .collect();
            panic!(
                "{user}'s device did not reach the store's state: {} vs {} entries, differing {differ:?}",
                have.len(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One line per fault case with its figures (called once its checks passed), printed
/// (`--nocapture` shows it) and appended to `$LEGATO_FAULT_REPORT` when set.
pub fn report(case: &str, tally: &Tally, under_fault: u64, entries: usize) {
    let line = format!(
        "fault-case {case}: acked {} ({} http, {} ws), acked under fault {under_fault}, \
         entries checked {entries}, lost 0, non-2xx/failed attempts {} {:?}",
        tally.acked(),
        tally.acked_http.load(Ordering::SeqCst),
        tally.acked_ws.load(Ordering::SeqCst),
        tally.failures(),
        tally.outcomes.lock().unwrap()
    );
    record(&line);
}

/// Prints a report line and appends it to `$LEGATO_FAULT_REPORT` when set.
pub fn record(line: &str) {
    println!("{line}");
    if let Some(path) = std::env::var_os("LEGATO_FAULT_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}
