//! Watches over real HTTP: replay from a resourceVersion, initial state, bookmarks, selector
//! transitions, 410 Gone for an expired resourceVersion (and kube-runtime's watcher relisting
//! after it), server-side timeouts, streaming lists, and injected watch cuts that the watcher
//! survives.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use kserve_sim::{Faults, ObjectBehaviour, Verb};
use kube::api::{Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use serde_json::json;
use std::time::{Duration, Instant};

/// Next watch event within a deadline.
async fn next<S, T>(s: &mut S, secs: u64) -> Option<T>
where
    S: futures::Stream<Item = Result<T, kube::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(secs), s.next())
        .await
        .ok()
        .flatten()
        .map(|r| r.unwrap_or_else(|e| panic!("watch error: {e}")))
}

fn quiet_controller(sim: &kserve_sim::SimHandle) {
    // Keep the controller's own writes out of the way of exact event sequences: objects stay
    // in progress after their first status write.
    sim.set_default_behaviour(ObjectBehaviour {
        never_ready: true,
        ..ObjectBehaviour::default()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_from_a_resource_version_then_streams() {
    let sim = start(fast_config()).await;
    quiet_controller(&sim);
    let c = client(&sim).await;
    let a = api(&c, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("w", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Let the controller settle (finalizer + in-progress status), then take a resourceVersion.
    sim.wait_for(NS, "w", Duration::from_secs(10), |o| {
        o.is_some_and(|o| o["status"]["observedGeneration"] == 1)
    })
    .await
    .unwrap_or_else(|| panic!("controller did not write a status"));
    let from = sim.resource_version().to_string();
    for i in 2..=3 {
        a.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"step": i.to_string()}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // Replay: both modifications, in order.
    let mut s = a
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let mut steps = Vec::new();
    while steps.len() < 2 {
        match next(&mut s, 10).await {
            Some(WatchEvent::Modified(o)) => steps.push(
                o.metadata
                    .labels
                    .unwrap_or_default()
                    .get("step")
                    .cloned()
                    .unwrap_or_default(),
            ),
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(steps, vec!["2", "3"]);
    // Live.
    a.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"step": "4"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    match next(&mut s, 10).await {
        Some(WatchEvent::Modified(o)) => {
            assert_eq!(o.metadata.labels.unwrap_or_default()["step"], "4")
        }
        other => panic!("unexpected {other:?}"),
    }
    // resourceVersion "0": the current state as ADDED.
    let mut s0 = a
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    match next(&mut s0, 10).await {
        Some(WatchEvent::Added(o)) => assert_eq!(o.metadata.name.as_deref(), Some("w")),
        other => panic!("unexpected {other:?}"),
    }
    // A non-numeric resourceVersion is a bad request.
    let err = a
        .watch(&WatchParams::default(), "abc")
        .await
        .err()
        .map(api_status);
    assert_eq!(err.map(|s| s.code), Some(400));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_carry_the_latest_resource_version() {
    let mut cfg = fast_config();
    cfg.bookmark_interval = Duration::from_millis(200);
    let sim = start(cfg).await;
    quiet_controller(&sim);
    let c = client(&sim).await;
    let a = api(&c, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("b", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut s = a
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let started = Instant::now();
    loop {
        match next(&mut s, 10).await {
            Some(WatchEvent::Bookmark(b)) => {
                let rv: u64 = b.metadata.resource_version.parse().unwrap_or(0);
                // The bookmark is at least as new as everything this watch has delivered.
                assert!(rv >= 2, "{rv}");
                assert!(rv <= sim.resource_version());
                break;
            }
            Some(_) => {}
            None => panic!("watch ended before a bookmark"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // Without allowWatchBookmarks there are none.
    let mut s = a
        .watch(&WatchParams::default().disable_bookmarks().timeout(1), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    while let Some(ev) = next(&mut s, 10).await {
        assert!(
            !matches!(ev, WatchEvent::Bookmark(_)),
            "bookmark without allowWatchBookmarks"
        );
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_apply_to_watches_including_transitions() {
    let sim = start(fast_config()).await;
    quiet_controller(&sim);
    let c = client(&sim).await;
    let a = api(&c, NS);
    let mut s = a
        .watch(&WatchParams::default().labels("tier=web"), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    a.create(
        &PostParams::default(),
        &dynamic(manifest("other", json!({"tier": "batch"}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    a.create(
        &PostParams::default(),
        &dynamic(manifest("web", json!({"tier": "web"}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let added = loop {
        match next(&mut s, 10).await {
            Some(WatchEvent::Added(o)) => break o,
            Some(WatchEvent::Bookmark(_) | WatchEvent::Modified(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(added.metadata.name.as_deref(), Some("web"));
    // Leaving the selection is a DELETED, coming back an ADDED.
    a.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "batch"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    a.patch(
        "other",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "web"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&mut s, 10).await {
            Some(WatchEvent::Deleted(o)) => {
                seen.push(("DELETED", o.metadata.name.unwrap_or_default()))
            }
            Some(WatchEvent::Added(o)) => seen.push(("ADDED", o.metadata.name.unwrap_or_default())),
            // The controller's writes to "web" while it is selected.
            Some(WatchEvent::Modified(_) | WatchEvent::Bookmark(_)) => {}
            Some(WatchEvent::Error(e)) => panic!("{e:?}"),
            None => panic!("watch ended"),
        }
    }
    assert_eq!(
        seen,
        vec![
            ("DELETED", "web".to_string()),
            ("ADDED", "other".to_string())
        ]
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_resource_version_is_410_and_the_watcher_relists() {
    let mut cfg = fast_config();
    cfg.history_size = 3;
    let sim = start(cfg).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    for i in 0..5 {
        a.create(
            &PostParams::default(),
            &dynamic(manifest(&format!("o{i}"), json!({}), "s3://m/1")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // A plain watch from the very beginning: one ERROR event with the 410 Status.
    let mut s = a
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    match next(&mut s, 10).await {
        Some(WatchEvent::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
            assert!(
                e.message.contains("too old resource version"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        next(&mut s, 10).await.is_none(),
        "the stream ends after the 410"
    );

    // kube-runtime's watcher: its watch is cut after one event while the history overflows; the
    // resumed watch gets 410 and the watcher relists.
    sim.set_faults(Faults {
        cut_watches_after_events: Some(1),
        ..Faults::default()
    });
    let mut w = watcher(a.clone(), watcher::Config::default()).boxed();
    let mut listed = false;
    while !listed {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Ok(watcher::Event::InitDone))) => listed = true,
            Ok(Some(_)) => {}
            other => panic!("watcher did not list: {other:?}"),
        }
    }
    // From now on requests are slow, so the writes below all land before the watcher's
    // resumed watch is handled.
    sim.set_faults(Faults {
        cut_watches_after_events: Some(1),
        latency: Duration::from_millis(600),
        ..Faults::default()
    });
    let writes = (0..6).map(|i| {
        let a = a.clone();
        async move {
            a.patch(
                &format!("o{}", i % 5),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"n": i.to_string()}}})),
            )
            .await
        }
    });
    for r in futures::future::join_all(writes).await {
        r.unwrap_or_else(|e| panic!("{e}"));
    }
    let mut saw_410 = false;
    let mut relisted = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(watcher::Error::WatchError(s)))) if s.code == 410 => saw_410 = true,
            Ok(Some(Ok(watcher::Event::InitApply(_)))) if saw_410 => relisted += 1,
            Ok(Some(Ok(watcher::Event::InitDone))) if saw_410 => break,
            Ok(Some(_)) => {}
            other => panic!("watcher stalled: {other:?}"),
        }
    }
    assert!(saw_410, "the resumed watch did not get 410");
    assert_eq!(relisted, 5, "the relist returns every object");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_end_at_the_server_timeout_and_at_timeout_seconds() {
    let mut cfg = fast_config();
    cfg.watch_timeout = Duration::from_secs(1);
    let sim = start(cfg).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    // The client asks for 290 s (kube's default); the server caps at 1 s.
    let started = Instant::now();
    let mut s = a
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(15), s.try_next())
        .await
        .unwrap_or_else(|_| panic!("watch did not time out"))
        .unwrap_or_else(|e| panic!("watch failed instead of ending cleanly: {e}"))
    {
        let _ = ev;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    sim.stop().await;

    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    let started = Instant::now();
    let mut s = a
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    while tokio::time::timeout(Duration::from_secs(15), s.try_next())
        .await
        .unwrap_or_else(|_| panic!("timeoutSeconds not honoured"))
        .unwrap_or_else(|e| panic!("{e}"))
        .is_some()
    {}
    assert!(started.elapsed() < Duration::from_secs(10));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_ends_initial_events_with_a_bookmark() {
    let sim = start(fast_config()).await;
    let c = client(&sim).await;
    let a = api(&c, NS);
    for n in ["s1", "s2"] {
        a.create(
            &PostParams::default(),
            &dynamic(manifest(n, json!({}), "s3://m/1")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut w = watcher(a.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Ok(watcher::Event::InitApply(o)))) => {
                initial.push(o.metadata.name.unwrap_or_default())
            }
            Ok(Some(Ok(watcher::Event::InitDone))) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("streaming list failed: {other:?}"),
        }
    }
    assert_eq!(initial, vec!["s1", "s2"]);
    let log = sim.request_log();
    assert!(
        log.iter()
            .any(|r| r.verb == Verb::Watch && r.query.contains("sendInitialEvents=true"))
    );
    assert!(
        !log.iter().any(|r| r.verb == Verb::List),
        "a streaming list needs no list call"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_watches_are_resumed_by_the_watcher_without_losing_changes() {
    let sim = start(fast_config()).await;
    quiet_controller(&sim);
    sim.set_faults(Faults {
        cut_watches_after_events: Some(2),
        ..Faults::default()
    });
    let c = client(&sim).await;
    let a = api(&c, NS);
    a.create(
        &PostParams::default(),
        &dynamic(manifest("cut", json!({}), "s3://m/1")),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut w = watcher(a.clone(), watcher::Config::default()).boxed();
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 1..=8 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                a.patch(
                    "cut",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"n": i.to_string()}}})),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            }
        })
    };
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while last != "8" && Instant::now() < deadline {
        if let Ok(Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)))) =
            tokio::time::timeout(Duration::from_secs(10), w.next()).await
        {
            last = o
                .metadata
                .labels
                .unwrap_or_default()
                .get("n")
                .cloned()
                .unwrap_or_default();
        }
    }
    writer.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(last, "8", "the watcher missed the final state");
    let watches = sim
        .request_log()
        .iter()
        .filter(|r| r.verb == Verb::Watch)
        .count();
    assert!(
        watches >= 3,
        "watches were not cut and resumed ({watches} watch requests)"
    );
    sim.stop().await;
}

/// A watch from a resourceVersion the server has not reached (a client that outlived a restore
/// of the server's storage) is refused as a real API server refuses it: 504, "Too large
/// resource version", cause `ResourceVersionTooLarge`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_future_resource_version_is_refused_as_too_large() {
    let sim = start(fast_config()).await;
    // Without retries: the kube client retries a 504 with backoff for minutes, and what is
    // asserted here is the server's first answer.
    let c = client_with(&sim, false).await;
    let a = api(&c, NS);
    let future = (sim.resource_version() + 1_000).to_string();
    let err = match a.watch(&WatchParams::default(), &future).await {
        Err(err) => api_status(err),
        Ok(_) => panic!("a watch from the future was accepted"),
    };
    assert_eq!((err.code, err.reason.as_str()), (504, "Timeout"));
    assert!(
        err.message.contains("Too large resource version"),
        "{}",
        err.message
    );
    let watches = sim
        .request_log()
        .iter()
        .filter(|r| r.verb == Verb::Watch)
        .count();
    assert_eq!(
        watches, 1,
        "the refusal is the answer to the one watch sent"
    );
    sim.stop().await;
}
