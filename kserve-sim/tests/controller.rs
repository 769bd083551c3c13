//! The simulated KServe controller, observed through the real `kube` client: the stale-Ready
//! window after an update, the in-progress and Ready states, Knative revisions and canary
//! traffic (10 % → rollback → promote), Standard mode, failing and never-ready objects.

mod common;

use common::*;
use futures::StreamExt;
use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn apply_params() -> PatchParams {
    PatchParams::apply("deploy-worker")
}

async fn apply(a: &kube::Api<kube::api::DynamicObject>, m: &Value) -> Value {
    let name = m["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    json_of(
        &a.patch(&name, &apply_params(), &Patch::Apply(m))
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}")),
    )
}

fn traffic(o: &Value) -> Vec<(String, i64, bool)> {
    o["status"]["components"]["predictor"]["traffic"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["revisionName"].as_str().unwrap_or_default().to_string(),
                        t["percent"].as_i64().unwrap_or(-1),
                        t["latestRevision"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn cond_reason<'a>(o: &'a Value, ty: &str) -> Option<&'a str> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)?
        .get("reason")?
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_shows_stale_ready_then_progress_then_ready_for_the_new_generation() {
    let mut cfg = fast_config();
    cfg.stale_status = Duration::from_millis(400);
    cfg.ready_delay = Duration::from_millis(300);
    let sim = start(cfg).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let v1 = manifest("seq", json!({}), "s3://models/v1");
    apply(&a, &v1).await;
    let ready1 = wait_ready(&sim, NS, "seq").await;
    assert_eq!(
        ready1["status"]["url"],
        format!("http://seq.{NS}.example.com")
    );
    assert_eq!(
        ready1["status"]["address"]["url"],
        format!("http://seq.{NS}.svc.cluster.local")
    );
    for ty in [
        "IngressReady",
        "LatestDeploymentReady",
        "PredictorReady",
        "RoutesReady",
        "Ready",
    ] {
        assert_eq!(condition(&ready1, ty), Some("True"), "{ty}");
    }
    assert_eq!(
        ready1["status"]["components"]["predictor"]["latestReadyRevision"],
        "seq-predictor-00001"
    );

    let rv = ready1["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut events = a
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let updated_at = Instant::now();
    let v2 = manifest("seq", json!({}), "s3://models/v2");
    let after_update = apply(&a, &v2).await;
    assert_eq!(after_update["metadata"]["generation"], 2);

    // Every state the object goes through until it is Ready for generation 2.
    let mut states: Vec<(Duration, Value)> = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .unwrap_or_else(|_| panic!("no Ready for generation 2; states: {states:?}"));
        match ev {
            Some(Ok(WatchEvent::Modified(o))) => {
                let v = json_of(&o);
                let done = v["status"]["observedGeneration"] == 2
                    && condition(&v, "Ready") == Some("True");
                states.push((updated_at.elapsed(), v));
                if done {
                    break;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("watch failed: {other:?}"),
        }
    }
    // 1. The update itself: generation 2 with the old status — a stale Ready=True.
    let (_, stale) = &states[0];
    assert_eq!(stale["metadata"]["generation"], 2);
    assert_eq!(stale["status"]["observedGeneration"], 1);
    assert_eq!(condition(stale, "Ready"), Some("True"));
    // 2. In progress for generation 2, with the new revision created.
    let (t_progress, progress) = states
        .iter()
        .find(|(_, v)| v["status"]["observedGeneration"] == 2)
        .unwrap_or_else(|| panic!("no in-progress state"));
    assert_eq!(condition(progress, "Ready"), Some("Unknown"));
    assert_eq!(cond_reason(progress, "Ready"), Some("RevisionMissing"));
    assert_eq!(
        progress["status"]["modelStatus"]["transitionStatus"],
        "InProgress"
    );
    assert_eq!(
        progress["status"]["components"]["predictor"]["latestCreatedRevision"],
        "seq-predictor-00002"
    );
    assert_eq!(
        progress["status"]["components"]["predictor"]["latestReadyRevision"],
        "seq-predictor-00001"
    );
    assert!(
        *t_progress >= Duration::from_millis(350),
        "stale window too short: {t_progress:?}"
    );
    // 3. Ready for generation 2.
    let (t_ready, ready) = states.last().unwrap_or_else(|| panic!("no states"));
    assert!(
        *t_ready >= *t_progress + Duration::from_millis(250),
        "{t_ready:?} vs {t_progress:?}"
    );
    assert_eq!(
        ready["status"]["components"]["predictor"]["latestReadyRevision"],
        "seq-predictor-00002"
    );
    assert_eq!(
        ready["status"]["modelStatus"]["transitionStatus"],
        "UpToDate"
    );
    assert_eq!(
        ready["status"]["url"],
        format!("http://seq.{NS}.example.com")
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_then_rollback_then_promote_then_rollback_traffic() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let model = |uri: &str, canary: Option<i64>| {
        let mut m = manifest("can", json!({}), uri);
        if let Some(p) = canary {
            m["spec"]["predictor"]["canaryTrafficPercent"] = json!(p);
        }
        m
    };
    let r = |n: u32| format!("can-predictor-{n:05}");
    apply(&a, &model("s3://m/v1", None)).await;
    let o = wait_ready(&sim, NS, "can").await;
    assert_eq!(traffic(&o), vec![(r(1), 100, true)]);

    // New model at 10 %: latest revision 10 %, previously rolled-out revision 90 %.
    apply(&a, &model("s3://m/v2", Some(10))).await;
    let o = wait_ready(&sim, NS, "can").await;
    assert_eq!(traffic(&o), vec![(r(2), 10, true), (r(1), 90, false)]);
    let p = &o["status"]["components"]["predictor"];
    assert_eq!(
        (
            p["latestReadyRevision"].as_str(),
            p["latestRolledoutRevision"].as_str()
        ),
        (Some(r(2).as_str()), Some(r(1).as_str()))
    );
    assert_eq!(
        o["status"]["components"]["predictor"]["traffic"][1]["tag"],
        "prev"
    );

    // Rollback to 0 %: the previous revision takes everything; no new revision.
    apply(&a, &model("s3://m/v2", Some(0))).await;
    let o = wait_ready(&sim, NS, "can").await;
    assert_eq!(traffic(&o), vec![(r(2), 0, true), (r(1), 100, false)]);
    assert_eq!(
        o["status"]["components"]["predictor"]["latestCreatedRevision"],
        r(2)
    );

    // Promote (canary field removed): 100 % latest, rolled-out revisions move on.
    apply(&a, &model("s3://m/v2", None)).await;
    let o = wait_ready(&sim, NS, "can").await;
    assert_eq!(traffic(&o), vec![(r(2), 100, true)]);
    let p = &o["status"]["components"]["predictor"];
    assert_eq!(p["latestRolledoutRevision"], r(2));
    assert_eq!(p["previousRolledoutRevision"], r(1));

    // Next model at 10 %, then rolled back to 0 %: all traffic to the previous rolled-out one.
    apply(&a, &model("s3://m/v3", Some(10))).await;
    let o = wait_ready(&sim, NS, "can").await;
    assert_eq!(traffic(&o), vec![(r(3), 10, true), (r(2), 90, false)]);
    apply(&a, &model("s3://m/v3", Some(0))).await;
    let o = wait_ready(&sim, NS, "can").await;
    assert_eq!(traffic(&o), vec![(r(3), 0, true), (r(2), 100, false)]);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_mode_has_no_revisions_and_a_non_terminal_false_while_rolling_out() {
    let mut cfg = fast_config();
    cfg.ready_delay = Duration::from_millis(500);
    let sim = start(cfg).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let mut m = manifest("raw", json!({}), "s3://m/v1");
    m["metadata"]["annotations"] = json!({"serving.kserve.io/deploymentMode": "Standard"});
    apply(&a, &m).await;
    let progress = sim
        .wait_for(NS, "raw", Duration::from_secs(10), |o| {
            o.is_some_and(|o| o["status"]["observedGeneration"] == 1)
        })
        .await
        .flatten()
        .unwrap_or_else(|| panic!("no status"));
    assert_eq!(condition(&progress, "Ready"), Some("False"));
    assert_eq!(
        cond_reason(&progress, "Ready"),
        Some("MinimumReplicasUnavailable")
    );
    let ready = wait_ready(&sim, NS, "raw").await;
    assert_eq!(ready["status"]["deploymentMode"], "Standard");
    assert!(
        ready["status"]["components"]["predictor"]
            .get("traffic")
            .is_none()
    );
    assert!(ready["status"]["url"].is_string());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_objects_report_reason_and_message_until_fixed() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let failed = |o: Option<&Value>| {
        o.is_some_and(|o| {
            o["status"]["observedGeneration"] == 1 && condition(o, "Ready") == Some("False")
        })
    };

    // Through the handle, set before the object exists.
    sim.fail_object(NS, "f1", "RevisionFailed", "Container failed to pull image");
    apply(&a, &manifest("f1", json!({}), "s3://m/v1")).await;
    let o = sim
        .wait_for(NS, "f1", Duration::from_secs(10), failed)
        .await
        .flatten()
        .unwrap_or_else(|| panic!("f1 did not fail"));
    assert_eq!(cond_reason(&o, "Ready"), Some("RevisionFailed"));
    let ready = o["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["message"], "Container failed to pull image");
    assert_eq!(
        o["status"]["modelStatus"]["transitionStatus"],
        "BlockedByFailedLoad"
    );
    assert_eq!(
        o["status"]["modelStatus"]["lastFailureInfo"]["message"],
        "Container failed to pull image"
    );
    // Terminal: still failed a while later.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(failed(sim.get(NS, "f1").as_ref()));

    // Through an annotation (what a kubectl user would do).
    let mut m = manifest("f2", json!({}), "s3://m/v1");
    m["metadata"]["annotations"] =
        json!({"kserve-sim/fail": "ModelLoadFailed: model file is corrupt"});
    apply(&a, &m).await;
    let o = sim
        .wait_for(NS, "f2", Duration::from_secs(10), failed)
        .await
        .flatten()
        .unwrap_or_else(|| panic!("f2 did not fail"));
    assert_eq!(cond_reason(&o, "PredictorReady"), Some("ModelLoadFailed"));

    // Fixed: behaviour cleared, annotation dropped → Ready.
    sim.clear_behaviour(NS, "f1");
    wait_ready(&sim, NS, "f1").await;
    m["metadata"]["annotations"] = json!({});
    apply(&a, &m).await;
    wait_ready(&sim, NS, "f2").await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ready_objects_stay_in_progress_and_delays_are_per_object() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    sim.never_ready(NS, "n1");
    apply(&a, &manifest("n1", json!({}), "s3://m/v1")).await;
    let mut m = manifest("n2", json!({}), "s3://m/v1");
    m["metadata"]["annotations"] = json!({"kserve-sim/never-ready": "true"});
    apply(&a, &m).await;
    let mut slow = manifest("slow", json!({}), "s3://m/v1");
    slow["metadata"]["annotations"] = json!({"kserve-sim/ready-delay-ms": "1500"});
    let started = Instant::now();
    apply(&a, &slow).await;
    apply(&a, &manifest("quick", json!({}), "s3://m/v1")).await;
    wait_ready(&sim, NS, "quick").await;
    let quick_at = started.elapsed();
    wait_ready(&sim, NS, "slow").await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "per-object delay ignored"
    );
    assert!(
        quick_at < Duration::from_millis(1500),
        "global delay too long: {quick_at:?}"
    );
    for n in ["n1", "n2"] {
        let o = sim.get(NS, n).unwrap_or_default();
        assert_eq!(o["status"]["observedGeneration"], 1, "{n}");
        assert_eq!(condition(&o, "Ready"), Some("Unknown"), "{n}");
    }
    // Released: becomes ready.
    sim.clear_behaviour(NS, "n1");
    wait_ready(&sim, NS, "n1").await;
    sim.stop().await;
}
