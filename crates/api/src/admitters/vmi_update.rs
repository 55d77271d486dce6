//! VMI updates: KubeVirt's vmi-update-admitter.go. Only KubeVirt's own components may change
//! a VMI's spec (they do so for hotplug and live updates, after the subresource API checked
//! the request), and only they may change the reserved `kubevirt.io/` labels.

use crate::admission::Request;
use crate::field::{CauseType, FieldError};
use crate::validation::ValidationConfig;
use crate::VirtualMachineInstance;
use std::collections::BTreeMap;

/// Labels only KubeVirt sets on a VMI (`restrictedVmiLabels`).
pub const RESTRICTED_VMI_LABELS: &[&str] = &[
    "kubevirt.io/created-by",
    "kubevirt.io/migrationJobUID",
    "kubevirt.io/nodeName",
    "kubevirt.io/migrationTargetNodeName",
    "kubevirt.io/schedulable",
    "kubevirt.io/install-strategy",
];

pub const SPEC_RESTRICTED: &str = "update of VMI object is restricted";
/// KubeVirt's refusal when someone other than its components creates a VMI with one of
/// [`RESTRICTED_VMI_LABELS`] (vmi-create-admitter's `ValidateVirtualMachineInstanceMetadata`).
pub const LABELS_CREATE_RESTRICTED: &str =
    "creation of the following reserved kubevirt.io/ labels on a VMI object is prohibited";
pub const LABELS_RESTRICTED: &str =
    "modification of the following reserved kubevirt.io/ labels on a VMI object is prohibited";

fn restricted(labels: Option<&BTreeMap<String, String>>) -> BTreeMap<&str, &str> {
    labels
        .into_iter()
        .flatten()
        .filter(|(k, _)| RESTRICTED_VMI_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

pub fn rules(
    new: &VirtualMachineInstance,
    old: Option<&VirtualMachineInstance>,
    req: &Request,
    _cfg: &ValidationConfig,
) -> Vec<FieldError> {
    let Some(old) = old else {
        // Creation: the reserved labels are KubeVirt's (its controller sets `created-by`, the
        // handler `nodeName`); a user who sets them could pass a VMI off as another's.
        if !req.privileged() && !restricted(new.metadata.labels.as_ref()).is_empty() {
            return vec![FieldError::new(
                CauseType::FieldValueNotSupported,
                "metadata.labels",
                LABELS_CREATE_RESTRICTED,
            )];
        }
        return Vec::new();
    };
    let mut errs = Vec::new();
    let privileged = req.privileged();
    if new.spec != old.spec {
        if !privileged {
            return vec![FieldError::new(
                CauseType::FieldValueNotSupported,
                "",
                SPEC_RESTRICTED,
            )];
        }
        errs.extend(admit_hotplug(old, new));
    }
    if !privileged
        && restricted(new.metadata.labels.as_ref()) != restricted(old.metadata.labels.as_ref())
    {
        errs.push(FieldError::new(
            CauseType::FieldValueNotSupported,
            "",
            LABELS_RESTRICTED,
        ));
    }
    errs
}

/// What even KubeVirt's components may not change on a running VMI (`admitHotplug`): the
/// CPU socket and memory ceilings the domain was started with.
fn admit_hotplug(old: &VirtualMachineInstance, new: &VirtualMachineInstance) -> Vec<FieldError> {
    let max_sockets =
        |v: &VirtualMachineInstance| v.spec.domain.cpu.as_ref().and_then(|c| c.max_sockets);
    if max_sockets(old) != max_sockets(new) {
        return vec![FieldError::invalid("", "CPU topology maxSockets changed")];
    }
    let max_guest = |v: &VirtualMachineInstance| {
        v.spec
            .domain
            .memory
            .as_ref()
            .and_then(|m| m.max_guest.as_ref())
            .and_then(|q| crate::quantity::Quantity::from_k8s(q).ok())
            .map(|q| q.value())
    };
    if let (Some(o), Some(n)) = (max_guest(old), max_guest(new)) {
        if o != n {
            return vec![FieldError::invalid("", "Memory maxGuest changed")];
        }
    }
    Vec::new()
}
