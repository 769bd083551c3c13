//! The stand-in started from the runtimes that will embed it: a current-thread tokio test and an
//! actix `System` (as the worker's actix-based tests do), and stopped by `stop` or by dropping
//! the last handle.

mod common;

use common::*;
use kube::api::PostParams;
use serde_json::json;
use std::time::Duration;

async fn round_trip() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("e", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let ready = wait_ready(&sim, NS, "e").await;
    assert_eq!(ready["status"]["observedGeneration"], 1);
    sim.stop().await;
    // Idempotent, and the port is closed afterwards.
    sim.stop().await;
    assert!(tokio::net::TcpStream::connect(sim.addr()).await.is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn works_from_a_current_thread_tokio_runtime() {
    round_trip().await;
}

#[actix_rt::test]
async fn works_inside_an_actix_system() {
    round_trip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_the_server() {
    let sim = start(fast_config()).await;
    let addr = sim.addr();
    let clone = sim.clone();
    drop(sim);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_ok(),
        "a clone keeps it running"
    );
    drop(clone);
    let mut closed = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        closed,
        "server still accepting after the last handle was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_schema_is_a_clear_start_error() {
    let cfg =
        kserve_sim::SimConfig::with_schema("/nonexistent/inferenceservice-v1beta1.schema.json");
    let err = kserve_sim::KserveSim::start(cfg)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("--crd-schema"), "{err}");
}
