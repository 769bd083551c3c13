//! The Grafana dashboard and the alert rules query metrics that exist: a real worker deploys
//! real events, its `/metrics` is scraped, and every metric name in every panel's and every
//! rule's PromQL must be exposed. Also: the periodic reads behind the consumer-lag and
//! stuck-deploy gauges, against real JetStream and Postgres.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::openmetrics::{Family, parse_openmetrics};
use common::{Env, http_get, wait_for};
use deploy_worker::events::{self, EventKind};
use deploy_worker::poller;
use deploy_worker::store::PAUSED_REASON;
use deploy_worker::worker::Worker;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Keywords followed by a parenthesized list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other PromQL words that are never metric names: operators, modifiers, literals and
/// aggregations (which may be followed by `by (…)` rather than `(`).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Skips from an opening `open` at `chars[i]` to just after its matching `close`, stepping over
/// quoted strings.
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == open => {
                depth += 1;
                i += 1;
            }
            c if c == close => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    panic!(
        "unbalanced {open}{close} in {}",
        chars.iter().collect::<String>()
    )
}

fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' if quote != '`' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    panic!(
        "unterminated string in {}",
        chars.iter().collect::<String>()
    )
}

/// The metric names a PromQL expression selects: identifiers that are not functions or
/// aggregations (followed by `(`), keywords, label names (in `{…}` matchers and `by (…)`
/// lists), strings, numbers or durations (`[5m]`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '#' {
            // a comment runs to the end of the line
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) && called {
                i = skip_group(&chars, next, '(', ')');
            } else if !called
                && !KEYWORDS.contains(&word.to_lowercase().as_str())
                && !LABEL_LISTS.contains(&word.as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, outcome) (rate(a_seconds_bucket{job="x",code=~"5..|4{2}"}[5m] offset 1h)))"#
        ),
        vec!["a_seconds_bucket"]
    );
    assert_eq!(
        names("sum(rate(x_sum[5m])) / sum(rate(x_count[5m])) > 0.25\n and on() y == bool 0"),
        vec!["x_count", "x_sum", "y"]
    );
    assert_eq!(
        names(
            "max by (consumer) (delta(p[10m])) > 0 and max without (instance) (changes(q [1h:5m])) == 0"
        ),
        vec!["p", "q"]
    );
    assert_eq!(names("vector(1) * 1e3 + Inf"), Vec::<String>::new());
    assert_eq!(names(r#"up{job='a}b'} or absent(z)"#), vec!["up", "z"]);
}

/// `(title or alert name, expression)` of every dashboard panel target.
fn dashboard_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo("deploy/grafana/deploy-worker.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title").to_owned();
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id at {title}"
        );
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} queries nothing");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr").to_owned();
            queries.push((title.clone(), expr));
        }
    }
    queries
}

/// `(alert, expression)` of every rule in the Prometheus rules file.
fn rule_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo("deploy/prometheus/deploy-worker-rules.yml")).expect("rules");
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("rules are YAML");
    let mut queries = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            queries.push((name, rule["expr"].as_str().expect("expr").to_owned()));
        }
    }
    queries
}

/// Sample names a family exposes, by its type.
fn exposed(families: &std::collections::BTreeMap<String, Family>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, family) in families {
        let suffixes: &[&str] = match family.kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
        names.extend(family.samples.iter().map(|s| s.name.clone()));
    }
    names
}

#[actix_rt::test]
async fn every_metric_the_dashboard_and_the_alerts_query_is_exposed_by_a_running_worker() {
    let env = Env::start().await;
    let mut settings = env.settings();
    settings.metrics_poll_seconds = 1;
    settings.simulate_delay_ms = 300;
    let worker = Worker::start(&settings).await.expect("worker");
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 3).await;
    for id in &ids {
        env.publish(EventKind::Deploy, &tenant, *id).await;
    }
    env.publish_raw(EventKind::Deploy, b"{not json").await;
    env.publish(EventKind::Delete, &tenant, ids[0]).await;
    wait_for("the deploys and the delete", LONG, || async {
        env.count_status(&ids[1..], "READY").await == 2
            && env.endpoint(ids[0]).await.status == "DELETED"
    })
    .await;
    env.wait_all_answered(LONG).await;

    // Scrape until the periodic reads have reported both consumers after the deliveries.
    let deadline = std::time::Instant::now() + LONG;
    let both = BTreeSet::from([
        events::DEPLOY_CONSUMER.to_owned(),
        events::DELETE_CONSUMER.to_owned(),
    ]);
    let families = loop {
        let response = http_get(worker.http_addr(), "/metrics")
            .await
            .expect("scrape");
        assert_eq!(response.status, 200);
        let parsed = parse_openmetrics(&response.body);
        let consumers: BTreeSet<String> = parsed["deploy_worker_consumer_pending_messages"]
            .samples
            .iter()
            .filter_map(|s| s.labels.get("consumer").cloned())
            .collect();
        let delivered = common::openmetrics::value(
            &parsed,
            "deploy_worker_consumer_delivered_sequence",
            &[("consumer", events::DEPLOY_CONSUMER)],
        );
        // a read made after everything was answered (the gauges hold the last periodic
        // read, which may have been taken while the deploys ran)
        let settled = [events::DEPLOY_CONSUMER, events::DELETE_CONSUMER]
            .iter()
            .all(|consumer| {
                let labels = [("consumer", *consumer)];
                [
                    "deploy_worker_consumer_pending_messages",
                    "deploy_worker_consumer_ack_pending_messages",
                ]
                .iter()
                .all(|gauge| common::openmetrics::value(&parsed, gauge, &labels) == Some(0.0))
            })
            && common::openmetrics::value(
                &parsed,
                "deploy_worker_oldest_deploying_age_seconds",
                &[],
            ) == Some(0.0);
        if consumers == both && delivered.unwrap_or(0.0) >= 4.0 && settled {
            break parsed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the consumers' lag never appeared, or never settled at nothing pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let exposed = exposed(&families);

    let dashboard = dashboard_queries();
    let rules = rule_queries();
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (owner, expr) in dashboard.iter().chain(&rules) {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{owner}: no metric in {expr}");
        for name in names {
            if !exposed.contains(&name) {
                missing.push(format!("{owner}: {name}"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "queried but not exposed: {missing:#?}\nexposed: {exposed:#?}"
    );

    // The panels the operators asked for are there.
    let dashboard_metrics: BTreeSet<String> = dashboard
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .collect();
    for wanted in [
        "deploy_worker_events_total",
        "deploy_worker_event_to_ready_seconds_bucket",
        "deploy_worker_deploys_in_flight",
        "deploy_worker_endpoints_waiting",
        "deploy_worker_consumer_pending_messages",
        "deploy_worker_consumer_ack_pending_messages",
        "deploy_worker_retries_total",
        "deploy_worker_kube_api_errors_total",
        "deploy_worker_kube_api_forbidden_total",
        "deploy_worker_database_errors_total",
        "deploy_worker_group_commit_batch_size_sum",
        "deploy_worker_oldest_deploying_age_seconds",
        "deploy_worker_follow_total",
    ] {
        assert!(
            dashboard_metrics.contains(wanted),
            "no panel shows {wanted}"
        );
    }
    let alerts: BTreeSet<&str> = rules.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(alerts.len(), 8, "{alerts:?}");

    // And the values say what happened: everything consumed and nothing stuck (the scrape
    // loop waited for that), and no refusal by the cluster.
    let value = |sample: &str, labels: &[(&str, &str)]| {
        common::openmetrics::value(&families, sample, labels)
    };
    assert_eq!(
        value("deploy_worker_kube_api_forbidden_total", &[]),
        Some(0.0)
    );
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn lag_and_stuck_deploys_are_read_from_jetstream_and_postgres() {
    let env = Env::start().await;
    let bound = events::bind(&env.js, env.settings().consumer_settings())
        .await
        .expect("bind");
    let consumers = [bound.deploy, bound.delete];
    let tenant = env.tenant().await;
    let ids = env.endpoints(&tenant, 2).await;
    // No worker runs: what is published waits on the consumers.
    for _ in 0..4 {
        env.publish(EventKind::Deploy, &tenant, ids[0]).await;
    }
    env.publish(EventKind::Delete, &tenant, ids[1]).await;
    let states = poller::read_consumers(&consumers)
        .await
        .expect("consumer info");
    let pending: Vec<(String, u64, u64)> = states
        .iter()
        .map(|s| (s.name.clone(), s.pending, s.ack_pending))
        .collect();
    assert_eq!(
        pending,
        vec![
            (events::DEPLOY_CONSUMER.to_owned(), 4, 0),
            (events::DELETE_CONSUMER.to_owned(), 1, 0)
        ]
    );
    assert!(
        states.iter().all(|s| s.delivered_sequence == 0),
        "{states:?}"
    );

    let deploying = poller::read_deploying(&env.db).await.expect("read");
    assert_eq!((deploying.oldest_age_seconds, deploying.paused), (0.0, 0));
    // An endpoint left DEPLOYING five minutes ago (the trigger would stamp now: bypass it).
    let backdate = |reason: &str| {
        format!(
            "SET session_replication_role = replica; \
             UPDATE endpoints SET status = 'DEPLOYING', status_reason = {reason}, \
             updated_at = now() - interval '300 seconds' WHERE id = '{}'; \
             SET session_replication_role = DEFAULT",
            ids[0]
        )
    };
    env.sql(&backdate("NULL")).await;
    let deploying = poller::read_deploying(&env.db).await.expect("read");
    assert!(
        (300.0..360.0).contains(&deploying.oldest_age_seconds),
        "{deploying:?}"
    );
    assert_eq!(deploying.paused, 0);
    assert!(
        poller::read_released(&env.db, Duration::from_secs(60))
            .await
            .expect("read")
            .is_empty(),
        "an endpoint DEPLOYING for another reason is not a released hold"
    );

    // Held by a pause: not stuck, counted apart, not released while the pause lasts.
    env.sql(&backdate(&format!("'{PAUSED_REASON}'"))).await;
    env.sql(&format!(
        "INSERT INTO tenant_pauses (tenant_id, reason) VALUES ('{}', 'test')",
        tenant.tenant_id
    ))
    .await;
    let deploying = poller::read_deploying(&env.db).await.expect("read");
    assert_eq!((deploying.oldest_age_seconds, deploying.paused), (0.0, 1));
    assert!(
        poller::read_released(&env.db, Duration::from_secs(60))
            .await
            .expect("read")
            .is_empty()
    );

    // The pause lifted: released once held longer than the given time.
    env.sql(&format!(
        "DELETE FROM tenant_pauses WHERE tenant_id = '{}'",
        tenant.tenant_id
    ))
    .await;
    assert_eq!(
        poller::read_released(&env.db, Duration::from_secs(60))
            .await
            .expect("read"),
        vec![ids[0]]
    );
    assert!(
        poller::read_released(&env.db, Duration::from_secs(600))
            .await
            .expect("read")
            .is_empty()
    );
}
