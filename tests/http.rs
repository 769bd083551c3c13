//! The HTTP port: `/metrics` scraped and parsed as OpenMetrics after real deploys, `/healthz`,
//! and `/readyz` following Postgres and NATS going away and coming back, and shutdown.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::openmetrics::{Family, parse_openmetrics, value};
use common::{Env, http_get, publisher_context, wait_http};
use deploy_worker::events::EventKind;
use deploy_worker::http::ReadinessReport;
use deploy_worker::worker::Worker;
use devkit::platform;

async fn scrape(worker: &Worker) -> BTreeMap<String, Family> {
    let response = http_get(worker.http_addr(), "/metrics")
        .await
        .expect("scrape");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    parse_openmetrics(&response.body)
}

async fn start(env: &Env, delay_ms: u64) -> Worker {
    let mut settings = common::settings_for(&env.pg, &env.nats);
    settings.simulate_delay_ms = delay_ms;
    settings.retry_base_ms = 100;
    settings.retry_max_ms = 200;
    Worker::start(&settings).await.expect("worker starts")
}

const DEPLOY: &str = "mlops.serving.deploy_requested";

#[actix_rt::test]
async fn metrics_describe_the_deploys_that_happened() {
    let env = Env::start().await;
    let worker = start(&env, 600).await;

    let before = scrape(&worker).await;
    assert_eq!(
        value(&before, "deploy_worker_endpoint_actors", &[]),
        Some(0.0)
    );
    assert_eq!(before["deploy_worker_deploys_in_flight"].samples.len(), 0);
    assert_eq!(
        before["deploy_worker_event_to_ready_seconds"]
            .unit
            .as_deref(),
        Some("seconds")
    );

    let mut endpoints = Vec::new();
    for _ in 0..3 {
        endpoints.push(env.create_endpoint(Some("gs://models/m/1")).await);
    }
    // Their passes cannot end while outcomes are held back, so what a scrape sees of them
    // does not depend on how fast this test gets there.
    let hold = env.hold_outcomes().await;
    for endpoint in &endpoints {
        env.publish_traced(endpoint, &publisher_context().0).await;
    }
    env.publish_raw(EventKind::Deploy, b"{not json").await;
    // While they run: one deploy in flight per tenant, one actor per endpoint.
    let during = wait_scrape(&worker, |m| {
        value(m, "deploy_worker_endpoint_actors", &[]) == Some(3.0)
            && endpoints.iter().all(|endpoint| {
                let tenant = endpoint.tenant_id.to_string();
                value(
                    m,
                    "deploy_worker_deploys_in_flight",
                    &[("tenant_id", &tenant)],
                ) == Some(1.0)
            })
    })
    .await;
    assert_eq!(
        during["deploy_worker_deploys_in_flight"].samples.len(),
        3,
        "one sample per tenant with a deploy in flight"
    );
    hold.commit().await.expect("let the passes end");

    for endpoint in &endpoints {
        env.wait_status(endpoint.id, "READY").await;
    }
    // A pass stays in flight until its claim is released, just after its READY commits.
    let after = wait_scrape(&worker, |m| {
        value(
            m,
            "deploy_worker_events_total",
            &[("subject", DEPLOY), ("outcome", "refused")],
        ) == Some(1.0)
            && m["deploy_worker_deploys_in_flight"].samples.is_empty()
    })
    .await;
    let ready = [("subject", DEPLOY), ("outcome", "ready")];
    assert_eq!(
        value(&after, "deploy_worker_events_total", &ready),
        Some(3.0)
    );
    assert_eq!(
        value(&after, "deploy_worker_event_to_ready_seconds_count", &[]),
        Some(3.0)
    );
    let waited = value(&after, "deploy_worker_event_to_ready_seconds_sum", &[]).expect("sum");
    assert!(
        waited >= 3.0 * 0.6,
        "three deploys of 0.6 s each took {waited} s in total"
    );
    assert_eq!(
        value(
            &after,
            "deploy_worker_deploy_duration_seconds_count",
            &[("outcome", "ready")]
        ),
        Some(3.0)
    );
    // Each deploy records its request, then writes DEPLOYING and READY; the refused payload
    // writes one record.
    assert_eq!(
        value(&after, "deploy_worker_group_commit_batch_size_sum", &[]),
        Some(3.0 * 3.0 + 1.0)
    );
    for operation in ["load", "commit"] {
        let labels = [("operation", operation)];
        assert_eq!(
            value(&after, "deploy_worker_database_errors_total", &labels),
            Some(0.0)
        );
    }
    assert_eq!(
        value(
            &after,
            "deploy_worker_retries_total",
            &[("reason", "database")]
        ),
        Some(0.0)
    );
    worker.shutdown().await.expect("shutdown");
}

async fn wait_scrape(
    worker: &Worker,
    accept: impl Fn(&BTreeMap<String, Family>) -> bool,
) -> BTreeMap<String, Family> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape(worker).await;
        if accept(&metrics) {
            return metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never matched: {metrics:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn report(response: &common::Response) -> ReadinessReport {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|err| panic!("/readyz body is not a report ({err}): {}", response.body))
}

#[actix_rt::test]
async fn readiness_follows_postgres_and_nats() {
    let mut env = Env::start().await;
    let worker = start(&env, 3000).await;
    let addr = worker.http_addr();
    let wait = Duration::from_secs(30);

    let ok = wait_http(addr, "/readyz", wait, |r| r.status == 200).await;
    assert_eq!(
        report(&ok),
        ReadinessReport {
            ready: true,
            database: "ok".into(),
            nats: "ok".into(),
            consumers: "ok".into(),
            kubernetes: "ok".into(),
            draining: false,
        }
    );

    env.nats.stop().expect("stop nats");
    // the consumer check may time out before the client notices the connection is gone: wait
    // for the report that names NATS
    let down = wait_http(addr, "/readyz", wait, |r| {
        r.status == 503 && report(r).nats != "ok"
    })
    .await;
    let body = report(&down);
    assert!(!body.ready);
    assert_ne!(body.nats, "ok", "{body:?}");
    assert_eq!(body.database, "ok", "{body:?}");
    assert_eq!(
        http_get(addr, "/healthz").await.expect("healthz").status,
        200
    );
    env.nats.start_again().expect("start nats");
    wait_http(addr, "/readyz", wait, |r| r.status == 200).await;

    env.pg.stop().expect("stop postgres");
    let down = wait_http(addr, "/readyz", wait, |r| {
        r.status == 503 && report(r).database != "ok"
    })
    .await;
    let body = report(&down);
    assert_ne!(body.database, "ok", "{body:?}");
    assert_eq!(body.nats, "ok", "{body:?}");
    assert_eq!(
        http_get(addr, "/healthz").await.expect("healthz").status,
        200
    );
    // An event while Postgres is down: its request cannot be recorded, the message is handed
    // back.
    let db_url = env.pg.url();
    let fields_owner = common::Endpoint {
        id: uuid::Uuid::new_v4(),
        tenant_id: uuid::Uuid::new_v4(),
        project_id: uuid::Uuid::new_v4(),
        name: "while-down".into(),
        model: platform::ModelVersionRef {
            model_id: uuid::Uuid::new_v4(),
            model_version_id: uuid::Uuid::new_v4(),
        },
    };
    env.publish_traced(&fields_owner, &publisher_context().0)
        .await;
    let metrics = wait_scrape(&worker, |m| {
        value(
            m,
            "deploy_worker_database_errors_total",
            &[("operation", "commit")],
        )
        .unwrap_or(0.0)
            >= 1.0
            && value(m, "deploy_worker_retries_total", &[("reason", "database")]).unwrap_or(0.0)
                >= 1.0
    })
    .await;
    assert!(
        value(
            &metrics,
            "deploy_worker_events_total",
            &[("subject", DEPLOY), ("outcome", "handed_back")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    env.pg.start_again().expect("start postgres");
    assert_eq!(env.pg.url(), db_url);
    wait_http(addr, "/readyz", wait, |r| r.status == 200).await;

    // Shutdown: not ready any more while a long deploy drains.
    let endpoint = env.create_endpoint(Some("gs://models/m/1")).await;
    env.publish_traced(&endpoint, &publisher_context().0).await;
    env.wait_status(endpoint.id, "DEPLOYING").await;
    let stopping = actix_rt::spawn(worker.shutdown());
    let draining = wait_http(addr, "/readyz", wait, |r| r.status == 503).await;
    assert!(report(&draining).draining, "{draining:?}");
    stopping.await.expect("join").expect("shutdown");
    assert_eq!(env.status(endpoint.id).await.as_deref(), Some("READY"));
    assert!(
        http_get(addr, "/healthz").await.is_none(),
        "the port closes on shutdown"
    );
}
