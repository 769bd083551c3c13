//! Replicas on a JetStream cluster: three worker processes on a three-node NATS cluster (a
//! stream with three replicas) share the work without doubling it, and losing one NATS node and
//! one worker in the middle of a run loses nothing and leaves nothing `DEPLOYING`.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, Tenant, wait_for};
use deploy_worker::events::{self, EventKind};
use devkit::platform;
use devkit::sandbox::{LocalNatsCluster, LocalPostgres};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(120);

/// One history row of a pass: its outcome, when it started and when it finished.
type Pass = (
    String,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
);

/// A worker process and the port of its HTTP probes.
fn spawn_worker(env: &Env, nats_urls: &str) -> (Child, u16) {
    let port = devkit::sandbox::free_port().expect("free port");
    let child = Command::new(env!("CARGO_BIN_EXE_deploy-worker"))
        .arg("run")
        .env("DATABASE_URL", env.pg.url())
        .env("NATS_URL", nats_urls)
        .env("SIMULATE_DELAY_MS", "300")
        .env("DEPLOY_MAX_IN_FLIGHT_PER_TENANT", "10")
        .env("CLAIM_TTL_SECONDS", "3")
        .env("RESCAN_SECONDS", "1")
        .env("RETRY_BASE_MS", "100")
        .env("RETRY_MAX_MS", "1000")
        .env("HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the worker binary");
    (child, port)
}

/// Publishes a deploy event until JetStream acknowledges it; a retry carries the same message
/// id, so the stream keeps one copy whichever attempt got through.
async fn publish_until_acked(env: &Env, tenant: &Tenant, endpoint_id: Uuid) {
    let fields = tenant.event_fields(endpoint_id);
    let message_id = Uuid::new_v4().to_string();
    let deadline = Instant::now() + LONG;
    while let Err(err) = platform::publish(&env.js, EventKind::Deploy, &fields, &message_id).await {
        assert!(
            Instant::now() < deadline,
            "publish never acknowledged: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn three_replicas_on_a_three_node_cluster_survive_losing_a_node_and_a_worker() {
    let mut cluster = LocalNatsCluster::start(3).expect("nats cluster");
    let urls = cluster.urls();
    // The stream keeps three replicas; it can be created once the cluster has a leader.
    let client = async_nats::connect(deploy_worker::config::nats_servers(&urls))
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut config = events::stream_config();
    config.num_replicas = 3;
    let deadline = Instant::now() + LONG;
    while let Err(err) = js.get_or_create_stream(config.clone()).await {
        assert!(Instant::now() < deadline, "no JetStream cluster: {err}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first = cluster.nodes.remove(0);
    let env = Env::with_servers(
        LocalPostgres::start().expect("postgres"),
        first,
        async_nats::ConnectOptions::new(),
        &urls,
    )
    .await;
    let mut tenants = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        let tenant = env.tenant().await;
        for id in env.endpoints(&tenant, 100).await {
            endpoints.push((tenant, id));
        }
        tenants.push(tenant);
    }
    let ids: Vec<Uuid> = endpoints.iter().map(|(_, id)| *id).collect();
    let (mut workers, ports): (Vec<Child>, Vec<u16>) =
        (0..3).map(|_| spawn_worker(&env, &urls)).unzip();
    // three replicas consuming before anything is published
    for port in ports {
        let addr = ([127, 0, 0, 1], port).into();
        common::wait_http(addr, "/readyz", LONG, |r| r.status == 200).await;
    }

    let (early, late) = endpoints.split_at(endpoints.len() / 2);
    for (tenant, id) in early {
        publish_until_acked(&env, tenant, *id).await;
    }
    wait_for("the run under way", LONG, || async {
        env.count_status(&ids, "READY").await >= 30
    })
    .await;
    // one NATS node and one worker die without warning
    cluster.nodes[0].kill().expect("kill a NATS node");
    workers[0].kill().expect("kill a worker");
    workers[0].wait().expect("reap");
    for (tenant, id) in late {
        publish_until_acked(&env, tenant, *id).await;
    }

    env.wait_all_ready("every endpoint READY", &ids, LONG).await;
    wait_for("no request left", LONG, || async {
        env.requests().await == (0, 0)
    })
    .await;
    env.wait_all_answered(LONG).await;
    assert_eq!(env.count_status(&ids, "DEPLOYING").await, 0);

    // Without doubling: one READY pass per endpoint, and no two passes over one endpoint at
    // the same time (whatever replica ran them).
    let rows = env
        .db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT endpoint_id, outcome, started_at, finished_at FROM deployment_history \
             ORDER BY endpoint_id, started_at",
        ))
        .await
        .expect("history");
    let mut passes: HashMap<Uuid, Vec<Pass>> = HashMap::new();
    for row in rows {
        passes
            .entry(row.try_get("", "endpoint_id").expect("id"))
            .or_default()
            .push((
                row.try_get("", "outcome").expect("outcome"),
                row.try_get("", "started_at").expect("started"),
                row.try_get("", "finished_at").expect("finished"),
            ));
    }
    for id in &ids {
        let passes = passes.get(id).expect("history rows");
        let ready = passes.iter().filter(|(o, _, _)| o == "ready").count();
        assert_eq!(ready, 1, "{id}: {passes:?}");
        for pair in passes.windows(2) {
            assert!(
                pair[1].1 >= pair[0].2,
                "{id}: two passes overlapped: {passes:?}"
            );
        }
    }

    for worker in &workers[1..] {
        let _ = Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status();
    }
    for worker in &mut workers[1..] {
        let status = worker.wait().expect("wait");
        assert!(status.success(), "graceful exit, got {status}");
    }
}
