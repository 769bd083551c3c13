//! The worker survives its database and broker going away, and stops gracefully on SIGTERM:
//! nothing is lost, nothing stays DEPLOYING.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use common::{Env, wait_for};
use deploy_worker::events::{self, EventKind};
use deploy_worker::pass::PanicAt;
use deploy_worker::worker::Worker;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

const LONG: Duration = Duration::from_secs(90);
/// Well under the 30 s a claim lives without renewal: a request handed back (its claim
/// released) is taken at once by the next worker, one merely abandoned only after its claim
/// expired.
const HANDED_BACK: Duration = Duration::from_secs(15);

#[actix_rt::test]
async fn postgres_stopped_mid_run_then_restarted_loses_nothing() {
    let mut env = Env::start().await;
    let mut settings = env.settings();
    settings.simulate_delay_ms = 20;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 150).await;
    for id in &ids[..50] {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    wait_for("some READY", LONG, || async {
        env.count_status(&ids, "READY").await >= 10
    })
    .await;

    env.pg.stop().unwrap();
    // Events keep arriving while the database is down.
    for id in &ids[50..] {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.pg.start_again().unwrap();

    env.wait_all_ready("every endpoint READY after the restart", &ids, LONG)
        .await;
    env.wait_all_answered(LONG).await;
    for id in &ids {
        let history = env.history(*id).await;
        assert!(
            history.iter().any(|h| h.outcome == "ready"),
            "{id} has a ready pass"
        );
    }
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn nats_restarted_mid_run_loses_nothing() {
    let mut env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 40).await;
    for id in &ids[..20] {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    env.wait_all_ready("first half READY", &ids[..20], LONG)
        .await;

    env.nats.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.nats.start_again().unwrap();
    // The stream lives in the server's store directory and survives the restart.
    for id in &ids[20..] {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    env.wait_all_ready("second half READY after the broker came back", &ids, LONG)
        .await;
    env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}

fn spawn_worker_binary(
    env: &Env,
    delay_ms: u64,
    grace_seconds: u64,
    ack_wait_seconds: u64,
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_deploy-worker"))
        .arg("run")
        // Five deploys at a time for the tenant: the rest wait for a permit.
        .env("DEPLOY_MAX_IN_FLIGHT_PER_TENANT", "5")
        .env("DATABASE_URL", env.pg.url())
        .env("NATS_URL", env.nats.url())
        .env("SIMULATE_DELAY_MS", delay_ms.to_string())
        .env("SHUTDOWN_GRACE_SECONDS", grace_seconds.to_string())
        .env("NATS_ACK_WAIT_SECONDS", ack_wait_seconds.to_string())
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the worker binary")
}

/// `n` endpoints of one tenant, the worker binary running (see [`spawn_worker_binary`]) and a
/// deploy event published for each.
async fn deploy_through_binary(
    env: &Env,
    n: usize,
    delay_ms: u64,
    grace_seconds: u64,
    ack_wait_seconds: u64,
) -> (Vec<uuid::Uuid>, std::process::Child) {
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, n).await;
    let child = spawn_worker_binary(env, delay_ms, grace_seconds, ack_wait_seconds);
    for id in &ids {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    (ids, child)
}

/// The next worker after a crash: it finds the requests once the dead worker's claims have
/// expired (two seconds here) and converges every endpoint of `ids`.
async fn converge_after_crash(env: &Env, ids: &[uuid::Uuid]) -> Worker {
    let mut settings = env.settings();
    settings.claim_ttl_seconds = 2;
    let worker = Worker::start(&settings).await.unwrap();
    env.wait_all_ready("every endpoint READY after the crash", ids, LONG)
        .await;
    worker
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn sigterm_lets_in_flight_deploys_finish_and_hands_the_rest_back() {
    let env = Env::start().await;
    let (ids, mut child) = deploy_through_binary(&env, 30, 4_000, 20, 30).await;
    wait_for("deploys in flight", LONG, || async {
        env.count_status(&ids, "DEPLOYING").await == 5
    })
    .await;
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(30)).await;
    assert!(status.success(), "graceful exit, got {status}");

    // The five in flight finished (and any pass admitted before the worker stopped taking
    // work: it lets its open pulls run out first, up to a second); every event was acked when
    // its request was recorded, and the requests still waiting stay in Postgres, unclaimed.
    assert_eq!(
        env.count_status(&ids, "DEPLOYING").await,
        0,
        "in-flight deploys finish before exit"
    );
    let ready = env.count_status(&ids, "READY").await;
    assert!(
        (5..ids.len()).contains(&ready),
        "the five in flight finish and most wait: {ready} READY"
    );
    assert_eq!(env.stream_messages().await, 0, "every event was acked");
    assert_eq!(
        env.requests().await,
        (ids.len() - ready, 0),
        "every endpoint not READY keeps its request, no claim held"
    );

    // Released, not abandoned: the next worker takes them at once, well before a claim of
    // the stopped worker would have expired.
    let worker = Worker::start(&env.settings()).await.unwrap();
    env.wait_all_ready("the rest READY on the next worker", &ids, HANDED_BACK)
        .await;
    env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn sigterm_with_a_short_grace_hands_running_deploys_back() {
    let env = Env::start().await;
    let (ids, mut child) = deploy_through_binary(&env, 5, 60_000, 1, 30).await;
    wait_for("deploys in flight", LONG, || async {
        env.count_status(&ids, "DEPLOYING").await == 5
    })
    .await;
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    assert!(status.success(), "graceful exit, got {status}");
    assert_eq!(
        env.requests().await,
        (5, 0),
        "the abandoned deploys' requests stay, their claims released"
    );

    let worker = Worker::start(&env.settings()).await.unwrap();
    env.wait_all_ready("READY on the next worker", &ids, HANDED_BACK)
        .await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_crash_mid_deploy_leaves_nothing_deploying_once_a_worker_runs_again() {
    let env = Env::start().await;
    let (ids, mut child) = deploy_through_binary(&env, 10, 30_000, 20, 3).await;
    wait_for("deploys in flight", LONG, || async {
        env.count_status(&ids, "DEPLOYING").await == 5
    })
    .await;
    // SIGKILL: no graceful stop, no answers sent.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.count_status(&ids, "DEPLOYING").await, 5);

    let worker = converge_after_crash(&env, &ids).await;
    env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}

/// Accept fast, lose nothing: the worker acks an event once its request is durable, so a crash
/// right after a batch of acks must still converge every endpoint those events named.
#[actix_rt::test]
async fn a_crash_right_after_a_batch_of_acks_loses_no_acked_event() {
    let env = Env::start().await;
    let (ids, mut child) = deploy_through_binary(&env, 200, 2_000, 20, 30).await;
    wait_for("every event acked", LONG, || async {
        env.stream_messages().await == 0 && env.ack_pending().await == 0
    })
    .await;
    // SIGKILL at once: five deploys at a time of two seconds each cannot have finished
    child.kill().unwrap();
    child.wait().unwrap();
    let ready = env.count_status(&ids, "READY").await;
    assert!(
        ready < 100,
        "{ready} READY already: the crash came too late to test anything"
    );
    // (a pass deletes its request just after its READY commits: the kill may fall between)
    let covered = env
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM endpoints e \
             WHERE e.id IN (SELECT value::uuid FROM jsonb_array_elements_text($1)) \
               AND (e.status = 'READY' \
                    OR EXISTS (SELECT 1 FROM convergence_requests r WHERE r.endpoint_id = e.id))",
            [serde_json::json!(ids).into()],
        ))
        .await
        .expect("query")
        .expect("row")
        .try_get::<i64>("", "n")
        .expect("n");
    assert_eq!(
        covered,
        ids.len() as i64,
        "every acked event's endpoint is READY or has its request recorded"
    );

    let worker = converge_after_crash(&env, &ids).await;
    wait_for("no request left", LONG, || async {
        env.requests().await == (0, 0)
    })
    .await;
    assert_eq!(env.count_status(&ids, "DEPLOYING").await, 0);
    worker.shutdown().await.unwrap();
}

/// A pass that panics (a worker bug, injected through the hidden failpoint) hands its messages
/// back and the endpoint's next delivery is served; three panics in a row at one generation end
/// `ERROR` with the panic message and the message is terminated. Other endpoints never notice,
/// and the endpoint deploys again once its intent moves on.
#[actix_rt::test]
async fn a_panicking_pass_is_isolated_and_ends_error_after_three_in_a_row() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 6).await;
    let bad = ids[0];
    let generation = env.endpoint(bad).await.spec_generation;
    let mut settings = env.settings();
    settings.failpoint_panic = vec![PanicAt {
        endpoint_id: bad,
        generation,
    }];
    let worker = Worker::start(&settings).await.unwrap();
    for id in &ids {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    env.wait_all_ready("the healthy endpoints READY", &ids[1..], LONG)
        .await;
    wait_for("the panicking endpoint ERROR", LONG, || async {
        env.endpoint(bad).await.status == "ERROR"
    })
    .await;
    env.wait_all_answered(LONG).await;
    let row = env.endpoint(bad).await;
    let reason = row.status_reason.unwrap_or_default();
    assert!(
        reason.contains("failed 3 times in a row") && reason.contains("failpoint"),
        "{reason}"
    );
    let history = env.history(bad).await;
    assert_eq!(
        history.len(),
        1,
        "one ERROR row, no outcome for the handed-back passes"
    );
    assert_eq!(history[0].outcome, "error");

    // the intent moves on: the same actor machinery deploys it
    env.sql(&format!(
        "UPDATE endpoints SET runtime_config = '{{\"modelFormat\":\"xgboost\"}}' WHERE id = '{bad}'"
    ))
    .await;
    env.publish(EventKind::Deploy, &tenant, bad).await;
    wait_for("READY at the next generation", LONG, || async {
        env.endpoint(bad).await.status == "READY"
    })
    .await;
    assert!(env.endpoint(bad).await.spec_generation > generation);
    worker.shutdown().await.unwrap();
}

/// Deliveries queued behind a long pass are not redelivered: with a 2 s ack wait and a pass of
/// 6 s, none of the four messages is (each is acked once its request is recorded).
#[actix_rt::test]
async fn deliveries_queued_behind_a_long_pass_are_kept_alive() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    let mut settings = env.settings();
    settings.nats_ack_wait_seconds = 2;
    settings.simulate_delay_ms = 6_000;
    let worker = Worker::start(&settings).await.unwrap();
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("the first pass DEPLOYING", LONG, || async {
        env.endpoint(id).await.status == "DEPLOYING"
    })
    .await;
    for _ in 0..3 {
        env.publish(EventKind::Deploy, &tenant, id).await;
    }
    wait_for("READY", LONG, || async {
        env.endpoint(id).await.status == "READY"
    })
    .await;
    env.wait_all_answered(LONG).await;
    let stream = env.js.get_stream(events::STREAM).await.unwrap();
    let mut consumer = stream
        .get_consumer::<jetstream::consumer::pull::Config>(events::DEPLOY_CONSUMER)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_redelivered, 0, "no message was redelivered");
    assert_eq!(
        info.delivered.consumer_sequence, 4,
        "four deliveries for four messages"
    );
    let events: usize = env
        .history(id)
        .await
        .iter()
        .map(|h| h.events as usize)
        .sum();
    assert_eq!(events, 4, "the passes covered exactly the four messages");
    worker.shutdown().await.unwrap();
}

/// An existing durable consumer is checked at start-up: finite `max_deliver` (as another
/// worker may have left it) is raised to unlimited, the worker follows the consumer's own ack
/// wait; a consumer without explicit acks is refused with the setting named. (A work-queue
/// stream only admits explicit acks, so the stream here is one with limits retention, as a
/// platform may have created it; the worker never changes an existing stream.)
#[actix_rt::test]
async fn existing_consumers_are_checked_and_fixed_where_safe() {
    let env = Env::start().await;
    env.js.delete_stream(events::STREAM).await.unwrap();
    let stream = env
        .js
        .create_stream(jetstream::stream::Config {
            retention: jetstream::stream::RetentionPolicy::Limits,
            ..events::stream_config()
        })
        .await
        .unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(events::DEPLOY_CONSUMER.into()),
            filter_subject: events::DEPLOY_SUBJECT.into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(3),
            max_deliver: 5,
            max_ack_pending: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(events::DELETE_CONSUMER.into()),
            filter_subject: events::DELETE_SUBJECT.into(),
            ack_policy: jetstream::consumer::AckPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let err = Worker::start(&env.settings())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("deploy-worker-delete") && err.contains("ack_policy"),
        "refused naming the consumer and setting: {err}"
    );
    let mut deploy = stream
        .get_consumer::<jetstream::consumer::pull::Config>(events::DEPLOY_CONSUMER)
        .await
        .unwrap();
    assert_eq!(
        deploy.info().await.unwrap().config.max_deliver,
        -1,
        "finite deliveries raised to unlimited"
    );

    stream
        .delete_consumer(events::DELETE_CONSUMER)
        .await
        .unwrap();
    events::bind(&env.js, env.settings().consumer_settings())
        .await
        .unwrap();
    assert_eq!(
        deploy.info().await.unwrap().config.ack_wait,
        Duration::from_secs(3),
        "the consumer's own ack wait"
    );
    assert_eq!(
        deploy.info().await.unwrap().config.max_ack_pending,
        1_000,
        "other settings kept as found"
    );
}
