//! Postgres access: batched intent loads and group-committed outcomes.
//!
//! Every endpoint actor reads its intent and writes its outcome through one [`Store`]. Two
//! background tasks sit behind it:
//!
//! - the **loader** gathers the ids requested while the previous query ran and reads them with
//!   one `SELECT … WHERE id IN (…)`, so a burst of events costs a handful of round trips;
//! - two **committers** do the same for writes (group commit; ARCHITECTURE.md, "The event
//!   path"): all writes of one kind queued while the previous transaction of that kind
//!   committed go into one transaction, and every waiter learns the result when it has
//!   committed. One committer takes the convergence requests of accepted events (their
//!   messages are acked only after that, so an acked event is always durable); the other takes
//!   status changes, history rows and rejected-event records — one `UPDATE … FROM unnest(…)`,
//!   two multi-row `INSERT`s. The two touch different rows, so their transactions run side by
//!   side: neither waits for the other's commit to reach the disk.
//!
//! The group commit binds its rows as typed arrays, one per column, through the driver
//! (`sqlx`) that sea-orm runs on: Postgres reads them in binary with `unnest`, with nothing to
//! parse, and the worker writes no JSON (nor does it encode element by element through the
//! driver's generic path: see `parameters`). A status report that the outcome after it overtakes
//! in the queue commits with it as one row update (`fold_status`).
//!
//! A failed query or commit is reported to every waiter as [`StoreError`]; the actors hand
//! their messages back to JetStream with a delay, and the pool reconnects when Postgres is back.
//!
//! Status writes are guarded in SQL, which keeps several worker replicas correct without locks:
//! an outcome for spec generation *g* applies only while the row is still at *g* (a newer intent
//! wins), and nothing but a delete moves a row out of `DELETED`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::status;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sea_orm::sqlx::{self, ConnectOptions as _, Row as _};
use sea_orm::{DatabaseConnection, DbBackend, FromQueryResult, Statement};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::intent::Intent;
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::parameters::{Column, Parameters};
use crate::requests::{Recorded, Request};
use crate::{IdMap, IdSet};

/// A database operation failed. Cheap to clone: one failed group commit answers every write
/// in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Postgres failed or could not be reached; the operation can be retried later.
    #[error("database error: {0}; the event is handed back and retried once Postgres answers")]
    Unavailable(#[source] Arc<sea_orm::DbErr>),
    /// Postgres refused this write's data (SQLSTATE class 22, data exception, or 23, integrity
    /// constraint): retrying the same write cannot succeed. Other writes of its batch were
    /// committed without it.
    #[error("the database refused this write's data: {0}")]
    Refused(#[source] Arc<sea_orm::DbErr>),
    /// A query parameter could not be encoded.
    #[error("cannot encode a database parameter: {0}")]
    Encode(#[source] Arc<serde_json::Error>),
    /// The store's background tasks have stopped (the worker is shutting down).
    #[error("the database store has shut down; the event is handed back")]
    ShutDown,
}

impl From<sea_orm::DbErr> for StoreError {
    fn from(err: sea_orm::DbErr) -> Self {
        if sqlstate(&err).is_some_and(|code| code.starts_with("22") || code.starts_with("23")) {
            Self::Refused(Arc::new(err))
        } else {
            Self::Unavailable(Arc::new(err))
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(Arc::new(err))).into()
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(err: serde_json::Error) -> Self {
        Self::Encode(Arc::new(err))
    }
}

/// The SQLSTATE of a Postgres error, when the server sent one.
fn sqlstate(err: &sea_orm::DbErr) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr, sqlx};
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match &**e {
                sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Could not open the database.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to Postgres: {0}; check DATABASE_URL")]
pub struct ConnectError(#[source] sea_orm::DbErr);

/// Tuning for the pool and the batches.
#[derive(Debug, Clone, Copy)]
pub struct StoreSettings {
    /// Pool size.
    pub max_connections: u32,
    /// Most requests one load query or one commit takes.
    pub batch_max: usize,
}

/// An endpoint row with the artifact of its model version: everything a pass needs.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRecord {
    /// Endpoint id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Endpoint name.
    pub name: String,
    /// Current `endpoints.status`.
    pub status: String,
    /// Current `endpoints.url`.
    pub url: Option<String>,
    /// Serving runtime.
    pub runtime: Option<String>,
    /// Model id.
    pub model_id: Option<Uuid>,
    /// Model version id.
    pub model_version_id: Option<Uuid>,
    /// Traffic settings.
    pub traffic: Option<serde_json::Value>,
    /// Autoscaling settings.
    pub autoscaling: Option<serde_json::Value>,
    /// Runtime settings.
    pub runtime_config: Option<serde_json::Value>,
    /// Spec generation (bumped by trigger when a serving field changes).
    pub spec_generation: i64,
    /// Generation last observed Ready.
    pub ready_generation: Option<i64>,
    /// Whether `model_version_id` names a version of this endpoint's own tenant.
    pub model_version_found: bool,
    /// That version's `artifact_uri`.
    pub artifact_uri: Option<String>,
    /// Whether the endpoint's tenant is paused (a row in `tenant_pauses`).
    pub tenant_paused: bool,
}

impl EndpointRecord {
    /// Decodes the row's columns from position `at` on, in the order `LOAD_SQL` selects them
    /// (the claim statement selects the same columns after its own). By position, straight from
    /// the driver's row: by name, every column of every row costs a lookup, and sea-orm's
    /// getters build an error message on the heap for every NULL they meet. The driver's
    /// per-value type check is skipped too: the statements fix every column's type, and the
    /// tests read every column back (a pass deploys from what they hold).
    pub(crate) fn decode_at(row: &PgRow, at: usize) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get_unchecked(at)?,
            tenant_id: row.try_get_unchecked(at + 1)?,
            project_id: row.try_get_unchecked(at + 2)?,
            name: row.try_get_unchecked(at + 3)?,
            status: row.try_get_unchecked(at + 4)?,
            url: row.try_get_unchecked(at + 5)?,
            runtime: row.try_get_unchecked(at + 6)?,
            model_id: row.try_get_unchecked(at + 7)?,
            model_version_id: row.try_get_unchecked(at + 8)?,
            traffic: row.try_get_unchecked(at + 9)?,
            autoscaling: row.try_get_unchecked(at + 10)?,
            runtime_config: row.try_get_unchecked(at + 11)?,
            spec_generation: row.try_get_unchecked(at + 12)?,
            ready_generation: row.try_get_unchecked(at + 13)?,
            model_version_found: row.try_get_unchecked(at + 14)?,
            artifact_uri: row.try_get_unchecked(at + 15)?,
            tenant_paused: row.try_get_unchecked(at + 16)?,
        })
    }

    /// The serving intent this row describes.
    pub fn intent(&self) -> Intent {
        self.clone().take_intent()
    }

    /// The serving intent this row describes, taking its name, runtime, JSON documents
    /// (traffic, autoscaling, runtime settings) and artifact out of the row instead of copying
    /// them: only validating and rendering read them, and a deploy that waits minutes then
    /// holds its row without them.
    pub fn take_intent(&mut self) -> Intent {
        let artifact_uri = self.artifact_uri.take();
        Intent {
            endpoint_id: self.id,
            tenant_id: self.tenant_id,
            project_id: self.project_id,
            name: std::mem::take(&mut self.name),
            runtime: self.runtime.take(),
            model_id: self.model_id,
            model_version_id: self.model_version_id,
            // A version of another tenant is treated as missing: never serve its artifact.
            artifact_uri: artifact_uri.filter(|_| self.model_version_found),
            traffic: self.traffic.take(),
            autoscaling: self.autoscaling.take(),
            runtime_config: self.runtime_config.take(),
            generation: self.spec_generation,
        }
    }

    /// True when the intent at the current generation is already served.
    pub fn is_converged(&self) -> bool {
        self.status == status::READY && self.ready_generation == Some(self.spec_generation)
    }

    /// True when the endpoint was deleted.
    pub fn is_deleted(&self) -> bool {
        self.status == status::DELETED
    }
}

/// What to do with `endpoints.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlChange {
    /// Leave it as it is (a redeploy keeps serving the old revision meanwhile).
    Keep,
    /// Set it.
    Set(String),
    /// Clear it (deleted).
    Clear,
}

/// A change to one endpoint's status, with an optional history row.
#[derive(Debug, Clone)]
pub struct StatusWrite {
    /// Endpoint to update.
    pub endpoint_id: Uuid,
    /// New `status`.
    pub status: &'static str,
    /// New `url`.
    pub url: UrlChange,
    /// New `status_reason` (cleared when `None`).
    pub reason: Option<String>,
    /// Apply only while `spec_generation` still equals this (a newer intent wins).
    pub only_at_generation: Option<i64>,
    /// Record this generation as observed Ready.
    pub ready_generation: Option<i64>,
    /// History row for the pass, written in the same transaction.
    pub history: Option<HistoryEntry>,
}

/// One `deployment_history` row.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// Endpoint the pass worked on.
    pub endpoint_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its project.
    pub project_id: Uuid,
    /// Spec generation the pass worked on.
    pub generation: i64,
    /// `deploy` or `delete`.
    pub action: &'static str,
    /// How the pass ended; the committer may turn it into [`Outcome::Superseded`].
    pub outcome: Outcome,
    /// Reason for an error or a skip.
    pub reason: Option<String>,
    /// InferenceService name.
    pub isvc_name: String,
    /// URL served, when Ready.
    pub url: Option<String>,
    /// Events the pass covered.
    pub events: i32,
    /// Trace id, when traced.
    pub trace_id: Option<String>,
    /// Publish time of the oldest covered event.
    pub event_published_at: Option<DateTime<Utc>>,
    /// When the pass started.
    pub started_at: DateTime<Utc>,
    /// When the pass finished (before the commit).
    pub finished_at: DateTime<Utc>,
}

/// `endpoints.status_reason` of an endpoint held `DEPLOYING` by a tenant pause.
pub const PAUSED_REASON: &str =
    "tenant paused: the deploy waits until `deploy-worker tenant resume` for this tenant";

/// A message the worker terminated, for `rejected_events`.
///
/// Whatever the payload holds (NUL bytes, invalid UTF-8, megabytes), the record can be stored:
/// the bytes go in as hex, the text columns are made printable.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedEvent {
    /// Subject it arrived on.
    #[serde(serialize_with = "db_text")]
    pub subject: String,
    /// Its stream sequence, when known.
    pub stream_sequence: Option<i64>,
    /// The endpoint it named, when it could be decoded.
    pub endpoint_id: Option<Uuid>,
    /// Why it was refused.
    #[serde(serialize_with = "db_text")]
    pub reason: String,
    /// The payload for people: its first [`REJECTED_TEXT_MAX`] bytes, control characters and
    /// invalid UTF-8 escaped.
    pub payload: String,
    /// The payload's first [`REJECTED_PAYLOAD_MAX`] bytes, exactly, as lowercase hex.
    #[serde(rename = "payload_hex")]
    pub payload_bytes: String,
    /// The payload's full length.
    pub payload_size: i32,
    /// SHA-256 of the whole payload, lowercase hex.
    pub payload_sha256: String,
}

/// Most bytes of a refused payload kept exactly in `rejected_events.payload_bytes`.
pub const REJECTED_PAYLOAD_MAX: usize = 64 * 1024;
/// Most bytes of a refused payload rendered as text in `rejected_events.payload`.
pub const REJECTED_TEXT_MAX: usize = 4096;

impl RejectedEvent {
    /// Builds a record, keeping a bounded prefix of the payload and its size and digest.
    pub fn new(
        subject: &str,
        stream_sequence: Option<u64>,
        endpoint_id: Option<Uuid>,
        reason: String,
        payload: &[u8],
    ) -> Self {
        use sha2::Digest;
        use std::fmt::Write as _;
        let kept = &payload[..payload.len().min(REJECTED_PAYLOAD_MAX)];
        let mut payload_bytes = String::with_capacity(kept.len() * 2);
        for byte in kept {
            let _ = write!(payload_bytes, "{byte:02x}");
        }
        let payload_sha256 = sha2::Sha256::digest(payload).iter().fold(
            String::with_capacity(64),
            |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            },
        );
        Self {
            subject: subject.to_owned(),
            stream_sequence: stream_sequence.and_then(|s| i64::try_from(s).ok()),
            endpoint_id,
            reason,
            payload: printable(&payload[..payload.len().min(REJECTED_TEXT_MAX)]),
            payload_bytes,
            payload_size: i32::try_from(payload.len()).unwrap_or(i32::MAX),
            payload_sha256,
        }
    }
}

/// `bytes` as text a person can read and Postgres can store: valid UTF-8 stays as it is except
/// control characters (NUL among them), which are escaped like invalid bytes (`\x00`).
pub fn printable(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && !matches!(c, '\n' | '\t') {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// Serializes text for a Postgres text column through a JSON parameter, neither of which can
/// hold NUL: a NUL becomes U+FFFD. Everything else is kept.
fn db_text<S: serde::Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&db_str(text))
}

/// A write handed to the committer.
#[derive(Debug, Clone)]
pub enum Write {
    /// Change an endpoint's status (and record the pass).
    Status(StatusWrite),
    /// Record a pass that changed no status.
    History(HistoryEntry),
    /// Record a refused message.
    Rejected(RejectedEvent),
    /// Record that endpoints want converging ([`crate::requests`]); the reply says, per
    /// request, whether it passed the tenant check.
    Requests(Vec<Request>),
}

impl Write {
    /// Rows it writes (a batch of requests writes one per request).
    fn rows(&self) -> usize {
        match self {
            Write::Requests(requests) => requests.len(),
            _ => 1,
        }
    }

    /// Replaces known secrets in the free-text fields (reasons, a refused payload) by
    /// `[redacted]`: an error message that quotes a secret must not be stored with it.
    fn redact_secrets(&mut self) {
        let text = |s: &mut String| *s = crate::telemetry::redacted(std::mem::take(s));
        let reason = |r: &mut Option<String>| r.iter_mut().for_each(text);
        match self {
            Write::Status(w) => {
                reason(&mut w.reason);
                if let Some(h) = &mut w.history {
                    reason(&mut h.reason);
                }
            }
            Write::History(h) => reason(&mut h.reason),
            Write::Rejected(r) => {
                text(&mut r.reason);
                text(&mut r.payload);
            }
            Write::Requests(_) => {}
        }
    }
}

/// What a committed [`Write::Status`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The row was updated.
    Yes,
    /// The guard refused it: the row moved to a newer generation, or was deleted.
    Superseded,
}

/// What the committer answers for one write: [`Applied`] for the outcome writes, one
/// [`Recorded`] per request for [`Write::Requests`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Committed {
    Applied(Applied),
    Recorded(Vec<Recorded>),
}

type LoadReply = oneshot::Sender<Result<Option<EndpointRecord>, StoreError>>;
type WriteReply = oneshot::Sender<Result<Committed, StoreError>>;

/// Handle to the database and its batching tasks; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// The driver's pool behind `db`, for the statements that bind typed arrays.
    pool: PgPool,
    loads: mpsc::UnboundedSender<(Uuid, LoadReply)>,
    /// The committer of convergence requests ([`Write::Requests`]).
    requests: mpsc::UnboundedSender<(Write, WriteReply)>,
    /// The committer of everything else: outcomes, history, refused messages.
    outcomes: mpsc::UnboundedSender<(Write, WriteReply)>,
}

impl Store {
    /// Connects and starts the loader and committer tasks on the current tokio runtime.
    pub async fn connect(url: &str, settings: StoreSettings) -> Result<Self, ConnectError> {
        Self::connect_with_metrics(url, settings, Arc::new(Metrics::new())).await
    }

    /// [`connect`](Self::connect), counting database errors and group-commit sizes in
    /// `metrics`.
    pub async fn connect_with_metrics(
        url: &str,
        settings: StoreSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConnectError> {
        let connect_error = |err: sqlx::Error| {
            ConnectError(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(
                Arc::new(err),
            )))
        };
        let options = url
            .parse::<PgConnectOptions>()
            .map_err(connect_error)?
            .disable_statement_logging()
            // Plan every statement for the tables as they are now. A cached generic plan is
            // made once, for the table sizes of the moment: `convergence_requests` goes from
            // empty to a 100,000-row backlog in seconds, and plans made while it was empty
            // scanned it whole for every claim and release (Postgres's CPU per event nearly
            // doubled) until autovacuum's next analyze. Planning the largest statement (the
            // claim) takes about 0.4 ms, and every statement here covers a batch of hundreds
            // of rows.
            .options([("plan_cache_mode", "force_custom_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        Ok(Self::start(pool, settings.batch_max, metrics))
    }

    fn start(pool: PgPool, batch_max: usize, metrics: Arc<Metrics>) -> Self {
        let db = DatabaseConnection::from(pool.clone());
        let batch_max = batch_max.max(1);
        let (loads, load_rx) = mpsc::unbounded_channel();
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
        tokio::spawn(run_loader(
            pool.clone(),
            load_rx,
            batch_max,
            metrics.clone(),
        ));
        tokio::spawn(run_committer(
            pool.clone(),
            requests_rx,
            batch_max,
            metrics.clone(),
        ));
        tokio::spawn(run_committer(pool.clone(), outcomes_rx, batch_max, metrics));
        Self {
            db,
            pool,
            loads,
            requests,
            outcomes,
        }
    }

    /// The underlying connection, for migrations, the demo and tests.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The driver's pool behind [`db`](Self::db) (the claims run on it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Reads one endpoint (batched with concurrent reads). `None` when there is no such row.
    pub async fn load(&self, endpoint_id: Uuid) -> Result<Option<EndpointRecord>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.loads
            .send((endpoint_id, tx))
            .map_err(|_| StoreError::ShutDown)?;
        rx.await.map_err(|_| StoreError::ShutDown)?
    }

    /// Queues a status report without waiting for its commit: for a write whose effect the
    /// caller's next guarded write decides anyway (a `DEPLOYING` report before a deploy that
    /// touches nothing outside the database). Should the next write for the same endpoint reach
    /// the committer while this one still waits, the two commit as one (`fold_status`).
    pub fn queue(&self, mut write: Write) {
        write.redact_secrets();
        // The answer is not awaited: dropping the receiver is how the caller says so.
        drop(self.commit(write));
    }

    /// Queues a write at once and returns a future that answers when the transaction holding
    /// it has committed. Known secrets are redacted from its reasons and payload first
    /// (`telemetry::redact`).
    ///
    /// The future holds only the answer's receiver (not the write): it is a part of every pass
    /// future, which is moved whole at each `.await` that starts it.
    pub fn write(
        &self,
        mut write: Write,
    ) -> impl Future<Output = Result<Applied, StoreError>> + use<> {
        write.redact_secrets();
        let committed = self.commit(write);
        async move {
            match committed.await? {
                Committed::Applied(applied) => Ok(applied),
                Committed::Recorded(_) => Ok(Applied::Yes),
            }
        }
    }

    /// Records that endpoints want converging, in the group commit; the future answers, per
    /// request and in order, once they are durable (their events may be acked then) or refused
    /// by the tenant check.
    ///
    /// The requests are queued when this is called, not when the future is first polled, so
    /// requests recorded one after the other keep their order (the newest event's trace is the
    /// one a pass continues).
    pub fn record_requests(
        &self,
        requests: Vec<Request>,
    ) -> impl Future<Output = Result<Vec<Recorded>, StoreError>> + use<> {
        let n = requests.len();
        let committed = self.commit(Write::Requests(requests));
        async move {
            match committed.await? {
                Committed::Recorded(recorded) => Ok(recorded),
                Committed::Applied(_) => Ok(vec![Recorded::Refused; n]),
            }
        }
    }

    /// Queues `write` at once; the future answers when its transaction has committed.
    fn commit(&self, write: Write) -> impl Future<Output = Result<Committed, StoreError>> + use<> {
        let (tx, rx) = oneshot::channel();
        let lane = match write {
            Write::Requests(_) => &self.requests,
            _ => &self.outcomes,
        };
        // only whether it was queued: a failed send hands the write back, and the future
        // would carry it
        let queued = lane.send((write, tx)).is_ok();
        async move {
            if !queued {
                return Err(StoreError::ShutDown);
            }
            rx.await.map_err(|_| StoreError::ShutDown)?
        }
    }

    /// Records a refused message. Should the database still refuse the record's data, a record
    /// without the payload (its size and digest kept) is written instead: a poison message is
    /// always recorded and never retried forever.
    pub async fn record_rejected(&self, record: RejectedEvent) -> Result<(), StoreError> {
        match self.write(Write::Rejected(record.clone())).await {
            Err(StoreError::Refused(err)) => {
                let reason = format!(
                    "{} (payload not stored: the database refused it: {err})",
                    record.reason
                );
                let bare = RejectedEvent {
                    reason: printable(reason.as_bytes()),
                    payload: String::new(),
                    payload_bytes: String::new(),
                    ..record
                };
                self.write(Write::Rejected(bare)).await.map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Every endpoint's id and status, for the start-up reconcile against the cluster (one
    /// read of two narrow columns: 10,000 endpoints are a few hundred KiB).
    pub async fn endpoint_statuses(&self) -> Result<Vec<(Uuid, String)>, StoreError> {
        #[derive(FromQueryResult)]
        struct Row {
            id: Uuid,
            status: String,
        }
        let rows = Row::find_by_statement(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id, status FROM endpoints",
        ))
        .all(&self.db)
        .await?;
        Ok(rows.into_iter().map(|r| (r.id, r.status)).collect())
    }

    /// Cheap liveness probe of the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(Into::into)
    }
}

const LOAD_SQL: &str = r#"
SELECT e.id, e.tenant_id, e.project_id, e.name::text AS name, e.status, e.url, e.runtime,
       e.model_id, e.model_version_id, e.traffic, e.autoscaling, e.runtime_config,
       e.spec_generation, e.ready_generation,
       (mv.id IS NOT NULL) AS model_version_found, mv.artifact_uri,
       e.tenant_id IN (SELECT tenant_id FROM tenant_pauses) AS tenant_paused
FROM endpoints e
LEFT JOIN model_versions mv ON mv.id = e.model_version_id AND mv.tenant_id = e.tenant_id
WHERE e.id = ANY($1::uuid[])"#;

/// Collects what is already queued behind `first`, up to `max`.
fn drain<T>(first: T, rx: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Vec<T> {
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    batch
}

/// Concurrent load queries at most (each holds a pool connection).
const LOAD_CONCURRENCY: usize = 4;

async fn run_loader(
    pool: PgPool,
    mut rx: mpsc::UnboundedReceiver<(Uuid, LoadReply)>,
    batch_max: usize,
    metrics: Arc<Metrics>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(LOAD_CONCURRENCY));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Take everything that queued while we waited for a slot.
        let batch = drain(first, &mut rx, batch_max);
        let pool = pool.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
            match load_many(&pool, &ids).await {
                Ok(found) => {
                    // an id may be asked for twice in one batch (two refused events of one
                    // endpoint): each asker gets the row
                    for (id, reply) in batch {
                        let _ = reply.send(Ok(found.get(&id).cloned()));
                    }
                }
                Err(err) => {
                    metrics.database_error(crate::metrics::DB_LOAD);
                    for (_, reply) in batch {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}

async fn load_many(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, EndpointRecord>, StoreError> {
    let rows = sqlx::query(LOAD_SQL)
        .bind(Column(ids))
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let record = EndpointRecord::decode_at(row, 0)?;
            Ok((record.id, record))
        })
        .collect()
}

/// Folds `later` into `earlier`, both queued for one endpoint, when committing the two in
/// order is the same as committing `later` alone with what `earlier` set and `later` keeps
/// (its URL, its Ready generation): `earlier` is a progress report (no history row) under the
/// same generation guard, and neither is a delete, so the guard refuses both or neither.
/// Returns `later` when it cannot be folded.
fn fold_status(earlier: &mut StatusWrite, later: StatusWrite) -> Option<StatusWrite> {
    let foldable = earlier.history.is_none()
        && earlier.only_at_generation.is_some()
        && earlier.only_at_generation == later.only_at_generation
        && earlier.status != status::DELETED
        && later.status != status::DELETED;
    if !foldable {
        return Some(later);
    }
    let url = match later.url {
        UrlChange::Keep => std::mem::replace(&mut earlier.url, UrlChange::Keep),
        changed => changed,
    };
    *earlier = StatusWrite {
        url,
        ready_generation: later.ready_generation.or(earlier.ready_generation),
        ..later
    };
    None
}

async fn run_committer(
    pool: PgPool,
    mut rx: mpsc::UnboundedReceiver<(Write, WriteReply)>,
    batch_max: usize,
    metrics: Arc<Metrics>,
) {
    // A status write for an endpoint already in the batch is folded into the one there when
    // that is the same as committing both in order (`fold_status`: a `DEPLOYING` report
    // overtaken by the deploy's outcome, which then commits alone); otherwise it waits for the
    // next batch: one UPDATE cannot apply two changes to the same row in order.
    let mut held: Option<(Write, WriteReply)> = None;
    loop {
        let first = match held.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        // sized for what is queued already: growing it write by write was a copy per doubling
        let mut batch = Vec::with_capacity(batch_max.min(rx.len() + 1));
        batch.push(first);
        // Replies of writes folded into the write at the given index of `batch`.
        let mut folded: Vec<(usize, WriteReply)> = Vec::new();
        let mut ids: IdMap<Uuid, usize> = IdMap::default();
        if let Write::Status(w) = &batch[0].0 {
            ids.insert(w.endpoint_id, 0);
        }
        while batch.len() < batch_max {
            let Ok((write, reply)) = rx.try_recv() else {
                break;
            };
            let Write::Status(w) = write else {
                batch.push((write, reply));
                continue;
            };
            let Some(&at) = ids.get(&w.endpoint_id) else {
                ids.insert(w.endpoint_id, batch.len());
                batch.push((Write::Status(w), reply));
                continue;
            };
            let unfolded = match &mut batch[at].0 {
                Write::Status(earlier) => fold_status(earlier, w),
                _ => Some(w),
            };
            match unfolded {
                None => folded.push((at, reply)),
                Some(w) => {
                    held = Some((Write::Status(w), reply));
                    break;
                }
            }
        }
        let (writes, replies): (Vec<Write>, Vec<WriteReply>) = batch.into_iter().unzip();
        metrics.commit_batch(writes.iter().map(Write::rows).sum::<usize>() + folded.len());
        let results: Vec<Result<Committed, StoreError>> = match commit(&pool, &writes).await {
            Ok(applied) => applied.into_iter().map(Ok).collect(),
            Err(err @ StoreError::Refused(_)) if writes.len() > 1 => {
                // One write's data failed the whole transaction: commit them one by one, so
                // the bad one fails alone and every other outcome still commits now.
                metrics.database_error(crate::metrics::DB_COMMIT);
                tracing::warn!(error = %err, writes = writes.len(),
                    "group commit refused by a data error; committing its writes one by one");
                let mut results = Vec::with_capacity(writes.len());
                for write in &writes {
                    let result =
                        commit(&pool, std::slice::from_ref(write))
                            .await
                            .map(|committed| {
                                committed
                                    .into_iter()
                                    .next()
                                    .unwrap_or(Committed::Applied(Applied::Yes))
                            });
                    if let Err(err) = &result {
                        metrics.database_error(crate::metrics::DB_COMMIT);
                        tracing::warn!(error = %err, "a single write failed");
                    }
                    results.push(result);
                }
                results
            }
            Err(err) => {
                // An outage fails every write the same way: one batch retry, not one per write.
                metrics.database_error(crate::metrics::DB_COMMIT);
                tracing::warn!(error = %err, writes = writes.len(), "group commit failed");
                vec![Err(err); writes.len()]
            }
        };
        for (at, reply) in folded {
            if let Some(result) = results.get(at) {
                let _ = reply.send(result.clone());
            }
        }
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Text for a Postgres text column, which cannot hold NUL: a NUL becomes U+FFFD. Everything
/// else is kept, and text without NUL is not copied.
fn db_str(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The status writes of a group commit, column by column: bound as typed arrays, which
/// Postgres reads in binary with `unnest`, nothing to parse.
struct StatusColumns<'a> {
    id: Vec<Uuid>,
    status: Vec<&'a str>,
    set_url: Vec<bool>,
    url: Vec<Option<Cow<'a, str>>>,
    reason: Vec<Option<Cow<'a, str>>>,
    only_gen: Vec<Option<i64>>,
    ready_gen: Vec<Option<i64>>,
}

impl<'a> StatusColumns<'a> {
    /// Empty columns with room for `rows` (a batch's writes: growing them copied each column
    /// several times per commit).
    fn with_capacity(rows: usize) -> Self {
        Self {
            id: Vec::with_capacity(rows),
            status: Vec::with_capacity(rows),
            set_url: Vec::with_capacity(rows),
            url: Vec::with_capacity(rows),
            reason: Vec::with_capacity(rows),
            only_gen: Vec::with_capacity(rows),
            ready_gen: Vec::with_capacity(rows),
        }
    }

    fn push(&mut self, w: &'a StatusWrite) {
        self.id.push(w.endpoint_id);
        self.status.push(w.status);
        self.set_url.push(w.url != UrlChange::Keep);
        self.url.push(match &w.url {
            UrlChange::Set(url) => Some(db_str(url)),
            _ => None,
        });
        self.reason.push(w.reason.as_deref().map(db_str));
        self.only_gen.push(w.only_at_generation);
        self.ready_gen.push(w.ready_generation);
    }
}

const UPDATE_SQL: &str = r#"
UPDATE endpoints AS e SET
    status = v.status,
    url = CASE WHEN v.set_url THEN v.url ELSE e.url END,
    status_reason = v.reason,
    ready_generation = COALESCE(v.ready_gen, e.ready_generation)
FROM unnest($1::uuid[], $2::text[], $3::boolean[], $4::text[], $5::text[], $6::bigint[],
    $7::bigint[]) AS v(id, status, set_url, url, reason, only_gen, ready_gen)
WHERE e.id = v.id
  AND (v.only_gen IS NULL OR e.spec_generation = v.only_gen)
  AND (v.status = 'DELETED' OR e.status <> 'DELETED')
RETURNING e.id"#;

/// The history rows of a group commit, column by column (see [`StatusColumns`]).
struct HistoryColumns<'a> {
    endpoint_id: Vec<Uuid>,
    tenant_id: Vec<Uuid>,
    project_id: Vec<Uuid>,
    generation: Vec<i64>,
    action: Vec<&'a str>,
    outcome: Vec<&'a str>,
    reason: Vec<Option<Cow<'a, str>>>,
    isvc_name: Vec<Cow<'a, str>>,
    url: Vec<Option<Cow<'a, str>>>,
    events: Vec<i32>,
    trace_id: Vec<Option<Cow<'a, str>>>,
    event_published_at: Vec<Option<DateTime<Utc>>>,
    started_at: Vec<DateTime<Utc>>,
    finished_at: Vec<DateTime<Utc>>,
}

impl<'a> HistoryColumns<'a> {
    /// Empty columns with room for `rows`.
    fn with_capacity(rows: usize) -> Self {
        Self {
            endpoint_id: Vec::with_capacity(rows),
            tenant_id: Vec::with_capacity(rows),
            project_id: Vec::with_capacity(rows),
            generation: Vec::with_capacity(rows),
            action: Vec::with_capacity(rows),
            outcome: Vec::with_capacity(rows),
            reason: Vec::with_capacity(rows),
            isvc_name: Vec::with_capacity(rows),
            url: Vec::with_capacity(rows),
            events: Vec::with_capacity(rows),
            trace_id: Vec::with_capacity(rows),
            event_published_at: Vec::with_capacity(rows),
            started_at: Vec::with_capacity(rows),
            finished_at: Vec::with_capacity(rows),
        }
    }

    /// Adds `entry`, recorded as ending with `outcome`.
    fn push(&mut self, entry: &'a HistoryEntry, outcome: Outcome) {
        self.endpoint_id.push(entry.endpoint_id);
        self.tenant_id.push(entry.tenant_id);
        self.project_id.push(entry.project_id);
        self.generation.push(entry.generation);
        self.action.push(entry.action);
        self.outcome.push(outcome.as_str());
        self.reason.push(entry.reason.as_deref().map(db_str));
        self.isvc_name.push(db_str(&entry.isvc_name));
        self.url.push(entry.url.as_deref().map(db_str));
        self.events.push(entry.events);
        self.trace_id.push(entry.trace_id.as_deref().map(db_str));
        self.event_published_at.push(entry.event_published_at);
        self.started_at.push(entry.started_at);
        self.finished_at.push(entry.finished_at);
    }
}

const HISTORY_SQL: &str = r#"
INSERT INTO deployment_history (endpoint_id, tenant_id, project_id, generation, action, outcome,
    reason, isvc_name, url, events, trace_id, event_published_at, started_at, finished_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::integer[], $11::text[], $12::timestamptz[],
    $13::timestamptz[], $14::timestamptz[])"#;

const REJECTED_SQL: &str = r#"
INSERT INTO rejected_events (subject, stream_sequence, endpoint_id, reason, payload,
    payload_bytes, payload_size, payload_sha256)
SELECT subject, stream_sequence, endpoint_id, reason, payload,
    decode(payload_hex, 'hex'), payload_size, payload_sha256
FROM json_to_recordset($1::json) AS r(subject text, stream_sequence bigint, endpoint_id uuid,
    reason text, payload text, payload_hex text, payload_size integer, payload_sha256 text)"#;

/// Commits one batch; returns, per write, whether it applied.
///
/// The statements run on the driver (sqlx) directly, with typed array parameters: sea-orm's
/// array values cannot hold NULL elements, and its statements copy their parameters.
async fn commit(pool: &PgPool, writes: &[Write]) -> Result<Vec<Committed>, StoreError> {
    let status_writes = writes
        .iter()
        .filter(|w| matches!(w, Write::Status(_)))
        .count();
    let mut statuses = StatusColumns::with_capacity(status_writes);
    for w in writes {
        if let Write::Status(w) = w {
            statuses.push(w);
        }
    }
    let rejected: Vec<&RejectedEvent> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Rejected(r) => Some(r),
            _ => None,
        })
        .collect();

    let mut txn = pool.begin().await?;
    let updated: IdSet<Uuid> = if statuses.id.is_empty() {
        IdSet::default()
    } else {
        // per row: id, status, set_url, url, reason, guard generations (with their lengths)
        let parameters = Parameters::new(7, statuses.id.len(), 128)
            .column(&statuses.id)?
            .column(&statuses.status)?
            .column(&statuses.set_url)?
            .column(&statuses.url)?
            .column(&statuses.reason)?
            .column(&statuses.only_gen)?
            .column(&statuses.ready_gen)?;
        sqlx::query_scalar_with::<_, Uuid, _>(UPDATE_SQL, parameters.into_arguments())
            .fetch_all(&mut *txn)
            .await?
            .into_iter()
            .collect()
    };
    let applied: Vec<Applied> = writes
        .iter()
        .map(|w| match w {
            Write::Status(s) if !updated.contains(&s.endpoint_id) => Applied::Superseded,
            _ => Applied::Yes,
        })
        .collect();
    // A pass whose outcome was refused by the guard is recorded as superseded.
    // a status write carries at most one history row, a history write one
    let mut history = HistoryColumns::with_capacity(writes.len() - rejected.len());
    for (w, applied) in writes.iter().zip(&applied) {
        match w {
            Write::Status(StatusWrite {
                history: Some(entry),
                ..
            }) => history.push(
                entry,
                match applied {
                    Applied::Yes => entry.outcome,
                    Applied::Superseded => Outcome::Superseded,
                },
            ),
            Write::History(entry) => history.push(entry, entry.outcome),
            _ => {}
        }
    }
    if !history.endpoint_id.is_empty() {
        // per row: three ids, two names, a URL, a trace id, three times and the small rest
        let parameters = Parameters::new(14, history.endpoint_id.len(), 320)
            .column(&history.endpoint_id)?
            .column(&history.tenant_id)?
            .column(&history.project_id)?
            .column(&history.generation)?
            .column(&history.action)?
            .column(&history.outcome)?
            .column(&history.reason)?
            .column(&history.isvc_name)?
            .column(&history.url)?
            .column(&history.events)?
            .column(&history.trace_id)?
            .column(&history.event_published_at)?
            .column(&history.started_at)?
            .column(&history.finished_at)?;
        sqlx::query_with(HISTORY_SQL, parameters.into_arguments())
            .execute(&mut *txn)
            .await?;
    }
    if !rejected.is_empty() {
        sqlx::query(REJECTED_SQL)
            .bind(serde_json::to_string(&rejected)?)
            .execute(&mut *txn)
            .await?;
    }
    let requests: Vec<&Request> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Requests(r) => Some(r),
            _ => None,
        })
        .flatten()
        .collect();
    let mut recorded = if requests.is_empty() {
        Vec::new()
    } else {
        crate::requests::record(&mut txn, &requests).await?
    }
    .into_iter();
    txn.commit().await?;
    Ok(writes
        .iter()
        .zip(applied)
        .map(|(w, applied)| match w {
            Write::Requests(r) => Committed::Recorded(
                r.iter()
                    .map(|_| recorded.next().unwrap_or(Recorded::Refused))
                    .collect(),
            ),
            _ => Committed::Applied(applied),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(status: &'static str, url: UrlChange, generation: Option<i64>) -> StatusWrite {
        StatusWrite {
            endpoint_id: Uuid::nil(),
            status,
            url,
            reason: None,
            only_at_generation: generation,
            ready_generation: None,
            history: None,
        }
    }

    fn history() -> HistoryEntry {
        let now = Utc::now();
        HistoryEntry {
            endpoint_id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            project_id: Uuid::nil(),
            generation: 3,
            action: "deploy",
            outcome: Outcome::Ready,
            reason: None,
            isvc_name: "ep".into(),
            url: None,
            events: 1,
            trace_id: None,
            event_published_at: None,
            started_at: now,
            finished_at: now,
        }
    }

    #[test]
    fn an_outcome_absorbs_the_progress_report_before_it() {
        let mut earlier = write(status::DEPLOYING, UrlChange::Set("old".into()), Some(3));
        earlier.reason = Some("held".into());
        let mut later = write(status::READY, UrlChange::Keep, Some(3));
        later.ready_generation = Some(3);
        later.history = Some(history());
        assert!(fold_status(&mut earlier, later).is_none());
        assert_eq!(earlier.status, status::READY);
        // what the report set and the outcome keeps survives; what the outcome sets wins
        assert_eq!(earlier.url, UrlChange::Set("old".into()));
        assert_eq!(earlier.reason, None);
        assert_eq!(earlier.ready_generation, Some(3));
        assert!(earlier.history.is_some());
    }

    #[test]
    fn writes_that_do_not_commute_are_not_folded() {
        let cases = [
            // the earlier write records a pass: its history row must keep its own outcome
            {
                let mut w = write(status::DEPLOYING, UrlChange::Keep, Some(3));
                w.history = Some(history());
                (w, write(status::READY, UrlChange::Keep, Some(3)))
            },
            // different guards: one may apply and the other not
            (
                write(status::DEPLOYING, UrlChange::Keep, Some(3)),
                write(status::READY, UrlChange::Keep, Some(4)),
            ),
            // unguarded
            (
                write(status::DEPLOYING, UrlChange::Keep, None),
                write(status::READY, UrlChange::Keep, None),
            ),
            // a delete applies even to a deleted row, a report does not
            (
                write(status::DEPLOYING, UrlChange::Keep, Some(3)),
                write(status::DELETED, UrlChange::Clear, Some(3)),
            ),
            (
                write(status::DELETED, UrlChange::Clear, Some(3)),
                write(status::READY, UrlChange::Keep, Some(3)),
            ),
        ];
        for (mut earlier, later) in cases {
            let before = earlier.clone();
            let returned = fold_status(&mut earlier, later.clone());
            assert!(
                returned.is_some_and(|w| w.status == later.status),
                "{} then {} must not fold",
                before.status,
                later.status
            );
            assert_eq!(earlier.status, before.status);
            assert_eq!(earlier.url, before.url);
        }
    }

    #[test]
    fn text_for_postgres_loses_only_its_nul_bytes() {
        assert!(matches!(db_str("plain"), Cow::Borrowed("plain")));
        assert_eq!(db_str("a\0b"), "a\u{fffd}b");
    }
}
