//! deploy-worker: turns endpoint intents stored in Postgres into KServe InferenceServices,
//! driven by NATS JetStream events, for a multi-tenant MLOps platform.
//!
//! How a deploy flows through the modules (`ARCHITECTURE.md` at the repository's root tells
//! the design behind it: the event path, the actor lifecycle, the fences, following after
//! Ready, the failure rules):
//!
//! ```text
//! JetStream ──▶ supervisor ──▶ store (record a convergence request, tenant check) ──▶ ack
//!  (events)         │
//!                   ▼
//!               scheduler (per-tenant queues, round-robin; claims in Postgres)
//!                   │
//!                   ▼
//!               endpoint_actor ──▶ pass ──▶ store (load intent)
//!               (one per                    intent + kserve (validate, render)
//!               endpoint)                   deployer (simulate | kubernetes)
//!                                  └──────▶ store (group commit) ──▶ release the claim
//! ```
//!
//! - [`events`]: the stream, consumers and payload contract;
//! - [`supervisor`] and [`endpoint_actor`]: the actor shape (one actor per endpoint);
//! - [`pass`]: what one pass over an endpoint does, and [`delivery`]: answering JetStream;
//!   [`backoff`]: the retry delay policy every retrying part shares;
//! - [`intent`] and [`kserve`]: the pure intent → InferenceService mapping, and [`policy`]:
//!   what a tenant may ask for (storage URI schemes, service accounts);
//! - [`deployer`]: simulate mode and k8s mode, with one shared watch ([`deployer::informer`]);
//!   [`follow`]: following endpoints after Ready, repairs and the guarded garbage collection;
//! - [`outcome`]: how handling an event ended, one word for history, metrics and spans;
//! - [`store`]: Postgres with batched reads and group commit (statement parameters in
//!   `parameters`: typed arrays written straight into the buffer); [`requests`]: the durable
//!   convergence requests and the claims on them; [`scheduler`]: tenant fairness;
//!   [`retention`]: pruning old history; [`grants`]: the least-privilege database role;
//! - [`tls`]: encrypted, authenticated connections to NATS and the OTLP collector;
//! - [`config`], [`worker`], [`cli`]: settings, wiring, commands;
//! - [`telemetry`] (logs, traces, trace-context propagation), [`metrics`] (Prometheus),
//!   [`poller`] (consumer lag and stuck deploys, read periodically) and [`http`] (`/metrics`,
//!   `/healthz`, `/readyz`): observability;
//! - [`ops`]: the operator commands (`reconcile`, `rejected list|replay`,
//!   `tenant pause|resume|list`), which publish events as the platform does through
//!   [`publish`].
//!
//! The crate is the worker and nothing else. The repository's tooling lives beside it: the
//! KServe stand-in is the `kserve-sim` crate (and binary); the demo, the throw-away Postgres and
//! NATS servers, and the platform's row writing that the demo, tests and benches use are the
//! dev-only `devkit` crate (its `demo` binary is what `scripts/demo` runs).

pub mod backoff;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod deployer;
pub mod endpoint_actor;
pub mod events;
pub mod follow;
pub mod grants;
pub mod http;
pub mod intent;
pub mod kserve;
pub mod metrics;
pub mod ops;
pub mod outcome;
mod parameters;
pub mod pass;
pub mod policy;
pub mod poller;
pub mod publish;
pub mod requests;
pub mod retention;
pub mod scheduler;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod worker;

/// The hasher of the maps the event path keys by id (endpoints, tenants): foldhash rather than
/// the standard library's SipHash, which was a few per cent of the worker's CPU at thousands of
/// events a second. Seeded at random like the standard one; the keys are ids the database
/// made, not text a publisher chose.
pub type IdHasher = foldhash::fast::RandomState;

/// A hash map keyed by ids (see [`IdHasher`]).
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdHasher>;

/// A hash set of ids (see [`IdHasher`]).
pub type IdSet<K> = std::collections::HashSet<K, IdHasher>;
