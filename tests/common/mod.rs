//! Fixtures shared by the integration tests: [`Env`], a throw-away Postgres and NATS per test
//! with a migrated schema, whose methods create platform rows, publish events and read back
//! what the worker did; and utilities that need no server: W3C trace contexts, polling, a
//! minimal HTTP/1.1 client for the probes, the CLI runner and a log capture. Nothing here
//! stands in for Postgres or NATS: both are the real servers.

#![allow(dead_code)]

pub mod openmetrics;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use deploy_worker::config::Settings;
use deploy_worker::events::{self, EventKind};
use deploy_worker::store::{Store, StoreSettings};
use devkit::platform::{self, EventFields, ModelVersionRef, NewEndpoint, NewModelVersion};
use devkit::sandbox::{LocalNats, LocalPostgres};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, FromQueryResult,
    Statement, TransactionTrait,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The spans one deploy in simulate mode produces, from the event's receipt to the commit.
pub const DEPLOY_SPANS: [&str; 8] = [
    "receive",
    "pass",
    "load_intent",
    "render",
    "deploy",
    "apply",
    "wait_ready",
    "persist",
];

/// Worker settings from the environment and defaults, for `pg` and `nats`, serving HTTP on
/// any free port of 127.0.0.1 so workers started side by side never collide.
pub fn settings_for(pg: &LocalPostgres, nats: &LocalNats) -> Settings {
    let mut s = Settings::from_env();
    s.database_url = Some(pg.url());
    s.nats_url = Some(nats.url());
    s.http_listen = "127.0.0.1:0".to_owned();
    s
}

/// Real servers for one test.
pub struct Env {
    pub pg: LocalPostgres,
    pub nats: LocalNats,
    pub db: DatabaseConnection,
    pub js: jetstream::Context,
}

impl Env {
    /// Starts Postgres and NATS and migrates the schema.
    pub async fn start() -> Env {
        Env::with_postgres(LocalPostgres::start().expect("start postgres")).await
    }

    /// Like [`Env::start`] on a Postgres the caller started (a durable one, say).
    pub async fn with_postgres(pg: LocalPostgres) -> Env {
        let nats = LocalNats::start().expect("start nats");
        let url = nats.url();
        Env::with_servers(pg, nats, async_nats::ConnectOptions::new(), &url).await
    }

    /// Like [`Env::start`] on servers the caller started, reaching NATS at `nats_url` with
    /// `options` (TLS, credentials).
    pub async fn with_servers(
        pg: LocalPostgres,
        nats: LocalNats,
        options: async_nats::ConnectOptions,
        nats_url: &str,
    ) -> Env {
        let store = Store::connect(
            &pg.url(),
            StoreSettings {
                max_connections: 4,
                batch_max: 16,
            },
        )
        .await
        .expect("connect");
        deploy_worker::worker::migrate(&store, true)
            .await
            .expect("migrate");
        let client = options
            .retry_on_initial_connect()
            .connect(deploy_worker::config::nats_servers(nats_url))
            .await
            .expect("connect nats");
        let js = jetstream::new(client);
        js.get_or_create_stream(events::stream_config())
            .await
            .expect("stream");
        Env {
            db: store.db().clone(),
            pg,
            nats,
            js,
        }
    }

    /// Worker settings for these servers: simulate mode, quick retries.
    pub fn settings(&self) -> Settings {
        let mut s = settings_for(&self.pg, &self.nats);
        s.retry_base_ms = 100;
        s.retry_max_ms = 1_000;
        s.nats_ack_wait_seconds = 5;
        s.shutdown_grace_seconds = 10;
        s
    }

    /// Creates a tenant/project with one model version.
    pub async fn tenant(&self) -> Tenant {
        let (tenant_id, project_id) = (Uuid::new_v4(), Uuid::new_v4());
        let version = self
            .model_version(tenant_id, project_id, 1, Some("gs://models/demo/1"))
            .await;
        Tenant {
            tenant_id,
            project_id,
            version,
        }
    }

    /// Creates a model version.
    pub async fn model_version(
        &self,
        tenant_id: Uuid,
        project_id: Uuid,
        version: i32,
        artifact: Option<&str>,
    ) -> ModelVersionRef {
        platform::create_model_version(
            &self.db,
            &NewModelVersion {
                tenant_id,
                project_id,
                model_name: "model".into(),
                version,
                artifact_uri: artifact.map(str::to_owned),
            },
        )
        .await
        .expect("model version")
    }

    /// Creates `n` sklearn endpoints for `tenant`.
    pub async fn endpoints(&self, tenant: &Tenant, n: usize) -> Vec<Uuid> {
        let new: Vec<NewEndpoint> = (0..n)
            .map(|i| NewEndpoint {
                tenant_id: tenant.tenant_id,
                project_id: tenant.project_id,
                name: format!("ep-{}-{i}", Uuid::new_v4().simple()),
                runtime: "kserve".into(),
                model: Some(tenant.version),
                traffic: None,
                autoscaling: None,
                runtime_config: Some(json!({"modelFormat": "sklearn"})),
            })
            .collect();
        platform::create_endpoints(&self.db, &new)
            .await
            .expect("endpoints")
    }

    /// Publishes a deploy/delete event for `endpoint_id` as the platform would.
    pub async fn publish(&self, kind: EventKind, tenant: &Tenant, endpoint_id: Uuid) {
        let fields = tenant.event_fields(endpoint_id);
        platform::publish(&self.js, kind, &fields, &Uuid::new_v4().to_string())
            .await
            .expect("publish");
    }

    /// Publishes raw bytes on the subject of `kind`.
    pub async fn publish_raw(&self, kind: EventKind, payload: &[u8]) {
        platform::publish_raw(&self.js, kind, payload.to_vec(), None)
            .await
            .expect("publish raw");
    }

    /// Creates a model version (with or without an artifact) and an endpoint serving it.
    pub async fn create_endpoint(&self, artifact: Option<&str>) -> Endpoint {
        let tenant_id = Uuid::new_v4();
        let project_id = Uuid::new_v4();
        let model = platform::create_model_version(
            &self.db,
            &NewModelVersion {
                tenant_id,
                project_id,
                model_name: "fraud".into(),
                version: 1,
                artifact_uri: artifact.map(str::to_owned),
            },
        )
        .await
        .expect("model version");
        let name = format!("ep-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let ids = platform::create_endpoints(
            &self.db,
            &[NewEndpoint {
                tenant_id,
                project_id,
                name: name.clone(),
                runtime: "kserve".into(),
                model: Some(model),
                traffic: None,
                autoscaling: None,
                runtime_config: None,
            }],
        )
        .await
        .expect("endpoint");
        Endpoint {
            id: ids[0],
            tenant_id,
            project_id,
            name,
            model,
        }
    }

    /// Publishes a deploy event for `endpoint` inside the trace `cx`.
    pub async fn publish_traced(&self, endpoint: &Endpoint, cx: &opentelemetry::Context) {
        platform::publish_traced(
            &self.js,
            EventKind::Deploy,
            &endpoint.fields(),
            &Uuid::new_v4().to_string(),
            cx,
        )
        .await
        .expect("publish");
    }

    /// The endpoint's status.
    pub async fn status(&self, id: Uuid) -> Option<String> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT status FROM endpoints WHERE id = $1",
                [id.into()],
            ))
            .await
            .ok()??;
        row.try_get("", "status").ok()
    }

    /// Waits until the endpoint has `wanted` status.
    pub async fn wait_status(&self, id: Uuid, wanted: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.status(id).await;
            if now.as_deref() == Some(wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "endpoint {id} never reached {wanted} (is {now:?})"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every endpoint of `ids` is `READY` (`what` names the wait in the panic
    /// when `timeout` passes first).
    pub async fn wait_all_ready(&self, what: &str, ids: &[Uuid], timeout: Duration) {
        wait_for(what, timeout, || async {
            self.count_status(ids, "READY").await == ids.len()
        })
        .await;
    }

    /// The endpoint's row.
    pub async fn endpoint(&self, id: Uuid) -> EndpointRow {
        EndpointRow::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT status, url, status_reason, spec_generation, ready_generation FROM endpoints WHERE id = $1",
            [id.into()],
        ))
        .one(&self.db)
        .await
        .expect("query")
        .expect("endpoint exists")
    }

    /// History rows of an endpoint, oldest first.
    pub async fn history(&self, id: Uuid) -> Vec<HistoryRow> {
        HistoryRow::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT generation, action, outcome, reason, isvc_name, url, events, trace_id, started_at, finished_at \
             FROM deployment_history WHERE endpoint_id = $1 ORDER BY id",
            [id.into()],
        ))
        .all(&self.db)
        .await
        .expect("history")
    }

    /// `(generation, outcome, trace_id)` of the endpoint's history rows, oldest first.
    pub async fn history_outcomes(&self, id: Uuid) -> Vec<(i64, String, Option<String>)> {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT generation, outcome, trace_id FROM deployment_history \
                 WHERE endpoint_id = $1 ORDER BY id",
                [id.into()],
            ))
            .await
            .expect("history");
        rows.iter()
            .map(|r| {
                (
                    r.try_get("", "generation").expect("generation"),
                    r.try_get("", "outcome").expect("outcome"),
                    r.try_get("", "trace_id").expect("trace_id"),
                )
            })
            .collect()
    }

    /// Rejected events, oldest first.
    pub async fn rejected(&self) -> Vec<RejectedRow> {
        RejectedRow::find_by_statement(Statement::from_string(
            DbBackend::Postgres,
            "SELECT subject, endpoint_id, reason, payload, payload_bytes, payload_size, \
             payload_sha256 FROM rejected_events ORDER BY id",
        ))
        .all(&self.db)
        .await
        .expect("rejected")
    }

    /// Count of endpoints (among `ids`) with `status`.
    pub async fn count_status(&self, ids: &[Uuid], status: &str) -> usize {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM endpoints WHERE id IN (SELECT value::uuid FROM jsonb_array_elements_text($1)) AND status = $2",
                [json!(ids).into(), status.into()],
            ))
            .await
            .expect("count")
            .expect("row");
        row.try_get::<i64>("", "n").expect("n") as usize
    }

    /// Runs SQL.
    pub async fn sql(&self, sql: &str) {
        self.db.execute_unprepared(sql).await.expect(sql);
    }

    /// Messages still in the stream (work-queue: answered messages are removed).
    pub async fn stream_messages(&self) -> u64 {
        let mut stream = self.js.get_stream(events::STREAM).await.expect("stream");
        stream.info().await.expect("info").state.messages
    }

    /// Unacknowledged deliveries on both consumers.
    pub async fn ack_pending(&self) -> usize {
        let mut total = 0;
        let stream = self.js.get_stream(events::STREAM).await.expect("stream");
        for name in [events::DEPLOY_CONSUMER, events::DELETE_CONSUMER] {
            if let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(name)
                .await
            {
                total += consumer
                    .info()
                    .await
                    .expect("consumer info")
                    .num_ack_pending;
            }
        }
        total
    }

    /// Convergence requests waiting in Postgres, and how many of them a replica has claimed.
    pub async fn requests(&self) -> (usize, usize) {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n, count(claimed_by) AS claimed FROM convergence_requests",
            ))
            .await
            .expect("requests")
            .expect("row");
        let n: i64 = row.try_get("", "n").expect("n");
        let claimed: i64 = row.try_get("", "claimed").expect("claimed");
        (n as usize, claimed as usize)
    }

    /// Holds back the end of every pass until the returned transaction ends: a pass's
    /// outcome commits with its history row, and this locks `deployment_history` against
    /// inserts. Requests are still recorded and claimed, and status reports without a history
    /// row (`DEPLOYING`) still commit — until an outcome waits: outcomes commit in order, so
    /// the reports behind it wait too. End it with `commit()`.
    pub async fn hold_outcomes(&self) -> DatabaseTransaction {
        let hold = self.db.begin().await.expect("begin");
        hold.execute_unprepared("LOCK TABLE deployment_history IN SHARE MODE")
            .await
            .expect("lock deployment_history");
        hold
    }

    /// Events recorded in the endpoint's convergence request and not yet covered by a pass
    /// that ended (`None` when it has no request).
    pub async fn request_events(&self, id: Uuid) -> Option<i32> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT events FROM convergence_requests WHERE endpoint_id = $1",
                [id.into()],
            ))
            .await
            .expect("request")?;
        Some(row.try_get("", "events").expect("events"))
    }

    /// Waits until the stream is empty, nothing is unacknowledged and no convergence request
    /// waits in Postgres: every event answered and every pass it asked for ended. (Events are
    /// acked once recorded, so an empty stream alone says nothing of the passes still to run:
    /// a history read before they end misses their rows.)
    pub async fn wait_all_answered(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (left, pending) = (self.stream_messages().await, self.ack_pending().await);
            let (waiting, claimed) = self.requests().await;
            if left == 0 && pending == 0 && waiting == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{left} messages still in the stream, {pending} unacknowledged, \
                 {waiting} convergence requests waiting ({claimed} claimed)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A tenant with a project and a model version.
#[derive(Debug, Clone, Copy)]
pub struct Tenant {
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub version: ModelVersionRef,
}

impl Tenant {
    /// What the platform's event says of an endpoint of this tenant.
    pub fn event_fields(&self, endpoint_id: Uuid) -> EventFields<'static> {
        EventFields {
            tenant_id: self.tenant_id,
            project_id: self.project_id,
            endpoint_id,
            name: "endpoint",
            model: Some(self.version),
        }
    }
}

#[derive(Debug, FromQueryResult)]
pub struct EndpointRow {
    pub status: String,
    pub url: Option<String>,
    pub status_reason: Option<String>,
    pub spec_generation: i64,
    pub ready_generation: Option<i64>,
}

#[derive(Debug, FromQueryResult)]
pub struct HistoryRow {
    pub generation: i64,
    pub action: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub isvc_name: String,
    pub url: Option<String>,
    pub events: i32,
    pub trace_id: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, FromQueryResult)]
pub struct RejectedRow {
    pub subject: String,
    pub endpoint_id: Option<Uuid>,
    pub reason: String,
    pub payload: String,
    pub payload_bytes: Option<Vec<u8>>,
    pub payload_size: Option<i32>,
    pub payload_sha256: Option<String>,
}

/// Polls `check` until it returns true or `timeout` passes (then panics with `what`).
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Traffic JSON for a canary percent.
pub fn canary(percent: i64) -> Value {
    json!({ "canaryTrafficPercent": percent })
}

/// One endpoint created through the platform's tables.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub model: ModelVersionRef,
}

impl Endpoint {
    pub fn fields(&self) -> EventFields<'_> {
        EventFields {
            tenant_id: self.tenant_id,
            project_id: self.project_id,
            endpoint_id: self.id,
            name: &self.name,
            model: Some(self.model),
        }
    }
}

/// A publisher-side trace context with fresh random ids, sampled, and those ids.
pub fn publisher_context() -> (opentelemetry::Context, TraceId, SpanId) {
    let cx = platform::publisher_context();
    let (trace_id, span_id) = {
        let span = cx.span();
        let sc = span.span_context();
        (sc.trace_id(), sc.span_id())
    };
    (cx, trace_id, span_id)
}

/// A plain HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr` with `Connection: close`; `None` when nothing answers.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<Response> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.lines();
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Some(Response {
            status,
            headers,
            body: body.to_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// Polls `GET path` until `accept` holds for the response, or panics after `within`.
pub async fn wait_http(
    addr: std::net::SocketAddr,
    path: &str,
    within: Duration,
    accept: impl Fn(&Response) -> bool,
) -> Response {
    let deadline = Instant::now() + within;
    loop {
        let response = http_get(addr, path).await;
        if let Some(r) = response {
            if accept(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never gave the expected answer; last: {r:?}"
            );
        } else {
            assert!(Instant::now() < deadline, "GET {path}: no answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the `deploy-worker` binary with `args` against these servers' URLs (plus `env`),
/// without blocking the runtime (a worker may be running on it); `(success, stdout, stderr)`.
pub async fn deploy_worker_cli(
    args: &[&str],
    urls: Option<(&LocalPostgres, &LocalNats)>,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_deploy-worker"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL")
        .env("RUST_LOG", "warn");
    if let Some((pg, nats)) = urls {
        command
            .env("DATABASE_URL", pg.url())
            .env("NATS_URL", nats.url());
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().await.expect("run deploy-worker");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A log output kept in memory (a `MakeWriter` for the subscriber), shared by its clones.
#[derive(Clone, Default)]
pub struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture lock")).into_owned()
    }
}
