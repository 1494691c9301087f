//! The fault suite: the real binaries as processes, under sustained load from concurrent HTTP
//! and WebSocket writers, while a process is killed with `SIGKILL` (or the store is locked,
//! or requests are replayed). Each case ends by asserting that every acknowledged write is in
//! the store with the right LWW state and that a reader following `syncToken`s the whole
//! time ends with exactly the store's state (see `legato_tests::workload`).
//!
//! Figures: each case prints a `fault-case` line (`cargo test --test faults -- --nocapture`,
//! or set `LEGATO_FAULT_REPORT=<file>` to collect them). `LEGATO_SOAK=1` makes every case
//! run longer and with more writers.

use legato_tests::cluster::{Cluster, ClusterOptions, Kind};
use legato_tests::workload::{self, CursorReader, Device, Load, LoadOptions, Tally, Targets};
use std::time::Duration;

fn soak() -> bool {
    std::env::var("LEGATO_SOAK").is_ok_and(|v| v == "1")
}

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

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Short timeouts so a dead worker's messages move on quickly and pushes waiting on a
/// stalled pipeline answer 202 soon.
fn fast_options(edges: usize, ingest: usize, fanout: usize) -> ClusterOptions {
    let mut options = ClusterOptions::new(edges, ingest, fanout);
    options.edge_env = env(&[("LEGATO_SYNC__COMMIT_WAIT_MS", "1000")]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ingest_worker_killed_mid_batch_and_restarted_loses_nothing() {
    let mut cluster = Cluster::start(fast_options(1, 1, 1)).await;
    let run = Run::start(&mut cluster, false).await;
    run.load
        .wait_more_acked(phase(), Duration::from_secs(60))
        .await;
    // Under load a batch is always in flight: kill -9 lands mid-batch.
    cluster.ingest[0].kill();
    let before = run.load.tally.acked();
    // Pushes keep being accepted (202) while no worker runs.
    run.load
        .wait_more_acked(phase() / 3, Duration::from_secs(60))
        .await;
    cluster.spawn(Kind::Ingest).await;
    run.load
        .wait_more_acked(phase(), Duration::from_secs(60))
        .await;
    let under_fault = run.load.tally.acked() - before;
    let (tally, entries) = run.finish(&cluster).await;
    workload::report("ingest-kill-restart", &tally, under_fault, entries);
}
