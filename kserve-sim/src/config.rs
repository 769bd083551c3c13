//! Configuration of a stand-in instance, shared by the in-process API and the CLI.

use crate::faults::Faults;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a stand-in instance needs to start.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Another `inferenceservice-v1beta1.schema.json` to validate against (another KServe
    /// release); `None` uses the schema embedded in this crate.
    pub crd_schema: Option<PathBuf>,
    /// Controller: from the in-progress status to Ready.
    pub ready_delay: Duration,
    /// Controller: how long the old status stays visible after a spec change.
    pub stale_status: Duration,
    /// Controller: how long a deleted object lingers (finalizer removal delay).
    pub delete_linger: Duration,
    /// Server-side watch timeout: the default, and the cap on `timeoutSeconds`.
    pub watch_timeout: Duration,
    /// Period of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
    /// Number of events kept for watches to resume from (older → 410 Gone).
    pub history_size: usize,
    /// Fault injection at start.
    pub faults: Faults,
    /// HTTP worker threads.
    pub workers: usize,
    /// Number of requests kept in the request log.
    pub request_log_capacity: usize,
    /// DNS domain of the URLs the controller reports (`http://<name>.<ns>.<domain>`).
    pub domain: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            crd_schema: None,
            ready_delay: Duration::from_millis(1000),
            stale_status: Duration::from_millis(300),
            delete_linger: Duration::from_millis(500),
            watch_timeout: Duration::from_secs(1800),
            bookmark_interval: Duration::from_secs(60),
            history_size: 10_000,
            faults: Faults::default(),
            workers: 2,
            request_log_capacity: 10_000,
            domain: "example.com".into(),
        }
    }
}

impl SimConfig {
    /// Defaults, validating against the CRD schema at `path` instead of the embedded one.
    pub fn with_schema(path: impl Into<PathBuf>) -> Self {
        Self {
            crd_schema: Some(path.into()),
            ..Self::default()
        }
    }
}
