//! Tenants share the worker fairly: a tenant's burst cannot hold back another tenant, and the
//! global and per-tenant caps on deploys in flight hold.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Env, wait_for};
use deploy_worker::events::EventKind;
use deploy_worker::worker::Worker;

#[actix_rt::test]
async fn a_small_tenant_is_served_while_a_big_tenant_has_a_backlog() {
    let env = Env::start().await;
    let mut settings = env.settings();
    settings.simulate_delay_ms = 150;
    settings.max_in_flight = 6;
    settings.max_in_flight_per_tenant = 4;
    let (big, small) = (env.tenant().await, env.tenant().await);
    let big_ids = env.endpoints(&big, 60).await;
    let small_ids = env.endpoints(&small, 6).await;
    // The big tenant's burst is in the stream before the worker starts, so its whole backlog
    // is recorded at once rather than while this test publishes.
    for id in &big_ids {
        env.publish(EventKind::Deploy, &big, *id).await;
    }
    let worker = Arc::new(Worker::start(&settings).await.unwrap());

    // Sample the scheduler throughout the run.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (worker, samples) = (worker.clone(), samples.clone());
        actix_rt::spawn(async move {
            loop {
                samples.lock().unwrap().push(worker.scheduler().snapshot());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Accept fast: the big tenant's events are acked once recorded, so they wait in the
    // worker's scheduler (in Postgres), not in JetStream's ack-pending window.
    let big_waiting = |worker: &Worker| {
        let snapshot = worker.scheduler().snapshot();
        snapshot
            .waiting_per_tenant
            .get(&big.tenant_id)
            .copied()
            .unwrap_or(0)
    };
    wait_for(
        "the big tenant's events acked while most of its deploys wait",
        Duration::from_secs(30),
        || async { env.ack_pending().await == 0 && big_waiting(&worker) >= 30 },
    )
    .await;
    for id in &small_ids {
        env.publish(EventKind::Deploy, &small, *id).await;
    }
    let all: Vec<_> = big_ids.iter().chain(&small_ids).copied().collect();
    env.wait_all_ready("everything READY", &all, Duration::from_secs(120))
        .await;
    sampler.abort();

    let small_done = futures::future::join_all(small_ids.iter().map(|id| env.history(*id)))
        .await
        .into_iter()
        .map(|h| h[0].finished_at)
        .max()
        .unwrap();
    let mut big_done: Vec<_> = futures::future::join_all(big_ids.iter().map(|id| env.history(*id)))
        .await
        .into_iter()
        .map(|h| h[0].finished_at)
        .collect();
    big_done.sort();
    let big_after_small = big_done.iter().filter(|t| **t > small_done).count();
    // First come, first served would have made the small tenant wait for all of it.
    assert!(
        big_after_small >= 10,
        "the small tenant finished while the big one still had a backlog \
         ({big_after_small} of {} big deploys finished after the small tenant's last)",
        big_ids.len()
    );

    let samples = std::mem::take(&mut *samples.lock().unwrap());
    assert!(!samples.is_empty());
    // the last moment the small tenant had anything queued or running
    let small_busy = |s: &deploy_worker::scheduler::Snapshot| {
        s.per_tenant.contains_key(&small.tenant_id)
            || s.waiting_per_tenant.contains_key(&small.tenant_id)
    };
    let last_small = samples
        .iter()
        .rev()
        .find(|s| small_busy(s))
        .expect("the small tenant was seen in the scheduler");
    assert!(
        last_small
            .waiting_per_tenant
            .get(&big.tenant_id)
            .is_some_and(|n| *n > 0),
        "the big tenant still had endpoints queued when the small tenant's last pass ran: \
         {last_small:?}"
    );
    for s in samples.iter() {
        assert!(s.in_flight <= 6, "global cap exceeded: {s:?}");
        assert!(
            s.per_tenant.values().all(|n| *n <= 4),
            "tenant cap exceeded: {s:?}"
        );
    }
    assert!(
        samples.iter().any(
            |s| s.per_tenant.get(&small.tenant_id).copied().unwrap_or(0) > 0
                && s.per_tenant.get(&big.tenant_id).copied().unwrap_or(0) > 0
        ),
        "both tenants ran at the same time"
    );
    Arc::try_unwrap(worker)
        .ok()
        .unwrap()
        .shutdown()
        .await
        .unwrap();
}
