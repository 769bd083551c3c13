//! The HTTP port (actix-web): `/metrics`, `/healthz`, `/readyz`.
//!
//! - `/metrics`: the worker's [`Metrics`] as OpenMetrics text;
//! - `/healthz`: 200 while the process runs (the liveness probe: a worker that answers here but
//!   cannot reach Postgres or NATS is waiting, not broken, and must not be restarted for it);
//! - `/readyz`: 200 only when Postgres answers a ping, the NATS connection is up and both
//!   durable consumers exist on the server, and the worker is not shutting down; otherwise 503
//!   with a JSON [`ReadinessReport`] naming what is not ready.
//!
//! actix-web runs its own worker thread(s) with their own runtimes; the readiness checks are
//! spawned onto the worker's main tokio runtime, which owns the database pool and the NATS
//! connection, so their I/O never runs on a foreign reactor. Every check is bounded by a
//! timeout so a probe answers even while Postgres or NATS hang.

use crate::deployer::Alarm;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpResponse, web};
use async_nats::connection::State;
use async_nats::jetstream::consumer::PullConsumer;
use serde::Serialize;

use crate::metrics::{self, Metrics};
use crate::store::Store;

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address is unusable or taken.
    #[error(
        "cannot listen on {listen}: {source}; set HTTP_LISTEN (or --http-listen) to a free address"
    )]
    Bind {
        /// The configured address.
        listen: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// What `/readyz` checks; cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

struct ReadinessInner {
    store: Store,
    nats: async_nats::Client,
    consumers: Vec<PullConsumer>,
    draining: AtomicBool,
    cluster: Alarm,
    runtime: tokio::runtime::Handle,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReadinessReport {
    /// Whether every check passed.
    pub ready: bool,
    /// `ok`, or why Postgres is not ready.
    pub database: String,
    /// `ok`, or the NATS connection state.
    pub nats: String,
    /// `ok`, or which consumer could not be found.
    pub consumers: String,
    /// `ok`, or why the Kubernetes API refuses the worker (RBAC, credentials, namespace),
    /// until a deploy gets through again.
    pub kubernetes: String,
    /// True once shutdown has begun.
    pub draining: bool,
}

impl Readiness {
    /// Checks `store`, `nats`, `consumers` (the bound durable consumers) and the deployer's
    /// `cluster` alarm. Call inside the tokio runtime that owns them.
    pub fn new(
        store: Store,
        nats: async_nats::Client,
        consumers: Vec<PullConsumer>,
        cluster: Alarm,
    ) -> Self {
        Self {
            inner: Arc::new(ReadinessInner {
                store,
                nats,
                consumers,
                draining: AtomicBool::new(false),
                cluster,
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// From now on the worker is not ready: it is shutting down.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Runs every check.
    pub async fn check(&self) -> ReadinessReport {
        let inner = &self.inner;
        let database = async {
            match tokio::time::timeout(CHECK_TIMEOUT, inner.store.ping()).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(err)) => format!("ping failed: {err}"),
                Err(_) => format!("ping did not answer within {CHECK_TIMEOUT:?}"),
            }
        };
        let nats_state = inner.nats.connection_state();
        let consumers = async {
            if nats_state != State::Connected {
                return "not checked: NATS is not connected".to_owned();
            }
            for consumer in &inner.consumers {
                let name = &consumer.cached_info().name;
                match tokio::time::timeout(CHECK_TIMEOUT, consumer.get_info()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return format!("consumer {name}: {err}"),
                    Err(_) => {
                        return format!("consumer {name}: no answer within {CHECK_TIMEOUT:?}");
                    }
                }
            }
            "ok".to_owned()
        };
        let (database, consumers) = tokio::join!(database, consumers);
        // error texts go out in the body: never with a secret in them
        let (database, consumers) = (
            crate::telemetry::redacted(database),
            crate::telemetry::redacted(consumers),
        );
        let nats = match nats_state {
            State::Connected => "ok".to_owned(),
            other => format!("{other:?}").to_lowercase(),
        };
        let draining = inner.draining.load(Ordering::SeqCst);
        let kubernetes = inner.cluster.get().unwrap_or_else(|| "ok".to_owned());
        ReadinessReport {
            ready: !draining
                && database == "ok"
                && nats == "ok"
                && consumers == "ok"
                && kubernetes == "ok",
            database,
            nats,
            consumers,
            kubernetes,
            draining,
        }
    }
}

struct AppState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

async fn metrics_handler(state: web::Data<AppState>) -> HttpResponse {
    match state.metrics.encode() {
        Ok(text) => HttpResponse::Ok()
            .content_type(metrics::CONTENT_TYPE)
            .body(text),
        Err(_) => HttpResponse::InternalServerError().body("cannot encode metrics"),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let readiness = state.readiness.clone();
    let runtime = readiness.inner.runtime.clone();
    let checked = runtime.spawn(async move { readiness.check().await }).await;
    match checked {
        Ok(report) if report.ready => HttpResponse::Ok().json(report),
        Ok(report) => HttpResponse::ServiceUnavailable().json(report),
        Err(_) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "ready": false,
            "error": "the readiness check did not complete (the worker is stopping)",
        })),
    }
}

/// The running HTTP server.
pub struct HttpServer {
    addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Binds `listen` (`host:port`; port 0 picks a free one) and starts serving with one
    /// actix-web worker thread. Call inside a tokio runtime.
    pub fn start(
        listen: &str,
        metrics: Arc<Metrics>,
        readiness: Readiness,
    ) -> Result<Self, HttpError> {
        let state = web::Data::new(AppState { metrics, readiness });
        let server = actix_web::HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/metrics", web::get().to(metrics_handler))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
        })
        .workers(1)
        // The worker handles SIGTERM itself (graceful drain) and stops this server last.
        .disable_signals()
        .shutdown_timeout(1)
        .bind(listen)
        .map_err(|source| HttpError::Bind {
            listen: listen.to_owned(),
            source,
        })?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| HttpError::Bind {
                listen: listen.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrNotAvailable,
                    "no address to listen on",
                ),
            })?;
        let server = server.run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        Ok(Self { addr, handle, task })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving (in-flight requests get a second to finish).
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}
