//! Every binary's `/metrics` is valid Prometheus exposition that passes `promtool check
//! metrics` (naming and unit lints included), and carries the families the dashboard and the
//! alerts are built on.
//!
//! promtool comes from Debian's `prometheus` package (ops/test.sh installs it). Without it the
//! lint is skipped locally, but fails under `CI`, so a CI image that lost it is noticed.

use legato_tests::{Pipeline, PipelineOptions, wait_for};
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

fn promtool_available() -> bool {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let reason =
            "promtool is not on PATH (Debian package `prometheus`; ops/test.sh installs it)";
        assert!(std::env::var_os("CI").is_none(), "{reason}");
        eprintln!("skipping the metrics lint: {reason}");
    }
    found
}

/// Runs `promtool check metrics` on `text`; returns every line it printed, with its status.
fn promtool_check(text: &str) -> (bool, Vec<String>) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool output");
    let lines = [output.stdout, output.stderr]
        .iter()
        .flat_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    (output.status.success(), lines)
}

async fn scrape(p: &Pipeline, admin: SocketAddr) -> String {
    let response = p
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200, "{admin}/metrics");
    response.text().await.expect("metrics body")
}

/// The value of one series, named with its labels exactly as exposed.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_endpoint_passes_promtool_and_has_the_dashboard_families() {
    let p = Pipeline::start(PipelineOptions {
        edges: 1,
        ..Default::default()
    })
    .await;
    let item = json!({"id":"m1","duration":30,"updatedAt":"2025-06-24T10:00:00.000Z"});
    let (status, body) = p
        .push("user_m", &json!({"changes":{"entries":[item]}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = p.pull("user_m", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    // The push is acked once committed; the sampler picks the watermark up within its period.
    for worker in &p.ingest {
        wait_for(
            "the ingest watermark gauge to pass the push",
            Duration::from_secs(15),
            || async {
                (p.metric(worker.admin, "legato_ingest_watermark_sequence")
                    .await
                    >= 1.0)
                    .then_some(())
            },
        )
        .await;
    }

    let mut endpoints = vec![("edge", p.edge.admin), ("fanout", p.fanout.admin)];
    endpoints.extend(p.ingest.iter().map(|s| ("ingest", s.admin)));
    let mut scraped = Vec::new();
    for (name, admin) in endpoints {
        scraped.push((name, scrape(&p, admin).await));
    }

    let edge = &scraped[0].1;
    assert!(
        sample(
            edge,
            r#"legato_edge_http_requests_total{route="push",status="200"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "edge /metrics lacks the push request counter:\n{edge}"
    );
    // Every store series exists from the start; the pull's read must have counted somewhere.
    let store_reads: f64 = edge
        .lines()
        .filter(|l| l.starts_with("legato_store_operation_duration_seconds_count{"))
        .filter(|l| {
            !l.contains(r#"operation="health""#) && !l.contains(r#"operation="deployment_id""#)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(
        store_reads >= 1.0,
        "edge /metrics shows no store read:\n{edge}"
    );
    for (_, text) in scraped.iter().filter(|(name, _)| *name == "ingest") {
        let applies =
            r#"legato_store_operation_duration_seconds_count{backend="sqlite",operation="apply"}"#;
        assert!(
            sample(text, applies).is_some_and(|v| v >= 1.0),
            "ingest /metrics lacks a timed apply:\n{text}"
        );
        assert!(
            sample(text, "legato_ingest_publish_seconds_count").is_some_and(|v| v >= 1.0),
            "ingest /metrics lacks a timed SYNC_OUT publish:\n{text}"
        );
        for series in [
            "legato_ingest_queue_seconds_count",
            "legato_ingest_message_seconds_count",
        ] {
            assert!(
                sample(text, series).is_some_and(|v| v >= 1.0),
                "ingest /metrics lacks a timed message ({series}):\n{text}"
            );
        }
        for series in [
            "legato_ingest_watermark_lag_messages",
            "legato_ingest_watermark_sequence",
            "legato_ingest_consumer_pending_messages",
            "legato_ingest_consumer_ack_pending_messages",
        ] {
            assert!(
                sample(text, series).is_some(),
                "ingest /metrics lacks {series}:\n{text}"
            );
        }
    }

    if promtool_available() {
        let mut problems = Vec::new();
        for (name, text) in &scraped {
            let (ok, lines) = promtool_check(text);
            if !ok || !lines.is_empty() {
                problems.push(format!(
                    "{name}: promtool {}:\n  {}",
                    if ok { "passed with output" } else { "failed" },
                    lines.join("\n  ")
                ));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
    p.shutdown().await;
}
