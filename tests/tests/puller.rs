//! The workers' pulls against a real nats-server. The fanout's continuous pull
//! (`legato_runtime::nats::Puller`): a batch is what has arrived, in order and within its
//! maximum, and stopping hands the messages pulled ahead but not taken straight back to other
//! workers. The ingest's fetches (`Fetcher`): one waits for a first message, takes what there
//! is, and leaves the rest to other workers.

use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use legato_runtime::nats::{self, ConsumerSettings, Fetched, Fetcher, Puller};
use legato_tests::NatsServer;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

/// A work-queue stream `PULLER` on `puller.>`.
async fn work_queue(nats: &NatsServer) -> (jetstream::Context, stream::Stream) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js
        .create_stream(stream::Config {
            name: "PULLER".into(),
            subjects: vec!["puller.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    (js, stream)
}

async fn setup(nats: &NatsServer, ack_wait_secs: u64) -> (jetstream::Context, PullConsumer) {
    let (js, stream) = work_queue(nats).await;
    let settings = ConsumerSettings {
        ack_wait_secs,
        ..Default::default()
    };
    let consumer = nats::ensure_consumer(&stream, "work", &settings)
        .await
        .unwrap();
    (js, consumer)
}

async fn publish(js: &jetstream::Context, count: usize) {
    for n in 0..count {
        js.publish("puller.x", n.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

fn payloads(fetched: Fetched) -> Vec<String> {
    match fetched {
        Fetched::Messages(messages) => messages
            .iter()
            .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect(),
        Fetched::Failed => panic!("pull failed"),
        Fetched::Stopped => panic!("stopped"),
    }
}

/// Takes batches until `count` messages came, acking each; returns them in order.
async fn take(puller: &mut Puller, count: usize) -> Vec<jetstream::Message> {
    let shutdown = CancellationToken::new();
    let deadline = Instant::now() + WAIT;
    let mut all = Vec::new();
    while all.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} came",
            all.len()
        );
        match puller
            .next_batch(Duration::from_millis(200), &shutdown)
            .await
        {
            Fetched::Messages(messages) => all.extend(messages),
            Fetched::Failed => panic!("pull failed"),
            Fetched::Stopped => panic!("stopped"),
        }
    }
    all
}

/// Messages the client has received so far (deliveries, acks of publishes, API replies).
fn received(js: &jetstream::Context) -> u64 {
    js.client()
        .statistics()
        .in_messages
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until the client has received `count` more messages than `since`: the deliveries
/// pulled behind the batch taken are then in the client, not on their way.
async fn wait_received(js: &jetstream::Context, since: u64, count: u64) {
    let deadline = Instant::now() + WAIT;
    while received(js) < since + count {
        assert!(Instant::now() < deadline, "the pull did not run ahead");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn batches_take_what_arrived_in_order_and_never_more_than_the_maximum() {
    let nats = NatsServer::start();
    let (js, consumer) = setup(&nats, 30).await;
    let mut puller = Puller::new(consumer, 4);
    let shutdown = CancellationToken::new();
    // Nothing there: the wait runs out with an empty batch.
    assert!(
        payloads(
            puller
                .next_batch(Duration::from_millis(100), &shutdown)
                .await
        )
        .is_empty()
    );
    publish(&js, 10).await;
    let messages = take(&mut puller, 10).await;
    let got: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    assert_eq!(got, want, "in stream order, each once");
    for m in &messages {
        m.ack().await.unwrap();
    }
    // The batches were at most 4: ask again with all 10 there at once.
    publish(&js, 10).await;
    let deadline = Instant::now() + WAIT;
    let mut seen = 0;
    while seen < 10 {
        assert!(Instant::now() < deadline);
        let batch = payloads(puller.next_batch(WAIT, &shutdown).await);
        assert!(batch.len() <= 4, "a batch of {} (maximum 4)", batch.len());
        seen += batch.len();
    }
}

#[tokio::test]
async fn stopping_hands_untaken_messages_back_at_once() {
    let nats = NatsServer::start();
    // A long ack wait: only the hand-back can make them available again in time.
    let (js, consumer) = setup(&nats, 60).await;
    let mut puller = Puller::new(consumer.clone(), 2);
    let shutdown = CancellationToken::new();
    publish(&js, 4).await;
    let since = received(&js);
    let first = match puller.next_batch(WAIT, &shutdown).await {
        Fetched::Messages(messages) => messages,
        _ => panic!("no batch"),
    };
    assert!(
        !first.is_empty() && first.len() <= 2,
        "{} messages",
        first.len()
    );
    for m in &first {
        m.ack().await.unwrap();
    }
    let behind = 4 - first.len();
    wait_received(&js, since, 4).await;
    puller.stop().await;
    // Another worker gets them at once, not after the 60 s ack wait.
    let mut other = Puller::new(consumer, 8);
    let rest = take(&mut other, behind).await;
    let got: Vec<String> = rest
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (first.len()..4).map(|n| n.to_string()).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_fetch_waits_for_a_first_message_and_leaves_the_rest_to_other_workers() {
    let nats = NatsServer::start();
    let (js, consumer) = setup(&nats, 30).await;
    let mut fetcher = Fetcher::new(js.clone(), &consumer);
    let shutdown = CancellationToken::new();
    // Nothing there: the request is held for its expiry, not answered at once (a worker
    // would otherwise spin on empty fetches).
    let started = Instant::now();
    let empty = payloads(
        fetcher
            .next_batch(4, Duration::from_millis(500), &shutdown)
            .await,
    );
    assert!(empty.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "an empty fetch returned after {:?}",
        started.elapsed()
    );
    // A message published while a fetch waits is what that fetch returns.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            publish(&js, 1).await;
        })
    };
    let got = payloads(fetcher.next_batch(4, WAIT, &shutdown).await);
    publisher.await.unwrap();
    assert_eq!(got, ["0"]);
    // Five more: a fetch of two takes two, and the other three stay with the broker for
    // whichever worker asks next.
    publish(&js, 5).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < 2 {
        assert!(Instant::now() < deadline);
        got.extend(payloads(fetcher.next_batch(2, WAIT, &shutdown).await));
    }
    assert_eq!(got, ["0", "1"]);
    let mut other = Fetcher::new(js.clone(), &consumer);
    let rest = payloads(other.next_batch(8, WAIT, &shutdown).await);
    assert_eq!(rest, ["2", "3", "4"]);
}

#[tokio::test]
async fn a_fetch_the_consumer_refuses_is_a_failure_to_back_off_from() {
    let nats = NatsServer::start();
    let (js, stream) = work_queue(&nats).await;
    // An operator's limit: at most one message per pull request.
    let consumer: PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("limited".into()),
            max_batch: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut fetcher = Fetcher::new(js.clone(), &consumer);
    let shutdown = CancellationToken::new();
    assert!(
        matches!(
            fetcher.next_batch(4, WAIT, &shutdown).await,
            Fetched::Failed
        ),
        "a refused fetch must not look like an empty batch (the worker would retry at once)"
    );
    // Within the limit, it fetches.
    js.publish("puller.x", "m".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        payloads(fetcher.next_batch(1, WAIT, &shutdown).await),
        ["m"]
    );
}

#[tokio::test]
async fn a_short_fetch_ends_at_its_expiry_while_the_consumer_is_at_max_ack_pending() {
    let nats = NatsServer::start();
    let (js, stream) = work_queue(&nats).await;
    let settings = ConsumerSettings {
        max_ack_pending: 1,
        ..Default::default()
    };
    let consumer = nats::ensure_consumer(&stream, "work", &settings)
        .await
        .unwrap();
    let mut fetcher = Fetcher::new(js.clone(), &consumer);
    let shutdown = CancellationToken::new();
    publish(&js, 2).await;
    let held = match fetcher.next_batch(4, WAIT, &shutdown).await {
        Fetched::Messages(messages) => messages,
        _ => panic!("fetch failed"),
    };
    assert_eq!(held.len(), 1, "max_ack_pending is 1");
    // The ingest's prefetch while it applies: a message is waiting, but the consumer may not
    // hand it out. nats-server holds such a request until its expiry (a `no_wait` request
    // without one, for ever), so the fetch must end with the prefetch's expiry, not with the
    // gathering bound of a lost request (1 s later).
    let started = Instant::now();
    let prefetched = payloads(
        fetcher
            .next_batch(4, legato_ingest::worker::PREFETCH_EXPIRES, &shutdown)
            .await,
    );
    assert!(prefetched.is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the prefetch was held {:?}",
        started.elapsed()
    );
    held[0].ack().await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.is_empty() {
        assert!(Instant::now() < deadline);
        got = payloads(
            fetcher
                .next_batch(4, legato_ingest::worker::PREFETCH_EXPIRES, &shutdown)
                .await,
        );
    }
    assert_eq!(got, ["1"]);
}
