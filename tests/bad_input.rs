//! Every bad input: a clear reason, the message terminated (never redelivered forever) and
//! recorded, the worker still running, nothing lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Env, wait_for};
use deploy_worker::events::EventKind;
use deploy_worker::metrics::Metrics;
use deploy_worker::outcome::Outcome;
use deploy_worker::store::{
    Applied, HistoryEntry, StatusWrite, Store, StoreError, StoreSettings, UrlChange, Write,
};
use deploy_worker::worker::Worker;
use devkit::platform::{self, NewEndpoint};
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
    // each consumer records its own refusals, so the rows are matched by what they hold,
    // not by the order they were recorded in
    let rejected = env.rejected().await;
    for (payload, needle) in &cases {
        let row = rejected
            .iter()
            .find(|row| row.payload_bytes.as_deref() == Some(*payload))
            .unwrap_or_else(|| panic!("no record of {:?}", String::from_utf8_lossy(payload)));
        assert_eq!(row.subject, "mlops.serving.deploy_requested");
        assert!(
            row.reason.contains(needle),
            "{:?} should mention {needle}",
            row.reason
        );
        assert_eq!(row.payload.as_bytes(), *payload);
        assert_eq!(row.payload_bytes.as_deref(), Some(*payload));
        assert_eq!(row.endpoint_id, None);
    }
    let big = rejected
        .iter()
        .find(|row| row.subject == "mlops.serving.delete_requested")
        .expect("the oversized delete is recorded");
    assert!(
        big.reason.contains("more than the 65536-byte limit"),
        "{}",
        big.reason
    );
    assert_eq!(
        big.payload.len(),
        deploy_worker::store::REJECTED_TEXT_MAX,
        "the text rendering is cut"
    );
    assert_eq!(
        big.payload_bytes.as_deref(),
        Some(&oversized[..deploy_worker::store::REJECTED_PAYLOAD_MAX]),
        "the first 64 KiB are kept exactly"
    );
    assert_eq!(big.payload_size, Some(70 * 1024));
    assert_eq!(
        big.payload_sha256.as_deref(),
        Some(sha256_hex(&oversized).as_str())
    );

    worker_still_deploys(&env).await;
    worker.shutdown().await.unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Payloads Postgres text and jsonb cannot hold as they are (NUL bytes, invalid UTF-8, a NUL
/// in the uuid parser's error text), deeply nested and near NATS' size limit: each recorded
/// byte for byte with its size and digest, terminated, and none of them delays the outcomes of
/// valid events published in between.
#[actix_rt::test]
async fn poison_payloads_are_recorded_exactly_and_never_hold_up_other_outcomes() {
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 24).await;
    let mut nested = Vec::new();
    for _ in 0..5_000 {
        nested.extend_from_slice(br#"{"a":"#);
    }
    let mut huge = br#"{"endpoint_id":""#.to_vec();
    huge.resize(900 * 1024, b'z');
    let poison: Vec<Vec<u8>> = vec![
        b"{\"endpoint_id\":\"6d0c5e8e-5f0e-4f4e-9d2b-3f1f0c1a2b3c\",\"name\":\"a\0b\",\"tenant_id\":7}"
            .to_vec(),
        b"{\"endpoint_id\":\"\0\0\0\"}".to_vec(),
        // a JSON-escaped NUL reaches the uuid parser, whose error text then quotes it
        br#"{"endpoint_id":"\u0000abc"}"#.to_vec(),
        b"{\"endpoint_id\":\"\xff\xfe\"}".to_vec(),
        b"\0\0\0\0".to_vec(),
        nested,
        huge,
    ];
    for (i, payload) in poison.iter().enumerate() {
        env.publish_raw(EventKind::Deploy, payload).await;
        // valid events in between, so poison and outcomes share group commits
        for id in &ids[i * 3..i * 3 + 3] {
            env.publish(EventKind::Deploy, &tenant, *id).await;
        }
    }
    for id in &ids[poison.len() * 3..] {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    env.wait_all_ready("every valid endpoint READY", &ids, LONG)
        .await;
    wait_for("every poison payload recorded", LONG, || async {
        env.rejected().await.len() == poison.len()
    })
    .await;
    env.wait_all_answered(LONG).await;
    let rejected = env.rejected().await;
    for payload in &poison {
        let kept = &payload[..payload
            .len()
            .min(deploy_worker::store::REJECTED_PAYLOAD_MAX)];
        let row = rejected
            .iter()
            .find(|r| r.payload_sha256.as_deref() == Some(sha256_hex(payload).as_str()))
            .unwrap_or_else(|| panic!("no record for a {}-byte payload", payload.len()));
        assert_eq!(row.payload_bytes.as_deref(), Some(kept));
        assert_eq!(row.payload_size, Some(payload.len() as i32));
        assert!(!row.payload.contains('\0'), "text rendering holds no NUL");
        assert!(
            row.reason.contains("not a valid serving event") || row.reason.contains("limit"),
            "{}",
            row.reason
        );
    }
    assert!(
        rejected.iter().any(|r| r.reason.contains('\u{fffd}')),
        "the NUL the uuid parser quoted reached the reason, stored as U+FFFD"
    );
    worker_still_deploys(&env).await;
    worker.shutdown().await.unwrap();
}

/// A delete removes what is running, so it must name the endpoint's own tenant and project:
/// one that names only the endpoint (or only the tenant) is refused, the endpoint keeps serving.
#[actix_rt::test]
async fn a_delete_without_the_endpoints_tenant_and_project_is_refused() {
    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.unwrap();
    let tenant = env.tenant().await;
    let id = env.endpoints(&tenant, 1).await[0];
    env.publish(EventKind::Deploy, &tenant, id).await;
    wait_for("READY", LONG, || async {
        env.endpoint(id).await.status == "READY"
    })
    .await;
    let only_id = json!({ "endpoint_id": id });
    let no_project = json!({ "endpoint_id": id, "tenant_id": tenant.tenant_id });
    for payload in [only_id, no_project] {
        env.publish_raw(EventKind::Delete, payload.to_string().as_bytes())
            .await;
    }
    wait_for("both deletes refused", LONG, || async {
        env.rejected().await.len() == 2
    })
    .await;
    env.wait_all_answered(LONG).await;
    for row in env.rejected().await {
        assert_eq!(row.endpoint_id, Some(id));
        assert!(
            row.reason
                .contains("a delete must name the endpoint's tenant_id and project_id"),
            "{}",
            row.reason
        );
    }
    let row = env.endpoint(id).await;
    assert_eq!(row.status, "READY", "the endpoint keeps serving");
    assert!(row.url.is_some());
    // its own, complete delete still works
    env.publish(EventKind::Delete, &tenant, id).await;
    wait_for("DELETED", LONG, || async {
        env.endpoint(id).await.status == "DELETED"
    })
    .await;
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

/// A history row for `id` with `reason`, for the store-level tests.
fn history_entry(tenant: &common::Tenant, id: Uuid, reason: Option<&str>) -> HistoryEntry {
    let now = chrono::Utc::now();
    HistoryEntry {
        endpoint_id: id,
        tenant_id: tenant.tenant_id,
        project_id: tenant.project_id,
        generation: 1,
        action: "deploy",
        outcome: Outcome::Ready,
        reason: reason.map(str::to_owned),
        isvc_name: "isvc-test".into(),
        url: Some("http://isvc-test.example.local".into()),
        events: 1,
        trace_id: None,
        event_published_at: None,
        started_at: now,
        finished_at: now,
    }
}

fn ready_write(tenant: &common::Tenant, id: Uuid, reason: Option<&str>) -> Write {
    Write::Status(StatusWrite {
        endpoint_id: id,
        status: "READY",
        url: UrlChange::Set("http://isvc-test.example.local".into()),
        reason: None,
        only_at_generation: None,
        ready_generation: Some(1),
        history: Some(history_entry(tenant, id, reason)),
    })
}

/// `deploy_worker_database_errors_total{operation="commit"}` of `metrics`.
fn commit_errors(metrics: &Metrics) -> u64 {
    let text = metrics.encode().expect("metrics encode");
    text.lines()
        .find(|l| l.starts_with("deploy_worker_database_errors_total{operation=\"commit\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One write whose data Postgres refuses (a constraint violation, SQLSTATE class 23) shares a
/// group commit with 49 others: it fails alone, the 49 commit. The current-thread runtime
/// queues all 50 before the committer runs, so they are one batch.
#[tokio::test(flavor = "current_thread")]
async fn a_write_the_database_refuses_fails_alone_and_its_batch_commits() {
    let env = Env::start().await;
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 50).await;
    env.sql(
        "ALTER TABLE deployment_history ADD CONSTRAINT refuse_marker \
         CHECK (reason IS DISTINCT FROM 'refuse-me')",
    )
    .await;
    let metrics = Arc::new(Metrics::new());
    let settings = StoreSettings {
        max_connections: 4,
        batch_max: 1024,
    };
    let store = Store::connect_with_metrics(&env.pg.url(), settings, metrics.clone())
        .await
        .unwrap();
    let bad = 25;
    let writes = ids.iter().enumerate().map(|(i, id)| {
        let reason = (i == bad).then_some("refuse-me");
        store.write(ready_write(&tenant, *id, reason))
    });
    let results = futures::future::join_all(writes).await;
    for (i, result) in results.iter().enumerate() {
        if i == bad {
            assert!(
                matches!(result, Err(StoreError::Refused(_))),
                "the bad write is refused as data: {result:?}"
            );
        } else {
            assert!(matches!(result, Ok(Applied::Yes)), "write {i}: {result:?}");
        }
    }
    assert_eq!(env.count_status(&ids, "READY").await, ids.len() - 1);
    assert_eq!(env.endpoint(ids[bad]).await.status, "CREATING");
    assert!(
        env.history(ids[bad]).await.is_empty(),
        "its history rolled back with it"
    );
    assert_eq!(env.history(ids[0]).await.len(), 1);
}

/// A database outage fails a whole batch the same way: one failed commit for 100 queued
/// writes, not one attempt per write.
#[tokio::test(flavor = "current_thread")]
async fn an_outage_fails_the_batch_once_not_write_by_write() {
    let mut env = Env::start().await;
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 100).await;
    let metrics = Arc::new(Metrics::new());
    let settings = StoreSettings {
        max_connections: 2,
        batch_max: 1024,
    };
    let store = Store::connect_with_metrics(&env.pg.url(), settings, metrics.clone())
        .await
        .unwrap();
    env.pg.stop().unwrap();
    let writes = ids
        .iter()
        .map(|id| store.write(ready_write(&tenant, *id, None)));
    let results = futures::future::join_all(writes).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(StoreError::Unavailable(_)))),
        "every write fails as unavailable: {:?}",
        results.first()
    );
    assert_eq!(
        commit_errors(&metrics),
        1,
        "one failed commit for the batch"
    );
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
