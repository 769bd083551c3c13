//! Shared helpers for the integration tests: start a stand-in with short timings, build a real
//! `kube` client from its kubeconfig, build manifests, and speak raw HTTP/1.1 where a test needs
//! to send something the `kube` client would never send.
#![allow(dead_code)]

use kserve_sim::{KserveSim, SimConfig, SimHandle};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const NS: &str = "mlops-serving";

/// Short timings so the controller sequence completes quickly.
pub fn fast_config() -> SimConfig {
    SimConfig {
        ready_delay: Duration::from_millis(150),
        stale_status: Duration::from_millis(100),
        delete_linger: Duration::from_millis(100),
        ..SimConfig::default()
    }
}

pub async fn start(config: SimConfig) -> SimHandle {
    KserveSim::start(config)
        .await
        .unwrap_or_else(|e| panic!("kserve-sim did not start: {e}"))
}

pub async fn client_with(sim: &SimHandle, retry: bool) -> kube::Client {
    let kc = Kubeconfig::from_yaml(&sim.kubeconfig_yaml(NS))
        .unwrap_or_else(|e| panic!("kubeconfig: {e}"));
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kube config: {e}"));
    cfg.default_retry = retry;
    kube::Client::try_from(cfg).unwrap_or_else(|e| panic!("kube client: {e}"))
}

pub async fn client(sim: &SimHandle) -> kube::Client {
    client_with(sim, true).await
}

pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService"),
        "inferenceservices",
    )
}

pub fn api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource())
}

/// A valid InferenceService manifest.
pub fn manifest(name: &str, labels: Value, storage_uri: &str) -> Value {
    json!({
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": labels},
        "spec": {"predictor": {
            "minReplicas": 1,
            "model": {"modelFormat": {"name": "sklearn"}, "storageUri": storage_uri}
        }}
    })
}

pub fn dynamic(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("not a DynamicObject: {e}"))
}

pub fn json_of(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or_else(|e| panic!("not serializable: {e}"))
}

/// The `Status` carried by a kube API error.
pub fn api_status(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

pub fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)?
        .get("status")?
        .as_str()
}

/// Waits until the object is Ready for its current generation.
pub async fn wait_ready(sim: &SimHandle, ns: &str, name: &str) -> Value {
    sim.wait_for(ns, name, Duration::from_secs(20), |o| {
        o.is_some_and(|o| {
            condition(o, "Ready") == Some("True")
                && o["status"]["observedGeneration"] == o["metadata"]["generation"]
        })
    })
    .await
    .flatten()
    .unwrap_or_else(|| panic!("{ns}/{name} did not become ready"))
}

/// Raw HTTP/1.1 response.
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Raw {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Sends one raw HTTP/1.1 request (connection closed after) and reads the whole response.
pub async fn raw(
    sim: &SimHandle,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> Raw {
    let mut s = tokio::net::TcpStream::connect(sim.addr())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        sim.addr(),
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Raw {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
