//! The `kserve-sim` binary, run as a person runs it: it listens where told, writes a
//! kubeconfig a real `kube` client works with, creates and readies InferenceServices, stops
//! cleanly on SIGTERM, and refuses a schema file it cannot read with an error naming it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[tokio::test]
async fn the_binary_serves_the_api_through_its_kubeconfig_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kserve-sim"))
        .args(["--listen", "127.0.0.1:0", "--ready-delay-ms", "100"])
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line);
    }
    assert!(
        lines[0].starts_with("kserve-sim listening on http://127.0.0.1:"),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("kubeconfig written to"), "{lines:?}");

    let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, common::NS);
    let client = kube::Client::try_from(config).unwrap();
    let api = common::api(&client, common::NS);
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let manifest = common::manifest("from-the-binary", serde_json::json!({}), "gs://m/1");
    api.create(&PostParams::default(), &common::dynamic(manifest))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let object = common::json_of(&api.get("from-the-binary").await.unwrap());
        if common::condition(&object, "Ready") == Some("True") {
            break;
        }
        assert!(Instant::now() < deadline, "never Ready: {object}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM ends it cleanly: {status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("kserve-sim stopping"), "{rest}");
}

#[test]
fn an_unreadable_schema_file_is_refused_with_its_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_kserve-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--crd-schema",
            "no-such-schema.json",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("no-such-schema.json"),
        "{stderr}"
    );
}
