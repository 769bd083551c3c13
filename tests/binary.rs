//! The real binary, configured only by environment variables as in a deployment:
//! traces exported over OTLP/HTTP to a collector the test runs (decoded with the OTLP protobuf
//! definitions), and JSON logs at debug level that carry trace ids and never a password or a
//! token, through a deploy, a refused event and a SIGTERM.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, web};
use common::{Env, publisher_context, wait_http};
use deploy_worker::events::EventKind;
use devkit::sandbox;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use prost::Message;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// What the collector received: one entry per `POST /v1/traces`.
#[derive(Default)]
struct Received {
    requests: Vec<(Vec<(String, String)>, ExportTraceServiceRequest)>,
}

type Collector = Arc<Mutex<Received>>;

async fn otlp_traces(
    req: HttpRequest,
    body: web::Bytes,
    seen: web::Data<Collector>,
) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            seen.lock()
                .expect("collector lock")
                .requests
                .push((headers, request));
            // An empty ExportTraceServiceResponse encodes to no bytes.
            HttpResponse::Ok()
                .content_type("application/x-protobuf")
                .finish()
        }
        Err(err) => HttpResponse::BadRequest().body(err.to_string()),
    }
}

/// A minimal OTLP/HTTP collector on a free port.
fn start_collector() -> (SocketAddr, Collector, actix_web::dev::ServerHandle) {
    let seen: Collector = Arc::default();
    let data = web::Data::new(seen.clone());
    let server = actix_web::HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route("/v1/traces", web::post().to(otlp_traces))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .expect("bind collector");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (addr, seen, handle)
}

fn spans(seen: &Collector) -> Vec<(String, OtlpSpan)> {
    let received = seen.lock().expect("collector lock");
    let mut out = Vec::new();
    for (_, request) in &received.requests {
        for resource in &request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    out.push((service.clone(), span.clone()));
                }
            }
        }
    }
    out
}

fn span_attr(span: &OtlpSpan, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            Some(any_value::Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
}

/// The worker binary with a clean environment plus `env`; output goes to files in `dir`.
fn spawn_worker(env: &[(&str, String)], dir: &std::path::Path) -> Child {
    let stdout = std::fs::File::create(dir.join("stdout")).expect("stdout file");
    let stderr = std::fs::File::create(dir.join("stderr")).expect("stderr file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_deploy-worker"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn deploy-worker")
}

/// The variables that point a worker at `env`'s servers and serve its HTTP on `http`.
fn worker_env(env: &Env, http: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", env.pg.url()),
        ("NATS_URL", env.nats.url()),
        ("HTTP_LISTEN", http.to_string()),
    ]
}

/// SIGTERM, then the exit status (the graceful stop must finish quickly when idle).
fn terminate(mut child: Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("deploy-worker did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_rt::test]
async fn traces_reach_an_otlp_http_collector() {
    let env = Env::start().await;
    let (collector, seen, collector_handle) = start_collector();
    let http = SocketAddr::from(([127, 0, 0, 1], sandbox::free_port().expect("port")));
    let dir = tempfile::tempdir().expect("tempdir");
    let child = spawn_worker(
        &[
            &worker_env(&env, http)[..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
                ("OTEL_SERVICE_NAME", "deploy-worker-under-test".into()),
                ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
                ("SIMULATE_DELAY_MS", "50".into()),
            ],
        ]
        .concat(),
        dir.path(),
    );
    wait_http(http, "/readyz", Duration::from_secs(60), |r| {
        r.status == 200
    })
    .await;

    let endpoint = env.create_endpoint(Some("gs://models/fraud/1")).await;
    let (cx, trace_id, publisher_span) = publisher_context();
    env.publish_traced(&endpoint, &cx).await;
    env.wait_status(endpoint.id, "READY").await;

    // Exported on the batch schedule, while the worker runs.
    let trace_bytes = trace_id.to_bytes().to_vec();
    wait_until("the pass span at the collector", || {
        spans(&seen)
            .iter()
            .any(|(_, s)| s.trace_id == trace_bytes && s.name == "pass")
    })
    .await;
    let status = terminate(child);
    assert!(status.success(), "exit status {status}");

    let all = spans(&seen);
    let ours: Vec<&(String, OtlpSpan)> = all
        .iter()
        .filter(|(_, s)| s.trace_id == trace_bytes)
        .collect();
    for (service, _) in &ours {
        assert_eq!(service, "deploy-worker-under-test");
    }
    let names: std::collections::BTreeSet<&str> =
        ours.iter().map(|(_, s)| s.name.as_str()).collect();
    for name in common::DEPLOY_SPANS {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    let receive = &ours
        .iter()
        .find(|(_, s)| s.name == "receive")
        .expect("receive")
        .1;
    assert_eq!(receive.parent_span_id, publisher_span.to_bytes().to_vec());
    let pass = &ours.iter().find(|(_, s)| s.name == "pass").expect("pass").1;
    assert_eq!(pass.parent_span_id, receive.span_id);
    assert_eq!(
        span_attr(pass, "endpoint_id"),
        Some(endpoint.id.to_string())
    );
    assert_eq!(span_attr(pass, "outcome").as_deref(), Some("ready"));
    assert_eq!(span_attr(pass, "generation").as_deref(), Some("1"));
    collector_handle.stop(true).await;
}

#[actix_rt::test]
async fn json_logs_carry_trace_ids_and_never_secrets() {
    let mut env = Env::start().await;
    let (collector, seen, collector_handle) = start_collector();
    // A role with a password: the sandbox trusts local connections, but the worker is handed
    // the password in its URL as it would be in production.
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    env.db
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("CREATE ROLE deploy_worker_app LOGIN SUPERUSER PASSWORD '{password}'"),
        ))
        .await
        .expect("create role");
    let database_url = format!(
        "postgres://deploy_worker_app:{password}@127.0.0.1:{}/postgres",
        env.pg.port()
    );
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    // A NATS token in the URL (the sandbox server has no auth and ignores it).
    let nats_token = format!("nats-{}", uuid::Uuid::new_v4().simple());
    let nats_url = env
        .nats
        .url()
        .replacen("nats://", &format!("nats://{nats_token}@"), 1);
    let http = SocketAddr::from(([127, 0, 0, 1], sandbox::free_port().expect("port")));
    let dir = tempfile::tempdir().expect("tempdir");
    let child = spawn_worker(
        &[
            ("DATABASE_URL", database_url),
            ("NATS_URL", nats_url),
            ("HTTP_LISTEN", http.to_string()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "debug".into()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                format!("authorization=Bearer {token}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
        dir.path(),
    );
    wait_http(http, "/readyz", Duration::from_secs(60), |r| {
        r.status == 200
    })
    .await;
    // A broker restart: reconnecting is when clients like to log where they connect to.
    env.nats.stop().expect("stop nats");
    wait_http(http, "/readyz", Duration::from_secs(30), |r| {
        r.status == 503
    })
    .await;
    env.nats.start_again().expect("start nats");
    wait_http(http, "/readyz", Duration::from_secs(60), |r| {
        r.status == 200
    })
    .await;

    let endpoint = env.create_endpoint(Some("gs://models/fraud/1")).await;
    let (cx, trace_id, _) = publisher_context();
    env.publish_traced(&endpoint, &cx).await;
    env.publish_raw(EventKind::Deploy, b"{\"endpoint_id\": 7}")
        .await;
    env.wait_status(endpoint.id, "READY").await;
    wait_until("an export carrying the token", || {
        !seen.lock().expect("collector lock").requests.is_empty()
    })
    .await;
    let status = terminate(child);
    assert!(status.success(), "exit status {status}");
    collector_handle.stop(true).await;

    // The token was really in use: the collector got it.
    let received = seen.lock().expect("collector lock");
    let (headers, _) = &received.requests[0];
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == &format!("Bearer {token}")),
        "{headers:?}"
    );
    drop(received);

    let stdout = std::fs::read_to_string(dir.path().join("stdout")).expect("stdout");
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).expect("stderr");
    let output = format!("{stdout}{stderr}");
    assert!(
        output.lines().count() > 20,
        "a debug run logs plenty:\n{output}"
    );
    assert!(
        !output.contains(&password),
        "the database password leaked into the logs"
    );
    assert!(
        !output.contains(&token),
        "the OTLP token leaked into the logs"
    );
    assert!(
        !output.contains(&nats_token),
        "the NATS token leaked into the logs"
    );

    // Every line is a JSON object; the pass's lines carry the publisher's trace id.
    let mut committed = None;
    for line in stderr.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"));
        if value["message"] == "outcome committed"
            && value["endpoint_id"] == endpoint.id.to_string()
        {
            committed = Some(value);
        }
    }
    let committed = committed.expect("a log line for the committed outcome");
    assert_eq!(committed["trace_id"], trace_id.to_string(), "{committed}");
    assert_eq!(
        committed["span_id"].as_str().map(str::len),
        Some(16),
        "{committed}"
    );
    assert!(
        stderr.contains("refusing event"),
        "the malformed event is logged (and refused)"
    );
}

/// Without an exporter a pass has no span (nobody would see it); the lines it logs still read
/// as if they sat in one: inside `pass`, naming the endpoint, its spec generation, the events
/// the pass covers and the publisher's trace, in both formats, also when everything else is
/// logged at WARN only.
#[actix_rt::test]
async fn without_an_exporter_lines_inside_a_pass_still_name_the_endpoint_and_the_trace() {
    let env = Env::start().await;
    for (format, filter) in [
        ("json", "info"),
        ("compact", "warn,deploy_worker::pass=info"),
    ] {
        // no artifact: the pass ends ERROR, logged at INFO by a line that names the endpoint
        // and the reason only
        let invalid = env.create_endpoint(None).await;
        let http = SocketAddr::from(([127, 0, 0, 1], sandbox::free_port().expect("port")));
        let dir = tempfile::tempdir().expect("tempdir");
        let child = spawn_worker(
            &[
                &worker_env(&env, http)[..],
                &[("LOG_FORMAT", format.into()), ("RUST_LOG", filter.into())],
            ]
            .concat(),
            dir.path(),
        );
        wait_http(http, "/readyz", Duration::from_secs(60), |r| {
            r.status == 200
        })
        .await;
        let (cx, trace_id, _) = publisher_context();
        env.publish_traced(&invalid, &cx).await;
        env.wait_status(invalid.id, "ERROR").await;
        let status = terminate(child);
        assert!(status.success(), "exit status {status}");
        let stderr = std::fs::read_to_string(dir.path().join("stderr")).expect("stderr");
        let ended = stderr
            .lines()
            .find(|line| line.contains("endpoint ends in ERROR"))
            .unwrap_or_else(|| panic!("no ERROR line in the {format} logs:\n{stderr}"));
        if format == "json" {
            let value: serde_json::Value = serde_json::from_str(ended).expect("a JSON line");
            assert_eq!(value["spans"], serde_json::json!(["pass"]), "{ended}");
            assert_eq!(value["endpoint_id"], invalid.id.to_string(), "{ended}");
            assert_eq!(value["trace_id"], trace_id.to_string(), "{ended}");
            assert_eq!(value["generation"], 1, "{ended}");
            assert_eq!(value["events"], 1, "{ended}");
        } else {
            assert!(ended.contains(" pass: "), "{ended}");
            for field in [
                format!(" endpoint_id={}", invalid.id),
                format!(" trace_id=\"{trace_id}\""),
                " generation=1".to_owned(),
                " events=1".to_owned(),
            ] {
                assert_eq!(ended.matches(&field).count(), 1, "{field}: {ended}");
            }
        }
    }
}
