//! devkit: deploy-worker's development tooling, kept out of the worker. The production
//! `deploy-worker` binary and library carry none of it; the worker crate uses it as a
//! dev-dependency only (its tests, benches and examples).
//!
//! - [`sandbox`]: throw-away local Postgres (`initdb`/`postgres`) and `nats-server -js`, each in
//!   a temporary directory on a free port, for the demo, the tests and the benches;
//! - [`platform`]: what the platform's API does: model versions and endpoint rows, serving
//!   patches, and (re-exported from the worker's `publish` module) publishing serving events;
//! - [`demo`]: the self-contained demo, the crate's `demo` binary, which `scripts/demo` runs.
//!
//! The KServe stand-in is not here: it is the `kserve-sim` crate, with its own binary.

pub mod demo;
pub mod platform;
pub mod sandbox;
