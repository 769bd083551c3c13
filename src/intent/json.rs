//! Reading intent fields out of JSON: typed access with errors that name the field, and the
//! readers of single `runtime_config` values.

use serde_json::{Map, Value};

use super::*;

// JSON access helpers. A JSON `null` anywhere means "not set", as for SQL NULL.

/// First whitespace or control character of a URI, checking bytes when it is ASCII (the
/// common case) and characters otherwise.
pub(super) fn uri_forbidden_char(s: &str) -> Option<char> {
    if s.is_ascii() {
        // a branch-free scan first (the common answer is "none"), then find the culprit
        let bad = s
            .bytes()
            .fold(false, |acc, b| acc | (b <= b' ') | (b == 0x7f));
        if !bad {
            return None;
        }
        s.bytes().find(|&b| b <= b' ' || b == 0x7f).map(char::from)
    } else {
        s.chars().find(|c| c.is_whitespace() || c.is_control())
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn wrong_type(field: &str, expected: &'static str, v: &Value) -> IntentError {
    IntentError::WrongType {
        field: field.into(),
        expected,
        found: type_name(v),
    }
}

pub(super) fn object<'a>(
    v: Option<&'a Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, IntentError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(wrong_type(field, "an object", other)),
    }
}

pub(super) fn member<'a>(m: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a Value> {
    match m?.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

/// 2^63 as a float: every whole float in `[-2^63, 2^63)` converts to `i64` exactly.
pub(super) const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// A whole JSON number (`2` or `2.0`).
pub(super) fn integer(v: &Value, field: &str) -> Result<i64, IntentError> {
    let Value::Number(n) = v else {
        return Err(wrong_type(field, "an integer", v));
    };
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Err(IntentError::OutOfRange {
            field: field.into(),
            value: n.to_string(),
            range: format!("..={}", i64::MAX),
        });
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&f) => Ok(f as i64),
        Some(f) if f.fract() == 0.0 => Err(IntentError::OutOfRange {
            field: field.into(),
            value: n.to_string(),
            range: format!("..={}", i64::MAX),
        }),
        _ => Err(IntentError::NotAnInteger {
            field: field.into(),
            value: n.to_string(),
        }),
    }
}

pub(super) fn int_in(
    v: &Value,
    field: &str,
    min: i64,
    max: i64,
    range: &str,
) -> Result<i64, IntentError> {
    let i = integer(v, field)?;
    if i < min || i > max {
        return Err(IntentError::OutOfRange {
            field: field.into(),
            value: i.to_string(),
            range: range.into(),
        });
    }
    Ok(i)
}

pub(super) fn int32_in(v: &Value, field: &str, min: i32, range: &str) -> Result<i32, IntentError> {
    let i = int_in(v, field, i64::from(min), i64::from(i32::MAX), range)?;
    // int_in bounded it to i32, so this conversion cannot fail; map rather than unwrap anyway
    i32::try_from(i).map_err(|_| IntentError::OutOfRange {
        field: field.into(),
        value: i.to_string(),
        range: range.into(),
    })
}

pub(super) fn boolean(v: &Value, field: &str) -> Result<bool, IntentError> {
    v.as_bool().ok_or_else(|| wrong_type(field, "a boolean", v))
}

pub(super) fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, IntentError> {
    v.as_str().ok_or_else(|| wrong_type(field, "a string", v))
}

pub(super) fn invalid(field: &str, value: &str, reason: impl Into<String>) -> IntentError {
    IntentError::InvalidValue {
        field: field.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// The list's spelling of `value`, compared case-insensitively (lengths first, so most
/// entries are skipped without looking at their bytes).
pub(super) fn canonical(list: &[&'static str], value: &str) -> Option<&'static str> {
    list.iter()
        .copied()
        .find(|c| c.len() == value.len() && c.eq_ignore_ascii_case(value))
}

pub(super) fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

pub(super) fn runtime_kind(runtime: Option<&str>) -> Result<RuntimeKind, IntentError> {
    let rt = match runtime {
        None | Some("kserve") => return Ok(RuntimeKind::Generic),
        Some("kserve-triton" | "triton") => return Ok(RuntimeKind::Triton),
        Some(rt) => rt,
    };
    let identifier = !rt.is_empty()
        && rt.len() <= 253
        && rt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if identifier && rt.eq_ignore_ascii_case("kserve") {
        Ok(RuntimeKind::Generic)
    } else if identifier && contains_ignore_ascii_case(rt, "triton") {
        Ok(RuntimeKind::Triton)
    } else {
        Err(IntentError::UnknownRuntime { value: rt.into() })
    }
}

pub(super) fn model_format(v: &Value, field: &str) -> Result<&'static str, IntentError> {
    let s = string(v, field)?;
    if s.trim().is_empty() {
        return Err(invalid(
            field,
            s,
            format!(
                "the model format cannot be empty; use one of {}",
                MODEL_FORMATS.join(", ")
            ),
        ));
    }
    canonical(MODEL_FORMATS, s).ok_or_else(|| IntentError::UnsupportedModelFormat {
        field: field.into(),
        value: s.into(),
        allowed: MODEL_FORMATS.join(", "),
    })
}

pub(super) fn protocol_version(v: &Value, field: &str) -> Result<&'static str, IntentError> {
    let s = string(v, field)?;
    canonical(PROTOCOL_VERSIONS, s).ok_or_else(|| {
        invalid(
            field,
            s,
            format!("use one of {}", PROTOCOL_VERSIONS.join(", ")),
        )
    })
}

pub(super) fn runtime_version<'a>(v: &'a Value, field: &str) -> Result<&'a str, IntentError> {
    let s = string(v, field)?;
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(s)
    } else {
        Err(invalid(
            field,
            s,
            "a runtime version is a container image tag: letters, digits, '_', '.', '-', at most 128 characters, not starting with '.' or '-' (e.g. \"24.08-py3\")",
        ))
    }
}

pub(super) fn scale_metric(v: &Value, field: &str) -> Result<AutoscaleMetric, IntentError> {
    let s = string(v, field)?;
    AutoscaleMetric::ALL
        .iter()
        .copied()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| invalid(field, s, "use cpu, memory, concurrency or rps"))
}

pub(super) fn deployment_mode(v: &Value, field: &str) -> Result<DeploymentMode, IntentError> {
    let s = string(v, field)?;
    DeploymentMode::from_name(s).ok_or_else(|| {
        invalid(
            field,
            s,
            "use Knative or Standard (legacy Serverless and RawDeployment are accepted)",
        )
    })
}

/// `Some(true)` for KEDA, `Some(false)` for HPA (KServe's default).
pub(super) fn autoscaler_class(v: &Value, field: &str) -> Result<bool, IntentError> {
    let s = string(v, field)?;
    if s.eq_ignore_ascii_case("keda") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("hpa") {
        Ok(false)
    } else {
        Err(invalid(
            field,
            s,
            "use \"keda\" (or \"hpa\", KServe's default)",
        ))
    }
}

pub(super) fn service_account<'a>(v: &'a Value, field: &str) -> Result<&'a str, IntentError> {
    let s = string(v, field)?;
    if is_dns1123_subdomain(s) {
        Ok(s)
    } else {
        Err(invalid(
            field,
            s,
            "a service account name is a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters",
        ))
    }
}

pub(super) fn batcher(v: &Value) -> Result<Batching, IntentError> {
    let m = object(Some(v), "runtime_config.batcher")?;
    let field = |key: &str, path: &str, range: &str| {
        member(m, key)
            .map(|v| int_in(v, path, 1, i64::from(i32::MAX), range))
            .transpose()
    };
    Ok(Batching {
        max_batch_size: field(
            "maxBatchSize",
            "runtime_config.batcher.maxBatchSize",
            "1..=2147483647",
        )?,
        max_latency: field(
            "maxLatency",
            "runtime_config.batcher.maxLatency",
            "1..=2147483647 milliseconds",
        )?,
        timeout: field(
            "timeout",
            "runtime_config.batcher.timeout",
            "1..=2147483647 seconds",
        )?,
    })
}
