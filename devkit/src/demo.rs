//! The demo (the `demo` binary, which `scripts/demo` runs): the worker's main job end to end
//! on one machine, in one command.
//!
//! With no `DATABASE_URL`/`NATS_URL` it starts throw-away Postgres and `nats-server -js`
//! ([`crate::sandbox`]); with them it uses those servers (and leaves its demo rows there). It
//! migrates, creates a few hundred endpoints across several tenants with a mix of serving
//! intents (sklearn on CPU, Triton on GPU with batching, a Knative canary, KEDA in standard
//! mode), publishes their deploy events, runs the worker (simulate mode by default; k8s mode
//! against the cluster of a kubeconfig, such as the KServe stand-in) with a progress bar,
//! and prints events/s, event-to-READY percentiles and the outcome per tenant.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement};
use serde_json::json;
use uuid::Uuid;

use deploy_worker::config::{Settings, WorkerMode};
use deploy_worker::events::EventKind;
use deploy_worker::telemetry::{self, Secrets, TelemetryError};
use deploy_worker::worker::{self, Worker, WorkerError};

use crate::platform::{self, EventFields, NewEndpoint, NewModelVersion};
use crate::sandbox::{LocalNats, LocalPostgres, SandboxError};

/// Options of the demo.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Endpoints to create and deploy.
    #[arg(long, env = "DEMO_ENDPOINTS", default_value_t = 300)]
    pub endpoints: usize,
    /// Tenants they are spread across.
    #[arg(long, env = "DEMO_TENANTS", default_value_t = 5)]
    pub tenants: usize,
    /// Give up waiting for the outcomes after this long.
    #[arg(long, env = "DEMO_TIMEOUT_SECONDS", default_value_t = 120)]
    pub timeout_seconds: u64,
    /// The worker's settings (simulate mode unless DEPLOY_MODE=k8s: then against the cluster
    /// of the kubeconfig, for example the KServe stand-in).
    #[command(flatten)]
    pub settings: Settings,
}

/// The demo's log filter when `RUST_LOG` is unset: its own output is the progress bar and the
/// summary, so the worker only reports what goes wrong.
pub const LOG_FILTER: &str = "warn";

/// Where the demo serves metrics and probes unless told otherwise: any free port, so a taken
/// 8080 never stops a demo.
const HTTP_LISTEN: &str = "127.0.0.1:0";

impl DemoArgs {
    /// Moves the HTTP port (metrics and probes) to any free port of 127.0.0.1 unless the user
    /// chose an address (`--http-listen` or `HTTP_LISTEN`); `matches` are the demo command's.
    pub fn free_port_unless_chosen(&mut self, matches: &ArgMatches) {
        let chosen = matches
            .value_source("http_listen")
            .is_some_and(|source| source != ValueSource::DefaultValue);
        if !chosen {
            self.settings.http_listen = HTTP_LISTEN.to_owned();
        }
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A throw-away server could not start.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The worker could not start.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// Seeding or reading results failed.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// Publishing failed.
    #[error("publishing events: {0}")]
    Publish(String),
    /// Not every endpoint reached READY.
    #[error("{0}")]
    Incomplete(String),
    /// The async runtime could not start.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Logs or trace export could not be set up.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// The `demo` binary's command line: the demo's options and the worker's settings.
#[derive(Debug, Parser)]
#[command(
    name = "demo",
    version,
    about = "Self-contained demo of deploy-worker: throw-away Postgres and NATS (unless URLs are \
             given), a few hundred endpoints across several tenants, the worker in simulate \
             mode, a summary."
)]
struct Cli {
    #[command(flatten)]
    args: DemoArgs,
}

/// Entry point of the `demo` binary: parses the command line, runs the demo in an actix
/// `System` with the worker's telemetry, and prints a failure (secrets redacted).
pub fn main() -> ExitCode {
    // parsed in two steps: the demo asks the matches where its HTTP address came from
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.format(&mut Cli::command()).exit(),
    };
    cli.args.free_port_unless_chosen(&matches);
    // Secrets known from the settings are redacted from logs and from the final error message.
    let secrets = cli.args.settings.secrets();
    match run_with_telemetry(cli.args, secrets.clone()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", secrets.redact(&err.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Runs [`run`] in an actix `System` on the worker's own runtime ([`worker::runtime`]), with
/// telemetry installed (inside the runtime: the trace exporter's batch task runs on it) at
/// [`LOG_FILTER`] unless `RUST_LOG` says otherwise, then flushes the traces it produced.
fn run_with_telemetry(args: DemoArgs, secrets: Secrets) -> Result<(), DemoError> {
    let runtime = worker::runtime().map_err(DemoError::Runtime)?;
    actix_rt::System::with_tokio_rt(move || runtime).block_on(async move {
        let telemetry =
            telemetry::init_with_filter(args.settings.logging.log_format, LOG_FILTER, secrets)?;
        let result = run(args).await;
        if let Err(err) = telemetry.shutdown().await {
            tracing::warn!(error = %err, "could not flush traces");
        }
        result
    })
}

/// One kind of serving intent the demo deploys.
struct DemoIntent {
    artifact: &'static str,
    runtime: &'static str,
    runtime_config: serde_json::Value,
    traffic: Option<serde_json::Value>,
    autoscaling: Option<serde_json::Value>,
}

/// The mix the demo cycles through: the shapes the platform's users deploy.
fn intents() -> Vec<DemoIntent> {
    vec![
        DemoIntent {
            artifact: "gs://demo-models/fraud/sklearn",
            runtime: "kserve",
            runtime_config: json!({}),
            traffic: None,
            autoscaling: Some(json!({"minReplicas": 1, "maxReplicas": 3})),
        },
        DemoIntent {
            artifact: "s3://demo-models/resnet/triton",
            runtime: "kserve-triton",
            runtime_config: json!({
                "modelFormat": "triton", "protocolVersion": "v2", "runtimeVersion": "24.08-py3",
                "gpu": true,
                "resources": {"requests": {"cpu": "500m", "memory": "2Gi"},
                              "limits": {"cpu": "2", "memory": "4Gi"}},
                "batcher": {"maxBatchSize": 32, "maxLatency": 500}
            }),
            traffic: None,
            autoscaling: None,
        },
        DemoIntent {
            artifact: "gs://demo-models/churn/xgboost",
            runtime: "kserve",
            runtime_config: json!({"modelFormat": "xgboost", "deploymentMode": "Knative"}),
            traffic: Some(json!({"canaryTrafficPercent": 10})),
            autoscaling: None,
        },
        DemoIntent {
            artifact: "gs://demo-models/ranker/lightgbm",
            runtime: "kserve",
            runtime_config: json!({"modelFormat": "lightgbm", "deploymentMode": "Standard"}),
            traffic: None,
            autoscaling: Some(json!({"minReplicas": 1, "maxReplicas": 5, "keda": true})),
        },
    ]
}

#[derive(Debug, FromQueryResult)]
struct TenantOutcome {
    tenant_id: Uuid,
    status: String,
    endpoints: i64,
}

#[derive(Debug, FromQueryResult)]
struct Latency {
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    first_published: Option<chrono::DateTime<chrono::Utc>>,
    last_finished: Option<chrono::DateTime<chrono::Utc>>,
}

/// Runs the demo (inside an actix `System`).
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let mut settings = args.settings.clone();
    if settings.deploy_mode == WorkerMode::K8s {
        println!(
            "demo: k8s mode, InferenceServices go to namespace {} of the cluster in {}",
            settings.kserve.kserve_namespace,
            settings.kubeconfig.as_ref().map_or_else(
                || "the default kubeconfig".to_owned(),
                |p| p.display().to_string()
            )
        );
    }
    let _postgres = match settings.database_url {
        Some(_) => None,
        None => {
            println!("demo: starting a throw-away Postgres …");
            let pg = LocalPostgres::start()?;
            settings.database_url = Some(pg.url());
            Some(pg)
        }
    };
    let _nats = match settings.nats_url {
        Some(_) => None,
        None => {
            println!("demo: starting a throw-away nats-server -js …");
            let nats = LocalNats::start()?;
            settings.nats_url = Some(nats.url());
            Some(nats)
        }
    };

    let worker = Worker::start(&settings).await?;
    let http_addr = worker.http_addr();
    println!("demo: the worker serves /metrics, /healthz and /readyz on http://{http_addr}");
    let db = worker.store().db().clone();

    // Seed: per tenant one project and one model version per intent kind.
    let tenants: Vec<(Uuid, Uuid)> = (0..args.tenants.max(1))
        .map(|_| (Uuid::new_v4(), Uuid::new_v4()))
        .collect();
    let intents = intents();
    let mut versions = Vec::new();
    for &(tenant_id, project_id) in &tenants {
        let mut per_kind = Vec::new();
        for (i, intent) in intents.iter().enumerate() {
            per_kind.push(
                platform::create_model_version(
                    &db,
                    &NewModelVersion {
                        tenant_id,
                        project_id,
                        model_name: format!("demo-model-{i}"),
                        version: 1,
                        artifact_uri: Some(intent.artifact.to_owned()),
                    },
                )
                .await?,
            );
        }
        versions.push(per_kind);
    }
    let new: Vec<NewEndpoint> = (0..args.endpoints)
        .map(|i| {
            let t = i % tenants.len();
            let k = (i / tenants.len()) % intents.len();
            let intent = &intents[k];
            NewEndpoint {
                tenant_id: tenants[t].0,
                project_id: tenants[t].1,
                name: format!("demo-endpoint-{i}"),
                runtime: intent.runtime.to_owned(),
                model: Some(versions[t][k]),
                traffic: intent.traffic.clone(),
                autoscaling: intent.autoscaling.clone(),
                runtime_config: Some(intent.runtime_config.clone()),
            }
        })
        .collect();
    let ids = platform::create_endpoints(&db, &new).await?;
    println!(
        "demo: {} endpoints across {} tenants; publishing their deploy events",
        ids.len(),
        tenants.len()
    );

    let client = settings
        .nats_security
        .connect_options()
        .await
        .map_err(|err| DemoError::Publish(err.to_string()))?
        .connect(settings.nats_url.as_deref().unwrap_or_default())
        .await
        .map_err(|err| DemoError::Publish(err.to_string()))?;
    let js = async_nats::jetstream::new(client);
    let started = Instant::now();
    let events = ids.iter().zip(&new).map(|(id, endpoint)| {
        let fields = EventFields {
            tenant_id: endpoint.tenant_id,
            project_id: endpoint.project_id,
            endpoint_id: *id,
            name: &endpoint.name,
            model: endpoint.model,
        };
        (EventKind::Deploy, fields)
    });
    platform::publish_all(&js, events)
        .await
        .map_err(|err| DemoError::Publish(err.to_string()))?;

    let tenant_list = tenants
        .iter()
        .map(|(t, _)| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(",");
    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} endpoints settled {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = started + Duration::from_secs(args.timeout_seconds);
    let settled_sql = format!(
        "SELECT count(*) AS n FROM endpoints WHERE tenant_id IN ({tenant_list}) AND status IN ('READY', 'ERROR')"
    );
    loop {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                settled_sql.clone(),
            ))
            .await?;
        let settled: i64 = row.map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0);
        bar.set_position(settled.max(0) as u64);
        if settled as usize >= ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();

    let outcomes = TenantOutcome::find_by_statement(Statement::from_string(
        DbBackend::Postgres,
        format!(
            "SELECT tenant_id, status, count(*) AS endpoints FROM endpoints \
             WHERE tenant_id IN ({tenant_list}) GROUP BY tenant_id, status ORDER BY tenant_id, status"
        ),
    ))
    .all(&db)
    .await?;
    let latency = Latency::find_by_statement(Statement::from_string(
        DbBackend::Postgres,
        format!(
            "SELECT \
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - event_published_at) * 1000) AS p50_ms, \
               percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - event_published_at) * 1000) AS p99_ms, \
               min(event_published_at) AS first_published, max(finished_at) AS last_finished \
             FROM deployment_history WHERE tenant_id IN ({tenant_list}) AND outcome = 'ready'"
        ),
    ))
    .one(&db)
    .await?;
    worker.shutdown().await?;

    println!("\nSummary");
    let ready: i64 = outcomes
        .iter()
        .filter(|o| o.status == "READY")
        .map(|o| o.endpoints)
        .sum();
    if let Some(l) = &latency {
        if let (Some(first), Some(last)) = (l.first_published, l.last_finished) {
            let secs = (last - first).num_milliseconds().max(1) as f64 / 1000.0;
            println!(
                "  throughput        {:.0} events/s ({ready} endpoints READY in {secs:.2} s)",
                ready as f64 / secs
            );
        }
        println!(
            "  event-to-READY    p50 {:.1} ms, p99 {:.1} ms",
            l.p50_ms.unwrap_or_default(),
            l.p99_ms.unwrap_or_default()
        );
    }
    println!("  metrics, probes   were on http://{http_addr}");
    println!("  outcomes per tenant:");
    for o in &outcomes {
        println!("    {}  {:<9} {}", o.tenant_id, o.status, o.endpoints);
    }
    if ready as usize == ids.len() {
        Ok(())
    } else {
        Err(DemoError::Incomplete(format!(
            "only {ready} of {} endpoints reached READY",
            ids.len()
        )))
    }
}
