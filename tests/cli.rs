//! The command line: settings from flags and environment, clear errors.

use std::process::Command;

fn deploy_worker(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deploy-worker"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run deploy-worker");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    let (ok, help, _) = deploy_worker(&["run", "--help"], &[]);
    assert!(ok);
    for var in [
        "DEPLOY_MODE",
        "DATABASE_URL",
        "NATS_URL",
        "KSERVE_NAMESPACE",
        "KSERVE_NAME_PREFIX",
        "DEPLOY_TIMEOUT_SECONDS",
        "KSERVE_PROMETHEUS_SCRAPING",
        "KSERVE_DEPLOYMENT_MODE_NAMES",
        "SIMULATE_DELAY_MS",
        "DEPLOY_MAX_IN_FLIGHT",
        "DEPLOY_MAX_IN_FLIGHT_PER_TENANT",
        "ENDPOINT_IDLE_SECONDS",
        "NATS_ACK_WAIT_SECONDS",
        "NATS_MAX_ACK_PENDING",
        "RETRY_BASE_MS",
        "RETRY_MAX_MS",
        "DATABASE_MAX_CONNECTIONS",
        "DATABASE_BATCH_MAX",
        "DATABASE_MIGRATE",
        "SHUTDOWN_GRACE_SECONDS",
        "METRICS_POLL_SECONDS",
        "NATS_CA_FILE",
        "NATS_CLIENT_CERT",
        "NATS_CLIENT_KEY",
        "NATS_CREDS_FILE",
        "NATS_NKEY_FILE",
        "HISTORY_RETENTION_DAYS",
        "HISTORY_PRUNE_BATCH",
        "HISTORY_PRUNE_INTERVAL_SECONDS",
        "FOLLOW_DEBOUNCE_SECONDS",
        "GC_REPORT_ONLY",
        "GC_MAX_SHARE",
        "GC_PER_MINUTE",
        "KSERVE_DEFAULT_REQUESTS",
        "KSERVE_DEFAULT_LIMITS",
        "TENANT_STORAGE_URI_SCHEMES",
        "TENANT_SERVICE_ACCOUNTS",
    ] {
        assert!(
            help.contains(&format!("[env: {var}")),
            "{var} missing from:\n{help}"
        );
    }
    assert!(help.contains("[default: mlops-serving]"));
    assert!(help.contains("[default: 600]"));
}

#[test]
fn run_without_a_database_url_says_what_to_do() {
    let (ok, _, err) = deploy_worker(&[], &[("NATS_URL", "nats://127.0.0.1:1")]);
    assert!(!ok);
    assert!(err.contains("DATABASE_URL is not set"), "{err}");
    assert!(err.contains("scripts/demo"), "{err}");
}

#[test]
fn bad_setting_values_are_refused_by_name() {
    let (ok, _, err) = deploy_worker(&["run"], &[("DEPLOY_MODE", "kubernetes")]);
    assert!(!ok);
    assert!(
        err.contains("kubernetes") && err.contains("simulate") && err.contains("k8s"),
        "{err}"
    );
    let (ok, _, err) = deploy_worker(&["run", "--deploy-timeout-seconds", "soon"], &[]);
    assert!(!ok);
    assert!(err.contains("--deploy-timeout-seconds"), "{err}");
    for (var, value, flag) in [
        (
            "KSERVE_DEFAULT_REQUESTS",
            "cpu",
            "--kserve-default-requests",
        ),
        (
            "KSERVE_DEFAULT_LIMITS",
            "memory=lots",
            "--kserve-default-limits",
        ),
        (
            "TENANT_STORAGE_URI_SCHEMES",
            "",
            "--tenant-storage-uri-schemes",
        ),
        (
            "TENANT_SERVICE_ACCOUNTS",
            "SA_{tenant_id}",
            "--tenant-service-accounts",
        ),
    ] {
        let (ok, _, err) = deploy_worker(&["run"], &[(var, value)]);
        assert!(!ok, "{var}={value:?} accepted");
        assert!(err.contains(flag), "{var}: {err}");
    }
}

#[test]
fn an_unreachable_database_is_an_error_not_a_hang() {
    let (ok, _, err) = deploy_worker(
        &["migrate"],
        &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
    );
    assert!(!ok);
    assert!(err.contains("cannot connect to Postgres"), "{err}");
}

const EXAMPLES: &[&str] = &[
    "triton-gpu-batcher",
    "canary-knative",
    "keda-standard",
    "sklearn-minimal",
];

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn render_prints_the_golden_manifest_of_every_example_in_both_formats() {
    for example in EXAMPLES {
        let intent = repo(&format!("examples/intents/{example}.json"));
        for (output, ext) in [("yaml", "yaml"), ("json", "json")] {
            // the KEDA example names a tenant's own service account, which the default tenant
            // policy refuses until a rule allows it
            let (ok, stdout, stderr) = deploy_worker(
                &["render", "--intent", &intent, "--output", output],
                &[("TENANT_SERVICE_ACCOUNTS", "tenant-{tenant_id}-*")],
            );
            assert!(ok, "{example} {output}: {stderr}");
            let golden =
                std::fs::read_to_string(repo(&format!("tests/golden/{example}.{ext}"))).unwrap();
            assert_eq!(
                stdout.trim_end(),
                golden.trim_end(),
                "{example} as {output}"
            );
        }
    }
}

#[test]
fn render_refuses_an_invalid_intent_with_the_validation_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut intent: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("examples/intents/canary-knative.json")).unwrap(),
    )
    .unwrap();
    intent["traffic"]["canaryTrafficPercent"] = serde_json::json!(150);
    let path = dir.path().join("bad.json");
    std::fs::write(&path, intent.to_string()).unwrap();
    let (ok, stdout, stderr) = deploy_worker(&["render", "--intent", path.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(
        stdout.is_empty(),
        "no manifest for an invalid intent: {stdout}"
    );
    assert!(
        stderr.contains("traffic.canaryTrafficPercent: 150 is outside 0..=100"),
        "{stderr}"
    );

    std::fs::write(&path, "{\"endpoint_id\": 3}").unwrap();
    let (ok, _, stderr) = deploy_worker(&["render", "--intent", path.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(stderr.contains("is not an intent file"), "{stderr}");
    let (ok, _, stderr) = deploy_worker(&["render"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("--intent") && stderr.contains("--endpoint-id"),
        "{stderr}"
    );
}

#[tokio::test]
async fn render_reads_the_intent_of_an_endpoint_from_the_database() {
    use devkit::platform::{self, NewEndpoint, NewModelVersion};
    let pg = devkit::sandbox::LocalPostgres::start().unwrap();
    let store = deploy_worker::store::Store::connect(
        &pg.url(),
        deploy_worker::store::StoreSettings {
            max_connections: 2,
            batch_max: 1,
        },
    )
    .await
    .unwrap();
    deploy_worker::worker::migrate(&store, true).await.unwrap();
    let (tenant_id, project_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let version = platform::create_model_version(
        store.db(),
        &NewModelVersion {
            tenant_id,
            project_id,
            model_name: "resnet".into(),
            version: 7,
            artifact_uri: Some("s3://models/resnet/7".into()),
        },
    )
    .await
    .unwrap();
    let id = platform::create_endpoints(
        store.db(),
        &[NewEndpoint {
            tenant_id,
            project_id,
            name: "resnet".into(),
            runtime: "kserve-triton".into(),
            model: Some(version),
            traffic: None,
            autoscaling: None,
            runtime_config: Some(serde_json::json!({"gpu": true})),
        }],
    )
    .await
    .unwrap()[0];
    let (ok, stdout, stderr) = deploy_worker(
        &[
            "render",
            "--endpoint-id",
            &id.to_string(),
            "--output",
            "json",
        ],
        &[("DATABASE_URL", &pg.url())],
    );
    assert!(ok, "{stderr}");
    let manifest: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        manifest["metadata"]["name"],
        serde_json::json!(deploy_worker::kserve::isvc_name("isvc", id))
    );
    assert_eq!(
        manifest["spec"]["predictor"]["model"]["storageUri"],
        serde_json::json!("s3://models/resnet/7")
    );
    assert_eq!(
        manifest["spec"]["predictor"]["model"]["modelFormat"]["name"],
        serde_json::json!("triton")
    );

    let (ok, _, stderr) = deploy_worker(
        &["render", "--endpoint-id", &uuid::Uuid::new_v4().to_string()],
        &[("DATABASE_URL", &pg.url())],
    );
    assert!(!ok);
    assert!(stderr.contains("not found"), "{stderr}");
}

#[test]
fn the_worker_binary_carries_no_tooling_commands() {
    // the demo is the devkit crate's `demo` binary, the KServe stand-in is `kserve-sim`'s
    let (ok, help, _) = deploy_worker(&["--help"], &[]);
    assert!(ok);
    for command in ["migrate", "render", "reconcile", "rejected", "tenant"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "{command} missing from:\n{help}"
        );
    }
    for tooling in ["demo", "kserve-sim"] {
        assert!(
            !help
                .lines()
                .any(|line| line.trim_start().starts_with(tooling)),
            "{tooling} is listed:\n{help}"
        );
        let (ok, _, err) = deploy_worker(&[tooling], &[]);
        assert!(!ok, "`deploy-worker {tooling}` should not run");
        assert!(err.contains(&format!("'{tooling}'")), "{err}");
    }
}
