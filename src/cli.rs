//! The command line: `run` (default), `migrate`, `demo`, `render`, `kserve-sim`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::config::{KserveArgs, LogArgs, Settings};
use crate::demo::DemoArgs;
use crate::intent::Intent;
use crate::kserve;
use crate::store::{Store, StoreSettings};
use crate::telemetry::{self, Secrets};
use crate::worker;

/// deploy-worker: JetStream events → endpoint intent in Postgres → KServe InferenceService.
#[derive(Debug, Parser)]
#[command(
    name = "deploy-worker",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: Settings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker (the default when no command is given).
    Run(Box<Settings>),
    /// Apply the database migrations and exit.
    Migrate(MigrateArgs),
    /// Self-contained demo: throw-away Postgres and NATS (unless URLs are given), a few hundred
    /// endpoints across several tenants, the worker in simulate mode, a summary.
    Demo(Box<DemoArgs>),
    /// Print the InferenceService manifest for an intent.
    Render(RenderArgs),
    /// Run the KServe stand-in: a Kubernetes API server for InferenceServices with a
    /// simulated KServe controller, for trying k8s mode without a cluster.
    KserveSim(kserve_sim::SimArgs),
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// Postgres URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// After migrating, grant this existing role what the worker needs and nothing more
    /// (`deploy/sql/worker-role.sql`); run the worker as that role with DATABASE_MIGRATE=false.
    #[arg(long, env = "DATABASE_GRANT_TO")]
    grant_to: Option<String>,
    #[command(flatten)]
    logging: LogArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["intent", "endpoint_id"])))]
struct RenderArgs {
    /// Intent file: the endpoint row's fields plus `artifact_uri`, as JSON.
    #[arg(long)]
    intent: Option<PathBuf>,
    /// Read the intent of this endpoint from the database (`DATABASE_URL`).
    #[arg(long)]
    endpoint_id: Option<Uuid>,
    /// Postgres URL, for `--endpoint-id`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Yaml)]
    output: Output,
    #[command(flatten)]
    kserve: KserveArgs,
    #[command(flatten)]
    logging: LogArgs,
}

/// A multi-threaded tokio runtime: actors on the calling thread, I/O on the workers.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Secrets known from the settings are redacted from logs and from the final error message.
    let secrets = match &cli.command {
        None => cli.run.secrets(),
        Some(Command::Run(settings)) => settings.secrets(),
        Some(Command::Migrate(args)) => Secrets::collect([Some(args.database_url.as_str())]),
        Some(Command::Demo(args)) => args.settings.secrets(),
        Some(Command::Render(args)) => Secrets::collect([args.database_url.as_deref()]),
        Some(Command::KserveSim(_)) => Secrets::collect([]),
    };
    let result = match cli.command {
        None => run_worker(cli.run, secrets.clone()),
        Some(Command::Run(settings)) => run_worker(*settings, secrets.clone()),
        Some(Command::Migrate(args)) => migrate(args, secrets.clone()),
        Some(Command::Demo(args)) => demo(*args, secrets.clone()),
        Some(Command::Render(args)) => render(args, secrets.clone()),
        Some(Command::KserveSim(args)) => runtime().map_err(|err| err.to_string()).and_then(|rt| {
            rt.block_on(kserve_sim::run(args))
                .map_err(|err| format!("{err:#}"))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {}", secrets.redact(&message));
            ExitCode::FAILURE
        }
    }
}

fn actix_system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| match runtime() {
        Ok(rt) => rt,
        // Without a runtime nothing can run; say why instead of a bare panic message.
        Err(err) => panic!("cannot start the tokio runtime: {err}"),
    })
}

/// Runs `work` with telemetry installed (inside the runtime: the trace exporter's batch task
/// runs on it), then flushes the traces it produced.
async fn with_telemetry<F: std::future::Future<Output = Result<(), String>>>(
    logging: &LogArgs,
    secrets: Secrets,
    work: F,
) -> Result<(), String> {
    let telemetry = telemetry::init(logging.log_format, secrets).map_err(|err| err.to_string())?;
    let result = work.await;
    if let Err(err) = telemetry.shutdown().await {
        tracing::warn!(error = %err, "could not flush traces");
    }
    result
}

fn run_worker(settings: Settings, secrets: Secrets) -> Result<(), String> {
    actix_system().block_on(with_telemetry(&settings.logging, secrets, async {
        worker::run(&settings, worker::shutdown_signal())
            .await
            .map_err(|err| err.to_string())
    }))
}

fn migrate(args: MigrateArgs, secrets: Secrets) -> Result<(), String> {
    telemetry::init_logs(args.logging.log_format, secrets).map_err(|err| err.to_string())?;
    let rt = runtime().map_err(|err| err.to_string())?;
    rt.block_on(async {
        let store = Store::connect(
            &args.database_url,
            StoreSettings {
                max_connections: 2,
                batch_max: 1,
            },
        )
        .await
        .map_err(|err| err.to_string())?;
        worker::migrate(&store, true)
            .await
            .map_err(|err| err.to_string())?;
        eprintln!("migrations applied");
        if let Some(role) = &args.grant_to {
            crate::grants::grant(store.db(), role)
                .await
                .map_err(|err| err.to_string())?;
            eprintln!("worker grants given to {role}");
        }
        Ok(())
    })
}

fn demo(args: DemoArgs, secrets: Secrets) -> Result<(), String> {
    let logging = args.settings.logging.clone();
    actix_system().block_on(with_telemetry(&logging, secrets, async {
        crate::demo::run(args).await.map_err(|err| err.to_string())
    }))
}

fn render(args: RenderArgs, secrets: Secrets) -> Result<(), String> {
    telemetry::init_logs(args.logging.log_format, secrets).map_err(|err| err.to_string())?;
    let intent: Intent = match (&args.intent, args.endpoint_id) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|err| format!("{} is not an intent file: {err}", path.display()))?
        }
        (None, Some(id)) => {
            let url = args
                .database_url
                .as_deref()
                .ok_or("--endpoint-id needs DATABASE_URL (or --database-url)")?;
            let rt = runtime().map_err(|err| err.to_string())?;
            rt.block_on(async {
                let store = Store::connect(
                    url,
                    StoreSettings {
                        max_connections: 2,
                        batch_max: 1,
                    },
                )
                .await
                .map_err(|err| err.to_string())?;
                match store.load(id).await.map_err(|err| err.to_string())? {
                    Some(record) => Ok(record.intent()),
                    None => Err(format!("endpoint {id} not found")),
                }
            })?
        }
        (None, None) => return Err("give --intent FILE or --endpoint-id ID".into()),
    };
    let options = args.kserve.render_options();
    options.validate().map_err(|err| err.to_string())?;
    let text = match args.output {
        // The bytes of the manifest the worker applies (before it adds the resourceVersion
        // precondition): the tests hold them equal to serializing the typed manifest.
        Output::Json => kserve::render_json(&intent, &options)
            .map_err(|err| format!("invalid intent: {err}"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())?,
        Output::Yaml => {
            let manifest = kserve::render(&intent, &options)
                .map_err(|err| format!("invalid intent: {err}"))?;
            kserve::to_yaml(&manifest).map_err(|err| err.to_string())?
        }
    };
    println!("{}", text.trim_end());
    Ok(())
}
