//! Attack suite, tenant isolation (issue #7, item 9): user ids built to break out of a NATS
//! subject token or a storage key — `.`, `*`, `>`, spaces, unicode (composed and decomposed),
//! the 128-byte maximum, and ids that equal another id's escaped form (`a.b`, `a_2Eb`,
//! `a_2eb`, `a_5F2Eb`…, see `schema::subject::user_token`) — each write and read through the
//! real processes. Every user writes the same entry ids over HTTP and over its WebSocket;
//! every user then finds exactly its own two entries, and nobody else's, in every read path:
//! snapshot and cursor pulls, status counts, a WebSocket catch-up, live frames on connected
//! sessions, and the store. The user's own other device receiving each write is what makes
//! the silence of everyone else's sessions meaningful.

use futures::future::join_all;
use legato_tests::cluster::{Cluster, ClusterOptions, Kind};
use legato_tests::view::stored_state;
use legato_tests::ws_client::{WsClient, refused_upgrade, urlencode};
use legato_tests::{Pipeline, wait_for};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The user ids under test: every pair must stay apart.
fn users() -> Vec<String> {
    let mut users: Vec<String> = [
        "a",
        "A",
        "a ",
        " ",
        "ab",
        "a.b",
        "a..b",
        "a_2Eb",
        "a_2eb",
        "a_5F2Eb",
        "a b",
        "a_20b",
        "*",
        "_2A",
        ">",
        "_3E",
        "a.>",
        "a.*",
        "a.b.>",
        "sync.in.>",
        "\u{e9}",
        "e\u{301}",
        "_C3_A9",
        "a\u{200b}b",
        "\u{7528}\u{6237} \u{1f3b5}",
    ]
    .map(String::from)
    .to_vec();
    // The longest ids accepted (128 bytes), one of them a prefix of another.
    users.push("x".repeat(127));
    users.push("x".repeat(128));
    users.push(".".repeat(128));
    users.push("\u{e9}".repeat(64));
    users
}

const CLOCK: i64 = 1_750_000_000_000;

/// What `user` writes: the same two entry ids for every user, told apart by `owner`.
fn http_entry(user: &str) -> Value {
    json!({
        "id": "shared-http", "owner": user, "duration": 10, "createdAt": CLOCK, "updatedAt": CLOCK,
    })
}

fn ws_entry(user: &str) -> Value {
    json!({
        "id": "shared-ws", "owner": user, "duration": 20, "createdAt": CLOCK, "updatedAt": CLOCK,
    })
}

fn expected(user: &str) -> BTreeMap<String, Value> {
    [http_entry(user), ws_entry(user)]
        .into_iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e))
        .collect()
}

/// A request as `user` to `path` on `edge` (a body makes it a POST); status and JSON body.
async fn request(
    cluster: &Cluster,
    edge: SocketAddr,
    user: &str,
    path: &str,
    body: Option<&Value>,
    device: Option<&str>,
) -> (u16, Value) {
    let url = format!("http://{edge}{path}");
    let mut request = match body {
        Some(body) => cluster.http.post(url).json(body),
        None => cluster.http.get(url),
    };
    request = request.bearer_auth(Pipeline::token(user));
    if let Some(device) = device {
        request = request.header("X-Device-ID", device);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The entries of a pull answer by id; panics if any other collection is not empty.
fn pulled_entries(user: &str, page: &Value) -> BTreeMap<String, Value> {
    for key in [
        "goals",
        "practicePlans",
        "planOccurrences",
        "planTemplates",
        "repertoire",
        "preferences",
    ] {
        assert_eq!(page[key], json!([]), "{user:?}: {key} in {page}");
    }
    page["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{user:?}: no entries in {page}"))
        .iter()
        .map(|e| (e["id"].as_str().expect("id").to_owned(), e.clone()))
        .collect()
}

/// The entry a live frame carries, which must be one of `user`'s own.
fn own_entry(user: &str, session: &str, frame: &Value) -> String {
    assert_eq!(
        frame["type"], "ENTRY_CREATED",
        "{user:?} {session}: unexpected frame {frame}"
    );
    let entry = &frame["entry"];
    assert_eq!(
        entry["owner"], user,
        "{user:?} {session}: received another user's entry {frame}"
    );
    let id = entry["id"].as_str().expect("id").to_owned();
    assert_eq!(Some(entry), expected(user).get(&id), "{user:?} {session}");
    id
}

/// Sends PING and asserts the PONG is the very next frame: nothing was queued for the session.
async fn assert_silent(user: &str, session_name: &str, session: &mut WsClient) {
    session.send(&json!({"type": "PING"})).await;
    let (_, before) = session.until(|f| f["type"] == "PONG").await;
    assert!(
        before.is_empty(),
        "{user:?} {session_name}: frames nobody sent it: {before:?}"
    );
}

/// One user's sessions: a watcher device on edge 0 and a writer device on edge 1.
struct Sessions {
    user: String,
    watcher: WsClient,
    writer: WsClient,
    /// Entry ids each session has received live.
    watcher_seen: Vec<String>,
    writer_seen: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_reads_exactly_its_own_writes_whatever_its_id() {
    let mut options = ClusterOptions::new(2, 1, 1);
    // deviceCount collects presence answers from both edges for this long.
    options.edge_env = vec![("LEGATO_WS__PRESENCE_WAIT_MS".into(), "300".into())];
    let cluster = Cluster::start(options).await;
    let (edge0, edge1) = (cluster.edges[0].http(), cluster.edges[1].http());
    let users = users();

    // A cursor for each user from before any write, and its sessions.
    let cursors: Vec<String> = join_all(users.iter().map(|u| {
        let cluster = &cluster;
        async move {
            let (status, page) =
                request(cluster, edge0, u, "/api/sync/pull", Some(&json!({})), None).await;
            assert_eq!(status, 200, "{u:?}: {page}");
            assert!(pulled_entries(u, &page).is_empty(), "{u:?}: {page}");
            page["syncToken"].as_str().expect("syncToken").to_owned()
        }
    }))
    .await;
    let mut sessions: Vec<Sessions> = join_all(users.iter().map(|u| async move {
        Sessions {
            user: u.clone(),
            watcher: WsClient::connect(edge0, u, Some("watcher")).await,
            writer: WsClient::connect(edge1, u, Some("writer")).await,
            watcher_seen: Vec::new(),
            writer_seen: Vec::new(),
        }
    }))
    .await;

    // Every user writes at once: `shared-http` over HTTP (device `http`), then `shared-ws`
    // over its writer session. The writer session receives the HTTP write live.
    join_all(sessions.iter_mut().map(|s| {
        let cluster = &cluster;
        async move {
            let user = s.user.clone();
            let body = json!({"changes": {"entries": [http_entry(&user)]}});
            let (status, answer) = request(
                cluster,
                edge1,
                &user,
                "/api/sync/push",
                Some(&body),
                Some("http"),
            )
            .await;
            assert_eq!(status, 200, "{user:?}: {answer}");
            assert_eq!(
                (
                    &answer["conflicts"],
                    &answer["stats"]["entriesProcessed"],
                    &answer["stats"]["duplicatesPrevented"]
                ),
                (&json!([]), &json!(1), &json!(0)),
                "{user:?}: another user's entry was in the way: {answer}"
            );
            s.writer
                .send(&json!({"type": "ENTRY_CREATED", "entry": ws_entry(&user)}))
                .await;
            let (ack, before) = s
                .writer
                .until(|f| f["type"] == "SYNC_RESPONSE" || f["type"] == "ERROR")
                .await;
            assert_eq!(ack["message"], "Mutation applied", "{user:?}: {ack}");
            for frame in &before {
                s.writer_seen.push(own_entry(&user, "writer", frame));
            }
        }
    }))
    .await;

    // Each user's own devices receive its writes (the watcher both, the writer the HTTP one,
    // never its own echo), and nothing of anybody else's along the way.
    join_all(sessions.iter_mut().map(|s| async move {
        let user = s.user.clone();
        while s.watcher_seen.len() < 2 {
            let frame = s.watcher.next().await.expect("open session");
            s.watcher_seen.push(own_entry(&user, "watcher", &frame));
        }
        while s.writer_seen.is_empty() {
            let frame = s.writer.next().await.expect("open session");
            s.writer_seen.push(own_entry(&user, "writer", &frame));
        }
        s.watcher_seen.sort();
        assert_eq!(s.watcher_seen, ["shared-http", "shared-ws"], "{user:?}");
        assert_eq!(s.writer_seen, ["shared-http"], "{user:?}");
    }))
    .await;
    // Every write has now been delivered to its own user; sessions see frames in order, so a
    // frame meant for another user would be ahead of the answer to a PING now.
    join_all(sessions.iter_mut().map(|s| async move {
        assert_silent(&s.user, "watcher", &mut s.watcher).await;
        assert_silent(&s.user, "writer", &mut s.writer).await;
    }))
    .await;

    // Every read path shows each user exactly its own two entries.
    let store = cluster.open_store();
    let store = &store;
    join_all(users.iter().zip(&cursors).map(|(u, cursor)| {
        let cluster = &cluster;
        async move {
            let want = expected(u);
            let (status, snapshot) =
                request(cluster, edge0, u, "/api/sync/pull", Some(&json!({})), None).await;
            assert_eq!(status, 200, "{u:?}: {snapshot}");
            assert_eq!(pulled_entries(u, &snapshot), want, "{u:?}: snapshot pull");
            let since = json!({"since": cursor});
            let (status, page) =
                request(cluster, edge1, u, "/api/sync/pull", Some(&since), None).await;
            assert_eq!(status, 200, "{u:?}: {page}");
            assert_eq!(pulled_entries(u, &page), want, "{u:?}: cursor pull");
            assert_eq!(page["deleted"], json!([]), "{u:?}: cursor pull");

            // A new device catching up from the start.
            let mut late = WsClient::connect(edge1, u, Some("late")).await;
            late.send(&json!({"type": "SYNC_REQUEST", "lastSeq": 0}))
                .await;
            let (done, frames) = late.until(|f| f["type"] == "SYNC_RESPONSE").await;
            assert_eq!(done["message"], "Sync complete", "{u:?}: {done}");
            let mut caught_up = BTreeMap::new();
            for frame in &frames {
                assert_eq!(frame["type"], "BULK_SYNC", "{u:?}: catch-up frame {frame}");
                for entry in frame["entries"].as_array().expect("entries") {
                    caught_up.insert(entry["id"].as_str().expect("id").to_owned(), entry.clone());
                }
            }
            assert_eq!(caught_up, want, "{u:?}: WebSocket catch-up");

            // Three sessions of this user are open (watcher, writer, late), on both edges.
            let (status, answer) = request(cluster, edge0, u, "/api/sync/status", None, None).await;
            assert_eq!(status, 200, "{u:?}: {answer}");
            assert_eq!(
                (
                    &answer["entityCount"],
                    &answer["pendingChanges"],
                    &answer["deviceCount"]
                ),
                (&json!(2), &json!(0), &json!(3)),
                "{u:?}: status {answer}"
            );
            assert_silent(u, "late", &mut late).await;

            let stored: BTreeMap<String, Value> = stored_state(store, u)
                .await
                .into_iter()
                .map(|(id, payload)| (id, payload.expect("live entry")))
                .collect();
            assert_eq!(stored, want, "{u:?}: the store");
        }
    }))
    .await;
    println!(
        "attack-isolation: {} users, each read through 7 paths against {} other users' writes",
        users.len(),
        users.len() - 1
    );
}

async fn status_of(cluster: &Cluster, user: &str) -> Value {
    let edge = cluster.edges[0].http();
    let (status, answer) = request(cluster, edge, user, "/api/sync/status", None, None).await;
    assert_eq!(status, 200, "{user:?}: {answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_changes_count_only_the_users_own_requests() {
    let mut options = ClusterOptions::new(1, 1, 1);
    // Pushes answer 202 soon while no ingest worker runs.
    options.edge_env = vec![("LEGATO_SYNC__COMMIT_WAIT_MS".into(), "300".into())];
    // Should the killed worker's last pull request still take the writes, they come back soon.
    options.ingest_env = vec![
        ("LEGATO_CONSUMER__ACK_WAIT_SECS".into(), "2".into()),
        ("LEGATO_BATCH__FETCH_EXPIRES_MS".into(), "200".into()),
    ];
    let mut cluster = Cluster::start(options).await;
    let edge = cluster.edges[0].http();
    let users = users();
    // With no worker, every user's write waits in SYNC_IN under the user's subject: a
    // subject filter that reached past the user's own token would count others' too.
    cluster.ingest[0].kill();
    join_all(users.iter().map(|u| {
        let cluster = &cluster;
        async move {
            let body = json!({"changes": {"entries": [http_entry(u)]}});
            let (status, answer) =
                request(cluster, edge, u, "/api/sync/push", Some(&body), None).await;
            assert_eq!(
                (status, &answer["pending"]),
                (202, &json!(true)),
                "{u:?}: {answer}"
            );
        }
    }))
    .await;
    join_all(users.iter().map(|u| {
        let cluster = &cluster;
        async move {
            let answer = status_of(cluster, u).await;
            assert_eq!(
                (&answer["pendingChanges"], &answer["entityCount"]),
                (&json!(1), &json!(0)),
                "{u:?}: status {answer}"
            );
        }
    }))
    .await;

    cluster.spawn(Kind::Ingest).await;
    cluster.wait_ready().await;
    let store = cluster.open_store();
    let store = &store;
    join_all(users.iter().map(|u| {
        let cluster = &cluster;
        async move {
            wait_for(
                &format!("{u:?}'s write committed"),
                Duration::from_secs(20),
                || async {
                    let answer = status_of(cluster, u).await;
                    (answer["pendingChanges"] == 0).then_some(answer)
                },
            )
            .await;
            let answer = status_of(cluster, u).await;
            assert_eq!(answer["entityCount"], 1, "{u:?}: {answer}");
            let stored = stored_state(store, u).await;
            assert_eq!(
                stored.into_iter().collect::<Vec<_>>(),
                [("shared-http".to_owned(), Some(http_entry(u)))],
                "{u:?}: the store"
            );
        }
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_and_control_character_user_ids_are_refused_as_invalid_tokens() {
    let cluster = Cluster::start(ClusterOptions::new(1, 1, 1)).await;
    let edge = cluster.edges[0].http();
    let refused_ids = [
        "x".repeat(129),
        ".".repeat(129),
        "\u{e9}".repeat(65),
        format!("{}x", "\u{e9}".repeat(64)),
        "a\nb".to_owned(),
        "a\u{0}b".to_owned(),
        "a\u{7f}b".to_owned(),
        "a\u{85}b".to_owned(),
        String::new(),
    ];
    let unauthorized = json!({"success": false, "error": "Unauthorized", "code": 401});
    let body = |u: &str| json!({"changes": {"entries": [http_entry(u)]}});
    for user in &refused_ids {
        for (path, body) in [
            ("/api/sync/push", Some(body(user))),
            ("/api/sync/pull", Some(json!({}))),
            ("/api/sync/status", None),
        ] {
            let answer = request(&cluster, edge, user, path, body.as_ref(), None).await;
            assert_eq!(answer, (401, unauthorized.clone()), "{user:?} {path}");
        }
        let query = format!("userId={}&token={}", urlencode(user), Pipeline::token(user));
        let expected = if user.is_empty() {
            (400, json!({"error": "Missing userId or token"}))
        } else {
            (401, json!({"error": "Invalid or expired token"}))
        };
        assert_eq!(refused_upgrade(edge, &query).await, expected, "{user:?}");
    }
    // The limit itself is accepted, and its write lands under exactly that id.
    let longest = "\u{e9}".repeat(64);
    let (status, answer) = request(
        &cluster,
        edge,
        &longest,
        "/api/sync/push",
        Some(&body(&longest)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let store = cluster.open_store();
    assert_eq!(stored_state(&store, &longest).await.len(), 1);
    let shorter = "\u{e9}".repeat(63);
    assert!(stored_state(&store, &shorter).await.is_empty());
}
