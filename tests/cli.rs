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
    assert!(err.contains("deploy-worker demo"), "{err}");
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
