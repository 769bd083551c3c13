//! The alert rules: `promtool check rules` accepts them, `promtool test rules` proves each alert
//! fires on a synthetic series showing its problem and stays quiet on a healthy one (and a
//! rule broken either way makes those tests fail), and the PrometheusRule for the operator
//! carries exactly the same groups.
//!
//! Skipped (with a message) when `promtool` is not on PATH, unless `PROMTOOL_REQUIRED` is set,
//! as `scripts/test` (and so CI) does after installing Debian's `prometheus` package.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const RULES: &str = "deploy/prometheus/deploy-worker-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/deploy-worker-rules.test.yml";

fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        // the suite's script installs promtool and sets this, so there the tests cannot skip
        assert!(
            std::env::var_os("PROMTOOL_REQUIRED").is_none(),
            "PROMTOOL_REQUIRED is set but promtool is not on PATH (Debian package prometheus)"
        );
        println!(
            "SKIPPED: promtool is not on PATH (install the prometheus package to run this test)"
        );
    }
    found
}

/// Runs `promtool args…`; `(success, stdout + stderr)`.
fn run(promtool: &Path, args: &[&Path]) -> (bool, String) {
    let mut command = Command::new(promtool);
    for arg in args {
        command.arg(arg);
    }
    let out = command.output().expect("run promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alert_names(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .map(|r| r["alert"].as_str().expect("alert").to_owned())
        .collect()
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = promtool() else {
        return;
    };
    let (ok, out) = run(
        &promtool,
        &[Path::new("check"), Path::new("rules"), &repo(RULES)],
    );
    assert!(ok, "promtool check rules: {out}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let (ok, out) = run(
        &promtool,
        &[Path::new("test"), Path::new("rules"), &repo(RULE_TESTS)],
    );
    assert!(ok, "promtool test rules: {out}");
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert has a test that expects it to fire and one that expects silence.
    let tests = yaml(&repo(RULE_TESTS));
    let rules = yaml(&repo(RULES));
    for alert in alert_names(&rules) {
        let cases: Vec<bool> = tests["tests"]
            .as_sequence()
            .expect("tests")
            .iter()
            .flat_map(|t| {
                t["alert_rule_test"]
                    .as_sequence()
                    .expect("alert_rule_test")
                    .iter()
            })
            .filter(|case| case["alertname"].as_str() == Some(alert.as_str()))
            .map(|case| {
                case["exp_alerts"]
                    .as_sequence()
                    .is_some_and(|a| !a.is_empty())
            })
            .collect();
        assert!(cases.contains(&true), "no test expects {alert} to fire");
        assert!(
            cases.contains(&false),
            "no test expects {alert} to stay quiet"
        );
    }
}

#[test]
fn a_rule_that_never_fires_or_always_fires_fails_its_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let rules = yaml(&repo(RULES));
    let dir = tempfile::tempdir().expect("tempdir");
    let test_file = dir.path().join("deploy-worker-rules.test.yml");
    std::fs::copy(repo(RULE_TESTS), &test_file).expect("copy tests");
    for alert in alert_names(&rules) {
        for (broken, what) in [
            ("vector(0) > 1", "never fires"),
            ("vector(1)", "always fires"),
        ] {
            let mut mutated = rules.clone();
            for group in mutated["groups"].as_sequence_mut().expect("groups") {
                for rule in group["rules"].as_sequence_mut().expect("rules") {
                    if rule["alert"].as_str() == Some(alert.as_str()) {
                        rule["expr"] = Value::String(broken.to_owned());
                    }
                }
            }
            let text = serde_yaml::to_string(&mutated).expect("yaml");
            std::fs::write(dir.path().join("deploy-worker-rules.yml"), text).expect("write");
            let (ok, out) = run(
                &promtool,
                &[Path::new("test"), Path::new("rules"), &test_file],
            );
            assert!(
                !ok,
                "{alert} broken so that it {what}, yet its unit tests pass:\n{out}"
            );
            assert!(out.contains(&alert), "{alert} ({what}): {out}");
        }
    }
}

#[test]
fn the_prometheus_rule_carries_the_same_groups_as_the_rules_file() {
    let rules = yaml(&repo(RULES));
    let resource = yaml(&repo("deploy/prometheus/prometheusrule.yaml"));
    assert_eq!(resource["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(resource["kind"], "PrometheusRule");
    assert_eq!(resource["metadata"]["namespace"], "mlops-platform");
    assert!(!rules["groups"].is_null());
    assert_eq!(
        resource["spec"]["groups"], rules["groups"],
        "deploy/prometheus/prometheusrule.yaml and {RULES} differ"
    );
    assert_eq!(alert_names(&rules).len(), 8);
}
