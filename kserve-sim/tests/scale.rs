//! The stand-in at 10,000 objects: a label-selected list returns exactly the selected objects
//! (whole and paginated), and a watch from that list's resourceVersion delivers the later
//! changes of the selection and nothing else. Speed is measured by the load harness, not here.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const OBJECTS: usize = 10_000;
const GROUPS: usize = 100;

fn name(i: usize) -> String {
    format!("isvc-{i:05}")
}

fn group(i: usize) -> String {
    format!("g{}", i % GROUPS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selected_list_and_watch_at_ten_thousand_objects() {
    let sim = start(fast_config()).await;
    for i in 0..OBJECTS {
        sim.create(
            NS,
            manifest(
                &name(i),
                json!({"group": group(i), "app.kubernetes.io/managed-by": "deploy-worker"}),
                "s3://m/1",
            ),
        )
        .unwrap_or_else(|e| panic!("create {}: {e}", name(i)));
    }
    // Objects of another namespace share the labels and must not leak into the selection.
    for i in 0..GROUPS {
        sim.create(
            "other",
            manifest(&name(i), json!({"group": group(i)}), "s3://m/1"),
        )
        .unwrap_or_else(|e| panic!("create other/{}: {e}", name(i)));
    }
    let c = client(&sim).await;
    let a = api(&c, NS);
    let expected: BTreeSet<String> = (0..OBJECTS).filter(|i| i % GROUPS == 7).map(name).collect();

    let list = a
        .list(&ListParams::default().labels("group=g7"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got: BTreeSet<String> = list
        .items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    assert_eq!(got, expected);
    assert_eq!(list.items.len(), expected.len(), "no object listed twice");

    // The same selection in pages of 30.
    let mut paged = Vec::new();
    let mut lp = ListParams::default().labels("group=g7").limit(30);
    loop {
        let page = a.list(&lp).await.unwrap_or_else(|e| panic!("{e}"));
        paged.extend(page.items.iter().filter_map(|o| o.metadata.name.clone()));
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(paged.len(), expected.len());
    assert_eq!(paged.into_iter().collect::<BTreeSet<_>>(), expected);

    // A set-based selector across two groups.
    let two = a
        .list(&ListParams::default().labels("group in (g3,g4)"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(two.items.len(), 2 * OBJECTS / GROUPS);

    // A watch from the list's resourceVersion: a change outside the selection is not sent, a
    // change inside is, and an object leaving the selection is a DELETED.
    let rv = list.metadata.resource_version.clone().unwrap_or_default();
    let mut events = a
        .watch(&WatchParams::default().labels("group=g7"), &rv)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .boxed();
    let pp = PatchParams::default();
    let touch = json!({"metadata": {"labels": {"touched": "yes"}}});
    a.patch(&name(8), &pp, &Patch::Merge(&touch))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    a.patch(&name(7), &pp, &Patch::Merge(&touch))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    a.patch(
        &name(107),
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"group": "moved"}}})),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let (mut touched, mut left) = (false, false);
    while !(touched && left) {
        let event = tokio::time::timeout(Duration::from_secs(60), events.try_next())
            .await
            .unwrap_or_else(|_| panic!("the watch did not deliver the changes"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the watch ended"));
        match event {
            WatchEvent::Modified(o) | WatchEvent::Added(o) => {
                let n = o.metadata.name.clone().unwrap_or_default();
                assert!(expected.contains(&n), "{n} is outside the selection");
                let labels = o.metadata.labels.unwrap_or_default();
                assert_eq!(labels.get("group").map(String::as_str), Some("g7"));
                touched |= n == name(7) && labels.contains_key("touched");
            }
            WatchEvent::Deleted(o) => {
                let n = o.metadata.name.unwrap_or_default();
                assert_eq!(n, name(107), "only the object that left the selection");
                left = true;
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
    }
    sim.stop().await;
}
