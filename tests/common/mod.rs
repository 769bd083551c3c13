//! Helpers shared by the observability tests: real Postgres and NATS from the sandbox, endpoints
//! created and events published the way the platform does, a minimal HTTP/1.1 client.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use deploy_worker::events::EventKind;
use deploy_worker::platform::{self, EventFields, ModelVersionRef, NewEndpoint, NewModelVersion};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// One endpoint created through the platform's tables.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub model: ModelVersionRef,
}

impl Endpoint {
    pub fn fields(&self) -> EventFields<'_> {
        EventFields {
            tenant_id: self.tenant_id,
            project_id: self.project_id,
            endpoint_id: self.id,
            name: &self.name,
            model: Some(self.model),
        }
    }
}

/// Creates a model version (with or without an artifact) and an endpoint serving it.
pub async fn create_endpoint(db: &DatabaseConnection, artifact: Option<&str>) -> Endpoint {
    let tenant_id = Uuid::new_v4();
    let project_id = Uuid::new_v4();
    let model = platform::create_model_version(
        db,
        &NewModelVersion {
            tenant_id,
            project_id,
            model_name: "fraud".into(),
            version: 1,
            artifact_uri: artifact.map(str::to_owned),
        },
    )
    .await
    .expect("model version");
    let name = format!("ep-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let ids = platform::create_endpoints(
        db,
        &[NewEndpoint {
            tenant_id,
            project_id,
            name: name.clone(),
            runtime: "kserve".into(),
            model: Some(model),
            traffic: None,
            autoscaling: None,
            runtime_config: None,
        }],
    )
    .await
    .expect("endpoint");
    Endpoint {
        id: ids[0],
        tenant_id,
        project_id,
        name,
        model,
    }
}

/// A publisher-side trace context with fresh random ids, sampled.
pub fn publisher_context() -> (opentelemetry::Context, TraceId, SpanId) {
    let trace_id = TraceId::from(rand::random::<u128>().max(1));
    let span_id = SpanId::from(rand::random::<u64>().max(1));
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    (
        opentelemetry::Context::new().with_remote_span_context(sc),
        trace_id,
        span_id,
    )
}

/// Publishes a deploy event for `endpoint` inside the trace `cx`.
pub async fn publish_deploy(
    js: &async_nats::jetstream::Context,
    endpoint: &Endpoint,
    cx: &opentelemetry::Context,
) {
    platform::publish_traced(
        js,
        EventKind::Deploy,
        &endpoint.fields(),
        &Uuid::new_v4().to_string(),
        cx,
    )
    .await
    .expect("publish");
}

/// The endpoint's status.
pub async fn status(db: &DatabaseConnection, id: Uuid) -> Option<String> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT status FROM endpoints WHERE id = $1",
            [id.into()],
        ))
        .await
        .ok()??;
    row.try_get("", "status").ok()
}

/// Waits until the endpoint has `wanted` status.
pub async fn wait_status(db: &DatabaseConnection, id: Uuid, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = status(db, id).await;
        if now.as_deref() == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "endpoint {id} never reached {wanted} (is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `(generation, outcome, trace_id)` of the endpoint's history rows, oldest first.
pub async fn history(db: &DatabaseConnection, id: Uuid) -> Vec<(i64, String, Option<String>)> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT generation, outcome, trace_id FROM deployment_history \
             WHERE endpoint_id = $1 ORDER BY id",
            [id.into()],
        ))
        .await
        .expect("history");
    rows.iter()
        .map(|r| {
            (
                r.try_get("", "generation").expect("generation"),
                r.try_get("", "outcome").expect("outcome"),
                r.try_get("", "trace_id").expect("trace_id"),
            )
        })
        .collect()
}

/// A plain HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr` with `Connection: close`; `None` when nothing answers.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<Response> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.lines();
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Some(Response {
            status,
            headers,
            body: body.to_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// Polls `GET path` until `accept` holds for the response, or panics after `within`.
pub async fn wait_http(
    addr: std::net::SocketAddr,
    path: &str,
    within: Duration,
    accept: impl Fn(&Response) -> bool,
) -> Response {
    let deadline = Instant::now() + within;
    loop {
        let response = http_get(addr, path).await;
        if let Some(r) = response {
            if accept(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never gave the expected answer; last: {r:?}"
            );
        } else {
            assert!(Instant::now() < deadline, "GET {path}: no answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
