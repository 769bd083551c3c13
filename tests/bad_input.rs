//! Every bad input: a clear reason, the message terminated (never redelivered forever) and
//! recorded, the worker still running, nothing lost.

mod common;

use std::time::Duration;

use common::{Env, wait_for};
use deploy_worker::events::EventKind;
use deploy_worker::platform::{self, NewEndpoint};
use deploy_worker::worker::Worker;
use serde_json::json;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// After the refusals, a valid event must still deploy: the worker kept running.
async fn worker_still_deploys(env: &Env) {
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("a valid event to deploy", LONG, || async {
        env.endpoint(id).await.status == "READY"
    })
    .await;
}

#[actix_rt::test]
async fn malformed_payloads_are_terminated_and_recorded() {
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    let cases: [(&[u8], &str); 5] = [
        (b"{not json", "not a valid serving event"),
        (
            br#"{"tenant_id":"6d0c5e8e-5f0e-4f4e-9d2b-3f1f0c1a2b3c"}"#,
            "missing field `endpoint_id`",
        ),
        (br#"{"endpoint_id":"endpoint-7"}"#, "UUID"),
        (br#"{"endpoint_id":null}"#, "invalid type"),
        (
            br#"["6d0c5e8e-5f0e-4f4e-9d2b-3f1f0c1a2b3c"]"#,
            "expected a JSON object",
        ),
    ];
    for (payload, _) in &cases {
        env.publish_raw(EventKind::Deploy, payload).await;
    }
    let oversized = vec![b'x'; 70 * 1024];
    env.publish_raw(EventKind::Delete, &oversized).await;

    wait_for("all refusals recorded", LONG, || async {
        env.rejected().await.len() == cases.len() + 1
    })
    .await;
    env.wait_all_answered(LONG).await;
    let rejected = env.rejected().await;
    for ((payload, needle), row) in cases.iter().zip(&rejected) {
        assert_eq!(row.subject, "mlops.serving.deploy_requested");
        assert!(
            row.reason.contains(needle),
            "{:?} should mention {needle}",
            row.reason
        );
        assert_eq!(row.payload.as_bytes(), *payload);
        assert_eq!(row.endpoint_id, None);
    }
    let big = &rejected[cases.len()];
    assert_eq!(big.subject, "mlops.serving.delete_requested");
    assert!(
        big.reason.contains("more than the 65536-byte limit"),
        "{}",
        big.reason
    );
    assert_eq!(
        big.payload.len(),
        deploy_worker::store::REJECTED_PAYLOAD_MAX,
        "stored payload is cut"
    );

    worker_still_deploys(&env).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn unknown_endpoints_are_refused() {
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    let tenant = env.tenant().await;
    let ghost = Uuid::new_v4();
    env.publish(EventKind::Deploy, &tenant, ghost).await;
    wait_for("refusal recorded", LONG, || async {
        !env.rejected().await.is_empty()
    })
    .await;
    env.wait_all_answered(LONG).await;
    let rejected = env.rejected().await;
    assert_eq!(rejected[0].endpoint_id, Some(ghost));
    assert!(
        rejected[0].reason.contains("does not exist"),
        "{}",
        rejected[0].reason
    );
    worker_still_deploys(&env).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn an_event_whose_tenant_or_project_does_not_match_the_row_deploys_nothing() {
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    let owner = env.tenant().await;
    let intruder = env.tenant().await;
    let id = env.endpoints(&owner, 1).await[0];
    // Another tenant's event for this endpoint; then one with the right tenant, wrong project.
    env.publish(EventKind::Deploy, &intruder, id).await;
    let mut wrong_project = owner;
    wrong_project.project_id = Uuid::new_v4();
    env.publish(EventKind::Delete, &wrong_project, id).await;

    wait_for("both refusals recorded", LONG, || async {
        env.rejected().await.len() == 2
    })
    .await;
    env.wait_all_answered(LONG).await;
    for row in env.rejected().await {
        assert_eq!(row.endpoint_id, Some(id));
        assert!(
            row.reason.contains("does not match") || row.reason.contains("belongs to tenant"),
            "{}",
            row.reason
        );
    }
    let row = env.endpoint(id).await;
    assert_eq!(
        row.status, "CREATING",
        "a refused event leaves the endpoint untouched"
    );
    assert!(env.history(id).await.is_empty());

    env.publish(EventKind::Deploy, &owner, id).await;
    wait_for("the owner's event deploys", LONG, || async {
        env.endpoint(id).await.status == "READY"
    })
    .await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn invalid_intent_ends_in_error_with_a_reason_and_is_terminated() {
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    let tenant = env.tenant().await;
    let no_artifact = env
        .model_version(tenant.tenant_id, tenant.project_id, 2, None)
        .await;
    let ids = platform::create_endpoints(
        &env.db,
        &[NewEndpoint {
            tenant_id: tenant.tenant_id,
            project_id: tenant.project_id,
            name: "no-artifact".into(),
            runtime: "kserve".into(),
            model: Some(no_artifact),
            traffic: None,
            autoscaling: None,
            runtime_config: Some(json!({})),
        }],
    )
    .await
    .unwrap();
    env.publish(EventKind::Deploy, &tenant, ids[0]).await;
    wait_for("ERROR", LONG, || async {
        env.endpoint(ids[0]).await.status == "ERROR"
    })
    .await;
    env.wait_all_answered(LONG).await;
    let row = env.endpoint(ids[0]).await;
    let reason = row.status_reason.unwrap_or_default();
    assert!(
        reason.contains("artifact"),
        "reason names the problem: {reason}"
    );
    let history = env.history(ids[0]).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, "error");
    assert_eq!(history[0].reason.as_deref(), Some(reason.as_str()));
    worker_still_deploys(&env).await;
    worker.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn intents_the_tenant_policy_forbids_end_in_error_naming_the_rule() {
    let env = Env::start().await;
    let mut settings = env.settings();
    // an operator rule for service accounts: each tenant's own accounts only
    settings.kserve.tenant_service_accounts = "tenant-{tenant_id}-*".parse().unwrap();
    let worker = Worker::start(&settings).await.unwrap();
    let tenant = env.tenant().await;
    let other_tenant = Uuid::new_v4();
    let pvc = env
        .model_version(
            tenant.tenant_id,
            tenant.project_id,
            2,
            Some("pvc://other-tenant-claim/models/1"),
        )
        .await;
    let endpoint = |name: &str, model, runtime_config| NewEndpoint {
        tenant_id: tenant.tenant_id,
        project_id: tenant.project_id,
        name: name.into(),
        runtime: "kserve".into(),
        model: Some(model),
        traffic: None,
        autoscaling: None,
        runtime_config: Some(runtime_config),
    };
    let ids = platform::create_endpoints(
        &env.db,
        &[
            endpoint("pvc-volume", pvc, json!({})),
            endpoint(
                "foreign-account",
                tenant.version,
                json!({"serviceAccountName": format!("tenant-{other_tenant}-reader")}),
            ),
            endpoint(
                "own-account",
                tenant.version,
                json!({"serviceAccountName": format!("tenant-{}-reader", tenant.tenant_id)}),
            ),
        ],
    )
    .await
    .unwrap();
    for id in &ids {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    wait_for(
        "the policy's refusals and the allowed deploy",
        LONG,
        || async {
            let [a, b, c] = [ids[0], ids[1], ids[2]];
            env.endpoint(a).await.status == "ERROR"
                && env.endpoint(b).await.status == "ERROR"
                && env.endpoint(c).await.status == "READY"
        },
    )
    .await;
    env.wait_all_answered(LONG).await;
    for (id, rule, setting) in [
        (
            ids[0],
            "artifact_uri: not allowed by the tenant policy: storage URI scheme \"pvc\"",
            "TENANT_STORAGE_URI_SCHEMES",
        ),
        (
            ids[1],
            "runtime_config.serviceAccountName: not allowed by the tenant policy",
            "TENANT_SERVICE_ACCOUNTS",
        ),
    ] {
        let reason = env.endpoint(id).await.status_reason.unwrap_or_default();
        assert!(
            reason.starts_with(rule) && reason.contains(setting),
            "{reason}"
        );
        let history = env.history(id).await;
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].outcome, "error");
        assert_eq!(history[0].reason.as_deref(), Some(reason.as_str()));
    }
    worker_still_deploys(&env).await;
    worker.shutdown().await.unwrap();
}
