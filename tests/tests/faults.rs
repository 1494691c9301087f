//! The fault suite: the real binaries as processes, under sustained load from concurrent HTTP
//! and WebSocket writers, while a process is killed with `SIGKILL` (or the store is locked,
//! or requests are replayed). Each case ends by asserting that every acknowledged write is in
//! the store with the right LWW state and that a reader following `syncToken`s the whole
//! time ends with exactly the store's state (see `legato_tests::workload`).
//!
//! Figures: each case prints a `fault-case` line (`cargo test --test faults -- --nocapture`,
//! or set `LEGATO_FAULT_REPORT=<file>` to collect them). `LEGATO_SOAK=1` makes every case
//! run longer and with more writers.

use legato_tests::cluster::{Cluster, ClusterOptions, Kind, env};
use legato_tests::soak;
use legato_tests::workload::{self, CursorReader, Device, Load, LoadOptions, Tally, Targets};
use std::time::Duration;

/// Acknowledged writes to wait for in each phase of a case.
fn phase() -> u64 {
    if soak() { 3_000 } else { 150 }
}

fn load_options() -> LoadOptions {
    let mut options = LoadOptions::default();
    if soak() {
        options.http_writers = 6;
        options.ws_writers = 3;
    }
    options
}

/// Short timeouts so a dead worker's messages move on quickly and pushes waiting on a
/// stalled pipeline answer 202 soon.
fn fast_options(edges: usize, ingest: usize, fanout: usize) -> ClusterOptions {
    let mut options = ClusterOptions::new(edges, ingest, fanout);
    options.edge_env = env(&[
        ("LEGATO_SYNC__COMMIT_WAIT_MS", "1000"),
        // The WebSocket writers send as fast as they are answered.
        ("LEGATO_WS__RATE_PER_SEC", "1000"),
        ("LEGATO_WS__RATE_BURST", "1000"),
    ]);
    options.ingest_env = env(&[
        ("LEGATO_CONSUMER__ACK_WAIT_SECS", "2"),
        ("LEGATO_BATCH__FETCH_EXPIRES_MS", "200"),
    ]);
    options.fanout_env = env(&[
        ("LEGATO_CONSUMER__ACK_WAIT_SECS", "2"),
        ("LEGATO_FETCH_EXPIRES_MS", "200"),
    ]);
    options
}

/// Load, readers and devices on a running cluster.
struct Run {
    targets: Targets,
    load: Load,
    readers: Vec<(String, CursorReader)>,
    devices: Vec<(String, Device)>,
}

impl Run {
    async fn start(cluster: &mut Cluster, devices: bool) -> Run {
        let targets = Targets::new(cluster.live_edges());
        let options = load_options();
        let readers = options
            .users
            .iter()
            .map(|u| (u.clone(), CursorReader::start(&cluster.http, &targets, u)))
            .collect();
        let devices = if devices {
            options
                .users
                .iter()
                .map(|u| (u.clone(), Device::start(&targets, u, "watcher")))
                .collect()
        } else {
            Vec::new()
        };
        let load = Load::start(&cluster.http, &targets, &options);
        Run {
            targets,
            load,
            readers,
            devices,
        }
    }

    /// Sessions the devices opened after their first, together.
    fn resumes(&self) -> u64 {
        self.devices
            .iter()
            .map(|(_, d)| d.resumes.load(std::sync::atomic::Ordering::SeqCst))
            .sum()
    }

    /// Stops the writers and checks the store, the cursor readers and the devices; returns
    /// the tally and the number of entries checked.
    async fn finish(self, cluster: &Cluster) -> (std::sync::Arc<Tally>, usize) {
        let (expected, tally) = self.load.stop().await;
        let store = cluster.open_store();
        let entries = workload::assert_store_converges(&store, &expected).await;
        for (user, reader) in self.readers {
            let view = reader.finish().await;
            assert_eq!(
                view,
                legato_tests::view::stored_state(&store, &user).await,
                "{user}: the cursor reader's final view is not the store's state"
            );
        }
        for (user, device) in self.devices {
            workload::assert_device_converges(&store, &device, &user).await;
            device.stop().await;
        }
        (tally, entries)
    }
}

/// Ingest workers that dawdle up to 100 ms before each apply (the `apply_jitter_ms` chaos
/// knob), so a kill lands while a worker holds fetched, unacked messages.
fn dawdling_ingest(edges: usize, ingest: usize, fanout: usize) -> ClusterOptions {
    let mut options = fast_options(edges, ingest, fanout);
    options
        .ingest_env
        .extend(env(&[("LEGATO_BATCH__APPLY_JITTER_MS", "100")]));
    options
}

/// SYNC_IN messages delivered to a worker and not acked yet.
async fn ingest_ack_pending(cluster: &Cluster) -> u64 {
    ingest_consumer(cluster).await.num_ack_pending as u64
}

/// The `ingest` consumer's state, from the broker.
async fn ingest_consumer(cluster: &Cluster) -> async_nats::jetstream::consumer::Info {
    let stream = cluster
        .jetstream()
        .await
        .get_stream(legato_schema::subject::SYNC_IN_STREAM)
        .await
        .expect("SYNC_IN");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(legato_schema::subject::INGEST_CONSUMER)
        .await
        .expect("ingest consumer");
    consumer.info().await.expect("consumer info").clone()
}

/// Waits until a worker holds a fetched batch, so a kill lands mid-batch.
async fn wait_mid_batch(cluster: &Cluster) -> u64 {
    legato_tests::wait_for("a batch in flight", Duration::from_secs(30), || async {
        let held = ingest_ack_pending(cluster).await;
        (held > 0).then_some(held)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ingest_worker_killed_mid_batch_and_restarted_loses_nothing() {
    let mut cluster = Cluster::start(dawdling_ingest(1, 1, 1)).await;
    let run = Run::start(&mut cluster, false).await;
    run.load.wait_more_acked(phase()).await;
    let held = wait_mid_batch(&cluster).await;
    cluster.ingest[0].kill();
    println!("killed holding {held} unacked messages");
    let before = run.load.tally.acked();
    // Pushes keep being accepted (202) while no worker runs.
    run.load.wait_more_acked(phase() / 3).await;
    cluster.spawn(Kind::Ingest).await;
    run.load.wait_more_acked(phase()).await;
    let under_fault = run.load.tally.acked() - before;
    let (tally, entries) = run.finish(&cluster).await;
    workload::report("ingest-kill-restart", &tally, under_fault, entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_ingest_workers_killed_for_good_loses_nothing() {
    let mut cluster = Cluster::start(dawdling_ingest(1, 2, 1)).await;
    let run = Run::start(&mut cluster, false).await;
    run.load.wait_more_acked(phase()).await;
    wait_mid_batch(&cluster).await;
    cluster.ingest[0].kill();
    let before = run.load.tally.acked();
    // Its unacked messages go to the survivor after the ack wait.
    run.load.wait_more_acked(phase()).await;
    let under_fault = run.load.tally.acked() - before;
    let (tally, entries) = run.finish(&cluster).await;
    workload::report("ingest-kill-one-of-two", &tally, under_fault, entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fanout_worker_killed_leaves_connected_devices_complete() {
    let mut cluster = Cluster::start(fast_options(1, 1, 2)).await;
    let run = Run::start(&mut cluster, true).await;
    run.load.wait_more_acked(phase()).await;
    cluster.fanout[0].kill();
    let before = run.load.tally.acked();
    run.load.wait_more_acked(phase()).await;
    // And a replacement joins.
    cluster.spawn(Kind::Fanout).await;
    run.load.wait_more_acked(phase() / 2).await;
    let under_fault = run.load.tally.acked() - before;
    // The devices never reconnect: everything reaches them over the session they hold.
    let resumes = run.resumes();
    assert_eq!(resumes, 0, "the edge stayed up: no device had to reconnect");
    let (tally, entries) = run.finish(&cluster).await;
    workload::report("fanout-kill", &tally, under_fault, entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_killed_with_sessions_is_survived_by_resuming_on_the_other() {
    let mut cluster = Cluster::start(fast_options(2, 1, 1)).await;
    let run = Run::start(&mut cluster, true).await;
    run.load.wait_more_acked(phase()).await;
    cluster.edges[0].kill();
    let before = run.load.tally.acked();
    run.targets.set(cluster.live_edges());
    run.load.wait_more_acked(phase()).await;
    // A new edge joins the survivors.
    cluster.spawn(Kind::Edge).await;
    cluster.wait_ready().await;
    run.targets.set(cluster.live_edges());
    run.load.wait_more_acked(phase() / 2).await;
    let under_fault = run.load.tally.acked() - before;
    let resumes = run.resumes();
    assert!(
        resumes >= run.devices.len() as u64,
        "every device held its session on the killed edge and resumed, {resumes} resumes"
    );
    let (tally, entries) = run.finish(&cluster).await;
    println!("devices resumed {resumes} times");
    workload::report("edge-kill", &tally, under_fault, entries);
}

/// One push of a fresh write as `user` to `edge`: its status (0 when no answer).
async fn probe_push(http: &reqwest::Client, edge: std::net::SocketAddr, user: &str, n: u64) -> u16 {
    let body = serde_json::json!({"changes": {"entries": [
        {"id": format!("probe-{n}"), "updatedAt": 1_750_000_000_000i64 + n as i64}
    ]}});
    http.post(format!("http://{edge}/api/sync/push"))
        .bearer_auth(legato_tests::Pipeline::token(user))
        .json(&body)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_killed_and_restarted_on_its_store_is_survived_without_restarting_anyone() {
    let mut cluster = Cluster::start(fast_options(1, 1, 1)).await;
    let edge = cluster.edges[0].http();
    let run = Run::start(&mut cluster, true).await;
    run.load.wait_more_acked(phase()).await;
    cluster.nats.kill();
    // While the broker is down, a write is never acknowledged.
    let mut refused = 0;
    for n in 0..5 {
        let status = probe_push(&cluster.http, edge, "fault_probe", n).await;
        assert_eq!(status, 503, "a push while NATS is down");
        refused += 1;
    }
    cluster.wait_readyz(cluster.edges[0].admin, 503).await;
    let before = run.load.tally.acked();
    cluster.nats.restart();
    // Nobody is restarted: the processes reconnect by themselves.
    run.load.wait_more_acked(phase()).await;
    cluster.wait_ready().await;
    // Commit replies reach the edge again: its shared reply subscription came back with the
    // connection (a push answered 202 for ever would mean the replies go nowhere).
    let mut n = 100;
    legato_tests::wait_for(
        "a push committed after the restart",
        Duration::from_secs(20),
        || {
            n += 1;
            let probe = probe_push(&cluster.http, edge, "fault_probe", n);
            async move { (probe.await == 200).then_some(()) }
        },
    )
    .await;
    let under_fault = run.load.tally.acked() - before;
    let (tally, entries) = run.finish(&cluster).await;
    // A 503 is "not acknowledged", not "not applied": a push published just before the edge
    // saw the broker go may still be stored from the broker's file store once it is back
    // (at least once; the client's retry of the same write is then a duplicate). Whatever
    // arrived is exactly what was sent.
    let ghosts = legato_tests::view::stored_state(&cluster.open_store(), "fault_probe").await;
    for (id, state) in &ghosts {
        let n: i64 = id.trim_start_matches("probe-").parse().expect("a probe id");
        assert_eq!(
            state,
            &Some(serde_json::json!({"id": id, "updatedAt": 1_750_000_000_000i64 + n})),
            "a refused probe was stored altered"
        );
    }
    workload::record(&format!(
        "nats down: {refused} fresh pushes refused with 503, {} of them applied after the broker returned",
        ghosts.len()
    ));
    workload::report("nats-kill-restart", &tally, under_fault, entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_store_stalls_ingest_without_acks_and_recovers() {
    let mut cluster = Cluster::start(fast_options(1, 1, 1)).await;
    let ingest_admin = cluster.ingest[0].admin;
    let run = Run::start(&mut cluster, false).await;
    run.load.wait_more_acked(phase()).await;
    // Another process takes SQLite's write lock and keeps it.
    let lock = lock_store(&cluster);
    cluster.wait_readyz(ingest_admin, 503).await;
    cluster
        .wait_metric(ingest_admin, "legato_ingest_store_errors_total", 2.0)
        .await;
    // Read only now: a batch committed just before the lock was taken is counted after its
    // commit returns; once an apply has failed on the lock, every earlier one is counted.
    // Then one more apply must be refused before the counter is compared.
    let committed = cluster
        .metric(ingest_admin, "legato_ingest_batches_total")
        .await;
    cluster
        .wait_metric(ingest_admin, "legato_ingest_store_errors_total", 3.0)
        .await;
    // Nothing is committed or acked while the store refuses writes: messages wait in the
    // consumer.
    assert_eq!(
        cluster
            .metric(ingest_admin, "legato_ingest_batches_total")
            .await,
        committed,
        "no batch commits while the store is locked"
    );
    let pending =
        legato_tests::wait_for("messages held unacked", Duration::from_secs(30), || async {
            let held = cluster
                .metric(ingest_admin, "legato_ingest_consumer_ack_pending_messages")
                .await
                + cluster
                    .metric(ingest_admin, "legato_ingest_consumer_pending_messages")
                    .await;
            (held > 0.0).then_some(held)
        })
        .await;
    let before = run.load.tally.acked();
    lock.execute_batch("COMMIT").expect("release the lock");
    drop(lock);
    cluster.wait_readyz(ingest_admin, 200).await;
    run.load.wait_more_acked(phase()).await;
    let under_fault = run.load.tally.acked() - before;
    let (tally, entries) = run.finish(&cluster).await;
    println!("messages held while locked: {pending}");
    workload::report("store-locked", &tally, under_fault, entries);
}

/// Another connection holding SQLite's write lock (`BEGIN EXCLUSIVE`) until it commits.
fn lock_store(cluster: &Cluster) -> rusqlite::Connection {
    let lock = rusqlite::Connection::open(cluster.db_path()).expect("open the store file");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    lock
}

/// `count` probe pushes of `user` to the first edge, running on; returns once all of them are
/// in `SYNC_IN`. The task gives their statuses.
async fn push_probes(
    cluster: &Cluster,
    user: &'static str,
    count: u64,
) -> tokio::task::JoinHandle<Vec<u16>> {
    let edge = cluster.edges[0].http();
    let first = cluster.sync_in_last_sequence().await;
    let pushes = {
        let http = cluster.http.clone();
        tokio::spawn(async move {
            let pushes = (0..count).map(|n| probe_push(&http, edge, user, n));
            futures::future::join_all(pushes).await
        })
    };
    legato_tests::wait_for("the writes in SYNC_IN", Duration::from_secs(10), || async {
        (cluster.sync_in_last_sequence().await == first + count).then_some(())
    })
    .await;
    pushes
}

/// One ingest worker that takes one message a batch and prefetches beside every apply, and
/// whose store attempts wait `busy_timeout_ms` for SQLite's lock. Three writes of `user` wait
/// in `SYNC_IN` while the worker is stopped; the store is locked; then the worker goes on: its
/// first batch's apply waits on the lock, and the prefetch beside it takes the second message.
/// Returns the cluster, the lock (a `BEGIN EXCLUSIVE` of another connection) and the pushes
/// (each answered 202 after the 1 s commit wait).
async fn prefetch_against_a_locked_store(
    user: &'static str,
    busy_timeout_ms: &str,
) -> (
    Cluster,
    rusqlite::Connection,
    tokio::task::JoinHandle<Vec<u16>>,
) {
    let mut options = fast_options(1, 1, 1);
    options.ingest_env.extend(env(&[
        ("LEGATO_BATCH__MAX_MESSAGES", "1"),
        ("LEGATO_BATCH__PREFETCH_MIN_ITEMS", "1"),
        ("LEGATO_STORE__SQLITE__BUSY_TIMEOUT_MS", busy_timeout_ms),
        // Retries come within the 2 s ack wait.
        ("LEGATO_BATCH__MAX_RETRY_BACKOFF_MS", "400"),
    ]));
    let cluster = Cluster::start(options).await;
    cluster.ingest[0].signal("STOP");
    let pushes = push_probes(&cluster, user, 3).await;
    let lock = lock_store(&cluster);
    cluster.ingest[0].signal("CONT");
    let admin = cluster.ingest[0].admin;
    cluster
        .wait_metric(admin, "legato_ingest_prefetched_messages_total", 1.0)
        .await;
    (cluster, lock, pushes)
}

/// Waits until `count` entities of `user` are stored.
async fn wait_stored(cluster: &Cluster, user: &str, count: usize) {
    legato_tests::wait_for("the writes committed", Duration::from_secs(30), || async {
        let stored = legato_tests::view::stored_state(&cluster.open_store(), user).await;
        (stored.len() == count).then_some(())
    })
    .await;
}

/// The ingest prefetch through a store outage: what it fetched stays with the worker, kept by
/// in-progress acks like the batch's own, instead of coming back after the ack wait (a
/// redelivery, counted toward `max_deliveries` each time, so a long outage would dead-letter
/// it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_fetched_ahead_stay_with_the_worker_through_a_store_outage() {
    let user = "prefetch_outage";
    // Attempts fail fast (100 ms), so the first one ends before the prefetch would be handed
    // back as stalled.
    let (cluster, lock, pushes) = prefetch_against_a_locked_store(user, "100").await;
    let admin = cluster.ingest[0].admin;
    assert_eq!(
        cluster
            .metric(admin, "legato_ingest_prefetched_messages_total")
            .await,
        1.0
    );
    // Retries go on for longer than twice the ack wait (back-off 50, 100, 200, 400, 400 ...
    // ms, each attempt 100 ms).
    cluster
        .wait_metric(admin, "legato_ingest_store_errors_total", 12.0)
        .await;
    lock.execute_batch("COMMIT").expect("release the lock");
    drop(lock);
    assert_eq!(pushes.await.expect("pushes"), [202, 202, 202]);
    wait_stored(&cluster, user, 3).await;
    assert_eq!(
        cluster
            .metric(admin, "legato_ingest_redeliveries_total")
            .await,
        0.0,
        "a message came back during the outage"
    );
}

/// An apply that stalls (here on SQLite's lock, for the 5 s busy timeout) hands the messages
/// prefetched beside it back after a second, so another worker can take them instead of their
/// waiting for the stalled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_apply_hands_its_prefetched_messages_back() {
    let user = "prefetch_stall";
    let (cluster, lock, pushes) = prefetch_against_a_locked_store(user, "5000").await;
    let admin = cluster.ingest[0].admin;
    // Handed back within the first attempt, which fails only after 5 s.
    cluster
        .wait_metric(admin, "legato_ingest_prefetch_handed_back_total", 1.0)
        .await;
    assert_eq!(
        cluster
            .metric(admin, "legato_ingest_store_errors_total")
            .await,
        0.0,
        "handed back only after the attempt failed"
    );
    lock.execute_batch("COMMIT").expect("release the lock");
    drop(lock);
    wait_stored(&cluster, user, 3).await;
    assert_eq!(pushes.await.expect("pushes"), [202, 202, 202]);
    // It came back to the consumer: fetched again, as a redelivery.
    assert_eq!(
        cluster
            .metric(admin, "legato_ingest_redeliveries_total")
            .await,
        1.0
    );
}

/// A store call that hangs rather than fails (here on SQLite's lock, for a 5 s busy timeout,
/// longer than the 2 s ack wait) keeps its batch with in-progress acks: the other worker,
/// pulling all along, never gets it, and no delivery is counted against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_apply_keeps_its_batch_from_the_other_worker() {
    let mut options = fast_options(1, 2, 1);
    options.ingest_env.extend(env(&[
        ("LEGATO_BATCH__PREFETCH_MIN_ITEMS", "0"),
        ("LEGATO_STORE__SQLITE__BUSY_TIMEOUT_MS", "5000"),
    ]));
    let cluster = Cluster::start(options).await;
    let edge = cluster.edges[0].http();
    let admins: Vec<_> = cluster.ingest.iter().map(|w| w.admin).collect();
    let sum = |series: &'static str| {
        let cluster = &cluster;
        let admins = admins.clone();
        async move {
            let mut total = 0.0;
            for admin in admins {
                total += cluster.metric(admin, series).await;
            }
            total
        }
    };
    let lock = lock_store(&cluster);
    let user = "hanging_apply";
    assert_eq!(probe_push(&cluster.http, edge, user, 0).await, 202);
    // The first attempt gives up after 5 s, more than twice the ack wait.
    legato_tests::wait_for("an attempt to fail", Duration::from_secs(30), || async {
        (sum("legato_ingest_store_errors_total").await >= 1.0).then_some(())
    })
    .await;
    lock.execute_batch("COMMIT").expect("release the lock");
    drop(lock);
    wait_stored(&cluster, user, 1).await;
    assert_eq!(
        sum("legato_ingest_redeliveries_total").await,
        0.0,
        "the batch went to the other worker while its apply hung"
    );
}

/// A worker killed while it applies a batch: its successor applies the redelivered messages
/// one at a time, each once the one before is finished, so a message that kills every worker
/// applying it would reach `max_deliveries` alone instead of taking its batch with it (which of
/// them it is, nobody knows; that the order turns such a message up is a unit test of the
/// worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_crash_mid_apply_the_redelivered_messages_are_applied_one_at_a_time() {
    use legato_store::Store;

    let mut cluster = Cluster::start(fast_options(1, 1, 1)).await;
    let user = "crashed_apply";
    // The writes wait in SYNC_IN for one fetch: the worker is stopped with no pull open.
    cluster.ingest[0].signal("STOP");
    legato_tests::wait_for("no pull request open", Duration::from_secs(10), || async {
        (ingest_consumer(&cluster).await.num_waiting == 0).then_some(())
    })
    .await;
    let pushes = push_probes(&cluster, user, 4).await;
    // Its apply then waits on SQLite's lock (5 s busy timeout) until it is killed.
    let lock = lock_store(&cluster);
    cluster.ingest[0].signal("CONT");
    legato_tests::wait_for(
        "the four writes fetched",
        Duration::from_secs(10),
        || async { (ingest_consumer(&cluster).await.num_ack_pending == 4).then_some(()) },
    )
    .await;
    cluster.ingest[0].kill();
    lock.execute_batch("COMMIT").expect("release the lock");
    drop(lock);
    let successor = cluster.spawn(Kind::Ingest).await;
    let admin = cluster.ingest[successor].admin;
    cluster
        .wait_metric(admin, "legato_ingest_isolated_messages_total", 4.0)
        .await;
    // Those the successor commits within the edge's commit wait are answered 200.
    let answered = pushes.await.expect("pushes");
    assert!(
        answered.iter().all(|s| [200, 202].contains(s)),
        "{answered:?}"
    );
    assert_eq!(
        cluster
            .metric(admin, "legato_ingest_redeliveries_total")
            .await,
        4.0
    );
    // Each in a transaction of its own, one after the other: all were delivered twice, so
    // in the order of their sequences.
    let stored = cluster
        .open_store()
        .changes_since(
            &legato_schema::UserId::parse(user).unwrap(),
            legato_schema::ChangeSeq(0),
            None,
            100,
        )
        .await
        .expect("read the store");
    let mut by_seq: Vec<_> = stored.iter().map(|e| (e.seq, e.committed_at)).collect();
    by_seq.sort();
    assert_eq!(by_seq.len(), 4);
    assert!(
        by_seq.windows(2).all(|w| w[0].1 < w[1].1),
        "not committed one after the other in the order of their sequences: {by_seq:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_storm_over_two_edges_executes_each_key_once() {
    use futures::StreamExt;
    use legato_tests::Rng;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;

    let cluster = Cluster::start(fast_options(2, 1, 1)).await;
    let edges = [cluster.edges[0].http(), cluster.edges[1].http()];
    let user = "fault_replay";
    let published_before = cluster.sync_in_last_sequence().await;
    let requests: u64 = if soak() { 2_000 } else { 200 };
    let mut rng = Rng(0x5707);
    // Requests overlap on 40 entries with distinct clocks: the final state is the LWW winner
    // among all of them, whatever order they arrive in.
    let mut expected: BTreeMap<String, (i64, Option<Value>)> = BTreeMap::new();
    let mut sends = Vec::new();
    for r in 0..requests {
        let first = rng.next_u64() % 40;
        let items: Vec<Value> = (0..1 + rng.next_u64() % 3)
            .map(|i| {
                let id = format!("e{}", (first + i) % 40);
                let clock = 1_750_000_000_000 + (r * 4 + i) as i64;
                let item = if rng.next_u64().is_multiple_of(6) {
                    json!({"id": id, "deletedAt": clock})
                } else {
                    json!({"id": id, "updatedAt": clock, "r": r})
                };
                let state = item["deletedAt"].is_null().then(|| item.clone());
                let slot = expected.entry(id).or_insert((i64::MIN, None));
                if clock > slot.0 {
                    *slot = (clock, state);
                }
                item
            })
            .collect();
        let body = json!({"changes": {"entries": items}});
        let key = format!("replay-{r}");
        for copy in 0..3 {
            sends.push((key.clone(), body.clone(), edges[(r + copy) as usize % 2]));
        }
    }
    // Shuffled (Fisher–Yates with the seeded PRNG), then sent 16 at a time.
    for i in (1..sends.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        sends.swap(i, j);
    }
    let token = legato_tests::Pipeline::token(user);
    let answers: Vec<(String, u16, bool, Value)> = futures::stream::iter(sends)
        .map(|(key, body, edge)| {
            let (http, token) = (cluster.http.clone(), token.clone());
            async move {
                let r = http
                    .post(format!("http://{edge}/api/sync/push"))
                    .bearer_auth(token)
                    .header("X-Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await
                    .expect("answer");
                let status = r.status().as_u16();
                let replay = r.headers().contains_key("x-idempotent-replay");
                (key, status, replay, r.json().await.unwrap_or(Value::Null))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut by_key: BTreeMap<String, Vec<(u16, bool, Value)>> = BTreeMap::new();
    for (key, status, replay, body) in answers {
        assert!(status == 200 || status == 202, "{key}: {status} {body}");
        by_key.entry(key).or_default().push((status, replay, body));
    }
    let mut replays = 0;
    for (key, answers) in &by_key {
        replays += answers.iter().filter(|a| a.1).count();
        let stats: Vec<&Value> = answers.iter().map(|a| &a.2["stats"]).collect();
        assert!(
            stats.windows(2).all(|w| w[0] == w[1]),
            "{key}: the copies were answered differently: {answers:?}"
        );
    }
    // Each key became exactly one bus message, whichever edge and copy got there first.
    assert_eq!(
        cluster.sync_in_last_sequence().await - published_before,
        requests,
        "SYNC_IN messages for {requests} distinct keys"
    );
    let expected: workload::Expected = [(
        user.to_owned(),
        expected.into_iter().map(|(id, (_, s))| (id, s)).collect(),
    )]
    .into();
    let entries = workload::assert_store_converges(&cluster.open_store(), &expected).await;
    workload::record(&format!(
        "fault-case replay-storm: {} requests sent ({requests} keys × 3 over 2 edges), {replays} answered as replays, {entries} entries exact, lost 0",
        requests * 3
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_messages_are_terminated_after_max_deliveries_and_the_watermark_moves_on() {
    use futures::StreamExt;
    use legato_schema::envelope::{self, IngestEnvelope};

    let mut options = fast_options(1, 1, 1);
    options.ingest_env.extend(env(&[
        ("LEGATO_BATCH__MAX_DELIVERIES", "3"),
        ("LEGATO_BATCH__POISON_RETRY_MS", "200"),
    ]));
    let mut cluster = Cluster::start(options).await;
    let ingest_admin = cluster.ingest[0].admin;
    let run = Run::start(&mut cluster, false).await;
    run.load.wait_more_acked(phase() / 2).await;

    let client = async_nats::connect(cluster.nats.url()).await.expect("nats");
    let mut dead = client
        .subscribe(legato_schema::subject::DEAD_LETTER_SUBJECT)
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let js = async_nats::jetstream::new(client);
    let user = legato_schema::UserId::parse("fault_user_a").unwrap();
    // Garbage, and an envelope of a version no worker knows (a newer edge's).
    let mut newer = envelope::encode(
        &IngestEnvelope {
            v: envelope::ENVELOPE_VERSION,
            request_id: "poison".into(),
            user: user.clone(),
            device_id: None,
            session_id: None,
            kind: legato_schema::envelope::RequestKind::Push,
            received_at: legato_schema::Clock(0),
            items: Vec::new(),
            idempotency: None,
        },
        envelope::Encoding::Named,
    );
    // The version is the envelope's first field: bump it in place.
    let v = newer
        .iter()
        .position(|b| *b == envelope::ENVELOPE_VERSION as u8)
        .expect("version byte");
    newer[v] = 99;
    assert!(envelope::decode::<IngestEnvelope>(&newer).is_err());
    let before = run.load.tally.acked();
    let mut poison_seqs = Vec::new();
    for payload in [b"\xc1 not msgpack".to_vec(), newer] {
        let ack = js
            .publish(legato_schema::subject::ingest(&user), payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        poison_seqs.push(ack.sequence);
    }
    // Each is handed back (max_deliveries) times, then terminated and dead-lettered.
    for _ in &poison_seqs {
        let letter = tokio::time::timeout(Duration::from_secs(30), dead.next())
            .await
            .expect("a dead letter within 30 s")
            .expect("subscription open");
        let headers = letter.headers.expect("dead-letter headers");
        assert_eq!(
            headers.get("Legato-Reason").map(|v| v.as_str()),
            Some("max_deliveries")
        );
    }
    assert_eq!(
        cluster
            .metric(
                ingest_admin,
                "legato_ingest_terminated_total{reason=\"max_deliveries\"}"
            )
            .await,
        2.0
    );
    assert!(
        cluster
            .metric(ingest_admin, "legato_ingest_undecodable_total")
            .await
            >= 6.0,
        "each poison message was delivered and handed back 3 times"
    );
    // The commit watermark passes them while the writers go on.
    let last_poison = *poison_seqs.iter().max().unwrap() as f64;
    legato_tests::wait_for(
        "the watermark past the poison",
        Duration::from_secs(30),
        || async {
            (cluster
                .metric(ingest_admin, "legato_ingest_watermark_sequence")
                .await
                > last_poison)
                .then_some(())
        },
    )
    .await;
    let under_fault = run.load.tally.acked() - before;
    run.load.wait_more_acked(phase() / 2).await;
    let (tally, entries) = run.finish(&cluster).await;
    workload::report("poison", &tally, under_fault, entries);
}
