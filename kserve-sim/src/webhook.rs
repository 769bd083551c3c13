//! KServe's validating admission webhook, for the rules a client can trip over with a manifest
//! the CRD schema accepts: replica bounds of each component (predictor, and transformer and
//! explainer when present).
//!
//! On a cluster, the API server calls the webhook after the object was decoded, defaulted and
//! checked against the CRD schema, for creates and updates of the main resource (patches and
//! server-side applies are updates; the `/status` subresource is not covered). KServe's
//! validator returns a plain error, which controller-runtime turns into a denial with code 403
//! and reason `Forbidden`, and which the API server reports as
//! `admission webhook "<name>" denied the request: <error>`. The first failing rule wins, in
//! the order predictor, transformer, explainer.

use crate::error::ApiError;
use serde_json::Value;

/// Name of KServe's validating webhook for InferenceServices.
pub const VALIDATOR: &str = "inferenceservice.kserve-webhook-server.validator";

/// The components the webhook validates, in the order it checks them.
const COMPONENTS: [&str; 3] = ["predictor", "transformer", "explainer"];

/// KServe's default `minReplicas` when a component leaves it unset.
const DEFAULT_MIN_REPLICAS: i64 = 1;

/// Why the webhook refuses a component's replica bounds.
fn replicas_error(component: &Value) -> Option<&'static str> {
    let min = component
        .get("minReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_MIN_REPLICAS);
    // An unset `maxReplicas` is 0 in KServe's Go type, which means "no upper bound".
    let max = component
        .get("maxReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if min < 0 {
        Some("'MinReplicas' cannot be less than 0")
    } else if max < 0 {
        Some("'MaxReplicas' cannot be less than 0")
    } else if max != 0 && min > max {
        Some("'MinReplicas' cannot be greater than MaxReplicas")
    } else {
        None
    }
}

/// Runs the webhook's rules on `object` (already defaulted and schema-valid); the denial as the
/// API server reports it.
pub fn validate(object: &Value) -> Result<(), ApiError> {
    let Some(spec) = object.get("spec") else {
        return Ok(());
    };
    let denial = COMPONENTS
        .iter()
        .filter_map(|c| spec.get(*c).filter(|v| v.is_object()))
        .find_map(replicas_error);
    match denial {
        Some(why) => Err(ApiError::webhook_denied(VALIDATOR, why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn denial(spec: Value) -> Option<String> {
        validate(&json!({ "spec": spec })).err().map(|e| e.message)
    }

    #[test]
    fn replica_bounds() {
        assert_eq!(denial(json!({"predictor": {}})), None);
        assert_eq!(
            denial(json!({"predictor": {"minReplicas": 0, "maxReplicas": 0}})),
            None
        );
        assert_eq!(
            denial(json!({"predictor": {"minReplicas": 3, "maxReplicas": 3}})),
            None
        );
        // maxReplicas 0 is "unbounded", whatever minReplicas is.
        assert_eq!(denial(json!({"predictor": {"minReplicas": 9}})), None);
        let prefix = format!("admission webhook \"{VALIDATOR}\" denied the request: ");
        for (spec, why) in [
            (
                json!({"predictor": {"minReplicas": -1}}),
                "'MinReplicas' cannot be less than 0",
            ),
            (
                json!({"predictor": {"maxReplicas": -2}}),
                "'MaxReplicas' cannot be less than 0",
            ),
            (
                json!({"predictor": {"minReplicas": 4, "maxReplicas": 2}}),
                "'MinReplicas' cannot be greater than MaxReplicas",
            ),
            // Transformer and explainer are held to the same rules.
            (
                json!({"predictor": {}, "transformer": {"minReplicas": -1}}),
                "'MinReplicas' cannot be less than 0",
            ),
            (
                json!({"predictor": {}, "explainer": {"minReplicas": 5, "maxReplicas": 1}}),
                "'MinReplicas' cannot be greater than MaxReplicas",
            ),
        ] {
            assert_eq!(
                denial(spec.clone()),
                Some(format!("{prefix}{why}")),
                "{spec}"
            );
        }
        // The first component that fails decides.
        assert_eq!(
            denial(json!({
                "predictor": {"minReplicas": 2, "maxReplicas": 1},
                "transformer": {"minReplicas": -1}
            })),
            Some(format!(
                "{prefix}'MinReplicas' cannot be greater than MaxReplicas"
            ))
        );
    }
}
