//! The CustomResourceDefinitions of every custom kind, as a real cluster needs them.

use crate::admission::kinds;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// All CRDs, with KubeVirt's quirks applied: VirtualMachineInstance has no `/status`
/// subresource in KubeVirt (its status is written through the main endpoint), so neither do we.
///
/// Generated on each call (it takes a moment); callers that need them often keep the result.
pub fn crds() -> Vec<CustomResourceDefinition> {
    kinds()
        .iter()
        .filter_map(|k| k.crd.map(|f| (k, f())))
        .map(|(k, mut crd)| {
            for v in &mut crd.spec.versions {
                if let Some(s) = v
                    .schema
                    .as_mut()
                    .and_then(|s| s.open_api_v3_schema.as_mut())
                {
                    if let Ok(mut json) = serde_json::to_value(&*s) {
                        int_or_string_alternatives(&mut json);
                        if let Ok(back) = serde_json::from_value(json) {
                            *s = back;
                        }
                    }
                }
            }
            if k.kind == "VirtualMachineInstance" {
                for v in &mut crd.spec.versions {
                    if let Some(sub) = v.subresources.as_mut() {
                        sub.status = None;
                    }
                }
            }
            crd
        })
        .collect()
}

/// Whether a kind has a `/status` subresource (so that writes to the main endpoint ignore status).
pub fn has_status_subresource(crd: &CustomResourceDefinition) -> bool {
    crd.spec
        .versions
        .iter()
        .any(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some()))
}

/// An int-or-string node (a Quantity, a port) spells out its two alternatives, as
/// controller-gen writes them; the API server and any JSON-schema validator then refuse a
/// boolean or an object there.
fn int_or_string_alternatives(s: &mut serde_json::Value) {
    use serde_json::{json, Value};
    match s {
        Value::Object(m) => {
            if m.get("x-kubernetes-int-or-string") == Some(&json!(true)) && !m.contains_key("anyOf")
            {
                m.insert(
                    "anyOf".into(),
                    json!([{"type": "integer"}, {"type": "string"}]),
                );
            }
            m.values_mut().for_each(int_or_string_alternatives);
        }
        Value::Array(a) => a.iter_mut().for_each(int_or_string_alternatives),
        _ => {}
    }
}
