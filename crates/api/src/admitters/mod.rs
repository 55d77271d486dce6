//! KubeVirt's validating admitters other than VMI creation, one module per admitter.
//!
//! Messages and field paths are KubeVirt v1.9's (pkg/virt-api/webhooks/validating-webhook/
//! admitters, pkg/instancetype/webhooks, pkg/storage/admitters), so a user who greps for a
//! KubeVirt error finds ours too. Each module's `rules` function is the part that needs the
//! request (operation, old object, user, other objects); see [`crate::admission::Request`].

pub mod clone;
pub mod export;
pub mod instancetype;
pub mod migration;
pub mod migration_policy;
pub mod preference;
pub mod restore;
pub mod snapshot;
pub mod vm;
pub mod vmi_update;
pub mod vmirs;
pub mod vmpool;

use crate::field::{FieldError, Path};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

/// Whether `selector` matches `labels` (`metav1.LabelSelectorAsSelector(...).Matches`), or the
/// reason the selector is not valid.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<bool, String> {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let mut ok = true;
    for (k, v) in selector.match_labels.iter().flatten() {
        ok &= labels.get(k) == Some(v);
    }
    for r in selector.match_expressions.iter().flatten() {
        let values = r.values.as_deref().unwrap_or_default();
        let has = labels.get(&r.key);
        ok &= match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(
                    "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
                        .to_string(),
                )
            }
            "In" => has.is_some_and(|v| values.contains(v)),
            "NotIn" => has.is_none_or(|v| !values.contains(v)),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(
                    "values: Invalid value: for 'exists', 'doesnotexist' operators, values set must be empty"
                        .to_string(),
                )
            }
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            op => return Err(format!("{op:?} is not a valid label selector operator")),
        };
    }
    Ok(ok)
}

/// `spec.selector` must be valid and match the template's labels (ReplicaSets, pools).
pub fn check_selector(
    selector: &LabelSelector,
    template_labels: Option<&BTreeMap<String, String>>,
    field: &Path,
    errs: &mut Vec<FieldError>,
) {
    match selector_matches(selector, template_labels) {
        Err(e) => errs.push(FieldError::invalid(field.child("selector"), e)),
        Ok(false) => errs.push(FieldError::invalid(
            field.child("selector"),
            "selector does not match labels.",
        )),
        Ok(true) => {}
    }
}

/// KubeVirt's immutable-spec message for snapshots, restores and exports (its typo included).
pub const SPEC_IMMUTABLE: &str = "spec in immutable after creation";
