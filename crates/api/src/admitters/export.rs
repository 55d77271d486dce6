//! VirtualMachineExport: KubeVirt's pkg/storage/admitters/vmexport.go.
//!
//! The `VirtualMachineTemplate` source needs KubeVirt's OCIExport feature gate and a
//! virt-template deployment; kubevirt-rs has neither, so that source is always refused with
//! KubeVirt's message for a cluster without them.

use crate::admission::Request;
use crate::field::{FieldError, Path};
use crate::validation::ValidationConfig;
use crate::VirtualMachineExport;

/// (kind, name shown in messages, required API group; `None` = none or blank).
const SOURCES: &[(&str, &str, &str, Option<&str>)] = &[
    ("PersistentVolumeClaim", "PVC", "PVC", None),
    (
        "VirtualMachineSnapshot",
        "VMSnapshot",
        "VMSnapshot",
        Some("snapshot.kubevirt.io"),
    ),
    (
        "VirtualMachine",
        "Virtual Machine",
        "VM",
        Some("kubevirt.io"),
    ),
    (
        "VirtualMachineBackup",
        "VirtualMachineBackup",
        "VirtualMachineBackup",
        Some("backup.kubevirt.io"),
    ),
];

pub const TEMPLATE_NEEDS_GATE: &str = "VirtualMachineTemplate source requires the OCIExport feature gate and virt-template deployment to be enabled";

pub fn rules(
    e: &VirtualMachineExport,
    old: Option<&VirtualMachineExport>,
    req: &Request,
    _cfg: &ValidationConfig,
) -> Vec<FieldError> {
    if req.is_update() {
        return match old {
            Some(o) if o.spec != e.spec => {
                vec![FieldError::invalid("spec", super::SPEC_IMMUTABLE)]
            }
            _ => Vec::new(),
        };
    }
    let source = Path::root("spec").child("source");
    let src = &e.spec.source;
    if src.kind == "VirtualMachineTemplate" {
        return vec![FieldError::invalid(
            source.child("kind"),
            TEMPLATE_NEEDS_GATE,
        )];
    }
    let Some(&(_, name_label, group_label, group)) = SOURCES.iter().find(|(k, ..)| *k == src.kind)
    else {
        return vec![FieldError::invalid(source.child("kind"), "invalid kind")];
    };
    let mut errs = Vec::new();
    // `metav1.Duration`: KubeVirt's webhook cannot even decode an export whose ttlDuration Go
    // does not parse.
    if let Some(ttl) = &e.spec.ttl_duration {
        if let Err(why) = crate::duration::parse(ttl) {
            errs.push(FieldError::invalid(
                Path::root("spec").child("ttlDuration"),
                why,
            ));
        }
    }
    if src.name.is_empty() {
        errs.push(FieldError::invalid(
            source.child("name"),
            format!("{name_label} name must not be empty"),
        ));
    }
    // KubeVirt's path element is `APIGroup` here, not the JSON name.
    let group_field = source.child("APIGroup");
    let got = src.api_group.as_deref().unwrap_or("");
    match group {
        None if !got.is_empty() => errs.push(FieldError::invalid(
            group_field,
            format!("{group_label} API group must be missing or blank"),
        )),
        Some(g) if got != g => errs.push(FieldError::invalid(
            group_field,
            format!("{group_label} API group must be {g}"),
        )),
        _ => {}
    }
    errs
}
