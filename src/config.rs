//! Settings: every one is a CLI flag and an environment variable, with a default that needs
//! no editing. The platform contract's variables keep the seed's names and defaults
//! (`DEPLOY_MODE`, `DATABASE_URL`, `NATS_URL`, `KSERVE_NAMESPACE`, `KSERVE_NAME_PREFIX`,
//! `DEPLOY_TIMEOUT_SECONDS`); the rest are the worker's own.

use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};

use crate::backoff::Backoff;
use crate::events::ConsumerSettings;
use crate::intent::{DefaultResources, ResourceList};
use crate::kserve::{self, ModeNames, RenderOptions};
use crate::pass::PanicAt;
use crate::policy::{self, ServiceAccountRule, StorageSchemes, TenantPolicy};
use crate::scheduler::Caps;
use crate::store::StoreSettings;
use crate::telemetry::LogFormat;

/// Where the worker sends InferenceServices (`DEPLOY_MODE`): a simulation or a real cluster.
/// Not to be confused with KServe's own deployment mode
/// ([`DeploymentMode`](crate::intent::DeploymentMode)), which an intent chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkerMode {
    /// No cluster: Ready after `SIMULATE_DELAY_MS` at `http://<name>.example.local`.
    Simulate,
    /// A real cluster through the Kubernetes API (in-cluster credentials or a kubeconfig).
    K8s,
}

/// Which deployment-mode names the `serving.kserve.io/deploymentMode` annotation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeNamesArg {
    /// `Knative` / `Standard` (current KServe).
    Current,
    /// `Serverless` / `RawDeployment` (KServe releases before the rename).
    Legacy,
}

/// Settings that shape every rendered InferenceService (shared by `run` and `render`).
#[derive(Debug, Clone, Args)]
pub struct KserveArgs {
    /// Namespace of the InferenceServices.
    #[arg(long, env = "KSERVE_NAMESPACE", default_value = "mlops-serving")]
    pub kserve_namespace: String,

    /// Prefix of InferenceService names (`<prefix>-<16 hex>`).
    #[arg(long, env = "KSERVE_NAME_PREFIX", default_value = "isvc")]
    pub kserve_name_prefix: String,

    /// Add `serving.kserve.io/enable-prometheus-scraping: "true"` unless an endpoint says otherwise.
    #[arg(long, env = "KSERVE_PROMETHEUS_SCRAPING", default_value_t = true, action = ArgAction::Set)]
    pub kserve_prometheus_scraping: bool,

    /// Deployment-mode names written in manifests.
    #[arg(long, env = "KSERVE_DEPLOYMENT_MODE_NAMES", value_enum, default_value_t = ModeNamesArg::Current)]
    pub kserve_deployment_mode_names: ModeNamesArg,

    /// Requests of an endpoint that names no `runtime_config.resources` (`name=quantity,...`,
    /// or `none`).
    #[arg(long, env = "KSERVE_DEFAULT_REQUESTS", default_value = kserve::DEFAULT_REQUESTS)]
    pub kserve_default_requests: ResourceList,

    /// Limits of an endpoint that names no `runtime_config.resources` (`name=quantity,...`,
    /// or `none`).
    #[arg(long, env = "KSERVE_DEFAULT_LIMITS", default_value = kserve::DEFAULT_LIMITS)]
    pub kserve_default_limits: ResourceList,

    /// Tenant policy: storage URI schemes an endpoint's model may come from.
    #[arg(long, env = policy::STORAGE_SCHEMES_VAR, default_value = "s3,gs,https,hf")]
    pub tenant_storage_uri_schemes: StorageSchemes,

    /// Tenant policy: allowed `serviceAccountName` patterns (`{tenant_id}`, `{project_id}`,
    /// `*`), comma-separated, or `none`.
    #[arg(long, env = policy::SERVICE_ACCOUNTS_VAR, default_value = "none")]
    pub tenant_service_accounts: ServiceAccountRule,
}

impl KserveArgs {
    /// Manifest rendering options.
    pub fn render_options(&self) -> RenderOptions {
        RenderOptions {
            namespace: self.kserve_namespace.clone(),
            name_prefix: self.kserve_name_prefix.clone(),
            prometheus_scraping: self.kserve_prometheus_scraping,
            mode_names: match self.kserve_deployment_mode_names {
                ModeNamesArg::Current => ModeNames::Current,
                ModeNamesArg::Legacy => ModeNames::Legacy,
            },
            default_resources: DefaultResources::new(
                self.kserve_default_requests.clone(),
                self.kserve_default_limits.clone(),
            ),
            policy: TenantPolicy {
                storage_schemes: self.tenant_storage_uri_schemes.clone(),
                service_accounts: self.tenant_service_accounts.clone(),
            },
        }
    }
}

/// Logging settings (shared by every command). `RUST_LOG` filters the lines (default `info`);
/// tracing is configured by the standard `OTEL_*` variables (see [`crate::telemetry`]).
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format: `compact` (for people) or `json` (one object per line, with trace ids).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Compact)]
    pub log_format: LogFormat,
}

/// The worker's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// `simulate` (no cluster) or `k8s`.
    #[arg(long, env = "DEPLOY_MODE", value_enum, default_value_t = WorkerMode::Simulate)]
    pub deploy_mode: WorkerMode,

    /// Postgres URL, e.g. postgres://user:pass@host:5432/mlops.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// NATS URL, e.g. nats://127.0.0.1:4222; for a cluster, several separated by commas
    /// (the client also learns the cluster's other servers from the one it reaches).
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,

    /// How manifests are rendered.
    #[command(flatten)]
    pub kserve: KserveArgs,

    /// k8s mode: kubeconfig to use; without it, `~/.kube/config` or the in-cluster service
    /// account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// How long a deploy may take to become Ready before it ends in ERROR.
    #[arg(long, env = "DEPLOY_TIMEOUT_SECONDS", default_value_t = 600)]
    pub deploy_timeout_seconds: u64,

    /// Simulate mode: time an endpoint takes to become Ready.
    #[arg(long, env = "SIMULATE_DELAY_MS", default_value_t = 0)]
    pub simulate_delay_ms: u64,

    /// Deploys in flight at once, all tenants together.
    #[arg(long, env = "DEPLOY_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Deploys in flight at once for one tenant.
    #[arg(long, env = "DEPLOY_MAX_IN_FLIGHT_PER_TENANT", default_value_t = 256)]
    pub max_in_flight_per_tenant: usize,

    /// A replica's claim on an endpoint (held while its pass runs, renewed every third of this)
    /// expires after this long without renewal; another replica then takes the endpoint over.
    #[arg(long, env = "CLAIM_TTL_SECONDS", default_value_t = 30)]
    pub claim_ttl_seconds: u64,

    /// How often the database is searched for requests no replica holds (a dead replica's,
    /// a previous run's, retries that are due).
    #[arg(long, env = "RESCAN_SECONDS", default_value_t = 5)]
    pub rescan_seconds: u64,

    /// An endpoint actor with nothing to do stops after this long (0: as soon as its pass
    /// ends; the next request for the endpoint starts a new one).
    #[arg(long, env = "ENDPOINT_IDLE_SECONDS", default_value_t = 0)]
    pub endpoint_idle_seconds: u64,

    /// Ack wait of the consumers the worker creates (a message is acked once its request is
    /// recorded, well within it).
    #[arg(long, env = "NATS_ACK_WAIT_SECONDS", default_value_t = 30)]
    pub nats_ack_wait_seconds: u64,

    /// Max unacked messages per consumer the worker creates.
    #[arg(long, env = "NATS_MAX_ACK_PENDING", default_value_t = 20_000)]
    pub nats_max_ack_pending: i64,

    /// First delay before a message handed back after a transient failure is redelivered.
    #[arg(long, env = "RETRY_BASE_MS", default_value_t = 500)]
    pub retry_base_ms: u64,

    /// Longest such delay (it doubles per delivery up to this).
    #[arg(long, env = "RETRY_MAX_MS", default_value_t = 30_000)]
    pub retry_max_ms: u64,

    /// Postgres connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// Most writes in one group commit (and ids in one batched read).
    #[arg(long, env = "DATABASE_BATCH_MAX", default_value_t = 1024)]
    pub database_batch_max: usize,

    /// Apply pending migrations at start-up (else refuse to start when some are pending).
    #[arg(long, env = "DATABASE_MIGRATE", default_value_t = true, action = ArgAction::Set)]
    pub database_migrate: bool,

    /// On SIGTERM, how long running deploys may finish before they are handed back.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    /// How often consumer lag (JetStream) and the oldest DEPLOYING endpoint (Postgres) are read
    /// for the metrics.
    #[arg(long, env = "METRICS_POLL_SECONDS", default_value_t = 10)]
    pub metrics_poll_seconds: u64,

    /// Address of the HTTP port serving /metrics, /healthz and /readyz (port 0: any free port).
    #[arg(long, env = "HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: String,

    /// Logging.
    #[command(flatten)]
    pub logging: LogArgs,

    /// Fault injection for crash-isolation tests only: passes over these endpoints panic at
    /// these spec generations (`<endpoint id>@<generation>`, comma-separated). Hidden; never
    /// set it in production.
    #[arg(
        long,
        env = "DEPLOY_WORKER_FAILPOINT_PANIC",
        hide = true,
        value_delimiter = ','
    )]
    pub failpoint_panic: Vec<PanicAt>,

    /// TLS and authentication towards NATS.
    #[command(flatten)]
    pub nats_security: crate::tls::NatsSecurityArgs,

    /// Pruning of old history and rejected events.
    #[command(flatten)]
    pub retention: crate::retention::RetentionArgs,

    /// Following endpoints after Ready, repairs and garbage collection (k8s mode).
    #[command(flatten)]
    pub follow: crate::follow::FollowArgs,
}

/// The servers a `NATS_URL` names: one URL, or several separated by commas (a cluster).
pub fn nats_servers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

impl Settings {
    /// Settings from the environment and defaults only (no command line), e.g. for embedding.
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        <Only as clap::Parser>::parse_from(["deploy-worker"]).settings
    }

    /// Values that must never appear in logs (passwords and tokens in the connection URLs).
    pub fn secrets(&self) -> crate::telemetry::Secrets {
        crate::telemetry::Secrets::collect([self.database_url.as_deref(), self.nats_url.as_deref()])
    }

    /// Admission caps.
    pub fn caps(&self) -> Caps {
        Caps {
            global: self.max_in_flight,
            per_tenant: self.max_in_flight_per_tenant,
        }
    }

    /// How the supervisor schedules passes.
    pub fn scheduling(&self) -> crate::supervisor::Scheduling {
        crate::supervisor::Scheduling {
            rescan_every: Duration::from_secs(self.rescan_seconds.max(1)),
            idle_after: Duration::from_secs(self.endpoint_idle_seconds),
        }
    }

    /// How long a claim lives without renewal.
    pub fn claim_ttl(&self) -> Duration {
        Duration::from_secs(self.claim_ttl_seconds.max(1))
    }

    /// Hand-back delays.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.retry_base_ms.max(1)),
            max: Duration::from_millis(self.retry_max_ms.max(self.retry_base_ms).max(1)),
        }
    }

    /// Consumer settings.
    pub fn consumer_settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            ack_wait: self.ack_wait(),
            max_ack_pending: self.nats_max_ack_pending,
        }
    }

    /// Consumer ack wait.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.nats_ack_wait_seconds.max(1))
    }

    /// Interval of the metrics' periodic reads.
    pub fn metrics_poll(&self) -> Duration {
        Duration::from_secs(self.metrics_poll_seconds.max(1))
    }

    /// Pool and batch settings.
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            max_connections: self.database_max_connections.max(2),
            batch_max: self.database_batch_max.max(1),
        }
    }
}
