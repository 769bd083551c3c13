//! Command-line interface: [`SimArgs`] (the options of the `kserve-sim` binary, `src/main.rs`)
//! and [`run`], which serves until Ctrl-C or SIGTERM.
//! Every flag has a `KSERVE_SIM_*` environment variable.

use crate::config::SimConfig;
use crate::faults::Faults;
use crate::server::KserveSim;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Options of the KServe stand-in.
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free port; see --kubeconfig-out).
    #[arg(long, env = "KSERVE_SIM_LISTEN", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Write a kubeconfig pointing at the stand-in to this file.
    #[arg(long, env = "KSERVE_SIM_KUBECONFIG_OUT")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Default namespace written into the kubeconfig context.
    #[arg(long, env = "KSERVE_SIM_NAMESPACE", default_value = "mlops-serving")]
    pub namespace: String,
    /// Another InferenceService CRD schema (inferenceservice-v1beta1.schema.json of another
    /// KServe release); without it the stand-in uses the schema it embeds.
    #[arg(long, env = "KSERVE_SIM_CRD_SCHEMA")]
    pub crd_schema: Option<PathBuf>,
    /// Controller: milliseconds from "in progress" to Ready.
    #[arg(long, env = "KSERVE_SIM_READY_DELAY_MS", default_value_t = 1000)]
    pub ready_delay_ms: u64,
    /// Controller: milliseconds the old (stale) status stays visible after a spec change.
    #[arg(long, env = "KSERVE_SIM_STALE_STATUS_MS", default_value_t = 300)]
    pub stale_status_ms: u64,
    /// Controller: milliseconds a deleted object lingers with its deletionTimestamp.
    #[arg(long, env = "KSERVE_SIM_DELETE_LINGER_MS", default_value_t = 500)]
    pub delete_linger_ms: u64,
    /// Server-side watch timeout in seconds (default, and cap on timeoutSeconds).
    #[arg(long, env = "KSERVE_SIM_WATCH_TIMEOUT_SECONDS", default_value_t = 1800)]
    pub watch_timeout_seconds: u64,
    /// Milliseconds between BOOKMARK events on watches that allow them.
    #[arg(
        long,
        env = "KSERVE_SIM_BOOKMARK_INTERVAL_MS",
        default_value_t = 60_000
    )]
    pub bookmark_interval_ms: u64,
    /// Events kept for watches to resume from (older resourceVersions get 410 Gone).
    #[arg(long, env = "KSERVE_SIM_HISTORY_SIZE", default_value_t = 10_000)]
    pub history_size: usize,
    /// Share (0..1) of resource requests answered 500.
    #[arg(long, env = "KSERVE_SIM_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share (0..1) of resource requests answered 429 with Retry-After.
    #[arg(long, env = "KSERVE_SIM_THROTTLE_RATE", default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Retry-After seconds sent with 429.
    #[arg(long, env = "KSERVE_SIM_RETRY_AFTER_SECONDS", default_value_t = 1)]
    pub retry_after_seconds: u32,
    /// Milliseconds of latency added to every resource request.
    #[arg(long, env = "KSERVE_SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Cut every watch (close the connection) after this many events.
    #[arg(long, env = "KSERVE_SIM_CUT_WATCHES_AFTER_EVENTS")]
    pub cut_watches_after_events: Option<u32>,
    /// Cut every watch after this many milliseconds.
    #[arg(long, env = "KSERVE_SIM_CUT_WATCHES_AFTER_MS")]
    pub cut_watches_after_ms: Option<u64>,
    /// DNS domain of the URLs the simulated controller reports.
    #[arg(long, env = "KSERVE_SIM_DOMAIN", default_value = "example.com")]
    pub domain: String,
}

impl SimArgs {
    /// The instance configuration these options describe.
    pub fn to_config(&self) -> SimConfig {
        SimConfig {
            listen: self.listen,
            crd_schema: self.crd_schema.clone(),
            ready_delay: Duration::from_millis(self.ready_delay_ms),
            stale_status: Duration::from_millis(self.stale_status_ms),
            delete_linger: Duration::from_millis(self.delete_linger_ms),
            watch_timeout: Duration::from_secs(self.watch_timeout_seconds.max(1)),
            bookmark_interval: Duration::from_millis(self.bookmark_interval_ms.max(1)),
            history_size: self.history_size,
            faults: Faults {
                fail_rate: self.fail_rate.clamp(0.0, 1.0),
                throttle_rate: self.throttle_rate.clamp(0.0, 1.0),
                retry_after_seconds: self.retry_after_seconds,
                latency: Duration::from_millis(self.latency_ms),
                cut_watches_after_events: self.cut_watches_after_events,
                cut_watches_after: self.cut_watches_after_ms.map(Duration::from_millis),
                ..Faults::default()
            },
            domain: self.domain.clone(),
            ..SimConfig::default()
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
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

/// Starts the stand-in, writes the kubeconfig if asked, and serves until Ctrl-C or SIGTERM.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let handle = KserveSim::start(args.to_config()).await?;
    println!("kserve-sim listening on {}", handle.base_url());
    if let Some(path) = &args.kubeconfig_out {
        handle.write_kubeconfig(path, &args.namespace)?;
        println!(
            "kubeconfig written to {} (namespace {}); try: kubectl --kubeconfig {} get isvc --watch",
            path.display(),
            args.namespace,
            path.display()
        );
    }
    shutdown_signal().await;
    println!("kserve-sim stopping");
    handle.stop().await;
    Ok(())
}
