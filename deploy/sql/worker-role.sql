-- Least privilege for deploy-worker's database role.
--
-- The worker reads the platform's tables, writes only endpoints.status, endpoints.url and its
-- own columns, inserts into (and prunes) its own two tables and reads the tenant pauses. It needs no ownership and no
-- DDL: an owner role runs the migrations (`deploy-worker migrate`) and the worker runs with
-- DATABASE_MIGRATE=false.
--
-- Run as the owner of the tables, after `deploy-worker migrate`, with the worker's role name:
--   psql "$OWNER_DATABASE_URL" -v worker_role=deploy_worker -f deploy/sql/worker-role.sql
-- or let the migration do it:
--   deploy-worker migrate --grant-to deploy_worker
-- The role must exist (CREATE ROLE deploy_worker LOGIN PASSWORD '...').
-- Every statement is a GRANT: running it again changes nothing.

GRANT USAGE ON SCHEMA public TO :"worker_role";

-- Platform tables: read the intent.
GRANT SELECT ON endpoints, model_versions, models TO :"worker_role";

-- endpoints: the status and url the platform reads, and the worker's own columns.
-- spec_generation is moved by a trigger only, never by the worker.
GRANT UPDATE (status, url, status_reason, ready_generation) ON endpoints TO :"worker_role";

-- The worker's own tables: one row per pass and per refused message; DELETE for retention.
GRANT SELECT, INSERT, DELETE ON deployment_history, rejected_events TO :"worker_role";
GRANT USAGE ON SEQUENCE deployment_history_id_seq, rejected_events_id_seq TO :"worker_role";

-- Convergence requests: recorded per event, claimed, renewed and released by every replica.
GRANT SELECT, INSERT, UPDATE, DELETE ON convergence_requests TO :"worker_role";

-- Tenant pauses: read with every endpoint a pass loads and by the periodic metrics reads.
-- The operator commands that write them (`deploy-worker tenant pause|resume`, and
-- `rejected replay`, which sets rejected_events.replayed_at) run with the owner's URL.
GRANT SELECT ON tenant_pauses TO :"worker_role";

-- Start-up checks that no migration is pending (read only; DATABASE_MIGRATE=false).
GRANT SELECT ON seaql_migrations TO :"worker_role";
