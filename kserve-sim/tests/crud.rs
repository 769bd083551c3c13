//! Object lifecycle over real HTTP with the real `kube` client: create/get/list with selectors
//! and pagination, optimistic concurrency, merge and JSON patches, server-side apply with
//! conflicts, generation semantics, the status subresource, schema validation and pruning,
//! and deletion with finalizers.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use kserve_sim::{SimConfig, Verb};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    ValidationDirective, WatchEvent, WatchParams,
};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_with_selectors_and_pages() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let pp = PostParams::default();
    for (name, tier, extra) in [
        ("a1", "web", true),
        ("a2", "web", false),
        ("a3", "batch", false),
    ] {
        let mut labels = json!({"tier": tier});
        if extra {
            labels["canary"] = json!("yes");
        }
        let created = a
            .create(&pp, &dynamic(manifest(name, labels, "s3://m/1")))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        let meta = &created.metadata;
        assert_eq!(meta.generation, Some(1));
        assert!(meta.uid.as_deref().is_some_and(|u| !u.is_empty()));
        assert!(meta.creation_timestamp.is_some());
    }
    api(&c, "other")
        .create(
            &pp,
            &dynamic(manifest("b1", json!({"tier": "web"}), "s3://m/1")),
        )
        .await
        .unwrap_or_else(|e| panic!("create b1: {e}"));

    let got = a.get("a2").await.unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(
        json_of(&got)["spec"]["predictor"]["model"]["storageUri"],
        "s3://m/1"
    );
    let missing = api_status(
        a.get("nope")
            .await
            .err()
            .unwrap_or_else(|| panic!("found nope")),
    );
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));

    let names = |l: kube::core::ObjectList<DynamicObject>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect()
    };
    for (selector, expected) in [
        ("tier=web", vec!["a1", "a2"]),
        ("tier==batch", vec!["a3"]),
        ("tier!=web", vec!["a3"]),
        ("tier in (batch, gpu)", vec!["a3"]),
        ("tier notin (batch)", vec!["a1", "a2"]),
        ("canary", vec!["a1"]),
        ("!canary,tier=web", vec!["a2"]),
    ] {
        let l = a
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap_or_else(|e| panic!("list {selector}: {e}"));
        assert_eq!(names(l), expected, "labelSelector {selector}");
    }
    let l = a
        .list(&ListParams::default().fields("metadata.name=a3"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(l), vec!["a3"]);
    let bad = a
        .list(&ListParams::default().fields("spec.predictor.minReplicas=1"))
        .await
        .err()
        .map(api_status);
    assert_eq!(bad.map(|s| s.code), Some(400));

    let all: Api<DynamicObject> = Api::all_with(c.clone(), &resource());
    let l = all
        .list(&ListParams::default().labels("tier=web"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(l), vec!["a1", "a2", "b1"]);

    // Pagination: 2 + 1, the continue token carries the first page's resourceVersion.
    let p1 = a
        .list(&ListParams::default().limit(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let token = p1.metadata.continue_.clone().filter(|t| !t.is_empty());
    let rv1 = p1.metadata.resource_version.clone();
    assert_eq!(names(p1), vec!["a1", "a2"]);
    let token = token.unwrap_or_else(|| panic!("no continue token"));
    let p2 = a
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p2.metadata.resource_version, rv1);
    assert!(p2.metadata.continue_.as_deref().is_none_or(str::is_empty));
    assert_eq!(names(p2), vec!["a3"]);

    // Duplicate name → 409 AlreadyExists; generateName → a fresh name.
    let dup = api_status(
        a.create(&pp, &dynamic(manifest("a1", json!({}), "s3://m/1")))
            .await
            .err()
            .unwrap_or_else(|| panic!("duplicate accepted")),
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
    let mut generated = manifest("", json!({}), "s3://m/1");
    generated["metadata"] = json!({"generateName": "gen-"});
    let g = a
        .create(&pp, &dynamic(generated))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let gname = g.metadata.name.unwrap_or_default();
    assert!(gname.starts_with("gen-") && gname.len() == 9, "{gname}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_with_stale_resource_version_is_a_conflict() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("u", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let first = a.get("u").await.unwrap_or_else(|e| panic!("{e}"));
    let mut changed = first.clone();
    changed.data["spec"]["predictor"]["minReplicas"] = json!(2);
    let updated = a
        .replace("u", &PostParams::default(), &changed)
        .await
        .unwrap_or_else(|e| panic!("replace: {e}"));
    assert_ne!(
        updated.metadata.resource_version,
        first.metadata.resource_version
    );
    assert_eq!(updated.metadata.generation, Some(2));

    // The same stale object again: 409 Conflict.
    let mut stale = first.clone();
    stale.data["spec"]["predictor"]["minReplicas"] = json!(3);
    let err = api_status(
        a.replace("u", &PostParams::default(), &stale)
            .await
            .err()
            .unwrap_or_else(|| panic!("stale update accepted")),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert!(
        err.message.contains("the object has been modified"),
        "{}",
        err.message
    );
    let now = a.get("u").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(&now)["spec"]["predictor"]["minReplicas"], 2);

    // Without a resourceVersion: 422, as for every custom resource.
    let mut no_rv = now.clone();
    no_rv.metadata.resource_version = None;
    let err = api_status(
        a.replace("u", &PostParams::default(), &no_rv)
            .await
            .err()
            .unwrap_or_else(|| panic!("update without resourceVersion accepted")),
    );
    assert_eq!(err.code, 422);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_and_generation_semantics() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let pp = PatchParams::default();
    let o = a
        .create(
            &PostParams::default(),
            &dynamic(manifest("p", json!({}), "s3://m/1")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rv0: u64 = o
        .metadata
        .resource_version
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);

    // Metadata-only merge patch: new resourceVersion, same generation.
    let o = a
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rv1: u64 = o
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    assert!(rv1 > rv0);
    assert_eq!(o.metadata.generation, Some(1));
    assert_eq!(
        o.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("x"))
            .map(String::as_str),
        Some("1")
    );

    // Spec merge patch: generation + 1; null removes a field.
    let o = a
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"spec": {"predictor": {"minReplicas": null, "maxReplicas": 4}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.metadata.generation, Some(2));
    let v = json_of(&o);
    assert!(v["spec"]["predictor"].get("minReplicas").is_none());
    assert_eq!(v["spec"]["predictor"]["maxReplicas"], 4);

    // JSON patch (RFC 6902), and a failed `test` leaves the object alone with 422. (The
    // workspace's kube is built without its `jsonpatch` feature, so this goes over raw HTTP.)
    let path = format!("/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/p");
    let r = raw(
        &sim,
        "PATCH",
        &path,
        Some("application/json-patch+json"),
        &json!([
            {"op": "test", "path": "/spec/predictor/maxReplicas", "value": 4},
            {"op": "replace", "path": "/spec/predictor/maxReplicas", "value": 5}
        ])
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["spec"]["predictor"]["maxReplicas"], 5);
    assert_eq!(r.json()["metadata"]["generation"], 3);
    let r = raw(
        &sim,
        "PATCH",
        &path,
        Some("application/json-patch+json"),
        &json!([
            {"op": "test", "path": "/spec/predictor/maxReplicas", "value": 99},
            {"op": "replace", "path": "/spec/predictor/maxReplicas", "value": 6}
        ])
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let o = a.get("p").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(&o)["spec"]["predictor"]["maxReplicas"], 5);

    // Status written on the main resource is ignored; /status writes change only the status
    // and never the generation.
    let o = a
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"status": {"url": "http://nope"}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(json_of(&o)["status"]["url"], "http://nope");
    let generation = o.metadata.generation;
    let o = a
        .patch_status(
            "p",
            &pp,
            &Patch::Merge(json!({"status": {"url": "http://set-by-test"}, "spec": {"predictor": {"maxReplicas": 9}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let v = json_of(&o);
    assert_eq!(v["status"]["url"], "http://set-by-test");
    assert_eq!(v["spec"]["predictor"]["maxReplicas"], 5);
    assert_eq!(o.metadata.generation, generation);
    let s = a.get_status("p").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_of(&s)["status"]["url"], "http://set-by-test");

    // Strategic merge patch does not exist for custom resources: 415.
    let r = raw(
        &sim,
        "PATCH",
        &format!("/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/p"),
        Some("application/strategic-merge-patch+json"),
        "{}",
    )
    .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.json()["reason"], "UnsupportedMediaType");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_owns_fields_and_detects_conflicts() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let mut desired = manifest("s", json!({"app": "s"}), "s3://m/1");
    desired["spec"]["predictor"]["canaryTrafficPercent"] = json!(10);
    let worker = PatchParams::apply("deploy-worker");

    // Apply creates.
    let o = a
        .patch("s", &worker, &Patch::Apply(&desired))
        .await
        .unwrap_or_else(|e| panic!("apply create: {e}"));
    assert_eq!(o.metadata.generation, Some(1));
    let managed = o.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        managed
            .iter()
            .any(|m| m.manager.as_deref() == Some("deploy-worker")
                && m.operation.as_deref() == Some("Apply"))
    );

    // Re-applying the same configuration is a no-op: same resourceVersion, same generation.
    let settled = wait_ready(&sim, NS, "s").await;
    let again = a
        .patch("s", &worker, &Patch::Apply(&desired))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        json_of(&again)["metadata"]["resourceVersion"],
        settled["metadata"]["resourceVersion"]
    );

    // Another manager changing a field the worker owns: 409 with one cause per field.
    let mut other = manifest("s", json!({}), "s3://m/2");
    other["spec"]["predictor"]["minReplicas"] = json!(1);
    let err = api_status(
        a.patch(
            "s",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("conflicting apply accepted")),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    let causes = err.details.map(|d| d.causes).unwrap_or_default();
    let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, vec![".spec.predictor.model.storageUri"]);
    assert!(
        causes[0].message.contains("deploy-worker"),
        "{:?}",
        causes[0]
    );

    // Forced, the other manager takes the field; the worker then conflicts in turn.
    let o = a
        .patch(
            "s",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        json_of(&o)["spec"]["predictor"]["model"]["storageUri"],
        "s3://m/2"
    );
    assert_eq!(o.metadata.generation, Some(2));
    let err = api_status(
        a.patch("s", &worker, &Patch::Apply(&desired))
            .await
            .err()
            .unwrap_or_else(|| panic!("worker apply should conflict now")),
    );
    assert_eq!(err.code, 409);
    assert!(err.message.contains("someone-else"), "{}", err.message);

    // Dropping a field from the applied configuration removes it (canary promotion).
    let mut promoted = desired.clone();
    promoted["spec"]["predictor"]["model"]["storageUri"] = json!("s3://m/2");
    promoted["spec"]["predictor"]
        .as_object_mut()
        .map(|p| p.remove("canaryTrafficPercent"));
    let o = a
        .patch("s", &worker, &Patch::Apply(&promoted))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        json_of(&o)["spec"]["predictor"]
            .get("canaryTrafficPercent")
            .is_none()
    );

    // Apply without a field manager: 422; with an unknown field under Strict: 400.
    let err = api_status(
        a.patch("s", &PatchParams::default(), &Patch::Apply(&desired))
            .await
            .err()
            .unwrap_or_else(|| panic!("apply without fieldManager accepted")),
    );
    assert_eq!(err.code, 422);
    let mut unknown = promoted.clone();
    unknown["spec"]["predictor"]["bogus"] = json!(true);
    let err = api_status(
        a.patch(
            "s",
            &PatchParams::apply("deploy-worker").validation(ValidationDirective::Strict),
            &Patch::Apply(&unknown),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("unknown field accepted under Strict")),
    );
    assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
    assert!(
        err.message.contains("spec.predictor.bogus"),
        "{}",
        err.message
    );

    // The body may be YAML.
    let yaml = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: y\nspec:\n  predictor:\n    model:\n      modelFormat:\n        name: onnx\n";
    let r = raw(
        &sim,
        "PATCH",
        &format!("/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/y?fieldManager=yaml-user"),
        Some("application/apply-patch+yaml"),
        yaml,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.json()["spec"]["predictor"]["model"]["modelFormat"]["name"],
        "onnx"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_violations_are_422_with_causes_and_unknown_fields_are_pruned() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let mut bad = manifest("bad", json!({}), "s3://m/1");
    bad["spec"]["predictor"]["minReplicas"] = json!("two");
    bad["spec"]["predictor"]["model"]["modelFormat"] = json!({});
    bad["spec"]["predictor"]["model"]["resources"] = json!({"limits": {"cpu": "lots"}});
    let err = api_status(
        a.create(&PostParams::default(), &dynamic(bad))
            .await
            .err()
            .unwrap_or_else(|| panic!("invalid object accepted")),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    let mut fields: Vec<String> = err
        .details
        .map(|d| d.causes.into_iter().map(|c| c.field).collect())
        .unwrap_or_default();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "spec.predictor.minReplicas",
            "spec.predictor.model.modelFormat.name",
            "spec.predictor.model.resources.limits.cpu"
        ]
    );
    assert!(
        a.get_opt("bad")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );

    // Bad name → 422 on metadata.name.
    let err = api_status(
        a.create(
            &PostParams::default(),
            &dynamic(manifest("Not_A_Name", json!({}), "s3://m")),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("bad name accepted")),
    );
    assert_eq!(err.code, 422);
    assert!(err.message.contains("metadata.name"), "{}", err.message);

    // Unknown fields: pruned silently (with a Warning header), or 400 under Strict.
    let mut extra = manifest("extra", json!({}), "s3://m/1");
    extra["spec"]["predictor"]["surprise"] = json!({"a": 1});
    extra["spec"]["unknownTop"] = json!(1);
    let o = a
        .create(&PostParams::default(), &dynamic(extra.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let v = json_of(&o);
    assert!(v["spec"]["predictor"].get("surprise").is_none());
    assert!(v["spec"].get("unknownTop").is_none());
    extra["metadata"]["name"] = json!("extra2");
    let r = raw(
        &sim,
        "POST",
        &format!("/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"),
        Some("application/json"),
        &extra.to_string(),
    )
    .await;
    assert_eq!(r.status, 201);
    let warnings = r.header("warning");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("spec.predictor.surprise")),
        "{warnings:?}"
    );
    extra["metadata"]["name"] = json!("extra3");
    let r = raw(
        &sim,
        "POST",
        &format!("/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices?fieldValidation=Strict"),
        Some("application/json"),
        &extra.to_string(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Defaults from the schema are applied (container ports default to TCP).
    let mut ported = manifest("ported", json!({}), "s3://m/1");
    ported["spec"]["predictor"]["model"]["ports"] = json!([{"containerPort": 8080}]);
    let o = a
        .create(&PostParams::default(), &dynamic(ported))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        json_of(&o)["spec"]["predictor"]["model"]["ports"][0]["protocol"],
        "TCP"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_lingers_with_finalizer_then_is_gone_with_a_deleted_event() {
    let mut cfg = fast_config();
    cfg.delete_linger = Duration::from_millis(600);
    let sim = start(cfg).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("d", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let ready = wait_ready(&sim, NS, "d").await;
    assert_eq!(
        ready["metadata"]["finalizers"],
        json!(["inferenceservice.finalizers"])
    );
    let uid = ready["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let rv = ready["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // Preconditions are honoured.
    let err = api_status(
        a.delete(
            "d",
            &DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some("wrong".into()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            },
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("wrong uid accepted")),
    );
    assert_eq!(err.code, 409);

    let mut events = a
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let deleted = a
        .delete(
            "d",
            &DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    let lingering = deleted
        .left()
        .unwrap_or_else(|| panic!("object with finalizer vanished at once"));
    assert!(lingering.metadata.deletion_timestamp.is_some());
    // Still there for a moment, with its deletionTimestamp.
    let still = a.get_opt("d").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(still.is_some_and(|o| o.metadata.deletion_timestamp.is_some()));

    let mut kinds = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.try_next())
        .await
        .unwrap_or(Ok(None))
    {
        match ev {
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            WatchEvent::Deleted(o) => {
                kinds.push("DELETED");
                assert!(o.metadata.deletion_timestamp.is_some());
                break;
            }
            WatchEvent::Added(_) => kinds.push("ADDED"),
            _ => {}
        }
    }
    assert_eq!(kinds.last(), Some(&"DELETED"), "{kinds:?}");
    assert!(
        a.get_opt("d")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    let err = api_status(
        a.delete("d", &DeleteParams::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("deleted twice")),
    );
    assert_eq!(err.code, 404);

    // Without finalizers the object is removed at once and a Status is returned. (Wait for
    // the controller's finalizer first, so that removing it is not raced by its addition.)
    a.create(
        &PostParams::default(),
        &dynamic(manifest("quick", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    sim.wait_for(NS, "quick", Duration::from_secs(10), |o| {
        o.is_some_and(|o| o["metadata"]["finalizers"].is_array())
    })
    .await
    .unwrap_or_else(|| panic!("no finalizer added"));
    let quick = a
        .patch(
            "quick",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(quick.metadata.finalizers.as_ref().is_none_or(Vec::is_empty));
    let gone = a
        .delete("quick", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status: Value = gone
        .right()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_else(|| panic!("expected a Status for an immediate deletion"));
    assert_eq!(status["status"], "Success");
    assert_eq!(status["details"]["name"], "quick");
    assert!(
        a.get_opt("quick")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    sim.stop().await;
}

/// With namespaces tracked, a create (POST or server-side apply) in a namespace that does not
/// exist is a 404 naming the namespace, as on a real cluster; once it exists, it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_in_a_namespace_that_does_not_exist_is_not_found() {
    let sim = start(SimConfig {
        namespaces: Some(vec!["default".into()]),
        ..fast_config()
    })
    .await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let object = dynamic(manifest("n", json!({}), "s3://m/1"));
    let err = api_status(
        a.create(&PostParams::default(), &object)
            .await
            .err()
            .unwrap_or_else(|| panic!("create in a missing namespace accepted")),
    );
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, format!("namespaces \"{NS}\" not found"));
    let apply = PatchParams::apply("test").force();
    let err = api_status(
        a.patch("n", &apply, &Patch::Apply(&object))
            .await
            .err()
            .unwrap_or_else(|| panic!("apply in a missing namespace accepted")),
    );
    assert_eq!(err.code, 404);

    sim.create_namespace(NS);
    a.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create once the namespace exists: {e}"));
    sim.stop().await;
}

/// A merge patch must be a JSON object: an array, a string, a number or `null` is a 400, as on
/// a real API server, and the object is left exactly as it was (RFC 7386 alone would replace
/// the whole document).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_patch_that_is_not_an_object_is_a_bad_request() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("m", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Once Ready the controller leaves the object alone: any later change is the patch's.
    let before = wait_ready(&sim, NS, "m").await;
    let path = format!("/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/m");
    for body in ["[]", "\"x\"", "3", "null", "true"] {
        for p in [path.clone(), format!("{path}/status")] {
            let r = raw(
                &sim,
                "PATCH",
                &p,
                Some("application/merge-patch+json"),
                body,
            )
            .await;
            assert_eq!(r.status, 400, "{p} {body}: {}", r.body);
            assert_eq!(r.json()["reason"], "BadRequest", "{body}");
        }
    }
    // Through the kube client as well.
    let err = api_status(
        a.patch("m", &PatchParams::default(), &Patch::Merge(json!([])))
            .await
            .err()
            .unwrap_or_else(|| panic!("a merge patch [] was accepted")),
    );
    assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        sim.get(NS, "m"),
        Some(before),
        "a refused patch changed the object"
    );
    sim.stop().await;
}

/// KServe's validating webhook: negative replica counts and `minReplicas` above `maxReplicas`
/// (predictor, transformer, explainer) are denied on create, update, merge patch, JSON patch and
/// server-side apply, with the API server's wording; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validating_webhook_refuses_bad_replica_bounds_on_every_write() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let denied = |why: &str| {
        format!(
            "admission webhook \"inferenceservice.kserve-webhook-server.validator\" denied the request: {why}"
        )
    };
    let negative_min = denied("'MinReplicas' cannot be less than 0");
    let negative_max = denied("'MaxReplicas' cannot be less than 0");
    let min_above_max = denied("'MinReplicas' cannot be greater than MaxReplicas");
    let check = |err: kube::Error, expected: &str| {
        let s = api_status(err);
        assert_eq!(
            (s.code, s.reason.as_str()),
            (403, "Forbidden"),
            "{}",
            s.message
        );
        assert_eq!(s.message, expected);
    };

    // Create.
    for (predictor, expected) in [
        (json!({"minReplicas": -1}), &negative_min),
        (json!({"maxReplicas": -1}), &negative_max),
        (json!({"minReplicas": 3, "maxReplicas": 2}), &min_above_max),
    ] {
        let mut m = manifest("w", json!({}), "s3://m/1");
        for (k, v) in predictor.as_object().into_iter().flatten() {
            m["spec"]["predictor"][k] = v.clone();
        }
        let err = a
            .create(&PostParams::default(), &dynamic(m))
            .await
            .err()
            .unwrap_or_else(|| panic!("create with {predictor} accepted"));
        check(err, expected);
    }
    let mut with_transformer = manifest("w", json!({}), "s3://m/1");
    with_transformer["spec"]["transformer"] =
        json!({"minReplicas": -1, "containers": [{"name": "kserve-container", "image": "t:1"}]});
    let err = a
        .create(&PostParams::default(), &dynamic(with_transformer))
        .await
        .err()
        .unwrap_or_else(|| panic!("a transformer with minReplicas -1 was accepted"));
    check(err, &negative_min);
    assert!(
        sim.get(NS, "w").is_none(),
        "a denied create stored the object"
    );

    // A valid object, then every kind of update that would break the rule.
    a.create(
        &PostParams::default(),
        &dynamic(manifest("w", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Once Ready the controller leaves the object alone, so the resourceVersion below is current.
    let before = wait_ready(&sim, NS, "w").await;

    let mut replaced = before.clone();
    replaced["spec"]["predictor"]["maxReplicas"] = json!(-3);
    let err = a
        .replace("w", &PostParams::default(), &dynamic(replaced))
        .await
        .err()
        .unwrap_or_else(|| panic!("update with maxReplicas -3 accepted"));
    check(err, &negative_max);

    let err = a
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"predictor": {"minReplicas": 5, "maxReplicas": 4}}})),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("merge patch min 5 > max 4 accepted"));
    check(err, &min_above_max);

    let path = format!("/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/w");
    let r = raw(
        &sim,
        "PATCH",
        &path,
        Some("application/json-patch+json"),
        &json!([{"op": "replace", "path": "/spec/predictor/minReplicas", "value": -1}]).to_string(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["message"], json!(negative_min));

    let mut applied = manifest("w", json!({}), "s3://m/1");
    applied["spec"]["explainer"] = json!({"minReplicas": 2, "maxReplicas": 1,
        "containers": [{"name": "kserve-container", "image": "e:1"}]});
    let err = a
        .patch(
            "w",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&applied),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("apply with an explainer min 2 > max 1 accepted"));
    check(err, &min_above_max);

    // Dry runs are admitted through the webhook too.
    let err = a
        .patch(
            "w",
            &PatchParams::default().dry_run(),
            &Patch::Merge(json!({"spec": {"predictor": {"minReplicas": -1}}})),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("dry-run merge patch minReplicas -1 accepted"));
    check(err, &negative_min);

    assert_eq!(
        sim.get(NS, "w"),
        Some(before),
        "a denied write changed the object"
    );

    // Bounds that hold pass, including maxReplicas 0 (unbounded) and scale-to-zero.
    for spec in [
        json!({"minReplicas": 0, "maxReplicas": 0}),
        json!({"minReplicas": 2, "maxReplicas": 2}),
        json!({"minReplicas": 7, "maxReplicas": null}),
    ] {
        a.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"predictor": spec}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
    sim.stop().await;
}

/// The stand-in counts the requests it answers by verb, beyond the log's capacity, and a
/// reading taken earlier lets a caller count one phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_verb() {
    let sim = start(SimConfig {
        request_log_capacity: 2,
        ..fast_config()
    })
    .await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    for name in ["c1", "c2", "c3"] {
        a.create(
            &PostParams::default(),
            &dynamic(manifest(name, json!({}), "s3://m/1")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let after_creates = sim.request_counts();
    a.get("c1").await.unwrap_or_else(|e| panic!("{e}"));
    a.list(&ListParams::default().labels("app=none"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stream = a
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(stream);
    let ready = wait_ready(&sim, NS, "c1").await;
    a.replace("c1", &PostParams::default(), &dynamic(ready))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    a.patch(
        "c2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    a.patch(
        "c3",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&manifest("c3", json!({}), "s3://m/2")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    a.delete("c3", &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A refused request is counted as well.
    assert!(a.get("missing").await.is_err());

    let counts = sim.request_counts();
    assert_eq!(
        counts.to_string(),
        "get=2 list=1 watch=1 create=3 update=1 patch=1 apply=1 delete=1"
    );
    assert_eq!(counts.get(Verb::Create), 3);
    assert_eq!(counts.api_total(), 11);
    assert_eq!(sim.request_log().len(), 2, "the log itself stays bounded");
    assert_eq!(counts.since(&after_creates).get(Verb::Create), 0);
    assert_eq!(counts.since(&after_creates).api_total(), 8);
    sim.clear_request_log();
    assert_eq!(sim.request_counts().api_total(), 0);
    sim.stop().await;
}
