//! The CustomResourceDefinitions of every custom kind, as a real cluster needs them.

use crate::admission::kinds;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// All CRDs, with KubeVirt's quirks applied: VirtualMachineInstance has no `/status`
/// subresource in KubeVirt (its status is written through the main endpoint), so neither do we.
pub fn crds() -> Vec<CustomResourceDefinition> {
    kinds()
        .iter()
        .filter_map(|k| k.crd.map(|f| (k, f())))
        .map(|(k, mut crd)| {
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
