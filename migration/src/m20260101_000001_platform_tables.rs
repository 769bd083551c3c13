//! The platform tables the worker reads, created only where they are missing.
//!
//! The platform's API owns these tables. On its database they already exist and this
//! migration leaves them alone; on an empty database (demo, tests, a fresh install) it
//! creates them with the columns the platform contract names (README, "Platform contracts").

use sea_orm_migration::prelude::*;

/// Creates `models`, `model_versions`, `endpoints` (and `citext`) when absent.
#[derive(DeriveMigrationName)]
pub struct Migration;

/// Keeps `updated_at` current on every update, as the platform's own trigger does.
const TOUCH_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION deploy_worker_touch_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$ LANGUAGE plpgsql"#;

const MODELS: &str = r#"
CREATE TABLE models (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL,
    project_id  uuid NOT NULL,
    name        citext NOT NULL,
    description text,
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, project_id, name)
)"#;

const MODEL_VERSIONS: &str = r#"
CREATE TABLE model_versions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL,
    project_id    uuid NOT NULL,
    model_id      uuid NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    version       integer NOT NULL,
    artifact_uri  text,
    source_run_id text,
    metrics       jsonb,
    stage         text,
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, version)
)"#;

const ENDPOINTS: &str = r#"
CREATE TABLE endpoints (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid NOT NULL,
    project_id       uuid NOT NULL,
    name             citext NOT NULL,
    status           text NOT NULL DEFAULT 'CREATING',
    url              text,
    runtime          text NOT NULL DEFAULT 'kserve',
    model_id         uuid REFERENCES models (id),
    model_version_id uuid REFERENCES model_versions (id),
    traffic          jsonb,
    autoscaling      jsonb,
    runtime_config   jsonb,
    created_by       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, project_id, name)
)"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS citext")
            .await?;
        db.execute_unprepared(TOUCH_FUNCTION).await?;
        for (table, ddl) in [
            ("models", MODELS),
            ("model_versions", MODEL_VERSIONS),
            ("endpoints", ENDPOINTS),
        ] {
            // Only a table we create gets our trigger: the platform's tables keep their own.
            if manager.has_table(table).await? {
                continue;
            }
            db.execute_unprepared(ddl).await?;
            db.execute_unprepared(&format!(
                "CREATE TRIGGER {table}_touch_updated_at BEFORE UPDATE ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION deploy_worker_touch_updated_at()"
            ))
            .await?;
        }
        Ok(())
    }
}
