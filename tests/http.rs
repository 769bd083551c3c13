//! The HTTP port: `/metrics` scraped and parsed as OpenMetrics after real deploys, `/healthz`,
//! and `/readyz` following Postgres and NATS going away and coming back, and shutdown.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    create_endpoint, http_get, publish_deploy, publisher_context, wait_http, wait_status,
};
use deploy_worker::events::EventKind;
use deploy_worker::http::ReadinessReport;
use deploy_worker::platform;
use deploy_worker::sandbox::{LocalNats, LocalPostgres};
use deploy_worker::worker::Worker;

/// One metric family of an OpenMetrics exposition.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
    unit: Option<String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the OpenMetrics text format strictly enough to trust what the assertions read:
/// every sample belongs to the family declared before it with a suffix its type allows, label
/// sets are well formed, values are numbers, histograms are cumulative with `+Inf` = `_count`,
/// and the exposition ends with `# EOF`.
fn parse_openmetrics(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "must end with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name, value) = (
                parts.next().unwrap_or_default(),
                parts.next().expect("metadata names a family").to_owned(),
                parts.next().expect("metadata has a value").to_owned(),
            );
            // Metadata lines of a family come together, in any order, before its samples.
            if current.as_ref() != Some(&name) {
                assert!(
                    !families.contains_key(&name),
                    "family {name} declared twice"
                );
                families.insert(name.clone(), Family::default());
                current = Some(name.clone());
            }
            let family = families.get_mut(&name).expect("declared");
            match keyword {
                "TYPE" => {
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "stateset",
                            "unknown"
                        ]
                        .contains(&value.as_str()),
                        "bad type in {line}"
                    );
                    assert!(family.kind.is_empty(), "two TYPE lines for {name}");
                    family.kind = value;
                }
                "HELP" => family.help = Some(value),
                "UNIT" => {
                    assert!(
                        name.ends_with(&format!("_{value}")),
                        "unit not in name: {line}"
                    );
                    family.unit = Some(value);
                }
                other => panic!("unknown metadata {other} in {line}"),
            }
            continue;
        }
        let sample = parse_sample(line);
        let family_name = current.clone().expect("sample before any # TYPE");
        let family = families.get_mut(&family_name).expect("declared");
        assert!(
            !family.kind.is_empty(),
            "{family_name} has samples but no TYPE"
        );
        let suffix = sample
            .name
            .strip_prefix(family_name.as_str())
            .unwrap_or_else(|| panic!("{} is not in family {family_name}", sample.name));
        let allowed: &[&str] = match family.kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "gauge" => &[""],
            _ => &["", "_info"],
        };
        assert!(
            allowed.contains(&suffix),
            "{} in a {} family",
            sample.name,
            family.kind
        );
        family.samples.push(sample);
    }
    for (name, family) in &families {
        assert!(family.help.is_some(), "{name} has no HELP");
        if family.kind == "histogram" {
            check_histogram(name, family);
        }
    }
    families
}

fn parse_sample(line: &str) -> Sample {
    let (name_and_labels, value) = line.rsplit_once(' ').expect("sample has a value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    let (name, labels) = match name_and_labels.split_once('{') {
        None => (name_and_labels.to_owned(), BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("label set closes");
            let mut labels = BTreeMap::new();
            let mut chars = body.chars().peekable();
            while chars.peek().is_some() {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                assert!(
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name {key:?} in {line}"
                );
                assert_eq!(
                    chars.next(),
                    Some('"'),
                    "label value must be quoted in {line}"
                );
                let mut value = String::new();
                loop {
                    match chars.next().expect("label value closes") {
                        '\\' => value.push(chars.next().expect("escape")),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                assert!(
                    labels.insert(key, value).is_none(),
                    "duplicate label in {line}"
                );
                match chars.next() {
                    None => {}
                    Some(',') => {}
                    Some(c) => panic!("unexpected {c:?} in {line}"),
                }
            }
            (name.to_owned(), labels)
        }
    };
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line}"
    );
    Sample {
        name,
        labels,
        value,
    }
}

/// A label set without `le`, identifying one histogram series.
type SeriesKey = Vec<(String, String)>;

fn check_histogram(name: &str, family: &Family) {
    // Group buckets by their labels without `le`.
    let mut series: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
    for s in family
        .samples
        .iter()
        .filter(|s| s.name.ends_with("_bucket"))
    {
        let le: f64 = match s.labels.get("le").expect("bucket has le").as_str() {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("numeric le"),
        };
        let key: Vec<_> = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        series.entry(key).or_default().push((le, s.value));
    }
    for (key, buckets) in series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{name}{key:?}: buckets not cumulative: {buckets:?}"
        );
        let inf = buckets.last().expect("a bucket");
        assert!(
            inf.0.is_infinite(),
            "{name}{key:?}: last bucket is not +Inf"
        );
        let count = family
            .samples
            .iter()
            .find(|s| {
                s.name.ends_with("_count")
                    && s.labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<Vec<_>>()
                        == key
            })
            .expect("a _count per series");
        assert_eq!(inf.1, count.value, "{name}{key:?}: +Inf bucket != _count");
    }
}

fn value(
    families: &BTreeMap<String, Family>,
    sample: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    families
        .values()
        .flat_map(|f| &f.samples)
        .find(|s| {
            s.name == sample
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(worker: &Worker) -> BTreeMap<String, Family> {
    let response = http_get(worker.http_addr(), "/metrics")
        .await
        .expect("scrape");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    parse_openmetrics(&response.body)
}

async fn start(pg: &LocalPostgres, nats: &LocalNats, delay_ms: u64) -> Worker {
    let mut settings = common::settings_for(pg, nats);
    settings.simulate_delay_ms = delay_ms;
    settings.retry_base_ms = 100;
    settings.retry_max_ms = 200;
    Worker::start(&settings).await.expect("worker starts")
}

const DEPLOY: &str = "mlops.serving.deploy_requested";

#[actix_rt::test]
async fn metrics_describe_the_deploys_that_happened() {
    let pg = LocalPostgres::start().expect("postgres");
    let nats = LocalNats::start().expect("nats");
    let worker = start(&pg, &nats, 600).await;
    let db = worker.store().db().clone();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("client"));

    let before = scrape(&worker).await;
    assert_eq!(
        value(&before, "deploy_worker_endpoint_actors", &[]),
        Some(0.0)
    );
    assert_eq!(before["deploy_worker_deploys_in_flight"].samples.len(), 0);
    assert_eq!(
        before["deploy_worker_event_to_ready_seconds"]
            .unit
            .as_deref(),
        Some("seconds")
    );

    let mut endpoints = Vec::new();
    for _ in 0..3 {
        endpoints.push(create_endpoint(&db, Some("gs://models/m/1")).await);
    }
    for endpoint in &endpoints {
        publish_deploy(&js, endpoint, &publisher_context().0).await;
    }
    platform::publish_raw(&js, EventKind::Deploy, b"{not json".to_vec(), None)
        .await
        .expect("publish");
    for endpoint in &endpoints {
        wait_status(&db, endpoint.id, "DEPLOYING").await;
    }
    // While they wait for Ready: one deploy in flight per tenant, one actor per endpoint.
    let during = scrape(&worker).await;
    for endpoint in &endpoints {
        let tenant = endpoint.tenant_id.to_string();
        assert_eq!(
            value(
                &during,
                "deploy_worker_deploys_in_flight",
                &[("tenant_id", &tenant)]
            ),
            Some(1.0),
            "tenant {tenant}"
        );
    }
    assert_eq!(
        value(&during, "deploy_worker_endpoint_actors", &[]),
        Some(3.0)
    );

    for endpoint in &endpoints {
        wait_status(&db, endpoint.id, "READY").await;
    }
    let after = wait_scrape(&worker, |m| {
        value(
            m,
            "deploy_worker_events_total",
            &[("subject", DEPLOY), ("outcome", "refused")],
        ) == Some(1.0)
    })
    .await;
    let ready = [("subject", DEPLOY), ("outcome", "ready")];
    assert_eq!(
        value(&after, "deploy_worker_events_total", &ready),
        Some(3.0)
    );
    assert_eq!(
        value(&after, "deploy_worker_event_to_ready_seconds_count", &[]),
        Some(3.0)
    );
    let waited = value(&after, "deploy_worker_event_to_ready_seconds_sum", &[]).expect("sum");
    assert!(
        waited >= 3.0 * 0.6,
        "three deploys of 0.6 s each took {waited} s in total"
    );
    assert_eq!(
        value(
            &after,
            "deploy_worker_deploy_duration_seconds_count",
            &[("outcome", "ready")]
        ),
        Some(3.0)
    );
    // Each deploy writes DEPLOYING and READY; the refused payload writes one record.
    assert_eq!(
        value(&after, "deploy_worker_group_commit_batch_size_sum", &[]),
        Some(3.0 * 2.0 + 1.0)
    );
    assert_eq!(
        after["deploy_worker_deploys_in_flight"].samples.len(),
        0,
        "tenants left"
    );
    for operation in ["load", "commit"] {
        let labels = [("operation", operation)];
        assert_eq!(
            value(&after, "deploy_worker_database_errors_total", &labels),
            Some(0.0)
        );
    }
    assert_eq!(
        value(
            &after,
            "deploy_worker_retries_total",
            &[("reason", "database")]
        ),
        Some(0.0)
    );
    worker.shutdown().await.expect("shutdown");
}

async fn wait_scrape(
    worker: &Worker,
    accept: impl Fn(&BTreeMap<String, Family>) -> bool,
) -> BTreeMap<String, Family> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape(worker).await;
        if accept(&metrics) {
            return metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never matched: {metrics:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn report(response: &common::Response) -> ReadinessReport {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|err| panic!("/readyz body is not a report ({err}): {}", response.body))
}

#[actix_rt::test]
async fn readiness_follows_postgres_and_nats() {
    let mut pg = LocalPostgres::start().expect("postgres");
    let mut nats = LocalNats::start().expect("nats");
    let worker = start(&pg, &nats, 3000).await;
    let addr = worker.http_addr();
    let wait = Duration::from_secs(30);

    let ok = wait_http(addr, "/readyz", wait, |r| r.status == 200).await;
    assert_eq!(
        report(&ok),
        ReadinessReport {
            ready: true,
            database: "ok".into(),
            nats: "ok".into(),
            consumers: "ok".into(),
            kubernetes: "ok".into(),
            draining: false,
        }
    );

    nats.stop().expect("stop nats");
    let down = wait_http(addr, "/readyz", wait, |r| r.status == 503).await;
    let body = report(&down);
    assert!(!body.ready);
    assert_ne!(body.nats, "ok", "{body:?}");
    assert_eq!(body.database, "ok", "{body:?}");
    assert_eq!(
        http_get(addr, "/healthz").await.expect("healthz").status,
        200
    );
    nats.start_again().expect("start nats");
    wait_http(addr, "/readyz", wait, |r| r.status == 200).await;

    pg.stop().expect("stop postgres");
    let down = wait_http(addr, "/readyz", wait, |r| r.status == 503).await;
    let body = report(&down);
    assert_ne!(body.database, "ok", "{body:?}");
    assert_eq!(body.nats, "ok", "{body:?}");
    assert_eq!(
        http_get(addr, "/healthz").await.expect("healthz").status,
        200
    );
    // An event while Postgres is down: the load fails, the message is handed back.
    let db_url = pg.url();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("client"));
    let fields_owner = common::Endpoint {
        id: uuid::Uuid::new_v4(),
        tenant_id: uuid::Uuid::new_v4(),
        project_id: uuid::Uuid::new_v4(),
        name: "while-down".into(),
        model: platform::ModelVersionRef {
            model_id: uuid::Uuid::new_v4(),
            model_version_id: uuid::Uuid::new_v4(),
        },
    };
    publish_deploy(&js, &fields_owner, &publisher_context().0).await;
    let metrics = wait_scrape(&worker, |m| {
        value(
            m,
            "deploy_worker_database_errors_total",
            &[("operation", "load")],
        )
        .unwrap_or(0.0)
            >= 1.0
            && value(m, "deploy_worker_retries_total", &[("reason", "database")]).unwrap_or(0.0)
                >= 1.0
    })
    .await;
    assert!(
        value(
            &metrics,
            "deploy_worker_events_total",
            &[("subject", DEPLOY), ("outcome", "handed_back")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    pg.start_again().expect("start postgres");
    assert_eq!(pg.url(), db_url);
    wait_http(addr, "/readyz", wait, |r| r.status == 200).await;

    // Shutdown: not ready any more while a long deploy drains.
    let db = worker.store().db().clone();
    let endpoint = create_endpoint(&db, Some("gs://models/m/1")).await;
    publish_deploy(&js, &endpoint, &publisher_context().0).await;
    wait_status(&db, endpoint.id, "DEPLOYING").await;
    let stopping = actix_rt::spawn(worker.shutdown());
    let draining = wait_http(addr, "/readyz", wait, |r| r.status == 503).await;
    assert!(report(&draining).draining, "{draining:?}");
    stopping.await.expect("join").expect("shutdown");
    assert_eq!(
        status_after(&db, endpoint.id).await.as_deref(),
        Some("READY")
    );
    assert!(
        http_get(addr, "/healthz").await.is_none(),
        "the port closes on shutdown"
    );
}

async fn status_after(db: &sea_orm::DatabaseConnection, id: uuid::Uuid) -> Option<String> {
    common::status(db, id).await
}
