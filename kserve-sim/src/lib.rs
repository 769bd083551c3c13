//! # kserve-sim — a KServe stand-in
//!
//! A Kubernetes API server for `serving.kserve.io/v1beta1` InferenceServices, over real HTTP,
//! plus a simulated KServe controller. It exists because no Kubernetes API server can run where
//! deploy-worker is tested: the worker talks to it through the real `kube` client and a
//! kubeconfig, and `kubectl` works against it too.
//!
//! Layout (one concern per module):
//! - [`store`]: objects, the global resourceVersion counter, the bounded event history and the
//!   broadcast feeding watches and the controller;
//! - [`resource`]: the API verbs (the write pipeline, generation, finalizers, preconditions);
//! - [`apply`] and [`fieldset`]: server-side apply, `managedFields`, conflicts;
//! - [`patch`]: JSON merge patch and JSON patch;
//! - [`schema`] and [`meta`]: CRD schema pruning, defaulting, validation; ObjectMeta rules;
//! - [`webhook`]: KServe's validating admission webhook (replica bounds);
//! - [`selector`]: label and field selectors;
//! - [`watch`]: watch streams (replay, 410, bookmarks, timeouts, cuts);
//! - [`render`]: Table / PartialObjectMetadata representations;
//! - [`discovery`]: discovery documents; [`api`]: HTTP routes, middleware;
//! - [`faults`] and [`requestlog`]: fault injection and the request log;
//! - [`controller`]: the simulated KServe controller;
//! - [`server`]: in-process start/stop ([`KserveSim`], [`SimHandle`]); [`config`];
//!   [`kubeconfig`]; [`cli`] ([`SimArgs`], [`run`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), kserve_sim::SimError> {
//! // validates against the embedded KServe schema; `SimConfig::with_schema` takes another
//! let sim = kserve_sim::KserveSim::start(kserve_sim::SimConfig::default()).await?;
//! sim.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"), "mlops-serving")?;
//! // ... point kube / kubectl at it ...
//! sim.stop().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod apply;
pub mod cli;
pub mod config;
pub mod controller;
pub mod discovery;
pub mod error;
pub mod faults;
pub mod fieldset;
pub mod kubeconfig;
pub mod meta;
pub mod patch;
pub mod render;
pub mod requestlog;
pub mod resource;
pub mod schema;
pub mod selector;
pub mod server;
pub mod store;
pub mod watch;
pub mod webhook;

pub use cli::{SimArgs, run};
pub use config::SimConfig;
pub use controller::ObjectBehaviour;
pub use error::{ApiError, SimError};
pub use faults::Faults;
pub use requestlog::{RequestRecord, Verb, VerbCounts};
pub use server::{KserveSim, SimHandle};
