//! The command line: `run` (default), `migrate`, `render`, and the
//! operator commands `reconcile`, `rejected list|replay`, `tenant pause|resume|list`
//! (implemented in [`crate::ops`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::config::{KserveArgs, LogArgs, Settings};
use crate::intent::Intent;
use crate::kserve;
use crate::ops::{self, ReplayResult, ReplaySelection};
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
    /// Print the InferenceService manifest for an intent.
    Render(RenderArgs),
    /// Converge one endpoint now: publish a deploy event for it as the platform would.
    Reconcile(ReconcileArgs),
    /// Inspect and re-publish the events the worker refused (`rejected_events`).
    Rejected {
        #[command(subcommand)]
        command: RejectedCommand,
    },
    /// Pause, resume and list paused tenants (honoured by every replica).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
}

/// Where the operator commands find Postgres and NATS.
#[derive(Debug, clap::Args)]
struct OpsConnection {
    /// Postgres URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// NATS URL (for commands that publish events).
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    /// NATS TLS and authentication, as the worker's.
    #[command(flatten)]
    nats_security: crate::tls::NatsSecurityArgs,
    #[command(flatten)]
    logging: LogArgs,
}

impl OpsConnection {
    fn secrets(&self) -> Secrets {
        Secrets::collect([Some(self.database_url.as_str()), self.nats_url.as_deref()])
    }

    async fn jetstream(&self) -> Result<async_nats::jetstream::Context, String> {
        let url = self
            .nats_url
            .as_deref()
            .ok_or("this command publishes events: set NATS_URL (or --nats-url)")?;
        let client = self
            .nats_security
            .connect_options()
            .await
            .map_err(|err| err.to_string())?
            .name("deploy-worker-ops")
            .connect(crate::config::nats_servers(url))
            .await
            .map_err(|err| format!("cannot connect to NATS: {err}; check NATS_URL"))?;
        Ok(async_nats::jetstream::new(client))
    }
}

#[derive(Debug, clap::Args)]
struct ReconcileArgs {
    /// The endpoint to converge.
    #[arg(long)]
    endpoint_id: Uuid,
    /// Wait for the outcome (at most the deploy timeout plus a minute) and print it; exits
    /// non-zero when the endpoint ends ERROR.
    #[arg(long)]
    wait: bool,
    /// The deploy timeout the workers use, which bounds `--wait`.
    #[arg(long, env = "DEPLOY_TIMEOUT_SECONDS", default_value_t = 600)]
    deploy_timeout_seconds: u64,
    #[command(flatten)]
    connection: OpsConnection,
}

#[derive(Debug, Subcommand)]
enum RejectedCommand {
    /// Print the rejected events as a table (id, time, subject, endpoint, replayed, reason).
    List {
        /// Only events refused at or after this time (RFC 3339) or within this age (90s, 30m,
        /// 12h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        connection: OpsConnection,
    },
    /// Re-publish recorded events to their subject (after fixing their cause) and mark them
    /// replayed.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "since"])))]
    Replay {
        /// This event (even if it was replayed before).
        #[arg(long)]
        id: Option<i64>,
        /// Every event not replayed yet, refused at or after this time (RFC 3339) or within
        /// this age (90s, 30m, 12h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        connection: OpsConnection,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Hold the tenant's deploys on every replica (deletes still run); its endpoints wait in
    /// DEPLOYING with the reason "tenant paused".
    Pause {
        /// The tenant.
        #[arg(long)]
        tenant_id: Uuid,
        /// Why (shown by `tenant list`).
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
        #[command(flatten)]
        connection: OpsConnection,
    },
    /// Lift the pause and deploy every endpoint it held.
    Resume {
        /// The tenant.
        #[arg(long)]
        tenant_id: Uuid,
        #[command(flatten)]
        connection: OpsConnection,
    },
    /// Print the paused tenants.
    List {
        #[command(flatten)]
        connection: OpsConnection,
    },
}

impl RejectedCommand {
    fn connection(&self) -> &OpsConnection {
        match self {
            Self::List { connection, .. } | Self::Replay { connection, .. } => connection,
        }
    }
}

impl TenantCommand {
    fn connection(&self) -> &OpsConnection {
        match self {
            Self::Pause { connection, .. }
            | Self::Resume { connection, .. }
            | Self::List { connection } => connection,
        }
    }
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

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Secrets known from the settings are redacted from logs and from the final error message.
    let secrets = match &cli.command {
        None => cli.run.secrets(),
        Some(Command::Run(settings)) => settings.secrets(),
        Some(Command::Migrate(args)) => Secrets::collect([Some(args.database_url.as_str())]),
        Some(Command::Render(args)) => Secrets::collect([args.database_url.as_deref()]),
        Some(Command::Reconcile(args)) => args.connection.secrets(),
        Some(Command::Rejected { command }) => command.connection().secrets(),
        Some(Command::Tenant { command }) => command.connection().secrets(),
    };
    let result = match cli.command {
        None => run_worker(cli.run, secrets.clone()),
        Some(Command::Run(settings)) => run_worker(*settings, secrets.clone()),
        Some(Command::Migrate(args)) => migrate(args, secrets.clone()),
        Some(Command::Render(args)) => render(args, secrets.clone()),
        Some(Command::Reconcile(args)) => reconcile(args, secrets.clone()),
        Some(Command::Rejected { command }) => rejected(command, secrets.clone()),
        Some(Command::Tenant { command }) => tenant(command, secrets.clone()),
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
    actix_rt::System::with_tokio_rt(|| match worker::runtime() {
        Ok(rt) => rt,
        // Without a runtime nothing can run; say why instead of a bare panic message.
        Err(err) => panic!("cannot start the tokio runtime: {err}"),
    })
}

/// Runs `work` with telemetry installed (inside the runtime: the trace exporter's batch task
/// runs on it), then flushes the traces it produced.
/// `default_filter` is the log filter when `RUST_LOG` is unset.
async fn with_telemetry<F: std::future::Future<Output = Result<(), String>>>(
    logging: &LogArgs,
    default_filter: &str,
    secrets: Secrets,
    work: F,
) -> Result<(), String> {
    let telemetry = telemetry::init_with_filter(logging.log_format, default_filter, secrets)
        .map_err(|err| err.to_string())?;
    let result = work.await;
    if let Err(err) = telemetry.shutdown().await {
        tracing::warn!(error = %err, "could not flush traces");
    }
    result
}

fn run_worker(settings: Settings, secrets: Secrets) -> Result<(), String> {
    let default_filter = telemetry::DEFAULT_LOG_FILTER;
    actix_system().block_on(with_telemetry(
        &settings.logging,
        default_filter,
        secrets,
        async {
            worker::run(&settings, worker::shutdown_signal())
                .await
                .map_err(|err| err.to_string())
        },
    ))
}

/// A small store for a one-off command.
async fn command_store(url: &str) -> Result<Store, String> {
    Store::connect(
        url,
        StoreSettings {
            max_connections: 2,
            batch_max: 1,
        },
    )
    .await
    .map_err(|err| err.to_string())
}

fn migrate(args: MigrateArgs, secrets: Secrets) -> Result<(), String> {
    telemetry::init_logs(args.logging.log_format, secrets).map_err(|err| err.to_string())?;
    let rt = worker::runtime().map_err(|err| err.to_string())?;
    rt.block_on(async {
        let store = command_store(&args.database_url).await?;
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
            let rt = worker::runtime().map_err(|err| err.to_string())?;
            rt.block_on(async {
                let store = command_store(url).await?;
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

/// Runs an operator command's `work` with logs set up, on a fresh runtime, against the store of
/// `connection`.
fn ops_command<F, Fut>(connection: &OpsConnection, secrets: Secrets, work: F) -> Result<(), String>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    telemetry::init_logs(connection.logging.log_format, secrets).map_err(|err| err.to_string())?;
    let rt = worker::runtime().map_err(|err| err.to_string())?;
    rt.block_on(async {
        let store = command_store(&connection.database_url).await?;
        work(store).await
    })
}

fn since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    ops::parse_since(text, chrono::Utc::now()).map_err(|err| format!("--since: {err}"))
}

fn reconcile(args: ReconcileArgs, secrets: Secrets) -> Result<(), String> {
    let connection = &args.connection;
    ops_command(connection, secrets, |store| async move {
        let js = connection.jetstream().await?;
        let db = store.db();
        let published = ops::reconcile(db, &js, args.endpoint_id)
            .await
            .map_err(|err| err.to_string())?;
        println!(
            "published deploy event for endpoint {} (Nats-Msg-Id {}, traceparent {})",
            published.endpoint_id,
            published.message_id,
            published.traceparent.as_deref().unwrap_or("-")
        );
        if !args.wait {
            return Ok(());
        }
        let timeout = std::time::Duration::from_secs(args.deploy_timeout_seconds + 60);
        let outcome = ops::wait_outcome(db, args.endpoint_id, published.history_before, timeout)
            .await
            .map_err(|err| err.to_string())?;
        println!(
            "outcome: {} (status {}{}{}), trace {}",
            outcome.outcome,
            outcome.status,
            outcome
                .url
                .as_deref()
                .map(|u| format!(", url {u}"))
                .unwrap_or_default(),
            outcome
                .reason
                .as_deref()
                .map(|r| format!(", reason: {r}"))
                .unwrap_or_default(),
            outcome.trace_id.as_deref().unwrap_or("-"),
        );
        if outcome.outcome == crate::outcome::Outcome::Error.as_str() {
            return Err(format!(
                "endpoint {} ended ERROR: {}",
                args.endpoint_id,
                outcome.reason.as_deref().unwrap_or("no reason recorded")
            ));
        }
        Ok(())
    })
}

/// Prints `rows` under `header` with every column padded to its widest cell.
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
}

fn time<Tz: chrono::TimeZone>(at: &chrono::DateTime<Tz>) -> String {
    at.with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn rejected(command: RejectedCommand, secrets: Secrets) -> Result<(), String> {
    let (command, connection) = (&command, command.connection());
    ops_command(connection, secrets, |store| async move {
        let db = store.db();
        match command {
            RejectedCommand::List { since: after, .. } => {
                let after = after.as_deref().map(since).transpose()?;
                let records = ops::list_rejected(db, after)
                    .await
                    .map_err(|e| e.to_string())?;
                let rows: Vec<[String; 6]> = records
                    .iter()
                    .map(|r| {
                        [
                            r.id.to_string(),
                            time(&r.received_at),
                            r.subject.clone(),
                            r.endpoint_id
                                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                            r.replayed_at.as_ref().map_or_else(|| "-".to_owned(), time),
                            r.reason.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    [
                        "ID", "RECEIVED", "SUBJECT", "ENDPOINT", "REPLAYED", "REASON",
                    ],
                    &rows,
                );
                Ok(())
            }
            RejectedCommand::Replay {
                id, since: after, ..
            } => {
                let selection = match (id, after) {
                    (Some(id), _) => ReplaySelection::Id(*id),
                    (None, Some(after)) => ReplaySelection::Since(since(after)?),
                    (None, None) => return Err("give --id N or --since TIME".into()),
                };
                let js = connection.jetstream().await?;
                let results = ops::replay_rejected(db, &js, selection)
                    .await
                    .map_err(|e| e.to_string())?;
                for result in &results {
                    match result {
                        ReplayResult::Published { id, subject } => {
                            println!("replayed {id} to {subject}");
                        }
                        ReplayResult::Skipped { id, why } => println!("skipped {id}: {why}"),
                    }
                }
                let published = results
                    .iter()
                    .filter(|r| matches!(r, ReplayResult::Published { .. }))
                    .count();
                println!("{published} of {} event(s) replayed", results.len());
                Ok(())
            }
        }
    })
}

fn tenant(command: TenantCommand, secrets: Secrets) -> Result<(), String> {
    let (command, connection) = (&command, command.connection());
    ops_command(connection, secrets, |store| async move {
        let db = store.db();
        match command {
            TenantCommand::Pause {
                tenant_id, reason, ..
            } => {
                let paused = ops::pause_tenant(db, *tenant_id, reason)
                    .await
                    .map_err(|e| e.to_string())?;
                let state = if paused.newly {
                    "paused"
                } else {
                    "already paused (reason updated)"
                };
                println!(
                    "tenant {tenant_id} {state}; {} endpoint(s)",
                    paused.endpoints
                );
                if paused.endpoints == 0 {
                    eprintln!(
                        "warning: no endpoint belongs to tenant {tenant_id}; is the id right?"
                    );
                }
                Ok(())
            }
            TenantCommand::Resume { tenant_id, .. } => {
                let js = connection.jetstream().await?;
                let resumed = ops::resume_tenant(db, &js, *tenant_id)
                    .await
                    .map_err(|e| e.to_string())?;
                let state = if resumed.was_paused {
                    "resumed"
                } else {
                    "was not paused"
                };
                println!(
                    "tenant {tenant_id} {state}; deploy events published for {} held endpoint(s)",
                    resumed.republished
                );
                Ok(())
            }
            TenantCommand::List { .. } => {
                let pauses = ops::list_pauses(db).await.map_err(|e| e.to_string())?;
                let rows: Vec<[String; 4]> = pauses
                    .iter()
                    .map(|p| {
                        [
                            p.tenant_id.to_string(),
                            time(&p.paused_at),
                            p.held.to_string(),
                            p.reason.clone(),
                        ]
                    })
                    .collect();
                print_table(["TENANT", "PAUSED", "HELD", "REASON"], &rows);
                Ok(())
            }
        }
    })
}
