//! Redaction wherever output leaves the process. Three secrets reach the worker the way an
//! operator would give them — a password in `DATABASE_URL`'s userinfo, another as its
//! `?password=` query parameter, a bearer token in the kubeconfig of k8s mode — and errors are
//! made to carry all three: the KServe stand-in fails a model with a message quoting them, an
//! intent quotes them in a value the validation refuses, a malformed event carries them in its
//! payload, and Postgres goes away under `/readyz`. Then every channel is searched: log lines in
//! both formats, exported spans (attributes, events, status), `/readyz` and `/metrics` bodies,
//! and the `endpoints`, `deployment_history` and `rejected_events` rows. Real Postgres, NATS
//! and stand-in; the worker in-process with the production subscriber and span exporter wrapper.

mod common;

use std::time::Duration;

use common::{Capture, Env, http_get, wait_for, wait_http};
use deploy_worker::config::WorkerMode;
use deploy_worker::events::EventKind;
use deploy_worker::kserve::isvc_name;
use deploy_worker::telemetry::{self, LogFormat, RedactingExporter};
use deploy_worker::worker::Worker;
use devkit::platform::{self, NewEndpoint};
use kserve_sim::{KserveSim, SimConfig};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use sea_orm::{DbBackend, FromQueryResult, Statement};
use serde_json::json;
use uuid::Uuid;

const NS: &str = "mlops-serving";
const LONG: Duration = Duration::from_secs(60);

/// Every row of `table` (`columns`) as JSON text.
async fn rows(db: &sea_orm::DatabaseConnection, table: &str, columns: &str) -> Vec<String> {
    #[derive(FromQueryResult)]
    struct Row {
        row: String,
    }
    Row::find_by_statement(Statement::from_string(
        DbBackend::Postgres,
        format!("SELECT row_to_json(t)::text AS row FROM (SELECT {columns} FROM {table}) t"),
    ))
    .all(db)
    .await
    .expect("rows")
    .into_iter()
    .map(|r| r.row)
    .collect()
}

fn assert_clean(channel: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{channel} leaks {secret:?}:\n{text}"
        );
    }
}

#[actix_rt::test]
async fn secrets_from_urls_and_the_kubeconfig_never_leave_the_process() {
    // The production subscriber (compact and JSON logs) and exporter wrapper.
    let (compact, json_logs) = (Capture::default(), Capture::default());
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(RedactingExporter::new(spans.clone()))
        .build();
    tracing::subscriber::set_global_default(telemetry::subscriber_with_logs(
        &provider,
        vec![
            (LogFormat::Compact, compact.clone()),
            (LogFormat::Json, json_logs.clone()),
        ],
        telemetry::DEFAULT_LOG_FILTER,
    ))
    .expect("the only subscriber of this test binary");

    let userinfo_pw = format!("userinfo-{}", Uuid::new_v4().simple());
    let query_pw = format!("query-{}", Uuid::new_v4().simple());
    let kube_token = format!("kubetoken-{}", Uuid::new_v4().simple());
    let secrets = [userinfo_pw.as_str(), query_pw.as_str(), kube_token.as_str()];
    let all = secrets.join(" ");

    let mut env = Env::start().await;
    // the stand-in's embedded InferenceService schema
    let config = SimConfig {
        ready_delay: Duration::from_millis(100),
        ..SimConfig::default()
    };
    let sim = KserveSim::start(config).await.expect("stand-in");
    // the stand-in's kubeconfig, with a bearer token (it accepts any)
    let mut kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&sim.kubeconfig_yaml(NS)).expect("kubeconfig");
    kubeconfig["users"][0]["user"]["token"] = kube_token.clone().into();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig_path = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig_path,
        serde_yaml::to_string(&kubeconfig).expect("yaml"),
    )
    .expect("write kubeconfig");

    let mut settings = env.settings();
    // the sandbox trusts local connections: both passwords are sent, neither is checked
    settings.database_url = Some(format!(
        "postgres://postgres:{userinfo_pw}@127.0.0.1:{}/postgres?password={query_pw}",
        env.pg.port()
    ));
    settings.deploy_mode = WorkerMode::K8s;
    settings.kubeconfig = Some(kubeconfig_path);
    settings.deploy_timeout_seconds = 30;
    let worker = Worker::start(&settings).await.expect("worker");
    let http = worker.http_addr();

    // 1. KServe fails the model with a message quoting the secrets
    let tenant = env.tenant().await;
    let endpoint = |name: &str, runtime_config| NewEndpoint {
        tenant_id: tenant.tenant_id,
        project_id: tenant.project_id,
        name: name.into(),
        runtime: "kserve".into(),
        model: Some(tenant.version),
        traffic: None,
        autoscaling: None,
        runtime_config: Some(runtime_config),
    };
    let ids = platform::create_endpoints(
        &env.db,
        &[
            endpoint("kserve-fails", json!({})),
            // 2. a value the validation refuses, quoted in its reason
            endpoint("bad-value", json!({"runtimeVersion": format!("v {all}")})),
            endpoint("fine", json!({})),
        ],
    )
    .await
    .expect("endpoints");
    sim.fail_object(
        NS,
        &isvc_name("isvc", ids[0]),
        "ModelLoadFailed",
        &format!("cannot fetch the model with {all}"),
    );
    for id in &ids {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    // 3. a malformed event carrying them in its payload
    env.publish_raw(
        EventKind::Deploy,
        format!(r#"{{"endpoint_id": "not-a-uuid", "note": "{all}"}}"#).as_bytes(),
    )
    .await;
    wait_for("both errors and the good deploy", LONG, || async {
        env.endpoint(ids[0]).await.status == "ERROR"
            && env.endpoint(ids[1]).await.status == "ERROR"
            && env.endpoint(ids[2]).await.status == "READY"
            && !env.rejected().await.is_empty()
    })
    .await;
    env.wait_all_answered(LONG).await;

    // Postgres rows: the reasons were written, without the secrets
    for id in &ids[..2] {
        let reason = env.endpoint(*id).await.status_reason.unwrap_or_default();
        assert!(reason.contains("[redacted]"), "{reason}");
    }
    let rejected = env.rejected().await;
    assert!(rejected[0].payload.contains("[redacted]"), "{rejected:?}");
    // what the worker writes (the intent columns are the platform's input, secrets and all)
    for (table, columns) in [
        ("endpoints", "status, url, status_reason"),
        ("deployment_history", "*"),
        ("rejected_events", "*"),
    ] {
        let text = rows(&env.db, table, columns).await.join("\n");
        assert_clean(table, &text, &secrets);
    }

    // /metrics, and /readyz once Postgres is gone (its body carries the ping error)
    let metrics = http_get(http, "/metrics").await.expect("/metrics");
    assert_eq!(metrics.status, 200);
    assert_clean("/metrics", &metrics.body, &secrets);
    env.pg.stop().expect("stop postgres");
    let readyz = wait_http(http, "/readyz", LONG, |r| r.status == 503).await;
    assert!(readyz.body.contains("ping"), "{}", readyz.body);
    assert_clean("/readyz", &readyz.body, &secrets);
    env.pg.start_again().expect("start postgres");

    // spans: the failures were recorded on them, redacted
    let exported = spans.get_finished_spans().expect("spans");
    let text = format!("{exported:?}");
    assert!(
        text.contains("[redacted]"),
        "no redacted error in the spans"
    );
    assert_clean("exported spans", &text, &secrets);

    worker.shutdown().await.expect("shutdown");
    sim.stop().await;
    for (format, capture) in [("compact", &compact), ("json", &json_logs)] {
        let logs = capture.text();
        assert!(
            logs.contains("endpoint ends in ERROR") && logs.contains("[redacted]"),
            "{format} logs:\n{logs}"
        );
        assert_clean(&format!("{format} logs"), &logs, &secrets);
    }
}
