//! Starting and driving an instance in-process: [`KserveSim::start`] and [`SimHandle`].
//!
//! The HTTP server and the controller run on a **dedicated thread with its own actix
//! `System`**, not on the caller's runtime. That makes the stand-in behave the same whether it
//! is started from a plain `#[tokio::test]` (any flavour), from inside an actix `System`, or
//! from the CLI: actix-web's `HttpServer` needs an actix/tokio context and spawns its own
//! worker threads, and keeping all of that off the caller's runtime means a test that blocks
//! its runtime cannot starve the API server, and vice versa. The handle talks to that thread
//! only through thread-safe state (the store's mutex, the fault state, the controller's command
//! channel) and actix's `ServerHandle`. Dropping the last handle stops the server.

use crate::api::{self, AppState, Settings};
use crate::config::SimConfig;
use crate::controller::{Controller, ControllerShared, ObjectBehaviour, Timings};
use crate::error::{ApiError, SimError};
use crate::faults::{FaultState, Faults};
use crate::kubeconfig;
use crate::requestlog::{RequestLog, RequestRecord, VerbCounts};
use crate::resource::{Registry, WriteOpts};
use crate::schema::Schema;
use crate::store::Key;
use actix_web::{App, HttpServer, web};
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Entry point of the in-process API.
pub struct KserveSim;

/// Connections the kernel queues before the server accepts them. The stand-in speaks plain
/// HTTP/1.1, so every concurrent request and every open watch is a connection of its own, and a
/// worker starting a thousand deploys at once opens about two thousand: with the standard
/// library's backlog of 128 the excess SYNs are dropped and clients stall for a retransmit.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

impl KserveSim {
    /// Loads the CRD schema, binds the listen address, and starts the API server and the
    /// controller on their own thread. Returns once the server accepts connections.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        let schema = Schema::resolve(config.crd_schema.as_deref())?;
        let listener = bind(config.listen).map_err(|source| SimError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
        let registry = Arc::new(Registry::new(schema, config.history_size));
        if let Some(namespaces) = &config.namespaces {
            *registry
                .namespaces
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(namespaces.iter().cloned().collect());
        }
        let faults = Arc::new(FaultState::new(config.faults.clone()));
        let log = Arc::new(RequestLog::new(config.request_log_capacity));
        let timings = Timings {
            ready_delay: config.ready_delay,
            stale_status: config.stale_status,
            delete_linger: config.delete_linger,
        };
        let (controller, controller_shared) =
            Controller::new(registry.clone(), timings, config.domain.clone());
        let settings = Settings {
            watch_timeout: config.watch_timeout,
            bookmark_interval: config.bookmark_interval,
            server_address: addr.to_string(),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let thread_registry = registry.clone();
        let thread_faults = faults.clone();
        let thread_log = log.clone();
        let workers = config.workers.max(1);
        std::thread::Builder::new()
            .name("kserve-sim".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let state = web::Data::new(AppState {
                        registry: thread_registry,
                        faults: thread_faults,
                        log: thread_log,
                        settings,
                    });
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(state.clone())
                            .app_data(web::PayloadConfig::new(3 * 1024 * 1024))
                            .wrap(actix_web::middleware::from_fn(api::middleware))
                            .configure(api::configure)
                    })
                    .workers(workers)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .listen(listener);
                    let server = match server {
                        Ok(s) => s.run(),
                        Err(e) => {
                            let _ = ready_tx.send(Err(SimError::Start(e.to_string())));
                            return;
                        }
                    };
                    let controller_task = tokio::spawn(controller.run());
                    let _ = ready_tx.send(Ok(server.handle()));
                    if let Err(e) = server.await {
                        tracing::warn!(error = %e, "kserve-sim server ended with an error");
                    }
                    controller_task.abort();
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| SimError::Start(e.to_string()))?;
        let server = ready_rx
            .await
            .map_err(|_| SimError::Start("the server thread exited during start-up".into()))??;
        tracing::info!(%addr, "kserve-sim listening");
        Ok(SimHandle {
            inner: Arc::new(Inner {
                addr,
                registry,
                faults,
                log,
                controller: controller_shared,
                server: Mutex::new(Some(server)),
                done: tokio::sync::Mutex::new(Some(done_rx)),
            }),
        })
    }
}

struct Inner {
    addr: SocketAddr,
    registry: Arc<Registry>,
    faults: Arc<FaultState>,
    log: Arc<RequestLog>,
    controller: Arc<ControllerShared>,
    server: Mutex<Option<actix_web::dev::ServerHandle>>,
    done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // The stop command is sent when `stop` is called; the returned future only waits.
            drop(server.stop(false));
        }
    }
}

/// A running instance. Cheap to clone; the server stops when [`SimHandle::stop`] is called or
/// the last clone is dropped.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<Inner>,
}

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

impl SimHandle {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// A kubeconfig (YAML) pointing at this instance with `namespace` as default namespace.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        kubeconfig::render(&self.base_url(), namespace)
    }

    /// Writes that kubeconfig to `path`.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> Result<(), SimError> {
        kubeconfig::write(path, &self.base_url(), namespace)
    }

    /// Creates an object in `namespace` through the same pipeline as a POST (namespace check,
    /// pruning, schema defaults and validation, the validating webhook, managedFields under
    /// the field manager `kserve-sim`) but without HTTP, so a test can seed thousands of
    /// objects quickly. Not recorded in the request log or its counts.
    pub fn create(&self, namespace: &str, object: Value) -> Result<Value, ApiError> {
        let opts = WriteOpts {
            manager: "kserve-sim".into(),
            explicit_manager: true,
            ..WriteOpts::default()
        };
        self.inner
            .registry
            .create(namespace, object, &opts)
            .map(|w| (*w.object).clone())
    }

    /// The stored object, as a client would get it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Value> {
        self.inner
            .registry
            .store
            .lock()
            .get(&key(namespace, name))
            .map(|o| (**o).clone())
    }

    /// All stored objects (all namespaces, list order).
    pub fn list(&self) -> Vec<Value> {
        self.inner
            .registry
            .store
            .lock()
            .iter_ns(None)
            .map(|(_, o)| (**o).clone())
            .collect()
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.registry.store.lock().current_rv()
    }

    /// Waits until `pred` holds for the object (None: absent), checking on every change.
    /// Returns the object state that satisfied it, or `None` on timeout.
    pub async fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Option<Value>> {
        let mut rx = self.inner.registry.store.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = self.get(namespace, name);
            if pred(current.as_ref()) {
                return Some(current);
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return None,
                // Lagged or changed: re-check the current state either way.
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
            }
        }
    }

    /// Current fault settings.
    pub fn faults(&self) -> Faults {
        self.inner.faults.get()
    }

    /// Creates `namespace` (only meaningful when the stand-in tracks namespaces, see
    /// [`SimConfig::namespaces`]).
    pub fn create_namespace(&self, namespace: &str) {
        let mut namespaces = self
            .inner
            .registry
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = namespaces.as_mut() {
            existing.insert(namespace.to_owned());
        }
    }

    /// Replaces the fault settings (new watches pick up cut settings when they open).
    pub fn set_faults(&self, faults: Faults) {
        self.inner.faults.set(faults);
    }

    /// Makes an object fail: `Ready=False` with `reason` and `message` (terminal). Applies to
    /// the object if it exists now and to any object created later under this name.
    pub fn fail_object(&self, namespace: &str, name: &str, reason: &str, message: &str) {
        let mut b = self.behaviour(namespace, name);
        b.fail = Some((reason.to_string(), message.to_string()));
        self.set_behaviour(namespace, name, b);
    }

    /// Keeps an object from ever becoming ready.
    pub fn never_ready(&self, namespace: &str, name: &str) {
        let mut b = self.behaviour(namespace, name);
        b.never_ready = true;
        self.set_behaviour(namespace, name, b);
    }

    /// Readiness delay for one object.
    pub fn set_object_ready_delay(&self, namespace: &str, name: &str, delay: Duration) {
        let mut b = self.behaviour(namespace, name);
        b.ready_delay = Some(delay);
        self.set_behaviour(namespace, name, b);
    }

    /// The behaviour set for one object through the handle.
    pub fn behaviour(&self, namespace: &str, name: &str) -> ObjectBehaviour {
        self.inner.controller.behaviour(&key(namespace, name))
    }

    /// Sets the behaviour of one object; the controller reconciles it again.
    pub fn set_behaviour(&self, namespace: &str, name: &str, behaviour: ObjectBehaviour) {
        self.inner
            .controller
            .set_behaviour(key(namespace, name), behaviour);
    }

    /// Clears the behaviour of one object (it becomes ready normally).
    pub fn clear_behaviour(&self, namespace: &str, name: &str) {
        self.set_behaviour(namespace, name, ObjectBehaviour::default());
    }

    /// Behaviour of every object (object-specific settings and annotations layer on top).
    pub fn set_default_behaviour(&self, behaviour: ObjectBehaviour) {
        self.inner.controller.set_default_behaviour(behaviour);
    }

    /// Global readiness delay (for waits that start afterwards).
    pub fn set_ready_delay(&self, delay: Duration) {
        let mut t = self.inner.controller.timings();
        t.ready_delay = delay;
        self.inner.controller.set_timings(t);
    }

    /// How long the old status stays visible after a spec change.
    pub fn set_stale_status(&self, delay: Duration) {
        let mut t = self.inner.controller.timings();
        t.stale_status = delay;
        self.inner.controller.set_timings(t);
    }

    /// How long deleted objects linger.
    pub fn set_delete_linger(&self, delay: Duration) {
        let mut t = self.inner.controller.timings();
        t.delete_linger = delay;
        self.inner.controller.set_timings(t);
    }

    /// The retained request log, oldest first.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.inner.log.snapshot()
    }

    /// Requests answered per verb since the start or the last
    /// [`SimHandle::clear_request_log`]; not bounded by the log's capacity, so a load run can
    /// report its API cost however many requests it makes.
    pub fn request_counts(&self) -> VerbCounts {
        self.inner.log.counts()
    }

    /// Forgets the request log and resets the per-verb counts.
    pub fn clear_request_log(&self) {
        self.inner.log.clear();
    }

    /// Stops the server and the controller and waits until the server thread has exited.
    /// Idempotent.
    pub async fn stop(&self) {
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(server) = server {
            server.stop(false).await;
        }
        if let Some(done) = self.inner.done.lock().await.take() {
            let _ = done.await;
        }
    }
}
