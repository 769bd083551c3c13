//! `deploy-worker migrate` on a database the platform already created keeps every row and
//! trigger, adds only the worker's columns and tables, and is a no-op the second time; the
//! spec-generation trigger moves only when a serving field changes.

mod common;

use std::process::Command;

use deploy_worker::store::{Store, StoreSettings};
use devkit::sandbox::LocalPostgres;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// The platform's own schema, written independently of ours: its trigger function has another
/// name, `source_run_id` is a uuid, there is an extra column, and rows exist.
const PLATFORM_SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS citext;
CREATE FUNCTION set_updated_at() RETURNS trigger AS $$
BEGIN NEW.updated_at = now(); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TABLE models (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, project_id uuid NOT NULL,
    name citext NOT NULL, created_by text, created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE model_versions (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, project_id uuid NOT NULL,
    model_id uuid NOT NULL REFERENCES models(id), version int NOT NULL, artifact_uri text,
    source_run_id uuid, metrics jsonb, stage text, created_by text,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE endpoints (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, project_id uuid NOT NULL,
    name citext NOT NULL, status text NOT NULL DEFAULT 'CREATING', url text,
    runtime text NOT NULL DEFAULT 'kserve', model_id uuid, model_version_id uuid REFERENCES model_versions(id),
    traffic jsonb, autoscaling jsonb, runtime_config jsonb, created_by text, description text,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, project_id, name));
CREATE TRIGGER endpoints_set_updated_at BEFORE UPDATE ON endpoints FOR EACH ROW EXECUTE FUNCTION set_updated_at();
INSERT INTO models VALUES ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-0000000000a1',
    '00000000-0000-4000-8000-0000000000b1', 'Fraud', 'alice', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z');
INSERT INTO model_versions VALUES ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-0000000000a1',
    '00000000-0000-4000-8000-0000000000b1', '00000000-0000-4000-8000-000000000001', 3, 's3://models/fraud/3',
    '00000000-0000-4000-8000-0000000000c1', '{"auc": 0.91}', 'production', 'alice',
    '2026-01-02T00:00:00Z', '2026-01-02T00:00:00Z');
INSERT INTO endpoints (id, tenant_id, project_id, name, status, url, runtime, model_id, model_version_id,
    traffic, autoscaling, runtime_config, created_by, description, created_at, updated_at) VALUES
  ('00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-0000000000b1',
   'fraud-prod', 'READY', 'http://isvc-00000000.example.local', 'kserve', '00000000-0000-4000-8000-000000000001',
   '00000000-0000-4000-8000-000000000002', '{"canaryTrafficPercent": 0}', '{"minReplicas": 2}', '{}', 'alice',
   'production fraud scoring', '2026-01-03T00:00:00Z', '2026-01-03T00:00:00Z'),
  ('00000000-0000-4000-8000-000000000004', '00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-0000000000b1',
   'fraud-shadow', 'ERROR', NULL, 'kserve-triton', NULL, NULL, NULL, NULL, '{"gpu": true}', 'bob', NULL,
   '2026-01-04T00:00:00Z', '2026-01-04T00:00:00Z');
"#;

async fn query_text(db: &DatabaseConnection, sql: &str) -> String {
    let rows = db
        .query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect(sql);
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("text column"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The platform's rows as they were, whatever columns the worker added.
async fn platform_rows(db: &DatabaseConnection) -> String {
    query_text(
        db,
        "SELECT (to_jsonb(e) - 'status_reason' - 'spec_generation' - 'ready_generation')::text FROM endpoints e \
         UNION ALL SELECT to_jsonb(m)::text FROM models m \
         UNION ALL SELECT to_jsonb(v)::text FROM model_versions v ORDER BY 1",
    )
    .await
}

/// Everything about the schema a migration could change, plus every row.
async fn snapshot(db: &DatabaseConnection) -> String {
    let columns = query_text(
        db,
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(column_default, '') \
         FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1",
    )
    .await;
    let triggers = query_text(db, "SELECT tgrelid::regclass || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1").await;
    let indexes = query_text(
        db,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    )
    .await;
    let rows = query_text(
        db,
        "SELECT to_jsonb(e)::text FROM endpoints e UNION ALL SELECT to_jsonb(m)::text FROM seaql_migrations m ORDER BY 1",
    )
    .await;
    format!("{columns}\n--\n{triggers}\n--\n{indexes}\n--\n{rows}")
}

fn migrate_cli(url: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_deploy-worker"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run deploy-worker migrate");
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn migrating_a_platform_database_keeps_its_rows_and_runs_idempotently() {
    let pg = LocalPostgres::start().unwrap();
    let store = Store::connect(
        &pg.url(),
        StoreSettings {
            max_connections: 2,
            batch_max: 1,
        },
    )
    .await
    .unwrap();
    let db = store.db();
    db.execute_unprepared(PLATFORM_SCHEMA).await.unwrap();
    let before = platform_rows(db).await;

    migrate_cli(&pg.url());
    assert_eq!(
        platform_rows(db).await,
        before,
        "every platform row is kept as it was"
    );
    let triggers = query_text(db, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'endpoints'::regclass AND NOT tgisinternal ORDER BY 1").await;
    assert_eq!(
        triggers, "endpoints_bump_spec_generation\nendpoints_set_updated_at",
        "the platform's trigger stays, ours is added, no second updated_at trigger"
    );
    let added = query_text(
        db,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .await;
    assert_eq!(
        added,
        "convergence_requests\ndeployment_history\nendpoints\nmodel_versions\nmodels\nrejected_events\nseaql_migrations\ntenant_pauses"
    );
    let generations = query_text(db, "SELECT spec_generation::text || ' ' || coalesce(ready_generation::text, '-') FROM endpoints ORDER BY id").await;
    assert_eq!(generations, "1 -\n1 -");

    let once = snapshot(db).await;
    migrate_cli(&pg.url());
    assert_eq!(snapshot(db).await, once, "a second run changes nothing");
}

#[tokio::test]
async fn a_fresh_database_gets_the_platform_shape_and_the_generation_trigger_works() {
    let pg = LocalPostgres::start().unwrap();
    migrate_cli(&pg.url());
    let store = Store::connect(
        &pg.url(),
        StoreSettings {
            max_connections: 2,
            batch_max: 1,
        },
    )
    .await
    .unwrap();
    let db = store.db();
    db.execute_unprepared(
        "INSERT INTO endpoints (id, tenant_id, project_id, name, traffic, runtime_config, updated_at) VALUES \
         ('00000000-0000-4000-8000-000000000009', gen_random_uuid(), gen_random_uuid(), 'e', \
          '{\"canaryTrafficPercent\": 10}', '{\"a\": 1, \"b\": 2}', '2026-01-01T00:00:00Z')",
    )
    .await
    .unwrap();
    let generation =
        || async { query_text(db, "SELECT spec_generation::text FROM endpoints").await };
    let cases = [
        (
            "UPDATE endpoints SET name = 'renamed', status = 'READY', url = 'http://x'",
            "1",
            "non-serving fields",
        ),
        (
            "UPDATE endpoints SET runtime_config = '{\"b\": 2, \"a\": 1}'",
            "1",
            "same JSON, other key order",
        ),
        (
            "UPDATE endpoints SET traffic = '{\"canaryTrafficPercent\": 0}'",
            "2",
            "traffic",
        ),
        (
            "UPDATE endpoints SET autoscaling = '{\"minReplicas\": 1}'",
            "3",
            "autoscaling",
        ),
        (
            "UPDATE endpoints SET runtime = 'kserve-triton'",
            "4",
            "runtime",
        ),
        (
            "UPDATE endpoints SET runtime_config = NULL",
            "5",
            "runtime_config",
        ),
        (
            "UPDATE endpoints SET spec_generation = 100",
            "5",
            "hand-written generation is ignored",
        ),
    ];
    for (sql, expected, what) in cases {
        db.execute_unprepared(sql).await.unwrap();
        assert_eq!(generation().await, expected, "{what}");
    }
    let touched = query_text(
        db,
        "SELECT (updated_at > '2026-01-01T00:00:00Z')::text FROM endpoints",
    )
    .await;
    assert_eq!(
        touched, "true",
        "updated_at is kept current on tables the worker created"
    );
}
