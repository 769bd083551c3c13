//! k8s mode over real HTTP: the real `kube` client against the KServe stand-in (a Kubernetes
//! API server for InferenceServices with a simulated KServe controller), with real Postgres
//! and NATS.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Env, Tenant, wait_for};
use deploy_worker::config::DeployMode;
use deploy_worker::deployer::INFERENCESERVICE_VERBS;
use deploy_worker::events::EventKind;
use deploy_worker::kserve::{ANNOTATION_DEPLOYMENT_MODE, isvc_name};
use deploy_worker::platform::{self, NewEndpoint, ServingPatch};
use deploy_worker::worker::Worker;
use kserve_sim::{Faults, KserveSim, SimConfig, SimHandle, Verb};
use serde_json::{Value, json};
use uuid::Uuid;

const NS: &str = "mlops-serving";
const LONG: Duration = Duration::from_secs(60);

/// Real Postgres and NATS, the stand-in, and a kubeconfig pointing at it.
struct Cluster {
    env: Env,
    sim: SimHandle,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Cluster {
    async fn start(tune: impl FnOnce(&mut SimConfig)) -> Cluster {
        let env = Env::start().await;
        let mut config = SimConfig {
            ready_delay: Duration::from_millis(200),
            stale_status: Duration::from_millis(100),
            delete_linger: Duration::from_millis(100),
            ..Default::default()
        };
        tune(&mut config);
        let sim = KserveSim::start(config).await.expect("start the stand-in");
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig, NS).unwrap();
        Cluster {
            env,
            sim,
            _dir: dir,
            kubeconfig,
        }
    }

    fn settings(&self) -> deploy_worker::config::Settings {
        let mut s = self.env.settings();
        s.deploy_mode = DeployMode::K8s;
        s.kubeconfig = Some(self.kubeconfig.clone());
        s.deploy_timeout_seconds = 30;
        s
    }

    async fn worker(&self) -> Worker {
        Worker::start(&self.settings())
            .await
            .expect("start the worker in k8s mode")
    }

    fn object(&self, id: Uuid) -> Option<Value> {
        self.sim.get(NS, &isvc_name("isvc", id))
    }

    /// Endpoints with explicit serving fields.
    async fn endpoint(
        &self,
        tenant: &Tenant,
        runtime_config: Value,
        traffic: Option<Value>,
    ) -> Uuid {
        platform::create_endpoints(
            &self.env.db,
            &[NewEndpoint {
                tenant_id: tenant.tenant_id,
                project_id: tenant.project_id,
                name: format!("ep-{}", Uuid::new_v4().simple()),
                runtime: "kserve".into(),
                model: Some(tenant.version),
                traffic,
                autoscaling: None,
                runtime_config: Some(runtime_config),
            }],
        )
        .await
        .unwrap()[0]
    }

    /// Creates model version `n` of the tenant's model and points endpoint `id` at it (a spec
    /// change: the endpoint's generation goes up by one).
    async fn serve_model_version(&self, tenant: &Tenant, id: Uuid, n: i32) {
        let artifact = format!("gs://models/demo/{n}");
        let version = self
            .env
            .model_version(tenant.tenant_id, tenant.project_id, n, Some(&artifact))
            .await;
        let patch = ServingPatch {
            model: Some(version),
            ..Default::default()
        };
        platform::patch_endpoint(&self.env.db, id, patch)
            .await
            .unwrap();
    }

    async fn deploy_and_wait(&self, tenant: &Tenant, id: Uuid, generation: i64) {
        self.env.publish(EventKind::Deploy, tenant, id).await;
        wait_for(&format!("generation {generation} READY"), LONG, || async {
            let row = self.env.endpoint(id).await;
            row.status == "READY" && row.ready_generation == Some(generation)
        })
        .await;
    }

    /// A `kube` API for InferenceServices as untyped objects, for playing other writers.
    async fn dynamic_api(&self) -> kube::Api<kube::api::DynamicObject> {
        let file = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .unwrap();
        let resource = kube::api::ApiResource {
            group: "serving.kserve.io".into(),
            version: "v1beta1".into(),
            api_version: "serving.kserve.io/v1beta1".into(),
            kind: "InferenceService".into(),
            plural: "inferenceservices".into(),
        };
        kube::Api::namespaced_with(kube::Client::try_from(config).unwrap(), NS, &resource)
    }

    /// Writes (create/patch/apply/delete) the stand-in answered for one object (creates are
    /// POSTed to the collection, so every create counts: tests using this have one object).
    fn writes(&self, id: Uuid) -> Vec<(Verb, u16)> {
        let name = isvc_name("isvc", id);
        self.sim
            .request_log()
            .into_iter()
            .filter(|r| {
                r.verb.is_write()
                    && (r.name.as_deref() == Some(name.as_str()) || r.verb == Verb::Create)
            })
            .map(|r| (r.verb, r.status))
            .collect()
    }
}

fn traffic(object: &Value) -> Vec<(String, i64, Option<String>)> {
    let mut split: Vec<_> = object
        .pointer("/status/components/predictor/traffic")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            (
                t["revisionName"].as_str().unwrap_or_default().to_owned(),
                t["percent"].as_i64().unwrap_or(0),
                t["tag"].as_str().map(str::to_owned),
            )
        })
        .collect();
    split.sort();
    split
}

#[actix_rt::test]
async fn creates_the_inference_service_and_reports_kserve_url_once_ready() {
    let cluster = Cluster::start(|_| {}).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.deploy_and_wait(&tenant, id, 1).await;

    let name = isvc_name("isvc", id);
    let object = cluster.object(id).expect("the InferenceService exists");
    let row = cluster.env.endpoint(id).await;
    assert_eq!(
        row.url.as_deref(),
        object.pointer("/status/url").and_then(Value::as_str)
    );
    assert_eq!(
        row.url.as_deref(),
        Some(format!("http://{name}.{NS}.example.com").as_str())
    );
    assert_eq!(
        object["metadata"]["labels"]["mlops.platform/endpoint-id"],
        json!(id.to_string())
    );
    assert_eq!(
        object["metadata"]["labels"]["mlops.platform/tenant-id"],
        json!(tenant.tenant_id.to_string())
    );
    assert_eq!(
        object["metadata"]["annotations"]["mlops.platform/spec-generation"],
        json!("1")
    );
    assert_eq!(
        object["spec"]["predictor"]["model"]["storageUri"],
        json!("gs://models/demo/1")
    );
    let managers: Vec<_> = object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        managers.contains(&"deploy-worker".to_owned()),
        "{managers:?}"
    );
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn an_update_waits_out_the_stale_ready_of_the_previous_generation() {
    let stale = Duration::from_millis(1500);
    let cluster = Cluster::start(|c| c.stale_status = stale).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.deploy_and_wait(&tenant, id, 1).await;

    cluster.serve_model_version(&tenant, id, 2).await;
    let updated = Instant::now();
    cluster.deploy_and_wait(&tenant, id, 2).await;
    // During `stale` the object still said Ready=True for generation 1; believing it would
    // have reported READY at once.
    assert!(
        updated.elapsed() >= stale,
        "READY after {:?}, inside the stale window",
        updated.elapsed()
    );
    let object = cluster.object(id).unwrap();
    assert_eq!(
        object["spec"]["predictor"]["model"]["storageUri"],
        json!("gs://models/demo/2")
    );
    assert_eq!(
        object["status"]["observedGeneration"],
        object["metadata"]["generation"]
    );
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn canary_then_promote_then_canary_rolled_back_to_zero() {
    let cluster = Cluster::start(|_| {}).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let knative = json!({"modelFormat": "sklearn", "deploymentMode": "Knative"});
    let id = cluster.endpoint(&tenant, knative, None).await;
    cluster.deploy_and_wait(&tenant, id, 1).await;
    let rev1 = traffic(&cluster.object(id).unwrap())[0].0.clone();

    let version = |n: i32| {
        let env = &cluster.env;
        async move {
            env.model_version(
                tenant.tenant_id,
                tenant.project_id,
                n,
                Some(&format!("gs://models/demo/{n}")),
            )
            .await
        }
    };
    let patch = |model, percent: Option<i64>| ServingPatch {
        model,
        traffic: Some(percent.map(common::canary)),
        ..Default::default()
    };

    // Canary: model v2 takes 10 %.
    platform::patch_endpoint(&cluster.env.db, id, patch(Some(version(2).await), Some(10)))
        .await
        .unwrap();
    cluster.deploy_and_wait(&tenant, id, 2).await;
    let split = traffic(&cluster.object(id).unwrap());
    assert_eq!(split.len(), 2, "{split:?}");
    let rev2 = split.iter().find(|t| t.0 != rev1).unwrap().0.clone();
    assert!(
        split.contains(&(rev1.clone(), 90, Some("prev".into()))),
        "{split:?}"
    );
    assert!(
        split.contains(&(rev2.clone(), 10, Some("latest".into()))),
        "{split:?}"
    );

    // Promote: the canary setting goes, v2 takes everything.
    platform::patch_endpoint(&cluster.env.db, id, patch(None, None))
        .await
        .unwrap();
    cluster.deploy_and_wait(&tenant, id, 3).await;
    let split = traffic(&cluster.object(id).unwrap());
    assert_eq!(
        split.iter().map(|t| (t.0.clone(), t.1)).collect::<Vec<_>>(),
        vec![(rev2.clone(), 100)]
    );

    // A new canary (v3 at 10 %), then rolled back to 0 %: v2 serves everything again.
    platform::patch_endpoint(&cluster.env.db, id, patch(Some(version(3).await), Some(10)))
        .await
        .unwrap();
    cluster.deploy_and_wait(&tenant, id, 4).await;
    platform::patch_endpoint(&cluster.env.db, id, patch(None, Some(0)))
        .await
        .unwrap();
    cluster.deploy_and_wait(&tenant, id, 5).await;
    let split = traffic(&cluster.object(id).unwrap());
    assert!(
        split.contains(&(rev2.clone(), 100, Some("prev".into()))),
        "{split:?}"
    );
    assert!(split.iter().any(|t| t.0 != rev2 && t.1 == 0), "{split:?}");
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn kserve_failure_reason_and_message_reach_the_endpoint() {
    let cluster = Cluster::start(|_| {}).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.sim.fail_object(
        NS,
        &isvc_name("isvc", id),
        "RevisionFailed",
        "image ghcr.io/x/y:1 not found",
    );
    cluster.env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("ERROR", LONG, || async {
        cluster.env.endpoint(id).await.status == "ERROR"
    })
    .await;
    let reason = cluster.env.endpoint(id).await.status_reason.unwrap();
    assert!(reason.contains("RevisionFailed"), "{reason}");
    assert!(reason.contains("image ghcr.io/x/y:1 not found"), "{reason}");
    cluster.env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_deploy_that_never_becomes_ready_times_out_into_error() {
    let cluster = Cluster::start(|_| {}).await;
    let mut settings = cluster.settings();
    settings.deploy_timeout_seconds = 2;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.sim.never_ready(NS, &isvc_name("isvc", id));
    cluster.env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("ERROR", LONG, || async {
        cluster.env.endpoint(id).await.status == "ERROR"
    })
    .await;
    let reason = cluster.env.endpoint(id).await.status_reason.unwrap();
    assert!(reason.contains("not Ready within 2 s"), "{reason}");
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_deployment_mode_change_on_a_live_object_is_refused_and_the_object_left_alone() {
    let cluster = Cluster::start(|_| {}).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let standard = json!({"modelFormat": "sklearn", "deploymentMode": "Standard"});
    let id = cluster.endpoint(&tenant, standard, None).await;
    cluster.deploy_and_wait(&tenant, id, 1).await;
    let before = cluster.object(id).unwrap();

    // KServe cannot switch a live InferenceService between modes: asking for it is an error
    // the endpoint's owner must resolve, not an apply.
    let knative = json!({"modelFormat": "sklearn", "deploymentMode": "Knative"});
    let patch = ServingPatch {
        runtime_config: Some(Some(knative)),
        ..Default::default()
    };
    platform::patch_endpoint(&cluster.env.db, id, patch)
        .await
        .unwrap();
    cluster.env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("ERROR", LONG, || async {
        cluster.env.endpoint(id).await.status == "ERROR"
    })
    .await;
    let reason = cluster.env.endpoint(id).await.status_reason.unwrap();
    assert!(reason.contains("runs in Standard mode"), "{reason}");
    assert!(reason.contains("Knative"), "{reason}");
    let after = cluster.object(id).unwrap();
    let mode = |o: &Value| o["metadata"]["annotations"][ANNOTATION_DEPLOYMENT_MODE].clone();
    assert_eq!(mode(&after), json!("Standard"));
    assert_eq!(
        after["metadata"]["generation"], before["metadata"]["generation"],
        "the object was not re-applied"
    );
    cluster.env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn api_errors_throttling_and_cut_watches_are_retried_without_losing_a_deploy() {
    let cluster = Cluster::start(|c| {
        c.faults = Faults {
            fail_rate: 0.2,
            throttle_rate: 0.1,
            cut_watches_after_events: Some(1),
            ..Faults::default()
        };
    })
    .await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let ids = cluster.env.endpoints(&tenant, 8).await;
    for id in &ids {
        cluster.env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    wait_for(
        "every endpoint READY despite the faults",
        Duration::from_secs(120),
        || async {
            for id in &ids {
                let row = cluster.env.endpoint(*id).await;
                if row.status == "ERROR" {
                    let name = isvc_name("isvc", *id);
                    for r in cluster.sim.request_log() {
                        if r.name.as_deref() == Some(name.as_str()) || r.query.contains(&name) {
                            eprintln!(
                                "{:?} {} {} {} injected={}",
                                r.verb, r.status, r.path, r.query, r.injected
                            );
                        }
                    }
                    eprintln!("object: {:?}", cluster.object(*id));
                }
                assert_ne!(
                    row.status, "ERROR",
                    "a fault became an ERROR: {:?}",
                    row.status_reason
                );
            }
            cluster.env.count_status(&ids, "READY").await == ids.len()
        },
    )
    .await;
    let log = cluster.sim.request_log();
    assert!(
        log.iter().any(|r| r.injected && r.status == 500),
        "500s were injected"
    );
    assert!(
        log.iter().any(|r| r.injected && r.status == 429),
        "429s were injected"
    );
    for id in &ids {
        let object = cluster.object(*id).unwrap();
        assert_eq!(
            object["status"]["observedGeneration"],
            object["metadata"]["generation"]
        );
    }
    cluster.env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_concurrent_writer_causes_conflicts_but_the_latest_intent_lands() {
    // Latency widens the window between the worker's read and its apply, so the other
    // writers land in it.
    let cluster = Cluster::start(|c| c.faults.latency = Duration::from_millis(30)).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.deploy_and_wait(&tenant, id, 1).await;

    // Another manager keeps touching the object (as a mesh injector or a person would).
    let name = isvc_name("isvc", id);
    let api = cluster.dynamic_api().await;
    // A burst of writes by other managers, in which the worker's read-then-apply keeps losing
    // its resourceVersion precondition; after it, the worker's retry lands.
    let burst_end = Instant::now() + Duration::from_millis(1500);
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (api, name) = (api.clone(), name.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    if Instant::now() > burst_end {
                        break;
                    }
                    let value = format!("{w}-{i}");
                    let patch =
                        json!({"metadata": {"annotations": {"example.com/touched": value}}});
                    let params = kube::api::PatchParams {
                        field_manager: Some("other-writer".into()),
                        ..Default::default()
                    };
                    let _ = api
                        .patch(&name, &params, &kube::api::Patch::Merge(&patch))
                        .await;
                }
            })
        })
        .collect();
    cluster.serve_model_version(&tenant, id, 2).await;
    cluster.deploy_and_wait(&tenant, id, 2).await;
    for writer in writers {
        writer.await.unwrap();
    }

    let object = cluster.object(id).unwrap();
    assert_eq!(
        object["spec"]["predictor"]["model"]["storageUri"],
        json!("gs://models/demo/2")
    );
    assert!(
        object["metadata"]["annotations"]["example.com/touched"].is_string(),
        "the other writer's field stays"
    );
    let conflicts = cluster
        .writes(id)
        .iter()
        .filter(|(_, status)| *status == 409)
        .count();
    assert!(
        conflicts > 0,
        "the concurrent writer should have caused at least one 409: {:?}",
        cluster.writes(id)
    );
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_foreign_object_with_the_same_name_is_refused_not_overwritten() {
    let cluster = Cluster::start(|_| {}).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    let name = isvc_name("isvc", id);
    let other = Uuid::new_v4();
    let foreign = json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"mlops.platform/endpoint-id": other.to_string()}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://someone/else"}}}
    });
    let foreign: kube::api::DynamicObject = serde_json::from_value(foreign).unwrap();
    cluster
        .dynamic_api()
        .await
        .create(&Default::default(), &foreign)
        .await
        .expect("create the foreign object");
    let before = cluster.object(id).unwrap();

    cluster.env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("ERROR", LONG, || async {
        cluster.env.endpoint(id).await.status == "ERROR"
    })
    .await;
    let reason = cluster.env.endpoint(id).await.status_reason.unwrap();
    assert!(
        reason.contains(&format!("belongs to endpoint {other}")),
        "{reason}"
    );
    let after = cluster.object(id).unwrap();
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "left untouched"
    );
    assert_eq!(after["spec"], before["spec"]);

    // Deleting our endpoint leaves the foreign object alone too.
    cluster.env.publish(EventKind::Delete, &tenant, id).await;
    wait_for("delete pass", LONG, || async {
        cluster.env.history(id).await.len() == 2
    })
    .await;
    assert!(
        cluster.object(id).is_some(),
        "the foreign object is not deleted"
    );
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn delete_removes_the_object_and_waits_until_it_is_gone() {
    let cluster = Cluster::start(|c| c.delete_linger = Duration::from_millis(800)).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.deploy_and_wait(&tenant, id, 1).await;
    let asked = Instant::now();
    cluster.env.publish(EventKind::Delete, &tenant, id).await;
    wait_for("DELETED", LONG, || async {
        cluster.env.endpoint(id).await.status == "DELETED"
    })
    .await;
    assert!(
        asked.elapsed() >= Duration::from_millis(800),
        "DELETED only once the object is gone"
    );
    assert!(cluster.object(id).is_none());
    assert_eq!(cluster.env.endpoint(id).await.url, None);
    // Deleting again (a redelivered event) is harmless: a 404 counts as gone.
    cluster.env.publish(EventKind::Delete, &tenant, id).await;
    wait_for("second delete pass", LONG, || async {
        cluster.env.history(id).await.len() == 3
    })
    .await;
    assert_eq!(cluster.env.history(id).await[2].outcome, "deleted");
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn the_same_event_delivered_twice_applies_once_and_only_granted_verbs_are_used() {
    let cluster = Cluster::start(|_| {}).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.deploy_and_wait(&tenant, id, 1).await;
    cluster.env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("second pass", LONG, || async {
        cluster.env.history(id).await.len() == 2
    })
    .await;
    assert_eq!(cluster.env.history(id).await[1].outcome, "unchanged");
    let writes = cluster.writes(id);
    assert_eq!(
        writes,
        vec![(Verb::Create, 201)],
        "one write for two deliveries"
    );

    // Update and delete too, then compare every verb used with what the RBAC Role grants.
    platform::patch_endpoint(
        &cluster.env.db,
        id,
        ServingPatch {
            autoscaling: Some(Some(json!({"minReplicas": 2, "maxReplicas": 3}))),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    cluster.deploy_and_wait(&tenant, id, 2).await;
    cluster.env.publish(EventKind::Delete, &tenant, id).await;
    wait_for("DELETED", LONG, || async {
        cluster.env.endpoint(id).await.status == "DELETED"
    })
    .await;
    let used: BTreeSet<&str> = cluster
        .sim
        .request_log()
        .iter()
        .filter_map(|r| match r.verb {
            Verb::Get => Some("get"),
            Verb::List => Some("list"),
            Verb::Watch => Some("watch"),
            Verb::Create => Some("create"),
            Verb::Update => Some("update"),
            Verb::Patch | Verb::Apply => Some("patch"),
            Verb::Delete => Some("delete"),
            Verb::DeleteCollection => Some("deletecollection"),
            Verb::Discovery | Verb::Other => None,
        })
        .collect();
    let granted: BTreeSet<&str> = INFERENCESERVICE_VERBS.iter().copied().collect();
    assert_eq!(
        used, granted,
        "the Role must grant exactly what the worker uses"
    );
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn a_403_is_counted_apart_and_the_deploy_converges_once_rbac_allows_it() {
    // RBAC denies the first requests, as before a missing Role is applied.
    let cluster = Cluster::start(|c| {
        c.faults = Faults {
            forbid_next: 3,
            ..Faults::default()
        };
    })
    .await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.deploy_and_wait(&tenant, id, 1).await;
    let forbidden = cluster
        .sim
        .request_log()
        .iter()
        .filter(|r| r.injected && r.status == 403)
        .count();
    assert_eq!(forbidden, 3, "the stand-in answered 403 three times");

    let response = common::http_get(worker.http_addr(), "/metrics")
        .await
        .expect("scrape");
    let metrics = common::openmetrics::parse_openmetrics(&response.body);
    let value = |name: &str, labels: &[(&str, &str)]| {
        common::openmetrics::value(&metrics, name, labels).unwrap_or(0.0)
    };
    let counted = value("deploy_worker_kube_api_forbidden_total", &[]);
    assert!(
        (1.0..=3.0).contains(&counted),
        "403s the worker saw: {counted}"
    );
    assert_eq!(
        value("deploy_worker_kube_api_errors_total", &[("code", "403")]),
        counted,
        "a 403 is also an API error by code"
    );
    assert_eq!(
        value("deploy_worker_kube_api_errors_total", &[("code", "500")]),
        0.0
    );
    cluster.env.wait_all_answered(LONG).await;
    worker.shutdown().await.unwrap();
}
