//! k8s mode over real HTTP: the real `kube` client against the KServe stand-in (a Kubernetes
//! API server for InferenceServices with a simulated KServe controller), with real Postgres
//! and NATS.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Env, Tenant, wait_for};
use deploy_worker::config::WorkerMode;
use deploy_worker::deployer::INFERENCESERVICE_VERBS;
use deploy_worker::events::EventKind;
use deploy_worker::kserve::{ANNOTATION_DEPLOYMENT_MODE, isvc_name};
use deploy_worker::worker::Worker;
use devkit::platform::{self, NewEndpoint, ServingPatch};
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
        s.deploy_mode = WorkerMode::K8s;
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
    // Writes by other managers, in which the worker's read-then-apply loses its
    // resourceVersion precondition; once it has (a 409), they stop and the worker's retry
    // lands.
    let stop = Arc::new(AtomicBool::new(false));
    let give_up = Instant::now() + LONG;
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (api, name, stop) = (api.clone(), name.clone(), stop.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) || Instant::now() > give_up {
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
    cluster.env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for(
        "the concurrent writers to cause the worker a 409",
        LONG,
        || async { cluster.writes(id).iter().any(|(_, status)| *status == 409) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    wait_for("generation 2 READY after the conflicts", LONG, || async {
        let row = cluster.env.endpoint(id).await;
        row.status == "READY" && row.ready_generation == Some(2)
    })
    .await;

    let object = cluster.object(id).unwrap();
    assert_eq!(
        object["spec"]["predictor"]["model"]["storageUri"],
        json!("gs://models/demo/2")
    );
    assert!(
        object["metadata"]["annotations"]["example.com/touched"].is_string(),
        "the other writer's field stays"
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
    // the simulated controller may have updated its status meanwhile; nobody else wrote it
    let written: Vec<_> = cluster
        .writes(id)
        .into_iter()
        .filter(|(_, status)| *status < 300)
        .collect();
    assert_eq!(
        written,
        vec![(Verb::Create, 201)],
        "left untouched: the only write that went through is the foreign creator's"
    );
    assert_eq!(after["spec"], before["spec"]);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);

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

/// Every value the object's spec-generation annotation takes, in order, as a watcher of the
/// stand-in sees it (the first value included).
fn record_generations(
    api: kube::Api<kube::api::DynamicObject>,
    name: String,
) -> std::sync::Arc<std::sync::Mutex<Vec<i64>>> {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event
                && let Some(g) = o
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("mlops.platform/spec-generation"))
                    .and_then(|g| g.parse().ok())
            {
                let mut seen = sink.lock().unwrap();
                if seen.last() != Some(&g) {
                    seen.push(g);
                }
            }
        }
    });
    seen
}

/// A canary that never becomes Ready holds its pass in the Ready wait; a rollback published
/// meanwhile interrupts that wait (the canary's pass records `superseded`) and lands long
/// before the deploy timeout, and a delete interrupts a stuck rollout the same way. The
/// object's generation annotation, as a watcher sees it, never goes backwards: the passes'
/// writes never interleave.
#[actix_rt::test]
async fn a_rollback_interrupts_a_stuck_canary_and_a_delete_a_stuck_rollout() {
    let cluster = Cluster::start(|_| {}).await;
    let mut settings = cluster.settings();
    // far longer than the waits below: reaching READY/DELETED at all proves the interrupt
    settings.deploy_timeout_seconds = 600;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = cluster.env.tenant().await;
    let knative = json!({"modelFormat": "sklearn", "deploymentMode": "Knative"});
    let id = cluster.endpoint(&tenant, knative, None).await;
    let name = isvc_name("isvc", id);
    cluster.deploy_and_wait(&tenant, id, 1).await;
    let generations = record_generations(cluster.dynamic_api().await, name.clone());

    // canary v2 at 10 %, stuck (the image never pulls)
    cluster.sim.never_ready(NS, &name);
    let v2 = cluster
        .env
        .model_version(
            tenant.tenant_id,
            tenant.project_id,
            2,
            Some("gs://models/demo/2"),
        )
        .await;
    let canary = ServingPatch {
        model: Some(v2),
        traffic: Some(Some(common::canary(10))),
        ..Default::default()
    };
    platform::patch_endpoint(&cluster.env.db, id, canary)
        .await
        .unwrap();
    cluster.env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("the canary DEPLOYING", LONG, || async {
        cluster.env.endpoint(id).await.status == "DEPLOYING"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // rollback: back to v1, canary off
    cluster.sim.clear_behaviour(NS, &name);
    let rollback = ServingPatch {
        model: Some(tenant.version),
        traffic: Some(Some(common::canary(0))),
        ..Default::default()
    };
    platform::patch_endpoint(&cluster.env.db, id, rollback)
        .await
        .unwrap();
    cluster.deploy_and_wait(&tenant, id, 3).await;
    let history = cluster.env.history(id).await;
    let canary_pass = history.iter().find(|h| h.generation == 2).unwrap();
    assert_eq!(canary_pass.outcome, "superseded");
    assert!(
        canary_pass
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("newer intent")),
        "{canary_pass:?}"
    );

    // a stuck rollout, then a delete
    cluster.sim.never_ready(NS, &name);
    cluster.serve_model_version(&tenant, id, 4).await;
    cluster.env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("the rollout DEPLOYING", LONG, || async {
        cluster.env.endpoint(id).await.status == "DEPLOYING"
    })
    .await;
    cluster.env.publish(EventKind::Delete, &tenant, id).await;
    wait_for("DELETED", LONG, || async {
        cluster.env.endpoint(id).await.status == "DELETED"
    })
    .await;
    assert!(cluster.object(id).is_none());
    cluster.env.wait_all_answered(LONG).await;

    let generations = generations.lock().unwrap().clone();
    assert!(
        generations.windows(2).all(|w| w[0] < w[1]),
        "generation annotations never go backwards: {generations:?}"
    );
    assert_eq!(generations.first(), Some(&1));
    assert!(generations.contains(&3), "{generations:?}");
    worker.shutdown().await.unwrap();
}

/// RBAC that forbids the worker to patch: endpoints stay DEPLOYING with a reason an operator
/// acts on (verb, resource, namespace), `/readyz` fails saying the same, the 403s are counted,
/// and once RBAC is fixed every endpoint converges with no new event.
#[actix_rt::test]
async fn forbidden_by_rbac_is_loud_and_heals_without_a_new_event() {
    let cluster = Cluster::start(|_| {}).await;
    let mut settings = cluster.settings();
    // the long hand-back delay: short here, so healing shows within the test
    settings.retry_max_ms = 1_000;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = cluster.env.tenant().await;
    let ids = cluster.env.endpoints(&tenant, 3).await;
    cluster.sim.set_faults(Faults {
        forbidden_verbs: vec!["patch".into(), "create".into()],
        ..Faults::default()
    });
    for id in &ids {
        cluster.env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    wait_for("every endpoint DEPLOYING with a reason", LONG, || async {
        let mut all = true;
        for id in &ids {
            let row = cluster.env.endpoint(*id).await;
            all &= row.status == "DEPLOYING" && row.status_reason.is_some();
        }
        all
    })
    .await;
    let reason = cluster.env.endpoint(ids[0]).await.status_reason.unwrap();
    for needle in ["forbidden", "inferenceservices", NS, "rbac.yaml"] {
        assert!(reason.contains(needle), "{needle} in {reason}");
    }
    let addr = worker.http_addr();
    let readyz = common::wait_http(addr, "/readyz", LONG, |r| r.status == 503).await;
    assert!(readyz.body.contains("forbidden"), "{}", readyz.body);
    let metrics = common::http_get(addr, "/metrics").await.unwrap().body;
    let metrics = common::openmetrics::parse_openmetrics(&metrics);
    let value = |name: &str, labels: &[(&str, &str)]| {
        common::openmetrics::value(&metrics, name, labels).unwrap_or(0.0)
    };
    let forbidden = value("deploy_worker_kube_api_errors_total", &[("code", "403")]);
    assert!(forbidden >= 1.0, "403s counted");
    assert_eq!(
        value("deploy_worker_kube_api_forbidden_total", &[]),
        forbidden,
        "and counted apart, for the alert"
    );
    assert!(
        cluster.env.history(ids[0]).await.is_empty(),
        "no outcome recorded"
    );

    cluster.sim.set_faults(Faults::default());
    cluster
        .env
        .wait_all_ready("every endpoint READY after the fix", &ids, LONG)
        .await;
    assert_eq!(cluster.env.endpoint(ids[0]).await.status_reason, None);
    common::wait_http(addr, "/readyz", LONG, |r| r.status == 200).await;
    worker.shutdown().await.unwrap();
}

/// The API server goes away mid-wait and comes back empty (restored from nothing): every
/// endpoint is applied again and ends READY; nothing is blamed on the endpoints.
#[actix_rt::test]
async fn an_api_server_that_comes_back_empty_gets_every_object_again() {
    let mut cluster = Cluster::start(|c| c.ready_delay = Duration::from_secs(2)).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let ids = cluster.env.endpoints(&tenant, 10).await;
    for id in &ids {
        cluster.env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    wait_for("every object applied", LONG, || async {
        ids.iter().all(|id| cluster.object(*id).is_some())
    })
    .await;
    let addr = cluster.sim.addr();
    cluster.sim.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.sim = KserveSim::start(SimConfig {
        listen: addr,
        ready_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("the stand-in starts again, empty");
    cluster
        .env
        .wait_all_ready("every endpoint READY", &ids, LONG)
        .await;
    for id in &ids {
        assert!(cluster.object(*id).is_some(), "{id} applied again");
        let history = cluster.env.history(*id).await;
        assert!(history.iter().all(|h| h.outcome != "error"), "{history:?}");
    }
    worker.shutdown().await.unwrap();
}

/// An object whose generation annotation is ahead of the database (the database was restored
/// from a backup): the database is the source of truth, its intent is applied, the endpoint
/// ends READY rather than staying DEPLOYING.
#[actix_rt::test]
async fn the_database_wins_over_an_object_from_the_future() {
    let cluster = Cluster::start(|_| {}).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.deploy_and_wait(&tenant, id, 1).await;
    let name = isvc_name("isvc", id);
    let api = cluster.dynamic_api().await;
    let future = json!({"metadata": {"annotations": {"mlops.platform/spec-generation": "7"}}});
    api.patch(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&future),
    )
    .await
    .unwrap();
    cluster.serve_model_version(&tenant, id, 2).await;
    cluster.deploy_and_wait(&tenant, id, 2).await;
    let object = cluster.object(id).unwrap();
    assert_eq!(
        object["metadata"]["annotations"]["mlops.platform/spec-generation"],
        "2"
    );
    worker.shutdown().await.unwrap();
}

/// Two replicas; deploy and delete of 100 endpoints published within milliseconds of each
/// other: whichever replica gets which event, nothing is left running for a deleted endpoint.
#[actix_rt::test]
async fn deploy_and_delete_racing_across_two_replicas_leave_no_orphan() {
    let cluster = Cluster::start(|c| c.ready_delay = Duration::from_millis(300)).await;
    let first = cluster.worker().await;
    let second = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let ids = cluster.env.endpoints(&tenant, 100).await;
    for id in &ids {
        cluster.env.publish(EventKind::Deploy, &tenant, *id).await;
        cluster.env.publish(EventKind::Delete, &tenant, *id).await;
    }
    wait_for("every endpoint DELETED", LONG, || async {
        cluster.env.count_status(&ids, "DELETED").await == ids.len()
    })
    .await;
    cluster.env.wait_all_answered(LONG).await;
    wait_for("no object left", LONG, || async {
        ids.iter().all(|id| cluster.object(*id).is_none())
    })
    .await;
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// The namespace the worker deploys to does not exist: endpoints stay DEPLOYING with a reason
/// naming it, `/readyz` says so, and once the namespace is created they converge by themselves.
#[actix_rt::test]
async fn a_missing_namespace_is_loud_and_heals_once_created() {
    let cluster = Cluster::start(|c| c.namespaces = Some(vec!["default".into()])).await;
    let mut settings = cluster.settings();
    settings.retry_max_ms = 1_000;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = cluster.env.tenant().await;
    let id = cluster.env.endpoints(&tenant, 1).await[0];
    cluster.env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("DEPLOYING with a reason", LONG, || async {
        cluster.env.endpoint(id).await.status_reason.is_some()
    })
    .await;
    let row = cluster.env.endpoint(id).await;
    assert_eq!(row.status, "DEPLOYING");
    let reason = row.status_reason.unwrap();
    assert!(
        reason.contains(&format!("namespaces \"{NS}\" not found"))
            && reason.contains("KSERVE_NAMESPACE"),
        "{reason}"
    );
    let readyz = common::wait_http(worker.http_addr(), "/readyz", LONG, |r| r.status == 503).await;
    assert!(readyz.body.contains("not found"), "{}", readyz.body);

    cluster.sim.create_namespace(NS);
    wait_for("READY once the namespace exists", LONG, || async {
        cluster.env.endpoint(id).await.status == "READY"
    })
    .await;
    worker.shutdown().await.unwrap();
}

/// Whether endpoint `id`'s history holds a row with `action` and `outcome`.
async fn has_history(cluster: &Cluster, id: Uuid, action: &str, outcome: &str) -> bool {
    cluster
        .env
        .history(id)
        .await
        .iter()
        .any(|h| h.action == action && h.outcome == outcome)
}

/// After READY the worker keeps following the object: one that stops being Ready past the
/// debounce turns the endpoint ERROR with KServe's reason, and READY again once it recovers;
/// both are recorded with history action `follow`.
#[actix_rt::test]
async fn a_ready_endpoint_follows_its_object_to_error_and_back() {
    let cluster = Cluster::start(|_| {}).await;
    let mut settings = cluster.settings();
    settings.follow.follow_debounce_seconds = 1;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = cluster.env.tenant().await;
    let id = cluster.endpoint(&tenant, json!({}), None).await;
    cluster.deploy_and_wait(&tenant, id, 1).await;
    let name = isvc_name("isvc", id);

    cluster.sim.fail_object(
        NS,
        &name,
        "RevisionMissing",
        "the model server crashed at 3 a.m.",
    );
    wait_for("the endpoint ERROR", LONG, || async {
        cluster.env.endpoint(id).await.status == "ERROR"
    })
    .await;
    let row = cluster.env.endpoint(id).await;
    let reason = row.status_reason.unwrap_or_default();
    assert!(
        reason.contains("RevisionMissing") && reason.contains("crashed at 3 a.m."),
        "{reason}"
    );
    assert!(row.url.is_some(), "the URL stays: the object still exists");
    assert!(has_history(&cluster, id, "follow", "error").await);

    cluster.sim.clear_behaviour(NS, &name);
    wait_for("the endpoint READY again", LONG, || async {
        cluster.env.endpoint(id).await.status == "READY"
    })
    .await;
    assert!(has_history(&cluster, id, "follow", "ready").await);
    assert_eq!(cluster.env.endpoint(id).await.status_reason, None);
    worker.shutdown().await.unwrap();
}

/// The `Ready` condition's status of an InferenceService, as the stand-in holds it.
fn ready_status(object: &Value) -> Option<String> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
        .map(str::to_owned)
}

/// A not-Ready spell shorter than the debounce changes nothing.
#[actix_rt::test]
async fn a_blip_shorter_than_the_debounce_changes_nothing() {
    let cluster = Cluster::start(|_| {}).await;
    let mut settings = cluster.settings();
    settings.follow.follow_debounce_seconds = 30;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = cluster.env.tenant().await;
    let id = cluster.endpoint(&tenant, json!({}), None).await;
    cluster.deploy_and_wait(&tenant, id, 1).await;
    let name = isvc_name("isvc", id);
    cluster
        .sim
        .fail_object(NS, &name, "RevisionMissing", "blip");
    wait_for("the object not Ready", LONG, || async {
        cluster
            .object(id)
            .as_ref()
            .and_then(ready_status)
            .as_deref()
            == Some("False")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.sim.clear_behaviour(NS, &name);
    wait_for("the object Ready again", LONG, || async {
        cluster
            .object(id)
            .as_ref()
            .and_then(ready_status)
            .as_deref()
            == Some("True")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cluster.env.endpoint(id).await.status, "READY");
    assert_eq!(cluster.env.history(id).await.len(), 1, "only the deploy");
    worker.shutdown().await.unwrap();
}

/// An object deleted by someone else is created again, and one whose spec someone else edited
/// is restored; both recorded as `repair`.
#[actix_rt::test]
async fn objects_deleted_or_edited_out_of_band_are_repaired() {
    let cluster = Cluster::start(|_| {}).await;
    let worker = cluster.worker().await;
    let tenant = cluster.env.tenant().await;
    let deleted = cluster.endpoint(&tenant, json!({}), None).await;
    let edited = cluster.endpoint(&tenant, json!({}), None).await;
    cluster.deploy_and_wait(&tenant, deleted, 1).await;
    cluster.deploy_and_wait(&tenant, edited, 1).await;
    let api = cluster.dynamic_api().await;

    let uid = cluster.object(deleted).unwrap()["metadata"]["uid"].clone();
    api.delete(&isvc_name("isvc", deleted), &Default::default())
        .await
        .unwrap();
    wait_for("the deleted object created again", LONG, || async {
        cluster.object(deleted).is_some_and(|o| {
            o["metadata"]["uid"] != uid && o["metadata"]["deletionTimestamp"].is_null()
        })
    })
    .await;
    wait_for("its repair recorded READY", LONG, || async {
        has_history(&cluster, deleted, "repair", "ready").await
    })
    .await;
    assert_eq!(cluster.env.endpoint(deleted).await.status, "READY");

    let pointer = "/spec/predictor/model/storageUri";
    let applied = cluster.object(edited).unwrap().pointer(pointer).cloned();
    assert!(applied.is_some());
    let patch = kube::api::Patch::Merge(
        json!({"spec": {"predictor": {"model": {"storageUri": "gs://someone-else/model"}}}}),
    );
    let params = kube::api::PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    api.patch(&isvc_name("isvc", edited), &params, &patch)
        .await
        .unwrap();
    wait_for("the edited spec restored", LONG, || async {
        cluster
            .object(edited)
            .is_some_and(|o| o.pointer(pointer) == applied.as_ref())
    })
    .await;
    wait_for("its repair recorded READY", LONG, || async {
        has_history(&cluster, edited, "repair", "ready").await
    })
    .await;
    worker.shutdown().await.unwrap();
}

/// At start-up the worker lists the cluster once and collects objects whose endpoint was
/// deleted while it was away — but never when that would delete more than `GC_MAX_SHARE` of
/// its objects (a wrong database must not empty a cluster), and not in report-only mode.
#[actix_rt::test]
async fn start_up_collects_objects_of_deleted_endpoints_within_its_guards() {
    let cluster = Cluster::start(|_| {}).await;
    let tenant = cluster.env.tenant().await;
    let worker = cluster.worker().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = cluster.endpoint(&tenant, json!({}), None).await;
        cluster.deploy_and_wait(&tenant, id, 1).await;
        ids.push(id);
    }
    worker.shutdown().await.unwrap();
    let mark_deleted = |ids: Vec<Uuid>| {
        let db = cluster.env.db.clone();
        async move {
            for id in ids {
                use sea_orm::ConnectionTrait;
                db.execute_raw(sea_orm::Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    "UPDATE endpoints SET status = 'DELETED' WHERE id = $1",
                    [id.into()],
                ))
                .await
                .unwrap();
            }
        }
    };

    // one of four deleted while no worker ran (its delete event lost): report-only leaves it
    mark_deleted(vec![ids[0]]).await;
    let mut settings = cluster.settings();
    settings.follow.gc_report_only = true;
    let worker = Worker::start(&settings).await.unwrap();
    let addr = worker.http_addr();
    wait_for("the orphan reported", LONG, || async {
        let body = common::http_get(addr, "/metrics")
            .await
            .map(|r| r.body)
            .unwrap_or_default();
        body.contains(r#"deploy_worker_follow_total{action="collect",result="reported"} 1"#)
    })
    .await;
    assert!(
        cluster.object(ids[0]).is_some(),
        "report-only deletes nothing"
    );
    worker.shutdown().await.unwrap();

    // then collected
    let worker = cluster.worker().await;
    wait_for("the orphan collected", LONG, || async {
        cluster.object(ids[0]).is_none()
    })
    .await;
    worker.shutdown().await.unwrap();
    for id in &ids[1..] {
        assert!(cluster.object(*id).is_some(), "live endpoints keep theirs");
    }

    // all three others "deleted" (as a wrong DATABASE_URL would show them): refused
    mark_deleted(ids[1..].to_vec()).await;
    let worker = cluster.worker().await;
    let addr = worker.http_addr();
    wait_for("the collection refused", LONG, || async {
        let body = common::http_get(addr, "/metrics")
            .await
            .map(|r| r.body)
            .unwrap_or_default();
        body.contains(r#"deploy_worker_follow_total{action="collect",result="refused"} 3"#)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in &ids[1..] {
        assert!(cluster.object(*id).is_some(), "nothing deleted");
    }
    worker.shutdown().await.unwrap();
}

/// The switch-over from the earlier worker: its ten InferenceServices (its names and labels,
/// two GPU-sized) are adopted by the redeploys — names and URLs kept, our labels added, no
/// second object beside them — and deletes remove them.
#[actix_rt::test]
async fn the_earlier_workers_objects_are_adopted_not_duplicated() {
    let cluster = Cluster::start(|_| {}).await;
    let tenant = cluster.env.tenant().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(cluster.endpoint(&tenant, json!({}), None).await);
    }
    let api = cluster.dynamic_api().await;
    for (i, id) in ids.iter().enumerate() {
        let mut predictor = json!({
            "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://old-worker/model"}
        });
        if i < 2 {
            predictor["model"]["resources"] =
                json!({"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}});
        }
        let object: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": deploy_worker::kserve::legacy_name(*id),
                "namespace": NS,
                "labels": {
                    "mlops.tenancy/tenant_id": tenant.tenant_id.to_string(),
                    "mlops.tenancy/project_id": tenant.project_id.to_string(),
                    "mlops.platform/endpoint_id": id.to_string(),
                },
            },
            "spec": {"predictor": predictor},
        }))
        .unwrap();
        api.create(&Default::default(), &object).await.unwrap();
    }
    wait_for("the earlier worker's objects Ready", LONG, || async {
        cluster
            .sim
            .list()
            .iter()
            .filter(|o| o.pointer("/status/url").is_some())
            .count()
            == 10
    })
    .await;
    let urls: Vec<Value> = ids
        .iter()
        .map(|id| {
            cluster
                .sim
                .get(NS, &deploy_worker::kserve::legacy_name(*id))
                .unwrap()
                .pointer("/status/url")
                .cloned()
                .unwrap()
        })
        .collect();

    let worker = cluster.worker().await;
    for id in &ids {
        cluster.env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    cluster
        .env
        .wait_all_ready("every endpoint READY", &ids, LONG)
        .await;
    assert_eq!(
        cluster.sim.list().len(),
        10,
        "no second object beside any old one"
    );
    for (id, url) in ids.iter().zip(&urls) {
        let name = deploy_worker::kserve::legacy_name(*id);
        let object = cluster.sim.get(NS, &name).unwrap();
        assert_eq!(
            object.pointer("/metadata/labels/mlops.platform~1endpoint-id"),
            Some(&json!(id.to_string())),
            "our labels added"
        );
        assert_eq!(
            object.pointer("/metadata/labels/app.kubernetes.io~1managed-by"),
            Some(&json!("deploy-worker"))
        );
        let row = cluster.env.endpoint(*id).await;
        assert_eq!(row.url.as_deref(), url.as_str(), "URL kept");
        assert_eq!(cluster.env.history(*id).await[0].isvc_name, name);
    }

    for id in &ids[..3] {
        cluster.env.publish(EventKind::Delete, &tenant, *id).await;
    }
    wait_for("three deleted", LONG, || async {
        cluster.env.count_status(&ids[..3], "DELETED").await == 3
    })
    .await;
    wait_for("their objects gone", LONG, || async {
        cluster.sim.list().len() == 7
    })
    .await;
    worker.shutdown().await.unwrap();
}

/// Following survives a watch that keeps being cut and resumes into `410 Gone` (a tiny event
/// history): the relist still delivers the not-Ready and the Ready-again transitions.
#[actix_rt::test]
async fn cut_watches_and_410_lose_no_readiness_transition() {
    let cluster = Cluster::start(|config| config.history_size = 2).await;
    let mut settings = cluster.settings();
    settings.follow.follow_debounce_seconds = 1;
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = cluster.env.tenant().await;
    let id = cluster.endpoint(&tenant, json!({}), None).await;
    // a second endpoint keeps events flowing, so a resumed watch is past the history
    let other = cluster.endpoint(&tenant, json!({}), None).await;
    cluster.deploy_and_wait(&tenant, id, 1).await;
    cluster.deploy_and_wait(&tenant, other, 1).await;
    cluster.sim.set_faults(Faults {
        cut_watches_after_events: Some(1),
        ..Default::default()
    });
    let name = isvc_name("isvc", id);
    cluster
        .sim
        .fail_object(NS, &name, "RevisionMissing", "crashed");
    cluster
        .sim
        .fail_object(NS, &isvc_name("isvc", other), "RevisionMissing", "crashed");
    wait_for("both ERROR", LONG, || async {
        cluster.env.count_status(&[id, other], "ERROR").await == 2
    })
    .await;
    cluster.sim.clear_behaviour(NS, &name);
    cluster.sim.clear_behaviour(NS, &isvc_name("isvc", other));
    wait_for("both READY again", LONG, || async {
        cluster.env.count_status(&[id, other], "READY").await == 2
    })
    .await;
    worker.shutdown().await.unwrap();
}
