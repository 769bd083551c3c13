//! End-to-end load harness (README, "Performance"), run with `cargo bench --bench e2e`.
//!
//! Everything is real and local: a throw-away Postgres with production durability (fsync and
//! synchronous commit on), a throw-away `nats-server -js`, and the release `deploy-worker`
//! binary as its own process. Each figure comes with a floor measured in the same run on the
//! same servers, so the ratios hold on any machine:
//!
//! - **throughput**: events/s from a JetStream backlog to committed `READY` rows, against a
//!   bare pull + ack loop on the same NATS server and a bare batched `UPDATE` (the worker's own
//!   statement shape, one commit per batch) on the same database, with the CPU per event of the
//!   worker, of Postgres and of NATS;
//! - **k8s mode** on the KServe stand-in: the worker's time from the first publish to every
//!   endpoint `READY`, against an **ideal client** on the same stand-in (one list+watch of the
//!   namespace, one create per endpoint, wait until all are Ready), median of interleaved runs;
//!   the worker's API requests per deploy by verb and its watch requests (the stand-in's
//!   per-verb counts), its CPU per deploy and its resident set. `E2E_K8S_LARGE=<n>` adds one
//!   run with n endpoints (wall time, CPU per deploy, resident set);
//! - **rollback during a stuck canary** (k8s mode): endpoints whose canary never becomes Ready
//!   get a rollback; its event→READY time against the controller's own readiness time (the
//!   floor), with the deploy timeout far longer than either;
//! - **fairness**: one tenant publishes a flood of deploy events (50,000 by default), another
//!   publishes 20 five seconds after JetStream acknowledged the flood's last event; the small
//!   tenant's event → `READY` times against the simulated deploy time (the floor);
//! - **memory**: the worker's resident set with 10,000 deploys in flight (simulate mode with a
//!   long delay), again once they are done and the endpoint actors have gone idle, and with one
//!   tenant's backlog of 100,000 deploy events waiting (what a waiting endpoint costs).
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a small smoke run of the
//! same code paths, so the harness itself cannot rot. `E2E_SCENARIOS` (comma-separated:
//! `throughput`, `k8s`, `rollback`, `fairness`, `memory`) runs only those scenarios;
//! `E2E_WORKER_WRAPPER` puts a command before the worker's (a profiler: `valgrind
//! --tool=callgrind --callgrind-out-file=worker.callgrind`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use deploy_worker::events::{self, EventKind};
use deploy_worker::kserve::RenderOptions;
use devkit::platform::{self, EventFields, NewEndpoint, NewModelVersion};
use devkit::sandbox::LocalPostgres;
use futures::{StreamExt, TryStreamExt};
use kserve_sim::{SimHandle, Verb, VerbCounts};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams, WatchEvent,
    WatchParams,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::json;
use uuid::Uuid;

#[path = "../tests/common/mod.rs"]
mod common;

use common::Env;

struct Scale {
    throughput_events: usize,
    in_flight: usize,
    k8s_endpoints: usize,
    /// Interleaved worker / ideal-client runs of the k8s scenario (the median is reported).
    k8s_runs: usize,
    /// Endpoints of the opt-in large k8s run (`E2E_K8S_LARGE`).
    k8s_large: Option<usize>,
    rollback_endpoints: usize,
    /// Deploy events of one tenant's backlog in the memory scenario.
    backlog_events: usize,
    /// Deploy events of the flooding tenant in the fairness scenario.
    flood_events: usize,
    /// Simulated deploy time of the fairness scenario.
    flood_delay: Duration,
    durable: bool,
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let mut scale = if full {
        Scale {
            throughput_events: 100_000,
            in_flight: 10_000,
            k8s_endpoints: 1_000,
            k8s_runs: 3,
            k8s_large: None,
            rollback_endpoints: 20,
            backlog_events: 100_000,
            flood_events: 50_000,
            flood_delay: Duration::from_secs(2),
            durable: true,
        }
    } else {
        Scale {
            throughput_events: 300,
            in_flight: 200,
            k8s_endpoints: 20,
            k8s_runs: 1,
            k8s_large: None,
            rollback_endpoints: 3,
            backlog_events: 1_000,
            flood_events: 500,
            flood_delay: Duration::from_millis(300),
            durable: false,
        }
    };
    // Overrides for a quicker or a bigger run.
    if let Some(n) = env_number("E2E_EVENTS") {
        scale.throughput_events = n;
    }
    if let Some(n) = env_number("E2E_IN_FLIGHT") {
        scale.in_flight = n;
    }
    if let Some(n) = env_number("E2E_K8S_ENDPOINTS") {
        scale.k8s_endpoints = n;
    }
    if let Some(n) = env_number("E2E_ROLLBACK_ENDPOINTS") {
        scale.rollback_endpoints = n;
    }
    if let Some(n) = env_number("E2E_FLOOD_EVENTS") {
        scale.flood_events = n;
    }
    scale.k8s_large = env_number("E2E_K8S_LARGE");
    let selected = std::env::var("E2E_SCENARIOS").ok();
    let runs = |name: &str| {
        selected
            .as_deref()
            .is_none_or(|s| s.split(',').any(|n| n.trim() == name))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        if runs("throughput") {
            throughput(&scale).await;
        }
        if runs("k8s") {
            kubernetes(&scale).await;
        }
        if runs("rollback") {
            rollback(&scale).await;
        }
        if runs("fairness") {
            fairness(&scale).await;
        }
        if runs("memory") {
            memory(&scale).await;
        }
    });
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

struct Setup {
    env: Env,
    ids: Vec<Uuid>,
    endpoints: Vec<NewEndpoint>,
}

/// Servers and schema: Postgres with production durability in a full run.
async fn servers(scale: &Scale) -> Env {
    if scale.durable {
        Env::with_postgres(LocalPostgres::start_durable().expect("postgres")).await
    } else {
        Env::start().await
    }
}

/// Servers and schema, no endpoints yet (scenarios that make their own tenants).
async fn empty_setup(scale: &Scale) -> Setup {
    Setup {
        env: servers(scale).await,
        ids: Vec::new(),
        endpoints: Vec::new(),
    }
}

/// Waits until the worker serves its metrics (it has connected and started consuming).
async fn wait_up(worker: &WorkerProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(worker.http_port, "deploy_worker_endpoint_actors")
        .await
        .is_none()
    {
        assert!(Instant::now() < deadline, "the worker did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Servers, schema and `n` endpoints; their deploy events are published now or, with
/// `publish_now` false, by a later [`publish`].
async fn setup(scale: &Scale, n: usize, publish_now: bool) -> Setup {
    let env = servers(scale).await;
    let db = &env.db;

    // Ten tenants, as a shared worker sees them.
    let mut new = Vec::with_capacity(n);
    for t in 0..10 {
        let (tenant_id, project_id, version) = new_tenant(db, "load").await;
        new.extend((t..n).step_by(10).map(|i| NewEndpoint {
            tenant_id,
            project_id,
            name: format!("load-{i}"),
            runtime: "kserve".into(),
            model: Some(version),
            traffic: None,
            autoscaling: Some(json!({"minReplicas": 1, "maxReplicas": 4})),
            runtime_config: Some(json!({"modelFormat": "sklearn"})),
        }));
    }
    let ids = platform::create_endpoints(db, &new)
        .await
        .expect("endpoints");
    let setup = Setup {
        env,
        ids,
        endpoints: new,
    };
    if publish_now {
        publish(&setup).await;
    }
    setup
}

/// One deploy event per endpoint of `setup`, as the platform publishes them.
fn deploy_events(setup: &Setup) -> impl Iterator<Item = (EventKind, EventFields<'_>)> {
    setup.ids.iter().zip(&setup.endpoints).map(|(id, e)| {
        let fields = EventFields {
            tenant_id: e.tenant_id,
            project_id: e.project_id,
            endpoint_id: *id,
            name: &e.name,
            model: e.model,
        };
        (EventKind::Deploy, fields)
    })
}

/// Publishes one deploy event per endpoint of `setup`.
async fn publish(setup: &Setup) {
    platform::publish_all(&setup.env.js, deploy_events(setup))
        .await
        .expect("publish");
    eprintln!("e2e: published");
}

/// The worker process and the port of its metrics endpoint.
struct WorkerProcess {
    child: Child,
    http_port: u16,
}

fn spawn_worker(setup: &Setup, env: &[(&str, String)]) -> WorkerProcess {
    let http_port = devkit::sandbox::free_port().expect("free port");
    let worker = env!("CARGO_BIN_EXE_deploy-worker");
    // `E2E_WORKER_WRAPPER="valgrind --tool=callgrind"` runs the worker under that command
    // (same process id, so its CPU and memory are still read from /proc)
    let wrapper = std::env::var("E2E_WORKER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(worker);
            command
        }
        None => Command::new(worker),
    };
    command
        .arg("run")
        .env("DATABASE_URL", setup.env.pg.url())
        .env("NATS_URL", setup.env.nats.url())
        // the default log level, as a platform runs it
        .env("HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    WorkerProcess {
        child: command.spawn().expect("start deploy-worker"),
        http_port,
    }
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// One value from the worker's `/metrics` (OpenMetrics text), e.g. a histogram's `_sum`.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let response = common::http_get(([127, 0, 0, 1], port).into(), "/metrics").await?;
    response
        .body
        .lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn count(db: &DatabaseConnection, status: &str) -> usize {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM endpoints WHERE status = $1",
            [status.into()],
        ))
        .await
        .expect("count")
        .expect("row");
    row.try_get::<i64>("", "n").expect("n") as usize
}

async fn wait_count(db: &DatabaseConnection, status: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while count(db, status).await < n {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} {status}"
        );
        // a count over every endpoint costs Postgres milliseconds: polling more often would
        // take a visible share of the CPU the worker and Postgres share
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the worker reports `n` events ended `READY` (counted once their outcome has
/// committed), then checks the rows once: polling the worker's metrics costs Postgres nothing,
/// where a `count(*)` over every endpoint ten times a second took a share of the CPU the worker
/// and Postgres share.
async fn wait_ready_reported(db: &DatabaseConnection, port: u16, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let ready: f64 = match common::http_get(([127, 0, 0, 1], port).into(), "/metrics").await {
            Some(response) => response
                .body
                .lines()
                .filter(|l| l.starts_with("deploy_worker_events_total{"))
                .filter(|l| l.contains("outcome=\"ready\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
            None => 0.0,
        };
        if ready >= n as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {n} READY");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(db, "READY").await,
        n,
        "READY rows once the worker reported them"
    );
}

/// CPU seconds used so far by every process named `name` (all `postgres` backends, say).
fn cpu_seconds_of(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .map(cpu_seconds)
        .sum()
}

fn stop(worker: WorkerProcess) {
    let mut child = worker.child;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Bare pull + ack of `n` messages on a stream of the same configuration, same server.
async fn floor_consume(js: &jetstream::Context, n: usize) -> f64 {
    let mut config = events::stream_config();
    config.name = "LOAD_FLOOR".into();
    config.subjects = vec!["loadfloor.>".into()];
    config.retention = stream::RetentionPolicy::WorkQueue;
    let stream = js.get_or_create_stream(config).await.expect("floor stream");
    let payload = platform::payload(&EventFields {
        tenant_id: Uuid::new_v4(),
        project_id: Uuid::new_v4(),
        endpoint_id: Uuid::new_v4(),
        name: "floor",
        model: None,
    });
    // Pipelined like `platform::publish_all`: a bounded number of acks outstanding (the
    // context blocks new publishes beyond its in-flight limit until acks are awaited).
    let mut acks = Vec::new();
    for _ in 0..n {
        acks.push(
            js.publish("loadfloor.deploy", payload.clone().into())
                .await
                .expect("publish"),
        );
        if acks.len() == 1024 {
            for ack in acks.drain(..) {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("ack");
    }
    let consumer = stream
        .get_or_create_consumer(
            "floor",
            pull::Config {
                durable_name: Some("floor".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .expect("floor consumer");
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let mut batch = consumer
            .batch()
            .max_messages(512)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("pull");
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            // Decode as the worker does, then ack.
            let _ = events::ServingEvent::decode(&message.payload);
            message.ack_with(AckKind::Ack).await.expect("ack");
            done += 1;
            if done == n {
                break;
            }
        }
    }
    js.client().flush().await.expect("flush");
    n as f64 / started.elapsed().as_secs_f64()
}

/// Bare batched UPDATE of `ids` to READY, batches of 1,024, one commit each.
async fn floor_update(db: &DatabaseConnection, ids: &[Uuid]) -> f64 {
    let started = Instant::now();
    for chunk in ids.chunks(1024) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|id| json!({"id": id, "status": "READY", "url": format!("http://{id}.example.local")}))
            .collect();
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE endpoints AS e SET status = v.status, url = v.url \
             FROM jsonb_to_recordset($1::jsonb) AS v(id uuid, status text, url text) WHERE e.id = v.id",
            [serde_json::Value::Array(rows).into()],
        ))
        .await
        .expect("update");
    }
    let rate = ids.len() as f64 / started.elapsed().as_secs_f64();
    db.execute_unprepared("UPDATE endpoints SET status = 'CREATING', url = NULL")
        .await
        .expect("reset");
    rate
}

async fn throughput(scale: &Scale) {
    let n = scale.throughput_events;
    let setup = setup(scale, n, true).await;
    let consume = floor_consume(&setup.env.js, n).await;
    eprintln!("e2e: pull + ack floor measured");
    let update = floor_update(&setup.env.db, &setup.ids).await;
    eprintln!("e2e: UPDATE floor measured; running the worker");

    let (pg_before, nats_before) = (cpu_seconds_of("postgres"), cpu_seconds_of("nats-server"));
    let started = Instant::now();
    let worker = spawn_worker(&setup, &[]);
    wait_ready_reported(&setup.env.db, worker.http_port, n, Duration::from_secs(600)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(worker.child.id());
    let pg_cpu = cpu_seconds_of("postgres") - pg_before;
    let nats_cpu = cpu_seconds_of("nats-server") - nats_before;
    let batch_sum = metric(
        worker.http_port,
        "deploy_worker_group_commit_batch_size_sum",
    )
    .await;
    let batch_count = metric(
        worker.http_port,
        "deploy_worker_group_commit_batch_size_count",
    )
    .await;
    stop(worker);
    let worker_rate = n as f64 / elapsed;

    println!(
        "throughput ({n} events, simulate mode, {} Postgres)",
        if scale.durable {
            "durable"
        } else {
            "non-durable"
        }
    );
    println!(
        "  worker, JetStream backlog -> committed READY  {worker_rate:>9.0} events/s  ({elapsed:.2} s incl. start-up)"
    );
    println!(
        "  worker CPU                                     {:>9.0} µs per event",
        cpu * 1e6 / n as f64
    );
    println!(
        "  Postgres CPU (all backends) / NATS CPU         {:>9.0} / {:.0} µs per event",
        pg_cpu * 1e6 / n as f64,
        nats_cpu * 1e6 / n as f64
    );
    if let (Some(sum), Some(count)) = (batch_sum, batch_count) {
        println!(
            "  group commit                                   {count:>9.0} transactions, {:.0} writes each on average",
            sum / count.max(1.0)
        );
    }
    println!(
        "  floor: bare pull + ack loop                    {consume:>9.0} events/s  ratio {:.2}",
        worker_rate / consume
    );
    println!(
        "  floor: bare batched UPDATE (1,024 per commit)  {update:>9.0} rows/s    ratio {:.2}",
        worker_rate / update
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How long the stand-in's controller takes to report Ready after a spec change.
const KSERVE_READY_DELAY: Duration = Duration::from_secs(1);

/// The stand-in as every k8s scenario runs it.
async fn start_sim() -> (SimHandle, tempfile::TempDir, std::path::PathBuf) {
    let config = kserve_sim::SimConfig {
        ready_delay: KSERVE_READY_DELAY,
        stale_status: Duration::ZERO,
        ..Default::default()
    };
    let sim = kserve_sim::KserveSim::start(config)
        .await
        .expect("stand-in");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, &RenderOptions::default().namespace)
        .expect("kubeconfig");
    (sim, dir, kubeconfig)
}

/// One run of the worker in k8s mode.
struct WorkerRun {
    n: usize,
    /// First publish to every endpoint `READY` in the database.
    seconds: f64,
    /// Worker CPU over the same span, per deploy.
    cpu_per_deploy: f64,
    /// Resident set once every endpoint is `READY`, and its peak until then (KiB).
    rss_kib: u64,
    peak_rss_kib: u64,
    /// Requests the stand-in answered from the worker's start to the end of the run.
    requests: VerbCounts,
    /// Pass start to outcome per deploy, p50 and p99 (s).
    p50: f64,
    p99: f64,
    /// The objects the worker applied, as a client would create them (for the ideal client).
    manifests: Vec<serde_json::Value>,
}

/// The worker, started and idle, then `n` deploys published at once; measured until all are
/// `READY`.
async fn k8s_worker_run(scale: &Scale, n: usize) -> WorkerRun {
    let setup = setup(scale, n, false).await;
    let (sim, _dir, kubeconfig) = start_sim().await;
    let worker = spawn_worker(
        &setup,
        &[
            ("DEPLOY_MODE", "k8s".into()),
            ("KUBECONFIG", kubeconfig.display().to_string()),
        ],
    );
    let pid = worker.child.id();
    wait_up(&worker).await;
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    publish(&setup).await;
    let mut peak_rss_kib = 0;
    let deadline = started + Duration::from_secs(1800);
    while count(&setup.env.db, "READY").await < n {
        assert!(Instant::now() < deadline, "timed out waiting for {n} READY");
        peak_rss_kib = peak_rss_kib.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let rss = rss_kib(pid);
    let requests = sim.request_counts();
    stop(worker);
    let manifests = sim.list().iter().map(as_created).collect();
    sim.stop().await;

    let row = setup
        .env
        .db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT \
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS p50, \
               percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS p99 \
             FROM deployment_history WHERE outcome = 'ready'",
        ))
        .await
        .expect("latency")
        .expect("row");
    WorkerRun {
        n,
        seconds,
        cpu_per_deploy: cpu / n as f64,
        rss_kib: rss,
        peak_rss_kib: peak_rss_kib.max(rss),
        requests,
        p50: row.try_get("", "p50").unwrap_or(0.0),
        p99: row.try_get("", "p99").unwrap_or(0.0),
        manifests,
    }
}

/// A stored object as its creator sent it: identity, labels, annotations and spec.
fn as_created(stored: &serde_json::Value) -> serde_json::Value {
    let meta = &stored["metadata"];
    json!({
        "apiVersion": stored["apiVersion"],
        "kind": stored["kind"],
        "metadata": {
            "name": meta["name"],
            "labels": meta.get("labels").cloned().unwrap_or_else(|| json!({})),
            "annotations": meta.get("annotations").cloned().unwrap_or_else(|| json!({})),
        },
        "spec": stored["spec"],
    })
}

/// One run of the ideal client.
struct IdealRun {
    seconds: f64,
    requests: VerbCounts,
}

/// Whether a watched object is Ready for its current generation.
fn is_ready(o: &DynamicObject) -> bool {
    let status = &o.data["status"];
    let ready = status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    ready && status["observedGeneration"].as_i64() >= o.metadata.generation
}

/// The fastest any client could be on the same stand-in: one list+watch of the namespace, one
/// create per object (as many at once as the worker allows itself), done when the watch has
/// shown every object Ready.
async fn k8s_ideal_run(manifests: &[serde_json::Value]) -> IdealRun {
    let (sim, _dir, kubeconfig) = start_sim().await;
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kube config");
    let client = kube::Client::try_from(config).expect("kube client");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService"),
        "inferenceservices",
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, &RenderOptions::default().namespace, &resource);
    let n = manifests.len();

    let started = Instant::now();
    let list = api.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.unwrap_or_default();
    let mut events = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let creates = futures::stream::iter(manifests.iter().cloned())
        .map(|m| {
            let api = api.clone();
            async move {
                let object: DynamicObject = serde_json::from_value(m).expect("manifest");
                api.create(&PostParams::default(), &object).await
            }
        })
        // The worker's default cap on deploys in flight.
        .buffer_unordered(1024)
        .try_for_each(|_| async { Ok(()) });
    let all_ready = async {
        let mut ready = std::collections::HashSet::new();
        while ready.len() < n {
            match events
                .try_next()
                .await
                .expect("watch")
                .expect("watch ended")
            {
                WatchEvent::Added(o) | WatchEvent::Modified(o) if is_ready(&o) => {
                    ready.insert(o.metadata.name.unwrap_or_default());
                }
                WatchEvent::Error(e) => panic!("watch error: {e:?}"),
                _ => {}
            }
        }
    };
    let (created, ()) = tokio::join!(creates, all_ready);
    created.expect("create");
    let seconds = started.elapsed().as_secs_f64();
    let requests = sim.request_counts();
    sim.stop().await;
    IdealRun { seconds, requests }
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        len if len % 2 == 1 => v[len / 2],
        len => (v[len / 2 - 1] + v[len / 2]) / 2.0,
    }
}

/// `1.002 per deploy (create 1000, list 1, watch 1)`: API requests per deploy, and the
/// requests by verb (verbs not used left out).
fn per_deploy(requests: &VerbCounts, n: usize) -> String {
    let by_verb = requests
        .iter()
        .filter(|(verb, count)| verb.is_resource() && *count > 0)
        .map(|(verb, count)| format!("{} {count}", verb.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{:.3} per deploy ({by_verb})",
        requests.api_total() as f64 / n as f64
    )
}

async fn kubernetes(scale: &Scale) {
    let n = scale.k8s_endpoints;
    let ready = KSERVE_READY_DELAY.as_secs_f64();
    let mut workers = Vec::new();
    let mut ideals = Vec::new();
    for run in 1..=scale.k8s_runs {
        let worker = k8s_worker_run(scale, n).await;
        let ideal = k8s_ideal_run(&worker.manifests).await;
        eprintln!(
            "e2e: k8s run {run}: worker {:.2} s, ideal client {:.2} s",
            worker.seconds, ideal.seconds
        );
        workers.push(worker);
        ideals.push(ideal);
    }
    let worker_s = median(workers.iter().map(|w| w.seconds));
    let ideal_s = median(ideals.iter().map(|i| i.seconds));
    // The run whose time is the median stands for the per-run figures.
    let typical = workers
        .iter()
        .min_by(|a, b| {
            (a.seconds - worker_s)
                .abs()
                .total_cmp(&(b.seconds - worker_s).abs())
        })
        .expect("at least one run");
    let runs = |times: Vec<f64>| {
        times
            .iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "k8s mode on the KServe stand-in ({n} endpoints, controller Ready after {ready:.1} s, \
         median of {} interleaved runs)",
        scale.k8s_runs
    );
    println!(
        "  worker: first publish -> every endpoint READY   {worker_s:>7.2} s  (runs {} s)",
        runs(workers.iter().map(|w| w.seconds).collect())
    );
    println!(
        "  ideal client: list+watch, one create each       {ideal_s:>7.2} s  (runs {} s)",
        runs(ideals.iter().map(|i| i.seconds).collect())
    );
    println!(
        "  ratio worker / ideal client                     {:>7.2}   (target ≤ 1.25)",
        worker_s / ideal_s
    );
    println!(
        "  worker API requests                             {}",
        per_deploy(&typical.requests, n)
    );
    println!(
        "  worker watch requests                           {:>7}     (target 1)",
        typical.requests.get(Verb::Watch)
    );
    if let Some(ideal) = ideals.first() {
        println!(
            "  ideal client API requests                       {}",
            per_deploy(&ideal.requests, n)
        );
    }
    println!(
        "  per deploy: pass start -> outcome               p50 {:.0} ms, p99 {:.0} ms",
        typical.p50 * 1e3,
        typical.p99 * 1e3
    );
    println!(
        "  worker CPU                                      {:>7.0} µs per deploy  (runs {} µs)",
        median(workers.iter().map(|w| w.cpu_per_deploy)) * 1e6,
        workers
            .iter()
            .map(|w| format!("{:.0}", w.cpu_per_deploy * 1e6))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "  worker resident set, all READY (peak)           {:>7.1} MiB ({:.1} MiB)",
        typical.rss_kib as f64 / 1024.0,
        typical.peak_rss_kib as f64 / 1024.0
    );

    if let Some(large) = scale.k8s_large {
        let run = k8s_worker_run(scale, large).await;
        println!(
            "k8s mode, large ({} endpoints, controller Ready after {ready:.1} s, one run)",
            run.n
        );
        println!(
            "  worker: first publish -> every endpoint READY   {:>7.2} s",
            run.seconds
        );
        println!(
            "  worker CPU                                      {:>7.0} µs per deploy",
            run.cpu_per_deploy * 1e6
        );
        println!(
            "  worker resident set, all READY (peak)           {:>7.1} MiB ({:.1} MiB)",
            run.rss_kib as f64 / 1024.0,
            run.peak_rss_kib as f64 / 1024.0
        );
        println!(
            "  worker API requests                             {}",
            per_deploy(&run.requests, run.n)
        );
    }
}

/// Rollbacks published while canaries are stuck: each endpoint is Ready, gets a canary the
/// controller never makes Ready, and 3 s later a rollback (canary traffic back to 0). Reports
/// event→READY of the rollbacks against the controller's readiness time.
async fn rollback(scale: &Scale) {
    let n = scale.rollback_endpoints;
    let setup = setup(scale, n, true).await;
    let db = &setup.env.db;
    let (sim, _dir, kubeconfig) = start_sim().await;
    let options = RenderOptions::default();
    let timeout = 600;
    let worker = spawn_worker(
        &setup,
        &[
            ("DEPLOY_MODE", "k8s".into()),
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("DEPLOY_TIMEOUT_SECONDS", timeout.to_string()),
        ],
    );
    wait_count(db, "READY", n, Duration::from_secs(600)).await;

    let change = |percent: i64| devkit::platform::ServingPatch {
        traffic: Some(Some(json!({ "canaryTrafficPercent": percent }))),
        ..Default::default()
    };
    for id in &setup.ids {
        let name = deploy_worker::kserve::isvc_name(&options.name_prefix, *id);
        sim.never_ready(&options.namespace, &name);
        platform::patch_endpoint(db, *id, change(10))
            .await
            .expect("canary");
    }
    platform::publish_all(&setup.env.js, deploy_events(&setup))
        .await
        .expect("publish canaries");
    wait_count(db, "DEPLOYING", n, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &setup.ids {
        let name = deploy_worker::kserve::isvc_name(&options.name_prefix, *id);
        sim.clear_behaviour(&options.namespace, &name);
        platform::patch_endpoint(db, *id, change(0))
            .await
            .expect("rollback");
    }
    let published = Instant::now();
    platform::publish_all(&setup.env.js, deploy_events(&setup))
        .await
        .expect("publish rollbacks");
    let mut latencies = Vec::with_capacity(n);
    let mut pending: std::collections::HashSet<Uuid> = setup.ids.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(timeout);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "rollbacks not READY before the timeout"
        );
        let rows = db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT id FROM endpoints WHERE status = 'READY' AND ready_generation = spec_generation \
                 AND spec_generation >= 3",
            ))
            .await
            .expect("ready rows");
        for row in rows {
            let id: Uuid = row.try_get("", "id").expect("id");
            if pending.remove(&id) {
                latencies.push(published.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(worker);
    sim.stop().await;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    let ready = KSERVE_READY_DELAY.as_secs_f64();
    println!(
        "rollback during a stuck canary, k8s mode ({n} endpoints, controller Ready after {ready:.1} s, \
         deploy timeout {timeout} s)"
    );
    println!(
        "  rollback event → READY                      p50 {:.2} s, p99 {:.2} s (floor {ready:.1} s, target ≤ {:.1} s)",
        at(0.5),
        at(0.99),
        ready + 2.0
    );
}

async fn memory(scale: &Scale) {
    let n = scale.in_flight;
    // The worker starts on an empty stream, so its first figure is a true idle baseline.
    let setup = setup(scale, n, false).await;
    let worker = spawn_worker(
        &setup,
        &[
            ("SIMULATE_DELAY_MS", "20000".into()),
            ("DEPLOY_MAX_IN_FLIGHT", n.to_string()),
            ("DEPLOY_MAX_IN_FLIGHT_PER_TENANT", n.to_string()),
        ],
    );
    let actors = "deploy_worker_endpoint_actors";
    wait_up(&worker).await;
    let started_rss = rss_kib(worker.child.id());
    publish(&setup).await;
    wait_count(&setup.env.db, "DEPLOYING", n, Duration::from_secs(300)).await;
    let busy_rss = rss_kib(worker.child.id());
    wait_count(&setup.env.db, "READY", n, Duration::from_secs(300)).await;
    // Idle actors stop after 1 s; wait until the worker reports none alive.
    common::wait_for(
        "endpoint actors to go idle",
        Duration::from_secs(60),
        || async { metric(worker.http_port, actors).await == Some(0.0) },
    )
    .await;
    let idle_rss = rss_kib(worker.child.id());
    stop(worker);
    println!("memory (worker resident set)");
    println!(
        "  started, stream empty            {:>7.1} MiB",
        started_rss as f64 / 1024.0
    );
    println!(
        "  {n} deploys in flight         {:>7.1} MiB  ({:.1} KiB per deploy above start)",
        busy_rss as f64 / 1024.0,
        (busy_rss.saturating_sub(started_rss)) as f64 / n as f64
    );
    println!(
        "  all done, no actors alive        {:>7.1} MiB",
        idle_rss as f64 / 1024.0
    );
    backlog(scale).await;
}

/// One tenant's backlog: what a pending endpoint costs the worker while it waits for its turn.
async fn backlog(scale: &Scale) {
    let n = scale.backlog_events;
    let setup = empty_setup(scale).await;
    let endpoints = tenant_endpoints(&setup.env.db, n, "backlog").await;
    // default caps: 256 of the tenant's endpoints run at a time, the rest wait
    let worker = spawn_worker(&setup, &[("SIMULATE_DELAY_MS", "600000".into())]);
    wait_up(&worker).await;
    let before = rss_kib(worker.child.id());
    platform::publish_all(&setup.env.js, events_of(&endpoints))
        .await
        .expect("publish the backlog");
    let waiting = "deploy_worker_deploys_waiting";
    let deadline = Instant::now() + Duration::from_secs(600);
    let queued = loop {
        let queued = metric(worker.http_port, waiting).await.unwrap_or(0.0);
        let running = count(&setup.env.db, "DEPLOYING").await as f64;
        if queued + running >= n as f64 {
            break queued;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog was never all accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = rss_kib(worker.child.id());
    stop(worker);
    println!("one tenant's backlog ({n} deploy events, default caps)");
    println!(
        "  resident set                     {:>7.1} MiB before, {:.1} MiB with {queued:.0} endpoints waiting",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    println!(
        "  per waiting endpoint             {:>7.0} bytes (everything above the start, running passes included)",
        after.saturating_sub(before) as f64 * 1024.0 / queued.max(1.0)
    );
}

/// A new tenant with one project and one version of model `label`.
async fn new_tenant(
    db: &DatabaseConnection,
    label: &str,
) -> (Uuid, Uuid, platform::ModelVersionRef) {
    let (tenant_id, project_id) = (Uuid::new_v4(), Uuid::new_v4());
    let version = platform::create_model_version(
        db,
        &NewModelVersion {
            tenant_id,
            project_id,
            model_name: label.into(),
            version: 1,
            artifact_uri: Some(format!("gs://models/{label}/1")),
        },
    )
    .await
    .expect("model version");
    (tenant_id, project_id, version)
}

/// `n` endpoints of one new tenant (one project, one model version).
async fn tenant_endpoints(
    db: &DatabaseConnection,
    n: usize,
    label: &str,
) -> Vec<(Uuid, NewEndpoint)> {
    let (tenant_id, project_id, version) = new_tenant(db, label).await;
    let new: Vec<NewEndpoint> = (0..n)
        .map(|i| NewEndpoint {
            tenant_id,
            project_id,
            name: format!("{label}-{i}"),
            runtime: "kserve".into(),
            model: Some(version),
            traffic: None,
            autoscaling: None,
            runtime_config: Some(json!({"modelFormat": "sklearn"})),
        })
        .collect();
    let ids = platform::create_endpoints(db, &new)
        .await
        .expect("endpoints");
    ids.into_iter().zip(new).collect()
}

fn events_of(
    endpoints: &[(Uuid, NewEndpoint)],
) -> impl Iterator<Item = (EventKind, EventFields<'_>)> {
    endpoints.iter().map(|(id, e)| {
        (
            EventKind::Deploy,
            EventFields {
                tenant_id: e.tenant_id,
                project_id: e.project_id,
                endpoint_id: *id,
                name: &e.name,
                model: e.model,
            },
        )
    })
}

async fn fairness(scale: &Scale) {
    let setup = empty_setup(scale).await;
    let flood = tenant_endpoints(&setup.env.db, scale.flood_events, "flood").await;
    let small = tenant_endpoints(&setup.env.db, 20, "small").await;
    let delay = scale.flood_delay;
    // default caps, as a shared worker runs
    let worker = spawn_worker(
        &setup,
        &[("SIMULATE_DELAY_MS", delay.as_millis().to_string())],
    );
    wait_up(&worker).await;
    let started = Instant::now();
    platform::publish_all(&setup.env.js, events_of(&flood))
        .await
        .expect("publish the flood");
    let flood_published = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // the small tenant's events, each timed from its own publication to READY
    let mut published = Vec::with_capacity(small.len());
    for event in events_of(&small) {
        platform::publish_all(&setup.env.js, [event])
            .await
            .expect("publish");
        published.push(Instant::now());
    }
    let ids: Vec<Uuid> = small.iter().map(|(id, _)| *id).collect();
    let mut ready_after = vec![None; ids.len()];
    let deadline = Instant::now() + Duration::from_secs(600);
    while ready_after.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "the small tenant never got READY"
        );
        let rows = setup
            .env
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM endpoints WHERE status = 'READY' AND id = ANY($1)",
                [ids.clone().into()],
            ))
            .await
            .expect("poll");
        let now = Instant::now();
        for row in rows {
            let id: Uuid = row.try_get("", "id").expect("id");
            if let Some(i) = ids.iter().position(|x| *x == id)
                && ready_after[i].is_none()
            {
                ready_after[i] = Some(now.duration_since(published[i]).as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flood_ready = count(&setup.env.db, "READY").await - ids.len();
    stop(worker);
    let mut times: Vec<f64> = ready_after.into_iter().flatten().collect();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "fairness ({} deploy events of one tenant, then 20 of another 5 s after the last was \
         acknowledged; simulate delay {:.1} s, default caps)",
        flood.len(),
        delay.as_secs_f64()
    );
    println!(
        "  flood published in {:.1} s; {flood_ready} of its endpoints READY when the small tenant was done",
        flood_published.as_secs_f64()
    );
    println!(
        "  small tenant event → READY                 p50 {:.2} s, p99 {:.2} s (floor {:.1} s, target ≤ {:.1} s)",
        at(0.5),
        at(0.99),
        delay.as_secs_f64(),
        delay.as_secs_f64() + 0.5
    );
}
