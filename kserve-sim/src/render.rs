//! Response representations chosen by the `Accept` header: the full object (what `kube`
//! asks for), a `meta.k8s.io` `Table` (what `kubectl get` asks for, with the CRD's
//! `additionalPrinterColumns`), or `PartialObjectMetadata` (kube's metadata-only API).
//! Aggregated discovery (`as=APIGroupDiscoveryList`) is not offered, so clients fall back to the
//! plain discovery documents.

use crate::error::ApiError;
use crate::resource::LIST_KIND;
use serde_json::{Value, json};

/// What the object parts of a response look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Render {
    /// The object itself.
    Full,
    /// A `Table` (`meta.k8s.io/<version>`), rows carrying the object as asked.
    Table {
        /// `v1` or `v1beta1`.
        v1beta1: bool,
        /// `includeObject`.
        include: IncludeObject,
    },
    /// `PartialObjectMetadata` / `PartialObjectMetadataList`.
    Metadata,
}

/// The `includeObject` query parameter for tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object in rows.
    None,
    /// `PartialObjectMetadata` in rows (the default).
    Metadata,
    /// The full object in rows.
    Object,
}

impl IncludeObject {
    /// Parses `includeObject`.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// Chooses a representation from an `Accept` header (first acceptable alternative wins).
pub fn negotiate(accept: Option<&str>, include: IncludeObject) -> Result<Render, ApiError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Render::Full);
    };
    for alt in accept.split(',') {
        let mut parts = alt.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let mut as_ = None;
        let mut g = None;
        let mut v = None;
        for p in parts {
            match p.split_once('=') {
                Some(("as", x)) => as_ = Some(x),
                Some(("g", x)) => g = Some(x),
                Some(("v", x)) => v = Some(x),
                _ => {}
            }
        }
        if !matches!(media, "application/json" | "application/*" | "*/*") {
            continue;
        }
        match (as_, g, v) {
            (None, _, _) => return Ok(Render::Full),
            (Some("Table"), Some("meta.k8s.io"), Some(ver @ ("v1" | "v1beta1"))) => {
                return Ok(Render::Table {
                    v1beta1: ver == "v1beta1",
                    include,
                });
            }
            (
                Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                Some("meta.k8s.io"),
                Some("v1" | "v1beta1"),
            ) => return Ok(Render::Metadata),
            _ => continue,
        }
    }
    Err(ApiError::not_acceptable(accept))
}

fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn find(list: Option<&Value>, pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    list.and_then(Value::as_array)?.iter().find(|i| pred(i))
}

/// The CRD's `additionalPrinterColumns` (with the implicit Name column first).
fn column_definitions() -> Value {
    let col = |name: &str, ty: &str, format: &str, description: &str| json!({"name": name, "type": ty, "format": format, "description": description, "priority": 0});
    json!([
        col(
            "Name",
            "string",
            "name",
            "Name must be unique within a namespace."
        ),
        col("URL", "string", "", ".status.url"),
        col(
            "Ready",
            "string",
            "",
            ".status.conditions[?(@.type=='Ready')].status"
        ),
        col(
            "Prev",
            "integer",
            "",
            ".status.components.predictor.traffic[?(@.tag=='prev')].percent"
        ),
        col(
            "Latest",
            "integer",
            "",
            ".status.components.predictor.traffic[?(@.latestRevision==true)].percent"
        ),
        col(
            "PrevRolledoutRevision",
            "string",
            "",
            ".status.components.predictor.traffic[?(@.tag=='prev')].revisionName"
        ),
        col(
            "LatestReadyRevision",
            "string",
            "",
            ".status.components.predictor.traffic[?(@.latestRevision==true)].revisionName"
        ),
        col("Age", "date", "", ".metadata.creationTimestamp"),
    ])
}

/// The cells of one row, evaluating the printer columns' JSONPaths.
fn cells(obj: &Value) -> Value {
    let traffic = obj.pointer("/status/components/predictor/traffic");
    let prev = find(traffic, |t| t["tag"] == "prev");
    let latest = find(traffic, |t| t["latestRevision"] == true);
    let ready = find(obj.pointer("/status/conditions"), |c| c["type"] == "Ready");
    let or_null = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
    json!([
        or_null(obj.pointer("/metadata/name")),
        or_null(obj.pointer("/status/url")),
        or_null(ready.and_then(|c| c.get("status"))),
        or_null(prev.and_then(|t| t.get("percent"))),
        or_null(latest.and_then(|t| t.get("percent"))),
        or_null(prev.and_then(|t| t.get("revisionName"))),
        or_null(latest.and_then(|t| t.get("revisionName"))),
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| json!(human_duration(chrono::Utc::now().signed_duration_since(t))))
            .unwrap_or(Value::Null),
    ])
}

/// Age as the API server renders `date` printer columns (`45s`, `3m12s`, `5h`, `2d3h`, ...).
pub fn human_duration(d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    format!("{}y", hours / 24 / 365)
}

fn row(obj: &Value, include: IncludeObject) -> Value {
    let mut r = json!({"cells": cells(obj)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => r["object"] = partial_metadata(obj),
        IncludeObject::Object => r["object"] = obj.clone(),
    }
    r
}

fn table(rows: Vec<Value>, v1beta1: bool, list_meta: Value) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": if v1beta1 { "meta.k8s.io/v1beta1" } else { "meta.k8s.io/v1" },
        "metadata": list_meta,
        "columnDefinitions": column_definitions(),
        "rows": rows,
    })
}

/// Renders one object.
pub fn object(obj: &Value, render: Render) -> Value {
    match render {
        Render::Full => obj.clone(),
        Render::Metadata => partial_metadata(obj),
        Render::Table { v1beta1, include } => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            table(
                vec![row(obj, include)],
                v1beta1,
                json!({"resourceVersion": rv}),
            )
        }
    }
}

/// Renders a list with its ListMeta.
pub fn list(items: &[std::sync::Arc<Value>], list_meta: Value, render: Render) -> Value {
    match render {
        Render::Full => json!({
            "apiVersion": crate::apply::API_VERSION,
            "kind": LIST_KIND,
            "metadata": list_meta,
            "items": items.iter().map(|i| (**i).clone()).collect::<Vec<_>>(),
        }),
        Render::Metadata => json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadataList",
            "metadata": list_meta,
            "items": items.iter().map(|i| partial_metadata(i)).collect::<Vec<_>>(),
        }),
        Render::Table { v1beta1, include } => table(
            items.iter().map(|i| row(i, include)).collect(),
            v1beta1,
            list_meta,
        ),
    }
}

/// A full list borrowing its items: serialized straight from the stored objects, so a list of
/// thousands of objects is written once instead of being copied into a new document first.
#[derive(serde::Serialize)]
struct FullList<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    metadata: &'a Value,
    items: Vec<&'a Value>,
}

/// [`list`], serialized: the response body of a list.
pub fn list_body(items: &[std::sync::Arc<Value>], list_meta: Value, render: Render) -> String {
    match render {
        Render::Full => serde_json::to_string(&FullList {
            api_version: crate::apply::API_VERSION,
            kind: LIST_KIND,
            metadata: &list_meta,
            items: items.iter().map(|i| &**i).collect(),
        })
        // Serializing `Value`s cannot fail: their map keys are strings.
        .unwrap_or_default(),
        other => list(items, list_meta, other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(kubectl), IncludeObject::Object).ok(),
            Some(Render::Table {
                v1beta1: false,
                include: IncludeObject::Object
            })
        );
        assert_eq!(
            negotiate(None, IncludeObject::Metadata).ok(),
            Some(Render::Full)
        );
        let discovery =
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            negotiate(Some(discovery), IncludeObject::Metadata).ok(),
            Some(Render::Full)
        );
        assert_eq!(
            negotiate(
                Some("application/vnd.kubernetes.protobuf"),
                IncludeObject::Metadata
            )
            .err()
            .map(|e| e.code),
            Some(406)
        );
    }

    #[test]
    fn table_cells_follow_printer_columns() {
        let o = json!({"metadata": {"name": "a", "creationTimestamp": "t"},
            "status": {"url": "http://a", "conditions": [{"type": "Ready", "status": "True"}],
              "components": {"predictor": {"traffic": [
                {"revisionName": "a-2", "percent": 10, "latestRevision": true, "tag": "latest"},
                {"revisionName": "a-1", "percent": 90, "latestRevision": false, "tag": "prev"}]}}}});
        assert_eq!(
            cells(&o),
            json!(["a", "http://a", "True", 90, 10, "a-1", "a-2", null])
        );
    }

    #[test]
    fn a_full_list_body_is_the_list_document() {
        let items = vec![
            std::sync::Arc::new(json!({"metadata": {"name": "a"}})),
            std::sync::Arc::new(json!({"metadata": {"name": "b"}})),
        ];
        let meta = json!({"resourceVersion": "7"});
        for how in [
            Render::Full,
            Render::Metadata,
            Render::Table {
                v1beta1: false,
                include: IncludeObject::None,
            },
        ] {
            let body: Value = serde_json::from_str(&list_body(&items, meta.clone(), how))
                .unwrap_or_else(|e| panic!("{how:?}: {e}"));
            assert_eq!(body, list(&items, meta.clone(), how), "{how:?}");
        }
    }

    #[test]
    fn ages() {
        let d = chrono::TimeDelta::seconds;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(190)), "3m10s");
        assert_eq!(human_duration(d(3600)), "60m");
        assert_eq!(human_duration(d(5 * 3600 + 60)), "5h1m");
        assert_eq!(human_duration(d(50 * 3600)), "2d2h");
    }
}
