//! Database hardening on a real Postgres: migrations run by an owner role while the worker
//! runs as a role with only the grants of `deploy/sql/worker-role.sql`; concurrent `migrate`
//! processes on a fresh database; retention pruning, which never holds a lock an outcome
//! commit waits on.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::openmetrics::{parse_openmetrics, value};
use common::{Env, wait_for};
use deploy_worker::events::EventKind;
use deploy_worker::metrics::Metrics;
use deploy_worker::outcome::Outcome;
use deploy_worker::retention::{self, Pruned, RetentionArgs};
use deploy_worker::store::{
    Applied, HistoryEntry, RejectedEvent, StatusWrite, Store, StoreSettings, UrlChange, Write,
};
use deploy_worker::worker::Worker;
use devkit::sandbox::LocalPostgres;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use sea_orm::{TransactionTrait, Value};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);
/// A failure guard only: a commit that waits on a lock would wait forever.
const GUARD: Duration = Duration::from_secs(20);

/// `url` with another user name.
fn as_user(pg: &LocalPostgres, user: &str) -> String {
    pg.url()
        .replacen("postgres://postgres@", &format!("postgres://{user}@"), 1)
}

fn migrate_command(url: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deploy-worker"));
    command
        .arg("migrate")
        .args(extra)
        .env("DATABASE_URL", url)
        .env_remove("DATABASE_GRANT_TO");
    command
}

async fn connect(url: &str) -> DatabaseConnection {
    Database::connect(url).await.expect("connect")
}

async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect(sql)
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("count")
}

/// The error Postgres gives `role` for `sql` (panics when it succeeds).
async fn refused(db: &DatabaseConnection, sql: &str) -> String {
    match db.execute_unprepared(sql).await {
        Ok(_) => panic!("the worker role could run `{sql}`"),
        Err(err) => err.to_string(),
    }
}

#[actix_rt::test]
async fn the_worker_runs_as_a_role_with_only_its_grants_after_an_owner_migrated() {
    let pg = LocalPostgres::start().expect("postgres");
    let admin = connect(&pg.url()).await;
    // An owner role without superuser rights, and the worker's role without any.
    admin
        .execute_unprepared(
            "CREATE ROLE platform_owner LOGIN; \
             GRANT CREATE ON DATABASE postgres TO platform_owner; \
             GRANT CREATE ON SCHEMA public TO platform_owner; \
             CREATE ROLE deploy_worker LOGIN",
        )
        .await
        .expect("roles");
    let out = migrate_command(
        &as_user(&pg, "platform_owner"),
        &["--grant-to", "deploy_worker"],
    )
    .output()
    .expect("run migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owner = admin
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'deployment_history'",
        ))
        .await
        .expect("owner")
        .expect("row")
        .try_get_by_index::<String>(0)
        .expect("text");
    assert_eq!(owner, "platform_owner");

    // The platform (here: the superuser) writes endpoints; the worker runs as deploy_worker
    // and does not migrate.
    let env = Env::with_postgres(pg).await;
    let worker_url = as_user(&env.pg, "deploy_worker");
    let mut settings = env.settings();
    settings.database_url = Some(worker_url.clone());
    settings.database_migrate = false;
    let worker = Worker::start(&settings)
        .await
        .expect("start as deploy_worker");
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 3).await;
    for id in &ids {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    env.wait_all_ready("READY as deploy_worker", &ids, LONG)
        .await;
    env.publish(EventKind::Delete, &tenant, ids[0]).await;
    wait_for("DELETED as deploy_worker", LONG, || async {
        env.endpoint(ids[0]).await.status == "DELETED"
    })
    .await;
    // A refused event is recorded too (INSERT on rejected_events).
    env.publish_raw(EventKind::Deploy, b"not json").await;
    wait_for("rejected event recorded", LONG, || async {
        !env.rejected().await.is_empty()
    })
    .await;
    env.wait_all_answered(LONG).await;
    worker.shutdown().await.expect("shutdown");
    assert_eq!(env.history(ids[0]).await.len(), 2, "ready, deleted");

    // What the role cannot do.
    let restricted = connect(&worker_url).await;
    for (sql, why) in [
        ("UPDATE endpoints SET name = 'renamed'", "permission denied"),
        (
            "UPDATE endpoints SET spec_generation = 99",
            "permission denied",
        ),
        (
            "UPDATE model_versions SET artifact_uri = 's3://x'",
            "permission denied",
        ),
        ("DELETE FROM endpoints", "permission denied"),
        (
            "INSERT INTO models (id, tenant_id, project_id, name) VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'm')",
            "permission denied",
        ),
        ("DROP TABLE deployment_history", "must be owner"),
        (
            "ALTER TABLE endpoints ADD COLUMN evil text",
            "must be owner",
        ),
        ("CREATE TABLE evil (id int)", "permission denied"),
        ("TRUNCATE rejected_events", "permission denied"),
    ] {
        let err = refused(&restricted, sql).await;
        assert!(err.contains(why), "`{sql}`: {err}");
    }
    // With nothing pending the role starts even with the default DATABASE_MIGRATE=true (the
    // check only reads the migrations table) ...
    let mut migrating = settings.clone();
    migrating.database_migrate = true;
    Worker::start(&migrating)
        .await
        .expect("start with nothing to migrate")
        .shutdown()
        .await
        .expect("shutdown");
    // ... but it cannot migrate: a pending migration is refused with a clear message rather
    // than half applied.
    admin_forget_last_migration(&env).await;
    let err = Worker::start(&migrating)
        .await
        .err()
        .expect("cannot migrate");
    assert!(err.to_string().contains("database schema"), "{err}");
    settings.database_migrate = false;
    let err = Worker::start(&settings).await.err().expect("pending");
    assert!(err.to_string().contains("deploy-worker migrate"), "{err}");
    // Retention deletes as the worker role.
    env.sql("UPDATE deployment_history SET finished_at = now() - interval '40 days'")
        .await;
    let deleted = retention::prune_batch(
        &restricted,
        Pruned::History,
        Duration::from_secs(86_400),
        100,
    )
    .await
    .expect("prune as deploy_worker");
    assert_eq!(deleted, 4);
}

/// Makes the last migration pending again (as the superuser), as a new release would.
async fn admin_forget_last_migration(env: &Env) {
    env.sql(
        "DELETE FROM seaql_migrations WHERE version = (SELECT max(version) FROM seaql_migrations)",
    )
    .await;
}

#[test]
fn the_grants_refuse_a_missing_role_with_a_clear_error() {
    let pg = LocalPostgres::start().expect("postgres");
    let out = migrate_command(&pg.url(), &["--grant-to", "nobody_here"])
        .output()
        .expect("run migrate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nobody_here") && stderr.contains("the role must exist"),
        "{stderr}"
    );
}

#[test]
fn concurrent_migrate_processes_on_a_fresh_database_all_succeed() {
    let pg = LocalPostgres::start().expect("postgres");
    let children: Vec<_> = (0..3)
        .map(|_| {
            migrate_command(&pg.url(), &[])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn migrate")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "a concurrent migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let db = connect(&pg.url()).await;
        let applied = count(&db, "SELECT count(*) FROM seaql_migrations").await;
        assert_eq!(applied as usize, migration_count());
        for table in ["endpoints", "deployment_history", "rejected_events"] {
            let n = count(
                &db,
                &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{table}'"),
            )
            .await;
            assert_eq!(n, 1, "{table}");
        }
        let triggers = count(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'endpoints_bump_spec_generation'",
        )
        .await;
        assert_eq!(triggers, 1);
    });
}

fn migration_count() -> usize {
    use sea_orm_migration::MigratorTrait;
    migration::Migrator::migrations().len()
}

fn history_entry(endpoint_id: Uuid, tenant_id: Uuid, project_id: Uuid) -> HistoryEntry {
    HistoryEntry {
        endpoint_id,
        tenant_id,
        project_id,
        generation: 1,
        action: "deploy",
        outcome: Outcome::Ready,
        reason: None,
        isvc_name: "isvc-test".into(),
        url: Some("http://isvc-test.example.local".into()),
        events: 1,
        trace_id: None,
        event_published_at: None,
        started_at: Utc::now(),
        finished_at: Utc::now(),
    }
}

/// Inserts `n` history rows for `endpoint` and `n` rejected events, `days` old.
async fn old_rows(env: &Env, endpoint: Uuid, tenant: Uuid, n: usize, days: i32) {
    for _ in 0..n {
        env.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO deployment_history (endpoint_id, tenant_id, project_id, generation, \
                 action, outcome, isvc_name, started_at, finished_at) VALUES ($1, $2, $2, 1, \
                 'deploy', 'ready', 'isvc-old', now() - make_interval(days => $3), \
                 now() - make_interval(days => $3))",
                [endpoint.into(), tenant.into(), Value::from(days)],
            ))
            .await
            .expect("old history");
        env.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO rejected_events (subject, reason, payload, received_at) \
                 VALUES ('mlops.serving.deploy_requested', 'old', '{}', now() - make_interval(days => $1))",
                [Value::from(days)],
            ))
            .await
            .expect("old rejected");
    }
}

/// Two reads of one endpoint that land in the same batched load both get the row (the second
/// used to get `None`, and a refused event was then recorded as naming an unknown endpoint).
#[tokio::test]
async fn every_read_of_an_endpoint_in_one_batched_load_gets_the_row() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    let store = Store::connect(
        &env.pg.url(),
        StoreSettings {
            max_connections: 4,
            batch_max: 16,
        },
    )
    .await
    .expect("store");
    // One thread: the loader cannot run between the two requests, so one query serves both.
    let (first, second) = futures::future::join(store.load(id), store.load(id)).await;
    for loaded in [first, second] {
        let row = loaded.expect("load").expect("the endpoint exists");
        assert_eq!(row.id, id);
        assert_eq!(row.tenant_id, tenant.tenant_id);
    }
}

/// A `DEPLOYING` report queued (not awaited) just before the deploy's outcome commits with it
/// as one row update, and the guard decides both alike: the row ends as the outcome says, or
/// untouched when the intent moved on.
#[tokio::test]
async fn a_progress_report_overtaken_by_the_outcome_commits_as_one_write_with_it() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 2).await;
    let before = env.endpoint(ids[1]).await;
    let metrics = Arc::new(Metrics::new());
    let store = Store::connect_with_metrics(
        &env.pg.url(),
        StoreSettings {
            max_connections: 4,
            batch_max: 16,
        },
        metrics.clone(),
    )
    .await
    .expect("store");
    let status = |id, status, generation, history: Option<HistoryEntry>| {
        Write::Status(StatusWrite {
            endpoint_id: id,
            status,
            url: match history {
                Some(_) => UrlChange::Set("http://isvc-test.example.local".into()),
                None => UrlChange::Keep,
            },
            reason: None,
            only_at_generation: Some(generation),
            ready_generation: history.as_ref().map(|_| generation),
            history,
        })
    };
    // The second endpoint's writes are guarded by a generation it never had.
    store.queue(status(ids[0], "DEPLOYING", 1, None));
    store.queue(status(ids[1], "DEPLOYING", 7, None));
    // One thread: the committer cannot run between the queueing above and the two writes
    // below, so it finds all four waiting.
    let history = |id| Some(history_entry(id, tenant.tenant_id, tenant.project_id));
    let (ready, stale) = tokio::time::timeout(
        GUARD,
        futures::future::join(
            store.write(status(ids[0], "READY", 1, history(ids[0]))),
            store.write(status(ids[1], "READY", 7, history(ids[1]))),
        ),
    )
    .await
    .expect("the outcomes commit");
    assert_eq!(ready.expect("commit"), Applied::Yes);
    assert_eq!(stale.expect("commit"), Applied::Superseded);

    let row = env.endpoint(ids[0]).await;
    assert_eq!(row.status, "READY");
    assert_eq!(row.url.as_deref(), Some("http://isvc-test.example.local"));
    assert_eq!(row.ready_generation, Some(1));
    assert_eq!(env.endpoint(ids[1]).await.status, before.status);
    let outcomes = |rows: Vec<common::HistoryRow>| -> Vec<String> {
        rows.into_iter().map(|h| h.outcome).collect()
    };
    assert_eq!(outcomes(env.history(ids[0]).await), ["ready"]);
    assert_eq!(outcomes(env.history(ids[1]).await), ["superseded"]);
    // One transaction carried the four writes.
    let families = parse_openmetrics(&metrics.encode().expect("metrics"));
    assert_eq!(
        value(
            &families,
            "deploy_worker_group_commit_batch_size_count",
            &[]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&families, "deploy_worker_group_commit_batch_size_sum", &[]),
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_prune_transaction_never_holds_a_lock_an_outcome_commit_waits_on() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    old_rows(&env, id, tenant.tenant_id, 5, 40).await;

    // A prune batch of each table, inside a transaction that stays open.
    let prune = env.db.begin().await.expect("begin");
    let max_age = Duration::from_secs(30 * 86_400);
    for table in Pruned::ALL {
        let deleted = retention::prune_batch(&prune, table, max_age, 3)
            .await
            .expect("prune batch");
        assert_eq!(deleted, 3, "{table:?}");
    }

    // Meanwhile the store group-commits a READY outcome with its history row for the very
    // endpoint whose old history is being pruned, and a rejected event.
    let store = Store::connect(
        &env.pg.url(),
        StoreSettings {
            max_connections: 4,
            batch_max: 16,
        },
    )
    .await
    .expect("store");
    let ready = store.write(Write::Status(StatusWrite {
        endpoint_id: id,
        status: "READY",
        url: UrlChange::Set("http://isvc-test.example.local".into()),
        reason: None,
        only_at_generation: Some(1),
        ready_generation: Some(1),
        history: Some(history_entry(id, tenant.tenant_id, tenant.project_id)),
    }));
    let rejected = store.write(Write::Rejected(RejectedEvent::new(
        "mlops.serving.deploy_requested",
        Some(1),
        None,
        "bad payload".into(),
        b"x",
    )));
    let (ready, rejected) = tokio::time::timeout(GUARD, futures::future::join(ready, rejected))
        .await
        .expect("an outcome commit waited on the open prune transaction");
    assert_eq!(ready.expect("commit"), Applied::Yes);
    assert_eq!(rejected.expect("commit"), Applied::Yes);
    prune.commit().await.expect("commit prune");
    // The next round takes the two old rows of each table the first batch left.
    let settings = RetentionArgs {
        history_retention_days: 30,
        history_prune_batch: 3,
        history_prune_interval_seconds: 1,
    }
    .settings();
    assert_eq!(
        retention::prune(&env.db, &settings).await.expect("prune"),
        (2, 2)
    );

    let row = env.endpoint(id).await;
    assert_eq!(row.status, "READY");
    let history = env.history(id).await;
    assert_eq!(history.len(), 1, "old rows pruned, the new one kept");
    assert_eq!(history[0].isvc_name, "isvc-test");
    let left = env.rejected().await;
    assert_eq!(left.len(), 1, "old rows pruned, the new one kept");
    assert_eq!(left[0].reason, "bad payload");
}

#[actix_rt::test]
async fn the_worker_prunes_old_rows_in_batches_and_keeps_recent_ones() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    old_rows(&env, id, tenant.tenant_id, 7, 3).await;
    old_rows(&env, id, tenant.tenant_id, 2, 0).await;

    // 0 days keeps everything.
    let keep = RetentionArgs {
        history_retention_days: 0,
        history_prune_batch: 2,
        history_prune_interval_seconds: 1,
    };
    assert_eq!(keep.settings().max_age, None);
    assert_eq!(
        retention::prune(&env.db, &keep.settings())
            .await
            .expect("prune"),
        (0, 0)
    );
    assert_eq!(env.history(id).await.len(), 9);

    // The worker, with a 1-day retention and batches of 2, prunes the 3-day-old rows.
    let mut settings = env.settings();
    settings.retention = RetentionArgs {
        history_retention_days: 1,
        ..keep
    };
    let worker = Worker::start(&settings).await.expect("start");
    wait_for("old rows pruned", LONG, || async {
        env.history(id).await.len() == 2 && env.rejected().await.len() == 2
    })
    .await;
    worker.shutdown().await.expect("shutdown");
    assert!(
        env.history(id)
            .await
            .iter()
            .all(|h| h.finished_at > Utc::now() - chrono::Duration::hours(1)),
        "only recent rows are left"
    );
}

#[test]
fn retention_settings_refuse_bad_values_by_name_and_grant_to_is_documented() {
    for (flag, value) in [
        ("--history-retention-days", "-1"),
        ("--history-prune-batch", "many"),
        ("--history-prune-interval-seconds", "1.5"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_deploy-worker"))
            .args(["run", &format!("{flag}={value}")])
            .output()
            .expect("run");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-worker"))
        .args(["migrate", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--grant-to") && help.contains("[env: DATABASE_GRANT_TO"),
        "{help}"
    );
}
