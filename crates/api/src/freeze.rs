//! The body of virt-api's `freeze` subresource (KubeVirt's `v1.FreezeUnfreezeTimeout`,
//! `{"unfreezeTimeout": "5m"}`): the one owner of its wire form and its rules. The snapshot
//! controller writes it with [`FreezeUnfreezeTimeout::new`]; virt-api reads it with
//! [`FreezeUnfreezeTimeout::parse`], which refuses what KubeVirt would turn into a guest frozen
//! for ever or for an absurd time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::field::FieldError;

/// The longest a guest may stay frozen before the launcher thaws (or continues) it by itself.
/// KubeVirt takes any duration (its snapshot controller passes the snapshot's failure
/// deadline); here a freeze always ends, and within an hour.
pub const MAX_UNFREEZE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The field's path in the body, as error messages name it.
pub const FIELD: &str = "unfreezeTimeout";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FreezeUnfreezeTimeout {
    /// A Go duration (`metav1.Duration`): `"5m0s"`, `"90s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfreeze_timeout: Option<String>,
}

impl FreezeUnfreezeTimeout {
    /// The body asking for a freeze that ends by itself after `timeout` (clamped to
    /// [`MAX_UNFREEZE_TIMEOUT`], at least one second).
    pub fn new(timeout: Duration) -> Self {
        let t = timeout.clamp(Duration::from_secs(1), MAX_UNFREEZE_TIMEOUT);
        FreezeUnfreezeTimeout {
            unfreeze_timeout: Some(crate::duration::format(t.as_nanos() as i64)),
        }
    }

    /// The timeout of a request body: required, a Go duration of at least one second and at
    /// most [`MAX_UNFREEZE_TIMEOUT`]. The error names the field.
    pub fn parse(body: &serde_json::Value) -> Result<Duration, FieldError> {
        let parsed: FreezeUnfreezeTimeout = serde_json::from_value(body.clone())
            .map_err(|e| FieldError::invalid(FIELD, format!("not a FreezeUnfreezeTimeout: {e}")))?;
        let Some(text) = parsed.unfreeze_timeout else {
            return Err(FieldError::required(
                FIELD,
                "Unfreeze timeout in freeze request is not set",
            ));
        };
        let nanos = crate::duration::parse(&text).map_err(|e| FieldError::invalid(FIELD, e))?;
        let max = MAX_UNFREEZE_TIMEOUT.as_nanos() as i64;
        if nanos < 1_000_000_000 || nanos > max {
            return Err(FieldError::invalid(
                FIELD,
                format!(
                    "{} is out of range: it must be at least 1s and at most {}",
                    crate::names::go_quote(&text),
                    crate::duration::format(max)
                ),
            ));
        }
        Ok(Duration::from_nanos(nanos as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_controllers_body_is_what_virt_api_reads() {
        let body = serde_json::to_value(FreezeUnfreezeTimeout::new(Duration::from_secs(300)))
            .expect("serializes");
        assert_eq!(body, json!({"unfreezeTimeout": "5m0s"}));
        assert_eq!(
            FreezeUnfreezeTimeout::parse(&body),
            Ok(Duration::from_secs(300))
        );
        // A deadline longer than the limit is clamped, not refused, on the writing side.
        let long = serde_json::to_value(FreezeUnfreezeTimeout::new(Duration::from_secs(86400)))
            .expect("serializes");
        assert_eq!(
            FreezeUnfreezeTimeout::parse(&long),
            Ok(MAX_UNFREEZE_TIMEOUT)
        );
    }

    #[test]
    fn hostile_timeouts_are_refused_naming_the_field() {
        for body in [
            json!({}),
            json!({"unfreezeTimeout": "-5m"}),
            json!({"unfreezeTimeout": "0"}),
            json!({"unfreezeTimeout": "500ms"}),
            json!({"unfreezeTimeout": "1h0m1s"}),
            json!({"unfreezeTimeout": "9999999999h"}),
            json!({"unfreezeTimeout": "five minutes"}),
            json!({"unfreezeTimeout": ""}),
            json!({"unfreezeTimeout": 300}),
            json!({"unfreezeTimeout": "5m", "path": "/etc"}),
        ] {
            let err = FreezeUnfreezeTimeout::parse(&body).expect_err(&body.to_string());
            assert_eq!(err.field, FIELD, "{body}: {err}");
            assert!(err.to_string().starts_with("unfreezeTimeout: "), "{err}");
        }
        assert_eq!(
            FreezeUnfreezeTimeout::parse(&json!({"unfreezeTimeout": "1h"})),
            Ok(MAX_UNFREEZE_TIMEOUT)
        );
    }
}
