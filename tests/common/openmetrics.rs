//! A strict parser of the OpenMetrics text format, for the tests that scrape `/metrics`.

#![allow(dead_code)]

use std::collections::BTreeMap;

/// One metric family of an OpenMetrics exposition.
#[derive(Debug, Default)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the OpenMetrics text format strictly enough to trust what the assertions read:
/// every sample belongs to the family declared before it with a suffix its type allows, label
/// sets are well formed, values are numbers, histograms are cumulative with `+Inf` = `_count`,
/// and the exposition ends with `# EOF`.
pub fn parse_openmetrics(text: &str) -> BTreeMap<String, Family> {
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

pub fn value(
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
