//! The worker survives its database and broker going away, and stops gracefully on SIGTERM:
//! nothing is lost, nothing stays DEPLOYING.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Env, wait_for};
use deploy_worker::events::EventKind;
use deploy_worker::worker::Worker;

const LONG: Duration = Duration::from_secs(90);
/// Well under the 30 s ack wait the binary's consumer is created with: a message handed back
/// is redelivered at once, one merely abandoned would only come back after the ack wait.
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

    wait_for("every endpoint READY after the restart", LONG, || async {
        env.count_status(&ids, "READY").await == ids.len()
    })
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
    wait_for("first half READY", LONG, || async {
        env.count_status(&ids[..20], "READY").await == 20
    })
    .await;

    env.nats.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.nats.start_again().unwrap();
    // The stream lives in the server's store directory and survives the restart.
    for id in &ids[20..] {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    wait_for(
        "second half READY after the broker came back",
        LONG,
        || async { env.count_status(&ids, "READY").await == ids.len() },
    )
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
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 30).await;
    let mut child = spawn_worker_binary(&env, 1_500, 20, 30);
    for id in &ids {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    wait_for("deploys in flight", LONG, || async {
        env.count_status(&ids, "DEPLOYING").await == 5
    })
    .await;
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(30)).await;
    assert!(status.success(), "graceful exit, got {status}");

    // The five in flight finished; the 25 waiting for a permit were handed back at once.
    assert_eq!(
        env.count_status(&ids, "DEPLOYING").await,
        0,
        "in-flight deploys finish before exit"
    );
    assert_eq!(env.count_status(&ids, "READY").await, 5);
    assert_eq!(
        env.stream_messages().await,
        25,
        "the handed-back events wait in the stream"
    );

    // Handed back (nak), not abandoned: the next worker gets them at once, well before the
    // consumer's 30 s ack wait would have released them.
    let worker = Worker::start(&env.settings()).await.unwrap();
    wait_for("the rest READY on the next worker", HANDED_BACK, || async {
        env.count_status(&ids, "READY").await == ids.len()
    })
    .await;
    env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn sigterm_with_a_short_grace_hands_running_deploys_back() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 5).await;
    let mut child = spawn_worker_binary(&env, 60_000, 1, 30);
    for id in &ids {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    wait_for("deploys in flight", LONG, || async {
        env.count_status(&ids, "DEPLOYING").await == 5
    })
    .await;
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    assert!(status.success(), "graceful exit, got {status}");
    assert_eq!(
        env.stream_messages().await,
        5,
        "the handed-back events wait in the stream"
    );

    let worker = Worker::start(&env.settings()).await.unwrap();
    wait_for("READY on the next worker", HANDED_BACK, || async {
        env.count_status(&ids, "READY").await == 5
    })
    .await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_crash_mid_deploy_leaves_nothing_deploying_once_a_worker_runs_again() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 10).await;
    let mut child = spawn_worker_binary(&env, 30_000, 20, 3);
    for id in &ids {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    wait_for("deploys in flight", LONG, || async {
        env.count_status(&ids, "DEPLOYING").await == 5
    })
    .await;
    // SIGKILL: no graceful stop, no answers sent.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.count_status(&ids, "DEPLOYING").await, 5);

    // The next worker resumes the DEPLOYING endpoints at start-up and gets the unanswered
    // messages back after the ack wait.
    let worker = Worker::start(&env.settings()).await.unwrap();
    wait_for("every endpoint READY after the crash", LONG, || async {
        env.count_status(&ids, "READY").await == ids.len()
    })
    .await;
    env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}
