//! `kubectl` against the stand-in: get, client-side and server-side apply, `-o json`, watch and
//! delete. Skipped (with a message) when `kubectl` is not on PATH, unless `KUBECTL_REQUIRED`
//! is set, as `scripts/test` (and so CI) does after installing it.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn kubectl_path() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    })
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> Out {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new(&self.bin)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} hung"))
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.ok,
            "kubectl {args:?} failed: {}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }
}

fn write_manifest(dir: &Path, file: &str, v: &Value) -> String {
    let path = dir.join(file);
    std::fs::write(&path, serde_yaml::to_string(v).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    path.to_string_lossy().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_apply_watch_delete() {
    let Some(bin) = kubectl_path() else {
        // the suite's script installs kubectl and sets this, so there the test cannot skip
        assert!(
            std::env::var_os("KUBECTL_REQUIRED").is_none(),
            "KUBECTL_REQUIRED is set but kubectl is not on PATH (package kubernetes-client)"
        );
        println!(
            "SKIPPED: kubectl is not on PATH (install the kubernetes-client package to run this test)"
        );
        return;
    };
    let sim = start(fast_config()).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, NS)
        .unwrap_or_else(|e| panic!("{e}"));
    let k = Kubectl { bin, kubeconfig };

    let out = k.run(&["get", "isvc"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("No resources found"), "{}", out.stderr);

    // Client-side apply: create, then configure (a merge patch).
    let mut m = manifest("iris", json!({"app": "iris"}), "gs://models/iris/v1");
    let f = write_manifest(dir.path(), "iris.yaml", &m);
    assert!(k.ok(&["apply", "-f", &f]).await.contains("created"));
    m["spec"]["predictor"]["minReplicas"] = json!(2);
    let f = write_manifest(dir.path(), "iris.yaml", &m);
    assert!(k.ok(&["apply", "-f", &f]).await.contains("configured"));
    assert!(k.ok(&["apply", "-f", &f]).await.contains("unchanged"));
    let o: Value = serde_json::from_str(&k.ok(&["get", "isvc", "iris", "-o", "json"]).await)
        .unwrap_or_else(|e| panic!("-o json: {e}"));
    assert_eq!(o["spec"]["predictor"]["minReplicas"], 2);
    assert_eq!(o["metadata"]["generation"], 2);
    assert!(
        o["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    // Server-side apply.
    let ssa = manifest("ssa", json!({}), "gs://models/ssa/v1");
    let f2 = write_manifest(dir.path(), "ssa.yaml", &ssa);
    assert!(
        k.ok(&["apply", "--server-side", "-f", &f2])
            .await
            .contains("serverside-applied")
    );
    let o = sim.get(NS, "ssa").unwrap_or_default();
    let managers: Vec<&str> = o["metadata"]["managedFields"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(managers.contains(&"kubectl"), "{managers:?}");

    // The table shows the printer columns once the controller made it ready.
    wait_ready(&sim, NS, "iris").await;
    let table = k.ok(&["get", "isvc", "iris"]).await;
    assert!(table.contains("URL") && table.contains("READY"), "{table}");
    assert!(
        table.contains(&format!("http://iris.{NS}.example.com")),
        "{table}"
    );
    assert!(table.contains("True"), "{table}");

    // An invalid manifest is refused with the field named.
    let mut bad = manifest("bad", json!({}), "gs://x");
    bad["spec"]["predictor"]["minReplicas"] = json!("many");
    let fb = write_manifest(dir.path(), "bad.yaml", &bad);
    let out = k.run(&["apply", "-f", &fb]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("spec.predictor.minReplicas"),
        "{}",
        out.stderr
    );

    // Watch: receives the change made while it runs.
    let mut watch = Command::new(&k.bin)
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .args([
            "get",
            "isvc",
            "iris",
            "--watch-only",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = watch.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines();
    // Keep changing the object until the watch reports it (the watch may start after the
    // first change).
    let saw = tokio::time::timeout(Duration::from_secs(30), async {
        let mut n = 0;
        let mut buf = String::new();
        loop {
            n += 1;
            k.ok(&[
                "label",
                "isvc",
                "iris",
                &format!("round={n}"),
                "--overwrite",
            ])
            .await;
            if let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await
            {
                buf.push_str(&line);
                if buf.contains("\"MODIFIED\"") {
                    return buf;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("kubectl get --watch reported nothing"));
    assert!(saw.contains("\"iris\""), "{saw}");
    let _ = watch.kill().await;

    // Delete waits until the object is gone (it lingers while the controller finalizes).
    let out = k.ok(&["delete", "isvc", "iris"]).await;
    assert!(out.contains("deleted"), "{out}");
    assert!(
        sim.get(NS, "iris").is_none(),
        "kubectl delete returned before the object was gone"
    );
    let out = k.run(&["get", "isvc", "iris"]).await;
    assert!(!out.ok && out.stderr.contains("NotFound"), "{}", out.stderr);
    sim.stop().await;
}
