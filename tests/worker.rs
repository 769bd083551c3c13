//! The worker end to end in simulate mode, on real Postgres and NATS JetStream.

mod common;

use std::time::Duration;

use common::{Env, wait_for};
use deploy_worker::events::EventKind;
use deploy_worker::kserve::isvc_name;
use deploy_worker::worker::Worker;
use devkit::platform::{self, ServingPatch};
use serde_json::json;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// Actors stop once idle — at the end of their pass by default, or after
/// `ENDPOINT_IDLE_SECONDS` — so memory does not grow with the endpoints ever seen.
#[actix_rt::test]
async fn deploys_many_endpoints_across_tenants_and_stops_idle_actors() {
    let env = Env::start().await;
    for idle_seconds in [0, 1] {
        let mut settings = env.settings();
        settings.endpoint_idle_seconds = idle_seconds;
        let worker = Worker::start(&settings).await.unwrap();
        let mut all = Vec::new();
        let tenants = [env.tenant().await, env.tenant().await, env.tenant().await];
        for tenant in &tenants {
            let ids = env.endpoints(tenant, 70).await;
            for id in &ids {
                env.publish(EventKind::Deploy, tenant, *id).await;
            }
            all.extend(ids);
        }
        env.wait_all_ready("every endpoint READY", &all, LONG).await;
        env.wait_all_answered(LONG).await;

        for id in &all {
            let row = env.endpoint(*id).await;
            let name = isvc_name("isvc", *id);
            assert_eq!(
                row.url.as_deref(),
                Some(format!("http://{name}.example.local").as_str())
            );
            assert_eq!(row.ready_generation, Some(row.spec_generation));
            assert_eq!(row.status_reason, None);
            let history = env.history(*id).await;
            assert_eq!(history.len(), 1, "one pass per endpoint");
            assert_eq!(history[0].outcome, "ready");
            assert_eq!(history[0].action, "deploy");
            assert_eq!(history[0].isvc_name, name);
        }
        wait_for(
            &format!("idle actors to stop (ENDPOINT_IDLE_SECONDS={idle_seconds})"),
            Duration::from_secs(10),
            || async { worker.actors() == 0 },
        )
        .await;
        worker.shutdown().await.unwrap();
    }
}

#[actix_rt::test]
async fn events_piling_up_for_one_endpoint_coalesce_into_one_deploy_of_the_latest_intent() {
    let env = Env::start().await;
    let mut settings = env.settings();
    settings.simulate_delay_ms = 400;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];

    // (its end held back until this test has seen it run)
    let hold = env.hold_outcomes().await;
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("first pass to start", LONG, || async {
        env.endpoint(id).await.status == "DEPLOYING"
    })
    .await;
    hold.commit().await.expect("let the first pass end");
    // While the first deploy runs, the API patches the endpoint five times, then its five
    // events arrive in a burst.
    for percent in [10, 20, 30, 40, 50] {
        platform::patch_endpoint(
            &env.db,
            id,
            ServingPatch {
                traffic: Some(Some(common::canary(percent))),
                runtime_config: Some(Some(
                    json!({"modelFormat": "sklearn", "deploymentMode": "Knative"}),
                )),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    for _ in 0..5 {
        env.publish(EventKind::Deploy, &tenant, id).await;
    }
    let final_generation = env.endpoint(id).await.spec_generation;
    assert_eq!(
        final_generation, 6,
        "the trigger bumps the generation once per change"
    );
    wait_for("latest intent READY", LONG, || async {
        env.endpoint(id).await.ready_generation == Some(final_generation)
    })
    .await;
    env.wait_all_answered(LONG).await;

    // The first pass either finished or was interrupted by the burst (`superseded`); every
    // later pass converges to the latest intent: no intermediate intent is ever deployed, and
    // the latest is deployed once.
    let history = env.history(id).await;
    assert!(
        history
            .iter()
            .all(|h| h.generation == 1 || h.generation == final_generation),
        "no intermediate generation deployed: {history:?}"
    );
    let ready: Vec<_> = history
        .iter()
        .filter(|h| h.outcome == "ready" && h.generation == final_generation)
        .collect();
    assert_eq!(
        ready.len(),
        1,
        "one deploy of the latest intent: {history:?}"
    );
    assert!(
        history.len() <= 4,
        "the five queued events coalesce into few passes, not five: {history:?}"
    );
    assert_eq!(
        history.iter().map(|h| h.events).sum::<i32>(),
        6,
        "every event counted by the pass that covered it: {history:?}"
    );
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn passes_over_one_endpoint_never_overlap_while_endpoints_run_concurrently() {
    let env = Env::start().await;
    let mut settings = env.settings();
    settings.simulate_delay_ms = 30;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 20).await;
    // Interleave patches and events across all endpoints, from several publishers at once.
    let mut publishers = Vec::new();
    for round in 0..5 {
        for id in &ids {
            platform::patch_endpoint(
                &env.db,
                *id,
                ServingPatch {
                    autoscaling: Some(Some(json!({"minReplicas": 1, "maxReplicas": 2 + round}))),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let js = env.js.clone();
            let id = *id;
            publishers.push(tokio::spawn(async move {
                let fields = platform::EventFields {
                    tenant_id: tenant.tenant_id,
                    project_id: tenant.project_id,
                    endpoint_id: id,
                    name: "endpoint",
                    model: Some(tenant.version),
                };
                platform::publish(&js, EventKind::Deploy, &fields, &Uuid::new_v4().to_string())
                    .await
                    .unwrap();
            }));
        }
    }
    for p in publishers {
        p.await.unwrap();
    }
    wait_for("all at their latest generation", LONG, || async {
        let mut done = true;
        for id in &ids {
            let row = env.endpoint(*id).await;
            done &= row.ready_generation == Some(row.spec_generation);
        }
        done
    })
    .await;
    env.wait_all_answered(LONG).await;

    let mut overlap_between_endpoints = false;
    let mut spans = Vec::new();
    for id in &ids {
        let history = env.history(*id).await;
        for pair in history.windows(2) {
            assert!(
                pair[1].started_at >= pair[0].finished_at,
                "passes of one endpoint overlapped: {pair:?}"
            );
            assert!(
                pair[1].generation >= pair[0].generation,
                "generations went backwards: {pair:?}"
            );
        }
        spans.extend(history.iter().map(|h| (h.started_at, h.finished_at)));
    }
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            overlap_between_endpoints |= a.0 < b.1 && b.0 < a.1;
        }
    }
    assert!(
        overlap_between_endpoints,
        "different endpoints should deploy concurrently"
    );
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn the_same_event_delivered_twice_applies_once() {
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("READY", LONG, || async {
        env.endpoint(id).await.status == "READY"
    })
    .await;
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("second pass recorded", LONG, || async {
        env.history(id).await.len() == 2
    })
    .await;
    let history = env.history(id).await;
    assert_eq!(history[0].outcome, "ready");
    assert_eq!(history[1].outcome, "unchanged");
    env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn delete_marks_deleted_clears_the_url_and_a_later_deploy_is_a_no_op() {
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("READY", LONG, || async {
        env.endpoint(id).await.status == "READY"
    })
    .await;
    env.publish(EventKind::Delete, &tenant, id).await;
    wait_for("DELETED", LONG, || async {
        env.endpoint(id).await.status == "DELETED"
    })
    .await;
    assert_eq!(env.endpoint(id).await.url, None);

    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("skip recorded", LONG, || async {
        env.history(id).await.len() == 3
    })
    .await;
    let history = env.history(id).await;
    assert_eq!(
        history
            .iter()
            .map(|h| h.outcome.as_str())
            .collect::<Vec<_>>(),
        ["ready", "deleted", "skipped"]
    );
    assert_eq!(
        env.endpoint(id).await.status,
        "DELETED",
        "a deleted endpoint is never redeployed"
    );
    env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn endpoints_left_deploying_are_resumed_at_start_up() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 3).await;
    // As if a worker crashed after recording DEPLOYING and its messages were lost.
    env.sql("UPDATE endpoints SET status = 'DEPLOYING'").await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    env.wait_all_ready("resumed endpoints READY", &ids, LONG)
        .await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_deploy_longer_than_the_ack_wait_is_kept_alive_not_redelivered() {
    let env = Env::start().await;
    let mut settings = env.settings();
    // JetStream would redeliver after 2 s without progress acks; the deploy takes 5 s.
    settings.nats_ack_wait_seconds = 2;
    settings.simulate_delay_ms = 5_000;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("READY", LONG, || async {
        env.endpoint(id).await.status == "READY"
    })
    .await;
    env.wait_all_answered(LONG).await;
    let history = env.history(id).await;
    assert_eq!(history.len(), 1, "one pass, no redelivery: {history:?}");
    assert_eq!(history[0].events, 1);
    let stream = env
        .js
        .get_stream(deploy_worker::events::STREAM)
        .await
        .unwrap();
    let mut consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            deploy_worker::events::DEPLOY_CONSUMER,
        )
        .await
        .unwrap();
    assert_eq!(consumer.info().await.unwrap().num_redelivered, 0);
    worker.shutdown().await.unwrap();
}
