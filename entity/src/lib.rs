//! SeaORM entities for the tables deploy-worker touches.
//!
//! `models`, `model_versions` and `endpoints` belong to the platform: the worker reads them and
//! writes only `endpoints.status`, `endpoints.url` and the columns its own migrations add
//! (`status_reason`, `spec_generation`, `ready_generation`). `deployment_history` and
//! `rejected_events` are the worker's own tables.

pub mod deployment_history;
pub mod endpoints;
pub mod model_versions;
pub mod models;
pub mod rejected_events;

/// The values the worker writes to `endpoints.status`, plus the platform's initial value.
pub mod status {
    /// Set by the platform API when an endpoint is created.
    pub const CREATING: &str = "CREATING";
    /// The worker accepted the intent and is converging the cluster to it.
    pub const DEPLOYING: &str = "DEPLOYING";
    /// The InferenceService for the current spec generation is Ready and serving at `url`.
    pub const READY: &str = "READY";
    /// The intent could not be deployed; `status_reason` says why and what to do.
    pub const ERROR: &str = "ERROR";
    /// The endpoint was deleted and its InferenceService removed.
    pub const DELETED: &str = "DELETED";
}
