//! The operator commands, run as the real binary against real Postgres and NATS with workers
//! running: `reconcile` converges an endpoint whose event was lost, `rejected list|replay`
//! shows refused events and re-publishes them after the cause was fixed, and
//! `tenant pause|resume|list` holds a tenant's deploys on every replica without losing one.

mod common;

use std::time::Duration;

use common::{Env, deploy_worker_cli, wait_for};
use deploy_worker::events::EventKind;
use deploy_worker::store::PAUSED_REASON;
use deploy_worker::worker::Worker;
use devkit::platform::{self, ServingPatch};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);
const BAD_PAYLOAD: &[u8] = b"{not json\x00\xff";

impl Env {
    fn urls(&self) -> Option<(&devkit::sandbox::LocalPostgres, &devkit::sandbox::LocalNats)> {
        Some((&self.pg, &self.nats))
    }
}

async fn wait_status(env: &Env, id: Uuid, status: &str) {
    wait_for(&format!("{id} {status}"), LONG, || async {
        env.endpoint(id).await.status == status
    })
    .await;
}

/// Ids of `rejected_events`, oldest first, with whether each was replayed.
async fn rejected_ids(env: &Env) -> Vec<(i64, bool)> {
    env.db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id, replayed_at IS NOT NULL AS replayed FROM rejected_events ORDER BY id",
        ))
        .await
        .expect("rejected ids")
        .iter()
        .map(|row| {
            (
                row.try_get("", "id").expect("id"),
                row.try_get("", "replayed").expect("replayed"),
            )
        })
        .collect()
}

/// Installs the worker's trace layer (no export) so passes get trace ids, as in the binary.
fn trace_ids_on() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = deploy_worker::telemetry::subscriber(
            deploy_worker::telemetry::LogFormat::Compact,
            &provider,
            tracing_subscriber::fmt::TestWriter::new(),
        );
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
    });
}

#[actix_rt::test]
async fn reconcile_converges_an_endpoint_whose_event_was_lost() {
    trace_ids_on();
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.expect("worker");
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_status(&env, id, "READY").await;

    // A serving field changes, but its event never reaches JetStream (a publisher crash).
    let patch = ServingPatch {
        autoscaling: Some(Some(json!({"minReplicas": 2}))),
        ..ServingPatch::default()
    };
    platform::patch_endpoint(&env.db, id, patch)
        .await
        .expect("patch");
    let row = env.endpoint(id).await;
    assert_eq!((row.spec_generation, row.ready_generation), (2, Some(1)));

    let endpoint = id.to_string();
    let args = ["reconcile", "--endpoint-id", endpoint.as_str(), "--wait"];
    let (ok, out, err) = deploy_worker_cli(&args, env.urls(), &[]).await;
    assert!(ok, "reconcile failed: {err}\n{out}");
    assert!(out.contains("outcome: ready (status READY"), "{out}");
    let row = env.endpoint(id).await;
    assert_eq!(
        (row.status.as_str(), row.ready_generation),
        ("READY", Some(2))
    );
    // The printed traceparent leads to the pass's trace.
    let traceparent = out
        .split("traceparent ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("traceparent printed");
    let trace_id = traceparent.split('-').nth(1).expect("trace id").to_owned();
    assert_eq!(trace_id.len(), 32, "{traceparent}");
    let history = env.history(id).await;
    let last = history.last().expect("history");
    assert_eq!((last.generation, last.outcome.as_str()), (2, "ready"));
    assert_eq!(last.trace_id.as_deref(), Some(trace_id.as_str()));
    assert!(out.contains(&format!("trace {trace_id}")), "{out}");

    // An intent that cannot be served: --wait prints the reason and exits non-zero.
    let patch = ServingPatch {
        traffic: Some(Some(common::canary(150))),
        ..ServingPatch::default()
    };
    platform::patch_endpoint(&env.db, id, patch)
        .await
        .expect("patch");
    let (ok, out, err) = deploy_worker_cli(&args, env.urls(), &[]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("outcome: error (status ERROR"), "{out}");
    assert!(
        err.contains("ended ERROR") && err.contains("canaryTrafficPercent"),
        "{err}"
    );

    // Without --wait it only publishes; an already converged endpoint is recorded unchanged.
    let patch = ServingPatch {
        traffic: Some(None),
        ..ServingPatch::default()
    };
    platform::patch_endpoint(&env.db, id, patch)
        .await
        .expect("patch");
    let (ok, out, err) = deploy_worker_cli(&args[..3], env.urls(), &[]).await;
    assert!(ok, "{err}");
    assert!(out.contains("published deploy event"), "{out}");
    wait_status(&env, id, "READY").await;
    let (ok, out, err) = deploy_worker_cli(&args, env.urls(), &[]).await;
    assert!(ok, "{err}");
    assert!(out.contains("outcome: unchanged (status READY"), "{out}");

    // Mistakes are explained, nothing is published.
    let unknown = Uuid::new_v4().to_string();
    let (ok, _, err) =
        deploy_worker_cli(&["reconcile", "--endpoint-id", &unknown], env.urls(), &[]).await;
    assert!(!ok);
    assert!(
        err.contains(&format!("endpoint {unknown} does not exist")),
        "{err}"
    );
    let url = env.pg.url();
    let (ok, _, err) = deploy_worker_cli(
        &["reconcile", "--endpoint-id", &endpoint],
        None,
        &[("DATABASE_URL", url.as_str())],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("set NATS_URL"), "{err}");
    assert!(!err.contains(&url), "the URL is redacted: {err}");
    env.wait_all_answered(LONG).await;
    worker.shutdown().await.expect("shutdown");
}

#[actix_rt::test]
async fn rejected_events_are_listed_and_replayed_after_the_fix() {
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.expect("worker");
    let tenant = env.tenant().await;
    // An event that overtook its endpoint's row (the platform committed the row later).
    let early = Uuid::new_v4();
    env.publish(EventKind::Deploy, &tenant, early).await;
    // Not even UTF-8: replayed byte for byte all the same.
    env.publish_raw(EventKind::Delete, BAD_PAYLOAD).await;
    wait_for("two refusals recorded", LONG, || async {
        env.rejected().await.len() == 2
    })
    .await;
    // The two subjects have their own consumers: find each refusal by its subject.
    let rows = env.rejected().await;
    let ids = rejected_ids(&env).await;
    let deploy_first = rows[0].subject == "mlops.serving.deploy_requested";
    let (first, second) = if deploy_first {
        (ids[0].0, ids[1].0)
    } else {
        (ids[1].0, ids[0].0)
    };

    let (ok, out, err) = deploy_worker_cli(&["rejected", "list"], env.urls(), &[]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for column in [
        "ID", "RECEIVED", "SUBJECT", "ENDPOINT", "REPLAYED", "REASON",
    ] {
        assert!(lines[0].contains(column), "{out}");
    }
    let line = |id: i64| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row {id} in {out}"))
    };
    assert!(
        line(first).contains("mlops.serving.deploy_requested")
            && line(first).contains(&early.to_string())
            && line(first).contains("does not exist"),
        "{out}"
    );
    assert!(
        line(second).contains("mlops.serving.delete_requested")
            && line(second).contains("not a valid serving event"),
        "{out}"
    );

    // The fix: the endpoint row arrives. Replaying the recorded event deploys it.
    env.sql(&format!(
        "INSERT INTO endpoints (id, tenant_id, project_id, name, model_id, model_version_id) \
         VALUES ('{early}', '{}', '{}', 'late-row', '{}', '{}')",
        tenant.tenant_id,
        tenant.project_id,
        tenant.version.model_id,
        tenant.version.model_version_id
    ))
    .await;
    let first_id = first.to_string();
    let (ok, out, err) =
        deploy_worker_cli(&["rejected", "replay", "--id", &first_id], env.urls(), &[]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "replayed {first} to mlops.serving.deploy_requested"
        )),
        "{out}"
    );
    wait_status(&env, early, "READY").await;
    let replayed = rejected_ids(&env).await;
    assert!(
        replayed.contains(&(first, true)) && replayed.contains(&(second, false)),
        "{replayed:?}"
    );
    let (_, out, _) =
        deploy_worker_cli(&["rejected", "list", "--since", "1h"], env.urls(), &[]).await;
    let replayed_column = out
        .lines()
        .find(|l| l.starts_with(&format!("{first} ")))
        .expect("row")
        .split_whitespace()
        .nth(4);
    assert!(
        replayed_column.is_some_and(|c| c.ends_with('Z')),
        "the replay time is shown: {out}"
    );

    // --since replays only what was not replayed yet; a payload still wrong is refused and
    // recorded again, as a new row.
    let (ok, out, err) =
        deploy_worker_cli(&["rejected", "replay", "--since", "1h"], env.urls(), &[]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "replayed {second} to mlops.serving.delete_requested"
        )),
        "{out}"
    );
    assert!(out.contains("1 of 1 event(s) replayed"), "{out}");
    wait_for("the bad payload refused again", LONG, || async {
        env.rejected().await.len() == 3
    })
    .await;
    let rows = env.rejected().await;
    assert_eq!(rows[2].payload_bytes.as_deref(), Some(BAD_PAYLOAD));
    assert_eq!(rows[2].subject, "mlops.serving.delete_requested");

    // Mistakes are explained.
    let (ok, _, err) =
        deploy_worker_cli(&["rejected", "replay", "--id", "999999"], env.urls(), &[]).await;
    assert!(!ok);
    assert!(
        err.contains("rejected event 999999 does not exist"),
        "{err}"
    );
    let (ok, _, err) = deploy_worker_cli(
        &["rejected", "replay", "--since", "yesterday"],
        env.urls(),
        &[],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");
    let (ok, _, err) = deploy_worker_cli(&["rejected", "replay"], env.urls(), &[]).await;
    assert!(!ok);
    assert!(err.contains("--id") && err.contains("--since"), "{err}");

    env.wait_all_answered(LONG).await;
    worker.shutdown().await.expect("shutdown");
}

#[actix_rt::test]
async fn a_paused_tenant_is_held_on_every_replica_and_resumed_without_new_events() {
    let env = Env::start().await;
    let mut settings = env.settings();
    settings.metrics_poll_seconds = 1;
    // Two replicas on the same consumers: the pause lives in Postgres, both honour it.
    let replicas = [
        Worker::start(&settings).await.expect("worker 1"),
        Worker::start(&settings).await.expect("worker 2"),
    ];
    let (paused, other) = (env.tenant().await, env.tenant().await);
    let held = env.endpoints(&paused, 6).await;
    let free = env.endpoints(&other, 2).await;
    let tenant = paused.tenant_id.to_string();

    let (ok, out, err) = deploy_worker_cli(
        &[
            "tenant",
            "pause",
            "--tenant-id",
            &tenant,
            "--reason",
            "model registry migration",
        ],
        env.urls(),
        &[],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("tenant {tenant} paused; 6 endpoint(s)")),
        "{out}"
    );
    for id in held.iter().chain(&free) {
        let owner = if held.contains(id) { &paused } else { &other };
        env.publish(EventKind::Deploy, owner, *id).await;
    }
    for id in &free {
        wait_status(&env, *id, "READY").await;
    }
    // Every event of the paused tenant is answered (nothing waits in JetStream) and its
    // endpoints are held DEPLOYING with the reason.
    env.wait_all_answered(LONG).await;
    for id in &held {
        let row = env.endpoint(*id).await;
        assert_eq!(row.status, "DEPLOYING");
        assert_eq!(row.status_reason.as_deref(), Some(PAUSED_REASON));
        assert_eq!(
            env.history(*id)
                .await
                .last()
                .map(|h| h.outcome.clone())
                .as_deref(),
            Some("paused")
        );
    }
    let (ok, out, err) = deploy_worker_cli(&["tenant", "list"], env.urls(), &[]).await;
    assert!(ok, "{err}");
    let row = out.lines().nth(1).expect("a paused tenant");
    assert!(
        row.starts_with(&tenant)
            && row.contains(" 6 ")
            && row.ends_with("model registry migration"),
        "{out}"
    );

    // Resume: every held endpoint deploys, from the resume alone.
    let (ok, out, err) = deploy_worker_cli(
        &["tenant", "resume", "--tenant-id", &tenant],
        env.urls(),
        &[],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "tenant {tenant} resumed; deploy events published for 6 held endpoint(s)"
        )),
        "{out}"
    );
    for id in &held {
        wait_status(&env, *id, "READY").await;
        assert_eq!(env.endpoint(*id).await.status_reason, None);
    }
    let (_, out, _) = deploy_worker_cli(&["tenant", "list"], env.urls(), &[]).await;
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    // A pause lifted without the command's events (it was interrupted): the workers find the
    // held endpoints themselves.
    deploy_worker_cli(
        &["tenant", "pause", "--tenant-id", &tenant],
        env.urls(),
        &[],
    )
    .await;
    let patch = ServingPatch {
        autoscaling: Some(Some(json!({"minReplicas": 3}))),
        ..ServingPatch::default()
    };
    platform::patch_endpoint(&env.db, held[0], patch)
        .await
        .expect("patch");
    env.publish(EventKind::Deploy, &paused, held[0]).await;
    wait_for("the changed endpoint held", LONG, || async {
        env.endpoint(held[0]).await.status_reason.as_deref() == Some(PAUSED_REASON)
    })
    .await;
    env.sql(&format!(
        "DELETE FROM tenant_pauses WHERE tenant_id = '{tenant}'"
    ))
    .await;
    wait_status(&env, held[0], "READY").await;
    assert_eq!(env.endpoint(held[0]).await.ready_generation, Some(2));

    // Resuming a tenant that is not paused says so; a bad id is refused by name.
    let (ok, out, _) = deploy_worker_cli(
        &["tenant", "resume", "--tenant-id", &tenant],
        env.urls(),
        &[],
    )
    .await;
    assert!(ok);
    assert!(
        out.contains("was not paused; deploy events published for 0"),
        "{out}"
    );
    let (ok, _, err) =
        deploy_worker_cli(&["tenant", "pause", "--tenant-id", "acme"], env.urls(), &[]).await;
    assert!(!ok);
    assert!(err.contains("--tenant-id"), "{err}");

    env.wait_all_answered(LONG).await;
    for worker in replicas {
        worker.shutdown().await.expect("shutdown");
    }
}
