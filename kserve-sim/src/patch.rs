//! JSON Merge Patch (RFC 7386) and JSON Patch (RFC 6902), the two non-apply patch types the API
//! server accepts for custom resources (strategic merge patch is not available for CRDs and is
//! answered 415, as on a real cluster).

use serde_json::Value;

/// Applies an RFC 7386 merge patch in place: objects merge recursively, `null` deletes, anything
/// else (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Why a JSON Patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPatchError {
    /// The patch document is not a list of operations.
    #[error("the JSON patch is malformed: {0}")]
    Malformed(String),
    /// An operation's path does not exist or cannot be written.
    #[error("the JSON patch cannot be applied: {0}")]
    Path(String),
    /// A `test` operation failed.
    #[error("the JSON patch test operation failed at {0}")]
    TestFailed(String),
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(ptr: &str) -> Result<Vec<String>, JsonPatchError> {
    if ptr.is_empty() {
        return Ok(Vec::new());
    }
    let rest = ptr
        .strip_prefix('/')
        .ok_or_else(|| JsonPatchError::Malformed(format!("path {ptr:?} does not start with /")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    tokens: &[String],
    ptr: &str,
) -> Result<&'a mut Value, JsonPatchError> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| JsonPatchError::Path(format!("{ptr}: missing path")))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, ptr: &str, value: Value) -> Result<(), JsonPatchError> {
    let tokens = split_pointer(ptr)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents, ptr)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let idx = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| JsonPatchError::Path(format!("{ptr}: bad array index")))?
            };
            if idx > a.len() {
                return Err(JsonPatchError::Path(format!("{ptr}: index out of range")));
            }
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(JsonPatchError::Path(format!(
            "{ptr}: parent is not a container"
        ))),
    }
}

fn remove(doc: &mut Value, ptr: &str) -> Result<Value, JsonPatchError> {
    let tokens = split_pointer(ptr)?;
    let Some((last, parents)) = tokens.split_last() else {
        return Err(JsonPatchError::Path(
            "cannot remove the whole document".into(),
        ));
    };
    match parent_mut(doc, parents, ptr)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| JsonPatchError::Path(format!("{ptr}: missing path"))),
        Value::Array(a) => {
            let idx = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(|| JsonPatchError::Path(format!("{ptr}: index out of range")))?;
            Ok(a.remove(idx))
        }
        _ => Err(JsonPatchError::Path(format!(
            "{ptr}: parent is not a container"
        ))),
    }
}

fn get(doc: &Value, ptr: &str) -> Result<Value, JsonPatchError> {
    doc.pointer(ptr)
        .cloned()
        .ok_or_else(|| JsonPatchError::Path(format!("{ptr}: missing path")))
}

/// Applies an RFC 6902 patch; all operations or none (the document is only replaced on
/// success).
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), JsonPatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| JsonPatchError::Malformed("expected a JSON array of operations".into()))?;
    let mut work = doc.clone();
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| JsonPatchError::Malformed("operation without \"op\"".into()))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| JsonPatchError::Malformed(format!("{name} without \"path\"")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| JsonPatchError::Malformed(format!("{name} without \"value\"")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| JsonPatchError::Malformed(format!("{name} without \"from\"")))
        };
        match name {
            "add" => add(&mut work, path, value()?)?,
            "remove" => {
                remove(&mut work, path)?;
            }
            "replace" => {
                remove(&mut work, path)?;
                add(&mut work, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut work, from()?)?;
                add(&mut work, path, v)?;
            }
            "copy" => {
                let v = get(&work, from()?)?;
                add(&mut work, path, v)?;
            }
            "test" => {
                if get(&work, path)? != value()? {
                    return Err(JsonPatchError::TestFailed(path.to_string()));
                }
            }
            other => {
                return Err(JsonPatchError::Malformed(format!(
                    "unknown operation {other:?}"
                )));
            }
        }
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn json_patch_operations() {
        let mut d = json!({"spec": {"a": 1, "list": [1, 2]}});
        json_patch(
            &mut d,
            &json!([
                {"op": "test", "path": "/spec/a", "value": 1},
                {"op": "replace", "path": "/spec/a", "value": 2},
                {"op": "add", "path": "/spec/list/-", "value": 3},
                {"op": "remove", "path": "/spec/list/0"},
                {"op": "copy", "from": "/spec/a", "path": "/spec/b"},
                {"op": "move", "from": "/spec/b", "path": "/spec/c"}
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d, json!({"spec": {"a": 2, "list": [2, 3], "c": 2}}));
    }

    #[test]
    fn failed_test_leaves_document_untouched() {
        let mut d = json!({"a": 1});
        let r = json_patch(
            &mut d,
            &json!([{"op": "replace", "path": "/a", "value": 5}, {"op": "test", "path": "/a", "value": 9}]),
        );
        assert_eq!(r, Err(JsonPatchError::TestFailed("/a".into())));
        assert_eq!(d, json!({"a": 1}));
    }
}
