//! Label and field selectors, parsed and matched as the API server does.
//!
//! Label selectors support the full string syntax of `labels.Parse`: `key`, `!key`,
//! `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, and `key>n` /
//! `key<n`. Field selectors for custom resources support only `metadata.name` and
//! `metadata.namespace` with `=`, `==` and `!=`; anything else is a 400, as on a real cluster.

use crate::error::ApiError;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Gt(String, i64),
    Lt(String, i64),
}

#[derive(Clone, Debug, PartialEq)]
enum FieldReq {
    Equals(FieldName, String),
    NotEquals(FieldName, String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum FieldName {
    Name,
    Namespace,
}

/// A parsed label selector plus field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selectors {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selectors {
    /// Parses `labelSelector` and `fieldSelector` query values.
    pub fn parse(label: Option<&str>, field: Option<&str>) -> Result<Self, ApiError> {
        let labels = match label {
            Some(s) if !s.trim().is_empty() => parse_labels(s)?,
            _ => Vec::new(),
        };
        let fields = match field {
            Some(s) if !s.trim().is_empty() => parse_fields(s)?,
            _ => Vec::new(),
        };
        Ok(Self { labels, fields })
    }

    /// Whether this selector restricts anything.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// The one name `metadata.name=<name>` pins the selection to, if the field selector has
    /// such a term (clients watching or listing a single object send it).
    pub fn exact_name(&self) -> Option<&str> {
        self.fields.iter().find_map(|r| match r {
            FieldReq::Equals(FieldName::Name, v) => Some(v.as_str()),
            _ => None,
        })
    }

    /// Whether `object` is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        let labels = meta.get("labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Gt(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelReq::Lt(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        });
        let field = |f: FieldName| {
            let key = match f {
                FieldName::Name => "name",
                FieldName::Namespace => "namespace",
            };
            meta.get(key).and_then(Value::as_str).unwrap_or("")
        };
        labels_ok
            && self.fields.iter().all(|r| match r {
                FieldReq::Equals(f, v) => field(*f) == v,
                FieldReq::NotEquals(f, v) => field(*f) != v,
            })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn label_error(term: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why} in label selector term {term:?}"
    ))
}

fn check_label_key(term: &str, key: &str) -> Result<String, ApiError> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(key.to_string())
    } else {
        Err(label_error(term, "invalid label key"))
    }
}

fn check_label_value(term: &str, v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    let valid = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(v.to_string())
    } else {
        Err(label_error(term, "invalid label value"))
    }
}

fn parse_set(term: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| label_error(term, "expected a parenthesised set of values"))?;
    inner
        .split(',')
        .map(|v| check_label_value(term, v))
        .collect()
}

fn parse_labels(s: &str) -> Result<Vec<LabelReq>, ApiError> {
    let mut out = Vec::new();
    for raw in split_terms(s) {
        let term = raw.trim();
        if term.is_empty() {
            return Err(label_error(raw, "empty requirement"));
        }
        if let Some(k) = term.strip_prefix('!') {
            out.push(LabelReq::NotExists(check_label_key(term, k)?));
            continue;
        }
        // Set-based forms: "key in (..)", "key notin (..)".
        let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
        if words.len() == 2 {
            let rest = words[1].trim_start();
            if let Some(set) = rest.strip_prefix("notin") {
                out.push(LabelReq::NotIn(
                    check_label_key(term, words[0])?,
                    parse_set(term, set)?,
                ));
                continue;
            }
            if let Some(set) = rest.strip_prefix("in") {
                out.push(LabelReq::In(
                    check_label_key(term, words[0])?,
                    parse_set(term, set)?,
                ));
                continue;
            }
        }
        if let Some((k, v)) = term.split_once("!=") {
            out.push(LabelReq::NotEquals(
                check_label_key(term, k)?,
                check_label_value(term, v)?,
            ));
        } else if let Some((k, v)) = term.split_once("==") {
            out.push(LabelReq::Equals(
                check_label_key(term, k)?,
                check_label_value(term, v)?,
            ));
        } else if let Some((k, v)) = term.split_once('=') {
            out.push(LabelReq::Equals(
                check_label_key(term, k)?,
                check_label_value(term, v)?,
            ));
        } else if let Some((k, v)) = term.split_once('>') {
            let n = v
                .trim()
                .parse()
                .map_err(|_| label_error(term, "for 'gt' an integer value is required"))?;
            out.push(LabelReq::Gt(check_label_key(term, k)?, n));
        } else if let Some((k, v)) = term.split_once('<') {
            let n = v
                .trim()
                .parse()
                .map_err(|_| label_error(term, "for 'lt' an integer value is required"))?;
            out.push(LabelReq::Lt(check_label_key(term, k)?, n));
        } else {
            out.push(LabelReq::Exists(check_label_key(term, term)?));
        }
    }
    Ok(out)
}

fn parse_fields(s: &str) -> Result<Vec<FieldReq>, ApiError> {
    let mut out = Vec::new();
    for raw in s.split(',') {
        let term = raw.trim();
        let (key, value, negate) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, v, false)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{s}'; can't understand '{term}'"
            )));
        };
        let name = match key.trim() {
            "metadata.name" => FieldName::Name,
            "metadata.namespace" => FieldName::Namespace,
            other => {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {other}"
                )));
            }
        };
        let value = value.trim().to_string();
        out.push(if negate {
            FieldReq::NotEquals(name, value)
        } else {
            FieldReq::Equals(name, value)
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn o(name: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "labels": labels}})
    }

    fn sel(l: &str) -> Selectors {
        Selectors::parse(Some(l), None).unwrap_or_else(|e| panic!("{l}: {e}"))
    }

    #[test]
    fn label_operators() {
        let a = o("a", json!({"app": "x", "tier": "web", "n": "5"}));
        let b = o("b", json!({"app": "y"}));
        for (s, ma, mb) in [
            ("app=x", true, false),
            ("app==y", false, true),
            ("app!=x", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app in (x, z)", true, false),
            ("app notin (x,z)", false, true),
            ("app=x,tier=web", true, false),
            ("app in (x,y),!tier", false, true),
            ("n>3", true, false),
            ("n<3", false, false),
        ] {
            assert_eq!(sel(s).matches(&a), ma, "{s} on a");
            assert_eq!(sel(s).matches(&b), mb, "{s} on b");
        }
    }

    #[test]
    fn field_selectors() {
        let a = o("a", json!({}));
        let s = Selectors::parse(None, Some("metadata.name=a,metadata.namespace!=other"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.matches(&a));
        assert_eq!(s.exact_name(), Some("a"));
        let s = Selectors::parse(None, Some("metadata.name!=a")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.matches(&a));
        assert_eq!(s.exact_name(), None);
        let e = Selectors::parse(None, Some("spec.x=1")).err();
        assert_eq!(e.map(|e| e.code), Some(400));
    }

    #[test]
    fn malformed_label_selector_is_bad_request() {
        for bad in ["app in x", "=x", "a,,b", "app=in valid"] {
            let e = Selectors::parse(Some(bad), None).err();
            assert_eq!(e.map(|e| e.code), Some(400), "{bad}");
        }
    }
}
