//! `deploy/`: every YAML file parses (all documents), the Role grants exactly the verbs the
//! code uses on InferenceServices, and the Deployment, RoleBinding and Service fit together
//! (probes, non-root, read-only root filesystem, Secret-sourced URLs, k8s mode); the
//! NetworkPolicy admits only the metrics/probe port and lets out only what the worker uses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use deploy_worker::deployer::INFERENCESERVICE_VERBS;
use serde::Deserialize;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Every non-empty document of every YAML file under `deploy/`, with its file.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    files.sort();
    assert!(
        files.len() >= 5,
        "expected compose and k8s files, found {files:?}"
    );
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read yaml");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|err| panic!("{} does not parse: {err}", file.display()));
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    docs
}

fn k8s_objects() -> Vec<Value> {
    documents()
        .into_iter()
        .filter(|(file, _)| file.parent().and_then(Path::file_name) == Some("k8s".as_ref()))
        .map(|(file, doc)| {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{}: every Kubernetes document has apiVersion and kind",
                file.display()
            );
            doc
        })
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_yaml_file_parses() {
    let docs = documents();
    assert!(docs.iter().any(|(f, _)| f.ends_with("docker-compose.yml")));
}

#[test]
fn the_role_grants_exactly_the_verbs_the_code_uses() {
    let objects = k8s_objects();
    let roles = of_kind(&objects, "Role");
    assert_eq!(roles.len(), 1, "one Role");
    assert!(
        of_kind(&objects, "ClusterRole").is_empty(),
        "no cluster-wide rights"
    );
    let rules = roles[0]["rules"].as_sequence().expect("rules");
    assert_eq!(rules.len(), 1, "only InferenceServices: {rules:?}");
    let rule = &rules[0];
    assert_eq!(strings(&rule["apiGroups"]), vec!["serving.kserve.io"]);
    assert_eq!(strings(&rule["resources"]), vec!["inferenceservices"]);
    assert!(rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null());
    let granted: Vec<String> = strings(&rule["verbs"]);
    assert!(!granted.iter().any(|v| v == "*"), "no wildcard verbs");
    let granted: BTreeSet<&str> = granted.iter().map(String::as_str).collect();
    let used: BTreeSet<&str> = INFERENCESERVICE_VERBS.iter().copied().collect();
    assert_eq!(granted, used);
    assert_eq!(
        roles[0]["metadata"]["namespace"], "mlops-serving",
        "the Role lives where the InferenceServices are (KSERVE_NAMESPACE)"
    );
}

#[test]
fn deployment_binding_and_service_fit_together() {
    let objects = k8s_objects();
    let deployment = of_kind(&objects, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let account = pod["serviceAccountName"].as_str().expect("service account");
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let sa = of_kind(&objects, "ServiceAccount")[0];
    assert_eq!(sa["metadata"]["name"], account);
    assert_eq!(sa["metadata"]["namespace"], namespace);

    // The binding gives the Role to that account.
    let binding = of_kind(&objects, "RoleBinding")[0];
    let role = of_kind(&objects, "Role")[0];
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["metadata"]["namespace"],
        role["metadata"]["namespace"]
    );
    let subject = &binding["subjects"][0];
    assert_eq!(subject["kind"], "ServiceAccount");
    assert_eq!(subject["name"], account);
    assert_eq!(subject["namespace"], namespace);

    // The container: k8s mode, URLs from the Secret, probes, non-root, read-only root.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    let env = container["env"].as_sequence().expect("env");
    let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
    assert_eq!(var("DEPLOY_MODE").expect("DEPLOY_MODE")["value"], "k8s");
    assert_eq!(
        var("DATABASE_MIGRATE").expect("DATABASE_MIGRATE")["value"],
        "false",
        "the worker's role cannot migrate; an owner runs `deploy-worker migrate`"
    );
    for name in ["DATABASE_URL", "NATS_URL"] {
        let entry = var(name).unwrap_or_else(|| panic!("{name} is set"));
        assert!(entry["value"].is_null(), "{name} must not be inline");
        assert!(
            entry["valueFrom"]["secretKeyRef"]["name"].is_string(),
            "{name} comes from a Secret"
        );
    }
    let port = container["ports"][0]["containerPort"]
        .as_u64()
        .expect("port");
    let listen = var("HTTP_LISTEN").expect("HTTP_LISTEN")["value"]
        .as_str()
        .expect("listen")
        .to_owned();
    assert!(
        listen.ends_with(&format!(":{port}")),
        "{listen} vs containerPort {port}"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());

    // The Service selects the pods and exposes the metrics port.
    let service = of_kind(&objects, "Service")[0];
    let selector = service["spec"]["selector"].as_mapping().expect("selector");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "selector {key:?}");
    }
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(port));
    assert_eq!(
        service["metadata"]["annotations"]["prometheus.io/path"],
        "/metrics"
    );
}

#[test]
fn compose_runs_the_worker_against_jaeger() {
    let compose = documents()
        .into_iter()
        .find(|(f, _)| f.ends_with("docker-compose.yml"))
        .expect("docker-compose.yml")
        .1;
    let services = &compose["services"];
    assert!(
        services["postgres"]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("postgres:15"))
    );
    assert!(strings(&services["nats"]["command"]).contains(&"-js".to_owned()));
    assert_eq!(
        services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"],
        "true"
    );
    let worker = &services["deploy-worker"];
    let dockerfile = worker["build"]["dockerfile"].as_str().expect("dockerfile");
    let context = worker["build"]["context"].as_str().expect("context");
    let path = deploy_dir().join(context).join(dockerfile);
    assert!(path.is_file(), "{} exists", path.display());
    let env = &worker["environment"];
    assert_eq!(env["DEPLOY_MODE"], "simulate");
    let endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        .as_str()
        .expect("endpoint");
    assert!(endpoint.starts_with("http://jaeger:"), "{endpoint}");
    for name in ["DATABASE_URL", "NATS_URL"] {
        assert!(env[name].is_string(), "{name}");
    }
}

/// `(protocol, port)` pairs of a NetworkPolicy rule.
fn rule_ports(rule: &Value) -> BTreeSet<(String, u64)> {
    rule["ports"]
        .as_sequence()
        .unwrap_or_else(|| panic!("every rule names its ports: {rule:?}"))
        .iter()
        .map(|p| {
            (
                p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                p["port"].as_u64().expect("numeric port"),
            )
        })
        .collect()
}

fn tcp(ports: &[u64]) -> BTreeSet<(String, u64)> {
    ports.iter().map(|p| ("TCP".to_owned(), *p)).collect()
}

/// The egress rule whose destination has `label` = `value` in a pod selector.
fn egress_to<'a>(egress: &'a [Value], label: &str, value: &str) -> &'a Value {
    egress
        .iter()
        .find(|rule| {
            rule["to"].as_sequence().is_some_and(|to| {
                to.iter()
                    .any(|peer| peer["podSelector"]["matchLabels"][label] == value)
            })
        })
        .unwrap_or_else(|| panic!("no egress rule to pods with {label}={value}"))
}

#[test]
fn the_network_policy_admits_the_probe_port_and_lets_out_only_what_the_worker_uses() {
    let objects = k8s_objects();
    let policies = of_kind(&objects, "NetworkPolicy");
    assert_eq!(policies.len(), 1, "one NetworkPolicy");
    let policy = policies[0];
    assert_eq!(policy["apiVersion"], "networking.k8s.io/v1");
    let deployment = of_kind(&objects, "Deployment")[0];
    assert_eq!(
        policy["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    // It selects the worker's pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = policy["spec"]["podSelector"]["matchLabels"]
        .as_mapping()
        .expect("pod selector");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "selector {key:?}");
    }
    let types: BTreeSet<String> = strings(&policy["spec"]["policyTypes"])
        .into_iter()
        .collect();
    assert_eq!(types, ["Egress", "Ingress"].map(str::to_owned).into());

    // Ingress: the container's HTTP port only.
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let http_port = container["ports"][0]["containerPort"]
        .as_u64()
        .expect("port");
    let ingress = policy["spec"]["ingress"].as_sequence().expect("ingress");
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    assert_eq!(rule_ports(&ingress[0]), tcp(&[http_port]));

    // Egress: Postgres, NATS, the API server, DNS, the collector — every rule to a named
    // destination on named ports; nothing open to everywhere.
    let egress = policy["spec"]["egress"].as_sequence().expect("egress");
    assert_eq!(egress.len(), 5, "{egress:?}");
    for rule in egress {
        let to = rule["to"]
            .as_sequence()
            .expect("every rule names its peers");
        assert!(!to.is_empty());
        for peer in to {
            if let Some(cidr) = peer["ipBlock"]["cidr"].as_str() {
                assert!(
                    !cidr.ends_with("/0"),
                    "no rule to the whole internet: {cidr}"
                );
            }
        }
    }
    assert_eq!(
        rule_ports(egress_to(egress, "app.kubernetes.io/name", "postgres")),
        tcp(&[5432])
    );
    assert_eq!(
        rule_ports(egress_to(egress, "app.kubernetes.io/name", "nats")),
        tcp(&[4222])
    );
    let dns = egress_to(egress, "k8s-app", "kube-dns");
    assert_eq!(
        rule_ports(dns),
        [("TCP".to_owned(), 53), ("UDP".to_owned(), 53)].into()
    );
    let api = egress
        .iter()
        .find(|rule| rule["to"][0]["ipBlock"]["cidr"].is_string())
        .expect("a rule to the API server's addresses");
    assert_eq!(rule_ports(api), tcp(&[443, 6443]));
    // The collector rule covers the port the Deployment exports to.
    let env = container["env"].as_sequence().expect("env");
    let endpoint = env
        .iter()
        .find(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT")
        .and_then(|e| e["value"].as_str())
        .expect("OTLP endpoint");
    let otlp_port: u64 = endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("endpoint with a port");
    let collector = egress_to(egress, "app.kubernetes.io/name", "otel-collector");
    assert!(
        rule_ports(collector).contains(&("TCP".to_owned(), otlp_port)),
        "collector rule lacks port {otlp_port}"
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = deploy_dir().join("k8s");
    let kustomization: Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization"),
    )
    .expect("parses");
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    let present: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.file_name()?.to_str().map(str::to_owned))
        .filter(|name| name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
}
