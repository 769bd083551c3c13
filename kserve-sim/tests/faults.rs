//! Fault injection seen by the real `kube` client: 500 and 429 (with Retry-After) answers,
//! kube's own retry of 429, added latency, discovery left healthy, and the request log.

mod common;

use common::*;
use kserve_sim::{Faults, Verb};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_500_and_429_reach_the_client() {
    let sim = start(fast_config()).await;
    let no_retry = client_with(&sim, false).await;
    let a = api(&no_retry, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("f", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    sim.set_faults(Faults {
        fail_next: 1,
        ..Faults::default()
    });
    let e = api_status(a.get("f").await.err().unwrap_or_else(|| panic!("no 500")));
    assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    a.get("f")
        .await
        .unwrap_or_else(|e| panic!("fault did not clear: {e}"));

    sim.set_faults(Faults {
        throttle_next: 1,
        retry_after_seconds: 2,
        ..Faults::default()
    });
    let e = api_status(a.get("f").await.err().unwrap_or_else(|| panic!("no 429")));
    assert_eq!((e.code, e.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(e.details.map(|d| d.retry_after_seconds), Some(2));
    sim.set_faults(Faults {
        throttle_next: 1,
        retry_after_seconds: 2,
        ..Faults::default()
    });
    let r = raw(
        &sim,
        "GET",
        &format!("/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/f"),
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), vec!["2"]);

    // Writes fail too, and nothing is written.
    sim.set_faults(Faults {
        fail_rate: 1.0,
        ..Faults::default()
    });
    let e = a
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .err()
        .map(api_status);
    assert_eq!(e.map(|s| s.code), Some(500));
    sim.set_faults(Faults::default());
    let o = a.get("f").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!o.metadata.labels.unwrap_or_default().contains_key("x"));

    // Discovery stays healthy under faults.
    sim.set_faults(Faults {
        fail_rate: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        raw(&sim, "GET", "/apis/serving.kserve.io/v1beta1", None, "")
            .await
            .status,
        200
    );
    sim.set_faults(Faults::default());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_retries_429_after_retry_after_and_latency_is_added() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("r", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    sim.clear_request_log();
    sim.set_faults(Faults {
        throttle_next: 2,
        retry_after_seconds: 1,
        ..Faults::default()
    });
    let started = Instant::now();
    a.get("r")
        .await
        .unwrap_or_else(|e| panic!("kube did not retry the 429s: {e}"));
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "Retry-After not honoured: {:?}",
        started.elapsed()
    );
    let gets: Vec<(u16, bool)> = sim
        .request_log()
        .iter()
        .filter(|r| r.verb == Verb::Get && r.name.as_deref() == Some("r"))
        .map(|r| (r.status, r.injected))
        .collect();
    assert_eq!(gets, vec![(429, true), (429, true), (200, false)]);

    sim.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    });
    let started = Instant::now();
    a.get("r").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(started.elapsed() >= Duration::from_millis(300));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_classifies_calls() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("l", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    a.patch(
        "l",
        &PatchParams::apply("deploy-worker"),
        &Patch::Apply(&manifest("l", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    a.patch(
        "l",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let log = sim.request_log();
    let verbs: Vec<Verb> = log
        .iter()
        .filter(|r| r.verb.is_write())
        .map(|r| r.verb)
        .collect();
    assert_eq!(verbs, vec![Verb::Create, Verb::Apply, Verb::Patch]);
    let apply = log
        .iter()
        .find(|r| r.verb == Verb::Apply)
        .unwrap_or_else(|| panic!("no apply"));
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(apply.query.contains("fieldManager=deploy-worker"));
    assert_eq!(
        (apply.namespace.as_deref(), apply.name.as_deref()),
        (Some(NS), Some("l"))
    );
    sim.stop().await;
}
