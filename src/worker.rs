//! Wiring: connect Postgres and NATS, bind the consumers, start the supervisor; stop gracefully.
//!
//! [`Worker::start`] must run inside an actix `System`; the binary runs one on [`runtime`], a
//! single-threaded tokio runtime on which the actors, the database and NATS I/O all run.
//! [`Worker::shutdown`] implements the graceful stop (ARCHITECTURE.md, "Actor lifecycle"): stop
//! fetching, let running passes finish within the grace period, hand back everything else, flush
//! NATS, return.
//!
//! The worker also serves its HTTP port ([`crate::http`]: metrics, liveness, readiness) from
//! the moment it has connected until the end of [`Worker::shutdown`]; readiness turns 503 as
//! soon as shutdown begins so a load balancer or rollout stops counting on this replica.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use sea_orm_migration::MigratorTrait;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::config::{Settings, WorkerMode};
use crate::deployer::informer::Router;
use crate::deployer::{Deployer, kubernetes::KubernetesDeployer, simulate::SimulateDeployer};
use crate::events;
use crate::follow;
use crate::http::{HttpError, HttpServer, Readiness};
use crate::metrics::Metrics;
use crate::pass::{PassContext, Phase};
use crate::poller;
use crate::requests::Claims;
use crate::scheduler::Scheduler;
use crate::store::{ConnectError, Store};
use crate::supervisor::{
    ActorRegistry, FollowUp, Resume, Shutdown, StopFetching, Supervisor, Terminate,
};

/// Why the worker could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A required setting is missing.
    #[error(
        "{0} is not set; set it, or try `scripts/demo`, which starts throw-away Postgres and NATS"
    )]
    Missing(&'static str),
    /// Postgres is unreachable.
    #[error(transparent)]
    Database(#[from] ConnectError),
    /// Migrations could not be read or applied.
    #[error("database schema: {0}")]
    Schema(#[source] sea_orm::DbErr),
    /// Migrations are pending and the worker may not apply them.
    #[error(
        "database schema: {0} migration(s) pending; run `deploy-worker migrate` or set DATABASE_MIGRATE=true"
    )]
    PendingMigrations(usize),
    /// NATS is unreachable.
    #[error("cannot connect to NATS: {0}; check NATS_URL")]
    Nats(#[source] async_nats::ConnectError),
    /// The stream or consumers could not be bound.
    #[error(transparent)]
    Bind(#[from] events::BindError),
    /// The rendering settings (name prefix, default resources, …) cannot be used.
    #[error("invalid setting: {0}")]
    Render(#[source] crate::kserve::OptionsError),
    /// The Kubernetes client cannot be configured (k8s mode).
    #[error("invalid setting: {0}")]
    Kubeconfig(#[source] crate::deployer::kubernetes::KubeConfigError),
    /// The NATS security settings cannot be used.
    #[error("invalid setting: {0}")]
    NatsSecurity(#[source] crate::tls::TlsError),
    /// The supervisor went away unexpectedly.
    #[error("the supervisor stopped unexpectedly")]
    SupervisorGone,
    /// The HTTP port could not be opened.
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// A running worker.
pub struct Worker {
    supervisor: Addr<Supervisor>,
    registry: Arc<ActorRegistry>,
    scheduler: Scheduler,
    store: Store,
    nats: async_nats::Client,
    phase: watch::Sender<Phase>,
    grace: Duration,
    readiness: Readiness,
    http: HttpServer,
    poller: tokio::task::JoinHandle<()>,
    retention: Option<tokio::task::JoinHandle<()>>,
    /// The start-up reconcile of cluster and database (k8s mode).
    reconcile: Option<tokio::task::JoinHandle<()>>,
}

/// The tokio runtime the worker runs on: one thread for the actors and for every database and
/// NATS connection (the HTTP endpoints have their own threads).
///
/// One thread, because the worker spends its time handing work between actors, the group
/// commit and the clients: on a runtime with worker threads every such hand-off that crosses
/// threads is a wake-up through the kernel, and Postgres, not the worker, is what limits
/// throughput (a pass costs the worker a fraction of what its writes cost the database). The
/// load harness measured the same build on both runtimes: about 8 % less CPU per event and
/// fewer resident megabytes on this one, and no lower throughput (README, "Performance").
/// Nothing on it may block: a handler that waits on I/O synchronously stalls every endpoint.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Applies pending migrations, or refuses when `apply` is false and some are pending.
///
/// It first only reads the migrations table, so with nothing pending a role without DDL
/// rights (see `deploy/sql/worker-role.sql`) starts whatever `apply` says. Applying holds the
/// migration advisory lock ([`migration::up_locked`]), so replicas starting together migrate
/// one after the other.
pub async fn migrate(store: &Store, apply: bool) -> Result<(), WorkerError> {
    let db = store.db();
    let pending = migration::Migrator::get_pending_migrations_read_only(db)
        .await
        .map_err(WorkerError::Schema)?;
    if pending.is_empty() {
        Ok(())
    } else if apply {
        migration::up_locked(db).await.map_err(WorkerError::Schema)
    } else {
        Err(WorkerError::PendingMigrations(pending.len()))
    }
}

impl Worker {
    /// Connects, binds and starts consuming. Call inside an actix `System`.
    pub async fn start(settings: &Settings) -> Result<Self, WorkerError> {
        let database_url = settings
            .database_url
            .as_deref()
            .ok_or(WorkerError::Missing("DATABASE_URL"))?;
        let nats_url = settings
            .nats_url
            .as_deref()
            .ok_or(WorkerError::Missing("NATS_URL"))?;
        // what the URLs hold is redacted from every output, also when embedded without the CLI
        crate::telemetry::register_secrets(settings.secrets());
        let render = settings.kserve.render_options();
        render.validate().map_err(WorkerError::Render)?;
        // Metrics first: the store, the passes and the deployers all count into them.
        let scheduler = Scheduler::new(settings.caps());
        let registry = Arc::new(ActorRegistry::default());
        let mut metrics = Metrics::new();
        let actors = registry.clone();
        metrics.register_live_state(scheduler.clone(), move || actors.len());
        let metrics = Arc::new(metrics);
        let timeout = Duration::from_secs(settings.deploy_timeout_seconds);
        // connected to the supervisor once it runs; the informer routes followed changes to it
        let router = Router::default();
        let deployer = match settings.deploy_mode {
            WorkerMode::Simulate => Deployer::Simulate(SimulateDeployer::new(
                Duration::from_millis(settings.simulate_delay_ms),
            )),
            WorkerMode::K8s => Deployer::Kubernetes(Box::new(
                KubernetesDeployer::connect(
                    settings.kubeconfig.as_deref(),
                    &render.namespace,
                    timeout,
                    metrics.clone(),
                    router.clone(),
                    settings.follow.debounce(),
                )
                .await
                .map_err(WorkerError::Kubeconfig)?,
            )),
        };

        let store =
            Store::connect_with_metrics(database_url, settings.store_settings(), metrics.clone())
                .await?;
        migrate(&store, settings.database_migrate).await?;
        let nats = settings
            .nats_security
            .connect_options()
            .await
            .map_err(WorkerError::NatsSecurity)?
            .name("deploy-worker")
            .retry_on_initial_connect()
            .connect(crate::config::nats_servers(nats_url))
            .await
            .map_err(WorkerError::Nats)?;
        let js = async_nats::jetstream::new(nats.clone());
        let consumers = events::bind_with_retries(&js, settings.consumer_settings()).await?;
        let readiness = Readiness::new(
            store.clone(),
            nats.clone(),
            vec![consumers.deploy.clone(), consumers.delete.clone()],
            deployer.alarm(),
        );
        let http = HttpServer::start(&settings.http_listen, metrics.clone(), readiness.clone())?;
        let retention = crate::retention::spawn(store.db().clone(), settings.retention.settings());

        let (phase, phase_rx) = watch::channel(Phase::Running);
        let ctx = Arc::new(PassContext {
            store: store.clone(),
            deployer,
            render,
            backoff: settings.backoff(),
            phase: phase_rx,
            metrics: metrics.clone(),
            panics: Default::default(),
            failpoint_panic: settings.failpoint_panic.clone(),
            follow_debounce: settings.follow.debounce(),
            repairs: Default::default(),
            unready_since: Default::default(),
        });
        let informer = match &ctx.deployer {
            Deployer::Kubernetes(k8s) => Some((k8s.informer().clone(), k8s.legacy_endpoints())),
            Deployer::Simulate(_) => None,
        };
        let polled_consumers = vec![consumers.deploy.clone(), consumers.delete.clone()];
        let claims = Claims::new(store.pool().clone(), claim_holder(), settings.claim_ttl());
        let supervisor = Supervisor::new(
            ctx,
            consumers,
            registry.clone(),
            claims,
            scheduler.clone(),
            settings.scheduling(),
        )
        .start();
        let follower = supervisor.clone();
        router.connect(move |ids, follow| follower.do_send(FollowUp(ids, follow)));
        let reconcile = informer.map(|(informer, legacy)| {
            follow::reconcile_at_start(
                informer,
                legacy,
                store.clone(),
                settings.follow.clone(),
                metrics.clone(),
            )
        });
        let released = supervisor.clone();
        let poller = poller::spawn(
            store.clone(),
            polled_consumers,
            metrics.clone(),
            settings.metrics_poll(),
            Box::new(move |ids| released.do_send(Resume(ids))),
        );
        tracing::info!(mode = ?settings.deploy_mode, "deploy-worker started");
        Ok(Self {
            supervisor,
            registry,
            scheduler,
            store,
            nats,
            phase,
            grace: Duration::from_secs(settings.shutdown_grace_seconds),
            readiness,
            http,
            poller,
            retention,
            reconcile,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served (the real port when 0 was asked).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Endpoint actors alive.
    pub fn actors(&self) -> usize {
        self.registry.len()
    }

    /// The scheduler (passes running and endpoints waiting, per tenant).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Graceful stop (see the module docs).
    pub async fn shutdown(self) -> Result<(), WorkerError> {
        self.readiness.set_draining();
        if let Some(reconcile) = &self.reconcile {
            reconcile.abort();
        }
        if let Some(retention) = &self.retention {
            retention.abort();
        }
        // no more released holds to resume while draining
        self.poller.abort();
        // Stop pulling first and wait until our last pull requests have run out: a message
        // handed back while one is still open could be redelivered straight to this stopping
        // worker and sit unacknowledged until the ack wait.
        let fetchers = self
            .supervisor
            .send(StopFetching)
            .await
            .map_err(|_| WorkerError::SupervisorGone)?;
        for fetcher in fetchers {
            let _ = fetcher.await;
        }
        if let Err(err) = self.nats.flush().await {
            tracing::warn!(error = %err, "could not flush NATS while stopping");
        }
        let (done, drained) = oneshot::channel();
        let _ = self.phase.send(Phase::Draining);
        self.supervisor
            .send(Shutdown(done))
            .await
            .map_err(|_| WorkerError::SupervisorGone)?;
        let mut drained = std::pin::pin!(drained);
        if tokio::time::timeout(self.grace, &mut drained)
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "grace period over; handing running deploys back");
            let _ = self.phase.send(Phase::Aborting);
            // Aborted passes answer quickly; bound the wait anyway.
            let _ = tokio::time::timeout(Duration::from_secs(10), drained).await;
        }
        // Acks and naks are buffered publishes: make sure they reach the server.
        if let Err(err) = self.nats.flush().await {
            tracing::warn!(error = %err, "could not flush NATS on shutdown");
        }
        self.supervisor.do_send(Terminate);
        self.http.stop().await;
        tracing::info!("deploy-worker stopped");
        Ok(())
    }
}

/// Who this worker process is in `convergence_requests.claimed_by`: host, process and a
/// random part, so a restarted process never mistakes an earlier run's claims for its own.
fn claim_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let random = Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &random[..8])
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the worker until `stop` resolves, then stops it gracefully.
pub async fn run(
    settings: &Settings,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    // Listen for the stop from the start: a SIGTERM while the worker is still connecting and
    // binding ends it cleanly instead of killing it.
    let mut stop = std::pin::pin!(stop);
    let worker = tokio::select! {
        started = Worker::start(settings) => started?,
        () = &mut stop => {
            tracing::info!("shutdown requested before the worker had started");
            return Ok(());
        }
    };
    stop.await;
    tracing::info!("shutdown requested");
    worker.shutdown().await
}
