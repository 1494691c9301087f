//! Attack suite, authentication (issue #7, item 8): a matrix of forged, expired, malformed
//! and misplaced JWTs against the real edge process, over HTTP (push, pull, batch, status; in
//! the bearer header, in the `auth-token` cookie, and a bad header beside a good cookie) and
//! on the WebSocket upgrade. Every one is refused with the answer CONTRACT.md §1, §2 and §5
//! document, and a refused request leaves no trace: nothing is published to `SYNC_IN`,
//! nothing is stored, no session is opened.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use legato_tests::cluster::{Cluster, ClusterOptions};
use legato_tests::view::stored_state;
use legato_tests::ws_client::{WsClient, refused_upgrade, urlencode};
use legato_tests::{Pipeline, SECRET};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The user every forged token claims to be.
const VICTIM: &str = "user_victim";
/// A real user whose own token is the raw material of some forgeries.
const ATTACKER: &str = "user_attacker";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signed by `jsonwebtoken` with `alg` and `key` over arbitrary claims.
fn sign(alg: Algorithm, key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key))
        .expect("encode a token")
}

/// A token with a hand-written header and claims text, signed with HMAC-SHA256 under `key`:
/// with the server's secret it isolates what the server checks besides the signature.
fn forge(header: &str, claims: &str, key: &[u8]) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(key),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{signature}")
}

/// An unsigned token (`alg: none` style): header and claims, empty signature.
fn unsigned(header: &str, claims: &str) -> String {
    format!("{}.{}.", b64(header.as_bytes()), b64(claims.as_bytes()))
}

/// A token correctly signed with the server's secret, over whatever claims.
fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, SECRET.as_bytes(), claims)
}

fn claims_of(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 3600})
}

/// Every token the edge must refuse, named. Each claims to be [`VICTIM`] unless the case is
/// about `sub` itself.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let secret = SECRET.as_bytes();
    let exp = now() + 3600;
    let victim = claims_of(VICTIM).to_string();
    let valid = Pipeline::token(VICTIM);
    let attackers = Pipeline::token(ATTACKER);
    let segments = |t: &str| -> Vec<String> { t.split('.').map(str::to_owned).collect() };
    let (v, a) = (segments(&valid), segments(&attackers));
    vec![
        (
            "alg none, no signature",
            unsigned(r#"{"alg":"none","typ":"JWT"}"#, &victim),
        ),
        (
            "alg None, no signature",
            unsigned(r#"{"alg":"None","typ":"JWT"}"#, &victim),
        ),
        (
            "alg none with an HS256 signature by the secret",
            forge(r#"{"alg":"none","typ":"JWT"}"#, &victim, secret),
        ),
        (
            "HS512 with the right secret",
            sign(Algorithm::HS512, secret, &claims_of(VICTIM)),
        ),
        (
            "HS384 with the right secret",
            sign(Algorithm::HS384, secret, &claims_of(VICTIM)),
        ),
        (
            "RS256 header over an HMAC by the secret",
            forge(r#"{"alg":"RS256","typ":"JWT"}"#, &victim, secret),
        ),
        (
            "HS256 with a wrong key",
            sign(Algorithm::HS256, b"not-the-secret", &claims_of(VICTIM)),
        ),
        (
            "HS256 with the secret plus one byte",
            sign(
                Algorithm::HS256,
                format!("{SECRET}x").as_bytes(),
                &claims_of(VICTIM),
            ),
        ),
        (
            "HS256 with an empty key",
            sign(Algorithm::HS256, b"", &claims_of(VICTIM)),
        ),
        (
            "HS256 by the attacker's key, named in an embedded jwk",
            forge(
                &json!({"alg":"HS256","typ":"JWT","jwk":{"kty":"oct","k":b64(b"attacker-key")}})
                    .to_string(),
                &victim,
                b"attacker-key",
            ),
        ),
        (
            "expired an hour ago",
            hs256(&json!({"sub": VICTIM, "exp": now() - 3600})),
        ),
        (
            "expired beyond the leeway",
            hs256(&json!({"sub": VICTIM, "exp": now() - 120})),
        ),
        ("no exp", hs256(&json!({"sub": VICTIM}))),
        (
            "exp a string",
            hs256(&json!({"sub": VICTIM, "exp": exp.to_string()})),
        ),
        ("exp null", hs256(&json!({"sub": VICTIM, "exp": null}))),
        ("no sub", hs256(&json!({"exp": exp}))),
        ("empty sub", hs256(&json!({"sub": "", "exp": exp}))),
        ("sub null", hs256(&json!({"sub": null, "exp": exp}))),
        ("sub a number", hs256(&json!({"sub": 42, "exp": exp}))),
        (
            "sub over 128 bytes",
            hs256(&json!({"sub": "v".repeat(129), "exp": exp})),
        ),
        (
            "sub with a control character",
            hs256(&json!({"sub": "user_\u{1}victim", "exp": exp})),
        ),
        (
            "sub given twice",
            forge(
                r#"{"alg":"HS256","typ":"JWT"}"#,
                &format!(r#"{{"sub":"{ATTACKER}","sub":"{VICTIM}","exp":{exp}}}"#),
                secret,
            ),
        ),
        (
            "victim's claims under the attacker's signature",
            format!("{}.{}.{}", v[0], v[1], a[2]),
        ),
        (
            "attacker's token with the victim's claims swapped in",
            format!("{}.{}.{}", a[0], b64(victim.as_bytes()), a[2]),
        ),
        ("signature stripped", format!("{}.{}.", v[0], v[1])),
        ("signature truncated", valid[..valid.len() - 2].to_owned()),
        ("header and claims only", format!("{}.{}", v[0], v[1])),
        ("four segments", format!("{valid}.{}", v[2])),
        (
            "claims not JSON",
            forge(r#"{"alg":"HS256","typ":"JWT"}"#, "not json", secret),
        ),
        (
            "header not JSON",
            format!("{}.{}.{}", b64(b"not json"), v[1], v[2]),
        ),
        ("garbage", "garbage".to_owned()),
        ("dots only", "..".to_owned()),
        ("three junk segments", "a.b.c".to_owned()),
        ("valid token followed by text", format!("{valid}x")),
    ]
}

fn unauthorized() -> Value {
    json!({"success": false, "error": "Unauthorized", "code": 401})
}

#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Push,
    Pull,
    Batch,
    Status,
}

const ENDPOINTS: [Endpoint; 4] = [
    Endpoint::Push,
    Endpoint::Pull,
    Endpoint::Batch,
    Endpoint::Status,
];

/// One request to `endpoint` with the given `Authorization` and `Cookie` headers; a write
/// carries an entry named `tag` so the store shows which request got through. Returns the
/// status and the parsed body.
async fn call(
    cluster: &Cluster,
    endpoint: Endpoint,
    authorization: Option<&str>,
    cookie: Option<&str>,
    tag: &str,
) -> (u16, Value) {
    let base = format!("http://{}", cluster.edges[0].http());
    let entry = json!({"id": tag, "duration": 1, "updatedAt": 1_750_000_000_000_i64});
    let request = match endpoint {
        Endpoint::Push => cluster
            .http
            .post(format!("{base}/api/sync/push"))
            .json(&json!({"changes": {"entries": [entry]}})),
        Endpoint::Pull => cluster
            .http
            .post(format!("{base}/api/sync/pull"))
            .json(&json!({})),
        Endpoint::Batch => cluster
            .http
            .post(format!("{base}/api/sync/batch"))
            .json(&json!({"entities": [{"id": tag, "type": "logbook_entry", "data": entry}]})),
        Endpoint::Status => cluster.http.get(format!("{base}/api/sync/status")),
    };
    let mut request = request;
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    if let Some(value) = cookie {
        request = request.header("Cookie", value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn edge_metric(cluster: &Cluster, series: &str) -> f64 {
    cluster.metric(cluster.edges[0].admin, series).await
}

fn entry_ids(pulled: &Value) -> BTreeSet<String> {
    pulled["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_malformed_tokens_are_refused_everywhere_and_leave_no_trace() {
    let cluster = Cluster::start(ClusterOptions::new(1, 1, 1)).await;
    let edge = cluster.edges[0].http();
    let cookie_of = |token: &str| format!("theme=dark; auth-token={token}");
    let good_cookie = cookie_of(&Pipeline::token(VICTIM));
    let published_before = cluster.sync_in_last_sequence().await;
    let refused_before =
        edge_metric(&cluster, r#"legato_edge_ws_refused_total{status="401"}"#).await;

    let tokens = bad_tokens();
    let mut tried = 0;
    for (n, (case, token)) in tokens.iter().enumerate() {
        let bearer = format!("Bearer {token}");
        let cookie = cookie_of(token);
        // In the header; in the cookie; and in the header beside the victim's good cookie,
        // which must not be fallen back to.
        let placements = [
            ("bearer", Some(bearer.as_str()), None),
            ("cookie", None, Some(cookie.as_str())),
            (
                "bearer + good cookie",
                Some(bearer.as_str()),
                Some(good_cookie.as_str()),
            ),
        ];
        for (placement, authorization, cookie) in placements {
            for endpoint in ENDPOINTS {
                let tag = format!("attack-{n}-{placement}-{endpoint:?}");
                let answer = call(&cluster, endpoint, authorization, cookie, &tag).await;
                assert_eq!(
                    answer,
                    (401, unauthorized()),
                    "{case} ({placement}, {endpoint:?}) was not refused as documented"
                );
                tried += 1;
            }
        }
        let query = format!("userId={VICTIM}&token={}", urlencode(token));
        assert_eq!(
            refused_upgrade(edge, &query).await,
            (401, json!({"error": "Invalid or expired token"})),
            "{case}: WebSocket upgrade"
        );
        tried += 1;
    }

    // No request reached the bus, and every upgrade was refused by the edge, none opened.
    assert_eq!(
        cluster.sync_in_last_sequence().await,
        published_before,
        "a refused request was published to SYNC_IN"
    );
    assert_eq!(
        edge_metric(&cluster, r#"legato_edge_ws_refused_total{status="401"}"#).await
            - refused_before,
        tokens.len() as f64
    );
    assert_eq!(
        edge_metric(&cluster, "legato_edge_ws_opened_total").await,
        0.0
    );

    // The control: the victim's own token works, and after its write is committed the store
    // holds that write only.
    let valid = format!("Bearer {}", Pipeline::token(VICTIM));
    for endpoint in [Endpoint::Push, Endpoint::Batch] {
        let (status, body) = call(
            &cluster,
            endpoint,
            Some(&valid),
            None,
            &format!("control-{endpoint:?}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(cluster.sync_in_last_sequence().await, published_before + 2);
    let store = cluster.open_store();
    let stored: BTreeSet<String> = stored_state(&store, VICTIM).await.into_keys().collect();
    assert_eq!(stored, ids(&["control-Push", "control-Batch"]));
    let (status, pulled) = call(&cluster, Endpoint::Pull, Some(&valid), None, "").await;
    assert_eq!(status, 200);
    assert_eq!(entry_ids(&pulled), stored);
    let (status, answer) = call(&cluster, Endpoint::Status, Some(&valid), None, "").await;
    assert_eq!(
        (status, &answer["entityCount"]),
        (200, &json!(2)),
        "{answer}"
    );
    assert_eq!(answer["deviceCount"], 0, "a refused upgrade left a session");
    println!("attack-auth: {tried} forged or malformed token requests refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_header_wins_over_the_cookie_and_other_schemes_are_not_tokens() {
    let cluster = Cluster::start(ClusterOptions::new(1, 1, 1)).await;
    let (a, b) = ("user_cookie_a", "user_header_b");
    let (token_a, token_b) = (Pipeline::token(a), Pipeline::token(b));
    let (bearer_a, bearer_b) = (format!("Bearer {token_a}"), format!("Bearer {token_b}"));
    let cookie_a = format!("theme=dark; auth-token={token_a}");
    // A has four entries, B one: every answer shows whose data it was.
    for tag in ["a1", "a2", "a3", "a4"] {
        assert_eq!(
            call(&cluster, Endpoint::Push, Some(&bearer_a), None, tag)
                .await
                .0,
            200
        );
    }
    assert_eq!(
        call(&cluster, Endpoint::Push, Some(&bearer_b), None, "b1")
            .await
            .0,
        200
    );

    // B's header with A's cookie: the request is B's, for writes and reads.
    let both = (Some(bearer_b.as_str()), Some(cookie_a.as_str()));
    let (status, pushed) = call(&cluster, Endpoint::Push, both.0, both.1, "b2").await;
    assert_eq!(status, 200, "{pushed}");
    let (status, pulled) = call(&cluster, Endpoint::Pull, both.0, both.1, "").await;
    assert_eq!((status, entry_ids(&pulled)), (200, ids(&["b1", "b2"])));
    let (status, answer) = call(&cluster, Endpoint::Status, both.0, both.1, "").await;
    assert_eq!(
        (status, &answer["entityCount"]),
        (200, &json!(2)),
        "{answer}"
    );
    let (status, batch) = call(&cluster, Endpoint::Batch, both.0, both.1, "b3").await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(
        (&batch["uploaded"], &batch["downloaded"]),
        (&json!(1), &json!(2)),
        "the batch counted B's other entities (b1, b2), not A's four: {batch}"
    );
    // A tab after the scheme is still B's bearer header.
    let tab = format!("Bearer\t{token_b}");
    let (status, answer) = call(&cluster, Endpoint::Status, Some(&tab), both.1, "").await;
    assert_eq!(
        (status, &answer["entityCount"]),
        (200, &json!(3)),
        "{answer}"
    );

    let published = cluster.sync_in_last_sequence().await;
    let mut tried = 0;
    // A header that is a bearer credential is the only one looked at, even empty or bad:
    // the cookie beside it is not fallen back to. Without the cookie the same is refused.
    for header in [
        "Bearer ".to_owned(),
        "Bearer".to_owned(),
        "Bearer     ".to_owned(),
        "Bearer null".to_owned(),
        format!("Bearer {token_b} {token_b}"),
        format!("Bearer {token_b},{token_b}"),
    ] {
        for cookie in [Some(cookie_a.as_str()), None] {
            for endpoint in ENDPOINTS {
                let answer = call(&cluster, endpoint, Some(&header), cookie, "refused").await;
                assert_eq!(
                    answer,
                    (401, unauthorized()),
                    "{header:?} with cookie {cookie:?} on {endpoint:?}"
                );
                tried += 1;
            }
        }
    }
    // Not a bearer header (the prefix is case-sensitive, CONTRACT.md §1): no token at all
    // without a cookie...
    let not_bearer = [
        String::new(),
        format!("Bearer{token_b}"),
        format!("bearer {token_b}"),
        format!("BEARER {token_b}"),
        format!("Basic {token_b}"),
        format!("Token {token_b}"),
        token_b.clone(),
    ];
    for header in &not_bearer {
        for endpoint in ENDPOINTS {
            let answer = call(&cluster, endpoint, Some(header), None, "refused").await;
            assert_eq!(answer, (401, unauthorized()), "{header:?} on {endpoint:?}");
            tried += 1;
        }
    }
    // ...and beside A's cookie, the cookie is the credential: the request is A's, never B's.
    for header in &not_bearer {
        let (status, answer) = call(
            &cluster,
            Endpoint::Status,
            Some(header),
            Some(&cookie_a),
            "",
        )
        .await;
        assert_eq!(
            (status, &answer["entityCount"]),
            (200, &json!(4)),
            "{header:?}: {answer}"
        );
        tried += 1;
    }
    // The cookie is found by its exact name only; the token is not read from the query.
    for cookie in [
        format!("xauth-token={token_a}"),
        format!("auth-token-x={token_a}"),
        format!("Auth-Token={token_a}"),
        format!("auth-token=\"{token_a}\""),
        "auth-token=".to_owned(),
        "auth-token".to_owned(),
        format!("theme=auth-token={token_a}"),
    ] {
        for endpoint in ENDPOINTS {
            let answer = call(&cluster, endpoint, None, Some(&cookie), "refused").await;
            assert_eq!(
                answer,
                (401, unauthorized()),
                "cookie {cookie:?} on {endpoint:?}"
            );
            tried += 1;
        }
    }
    let in_query = cluster
        .http
        .get(format!(
            "http://{}/api/sync/status?token={token_a}&auth-token={token_a}",
            cluster.edges[0].http()
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(in_query.status(), 401);
    tried += 1;

    assert_eq!(
        cluster.sync_in_last_sequence().await,
        published,
        "a refused request was published"
    );
    let store = cluster.open_store();
    let stored = |user: &'static str| {
        let store = &store;
        async move {
            stored_state(store, user)
                .await
                .into_keys()
                .collect::<BTreeSet<_>>()
        }
    };
    assert_eq!(stored(a).await, ids(&["a1", "a2", "a3", "a4"]));
    assert_eq!(stored(b).await, ids(&["b1", "b2", "b3"]));
    println!("attack-auth: {tried} header/cookie combinations checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_belongs_to_the_tokens_sub_and_nobody_else() {
    let cluster = Cluster::start(ClusterOptions::new(1, 1, 1)).await;
    let edge = cluster.edges[0].http();
    let (a, b) = ("user_ws_a", "user_ws_b");
    let token_a = Pipeline::token(a);
    let unicode = "user_\u{e9}"; // é, NFC
    let token_unicode = Pipeline::token(unicode);
    let mismatch = json!({"error": "User ID mismatch"});
    let missing = json!({"error": "Missing userId or token"});
    let mut tried = 0;
    let cases: Vec<(String, u16, &Value)> = vec![
        (format!("userId={b}&token={token_a}"), 403, &mismatch),
        (format!("userId=USER_WS_A&token={token_a}"), 403, &mismatch),
        (format!("userId={a}%20&token={token_a}"), 403, &mismatch),
        (format!("userId=%20{a}&token={token_a}"), 403, &mismatch),
        (format!("userId={a}%00&token={token_a}"), 403, &mismatch),
        (format!("userId=user_ws_&token={token_a}"), 403, &mismatch),
        (format!("userId={a}x&token={token_a}"), 403, &mismatch),
        // The same letter decomposed (e + combining acute) is another user id.
        (
            format!(
                "userId={}&token={token_unicode}",
                urlencode("user_e\u{301}")
            ),
            403,
            &mismatch,
        ),
        // A second userId after the first is the one compared, and refused.
        (
            format!("userId={a}&token={token_a}&userId={b}"),
            403,
            &mismatch,
        ),
        (format!("token={token_a}"), 400, &missing),
        (format!("userId={a}"), 400, &missing),
        (format!("userId=&token={token_a}"), 400, &missing),
        (format!("userId={a}&token="), 400, &missing),
        (format!("userid={a}&Token={token_a}"), 400, &missing),
    ];
    for (query, status, body) in &cases {
        assert_eq!(
            refused_upgrade(edge, query).await,
            (*status, (*body).clone()),
            "{query}"
        );
        tried += 1;
    }
    // The token is read from the query only: not from the header or the cookie.
    for (name, value) in [
        ("Authorization", format!("Bearer {token_a}")),
        ("Cookie", format!("auth-token={token_a}")),
    ] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{edge}/sync/ws?userId={a}")
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 400, "{name}");
                let body: Value =
                    serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body, missing, "{name}");
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
        tried += 1;
    }
    assert_eq!(
        edge_metric(&cluster, "legato_edge_ws_opened_total").await,
        0.0
    );
    let refused = edge_metric(&cluster, r#"legato_edge_ws_refused_total{status="403"}"#).await
        + edge_metric(&cluster, r#"legato_edge_ws_refused_total{status="400"}"#).await;
    assert_eq!(refused, tried as f64, "every upgrade refused by the edge");

    // Accepted: a query naming B first and A last with A's token is A's session, and what
    // it writes is A's.
    let url = format!("ws://{edge}/sync/ws?userId={b}&userId={a}&token={token_a}");
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let mut session = WsClient { ws };
    assert_eq!(session.next().await.expect("frame")["type"], "WELCOME");
    session
        .send(&json!({
            "type": "ENTRY_CREATED",
            "entry": {"id": "from-ws", "updatedAt": 1_750_000_000_000_i64},
        }))
        .await;
    let (ack, _) = session
        .until(|f| f["type"] == "SYNC_RESPONSE" || f["type"] == "ERROR")
        .await;
    assert_eq!(ack["message"], "Mutation applied", "{ack}");
    let store = cluster.open_store();
    assert_eq!(
        stored_state(&store, a)
            .await
            .into_keys()
            .collect::<BTreeSet<_>>(),
        ids(&["from-ws"])
    );
    assert!(stored_state(&store, b).await.is_empty(), "B got A's write");
    println!("attack-auth: {tried} WebSocket identity cases refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_or_doubled_authorization_header_is_refused_not_replaced_by_the_cookie() {
    let cluster = Cluster::start(ClusterOptions::new(1, 1, 1)).await;
    let (a, b) = ("user_cookie_c", "user_header_d");
    let (token_a, token_b) = (Pipeline::token(a), Pipeline::token(b));
    let cookie_a = format!("auth-token={token_a}");
    let url = format!("http://{}/api/sync/status", cluster.edges[0].http());
    // Bytes above 0x7f are allowed on the wire but are not text.
    let unreadable =
        reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("obs-text");
    let cases: Vec<(&str, Vec<reqwest::header::HeaderValue>)> = vec![
        ("not text", vec![unreadable]),
        (
            "two bearer headers",
            vec![
                format!("Bearer {token_b}").parse().unwrap(),
                "Bearer bad".parse().unwrap(),
            ],
        ),
        (
            "basic, then a bad bearer",
            vec!["Basic eDp5".parse().unwrap(), "Bearer bad".parse().unwrap()],
        ),
    ];
    for (case, values) in &cases {
        let mut request = cluster.http.get(&url).header("Cookie", &cookie_a);
        for value in values {
            // `header` appends: several values make several header lines.
            request = request.header("Authorization", value.clone());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!((status, body), (401, unauthorized()), "{case}");
    }
    // The cookie alone still works: the refusals came from the header.
    let response = cluster
        .http
        .get(&url)
        .header("Cookie", &cookie_a)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}
