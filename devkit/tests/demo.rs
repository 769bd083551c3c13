//! The demo as a person runs it (`scripts/demo` runs this binary): its own output is its
//! progress and summary, the worker logs warnings only unless asked, and its HTTP port is any
//! free one, so a taken 8080 does not stop it. Real throw-away Postgres and NATS, the real
//! binary.

use std::net::TcpListener;
use std::process::Command;

/// Runs the `demo` binary with a few endpoints and throw-away servers, with the caller's
/// environment minus every setting the demo reads, plus `env`; `(success, stdout, stderr)`.
fn demo(endpoints: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_demo"));
    command.args(["--endpoints", endpoints, "--tenants", "2"]);
    for name in [
        "RUST_LOG",
        "LOG_FORMAT",
        "HTTP_LISTEN",
        "DATABASE_URL",
        "NATS_URL",
        "DEPLOY_MODE",
        "DEMO_ENDPOINTS",
        "DEMO_TENANTS",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let out = command.output().expect("run the demo binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_demo_shows_its_progress_not_the_worker_logs_and_needs_no_fixed_port() {
    // Port 8080 held for the whole run (if something else holds it already, it is just as
    // taken).
    let _held = TcpListener::bind("0.0.0.0:8080").ok();
    assert!(
        TcpListener::bind("0.0.0.0:8080").is_err(),
        "port 8080 should be taken during this test"
    );

    let (ok, stdout, stderr) = demo("20", &[]);
    assert!(ok, "the demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Summary"), "{stdout}");
    assert!(stdout.contains("20 endpoints READY"), "{stdout}");
    assert!(stdout.contains("http://127.0.0.1:"), "{stdout}");
    assert!(!stdout.contains("127.0.0.1:8080"), "{stdout}");
    for line in stdout.lines().chain(stderr.lines()) {
        assert!(!line.contains(" INFO "), "a worker INFO line: {line}");
    }

    // An explicit request still gets what it asks for: the worker's lines and the address.
    let free = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let chosen = free.local_addr().expect("address").to_string();
    drop(free);
    let (ok, stdout, stderr) = demo("2", &[("RUST_LOG", "info"), ("HTTP_LISTEN", &chosen)]);
    assert!(ok, "the demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("http://{chosen}")), "{stdout}");
    assert!(
        stderr.lines().any(|line| line.contains(" INFO ")),
        "RUST_LOG=info shows the worker's lines:\n{stderr}"
    );
}
