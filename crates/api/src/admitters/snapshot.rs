//! VirtualMachineSnapshot: KubeVirt's pkg/storage/admitters/vmsnapshot.go. (The Snapshot
//! feature gate is Beta, so on by default.)

use crate::admission::Request;
use crate::field::{FieldError, Path};
use crate::validation::ValidationConfig;
use crate::VirtualMachineSnapshot;

/// Kinds a snapshot (and a restore) may name in `kubevirt.io`.
pub const KUBEVIRT_GROUP: &str = "kubevirt.io";

pub fn rules(
    s: &VirtualMachineSnapshot,
    old: Option<&VirtualMachineSnapshot>,
    req: &Request,
    _cfg: &ValidationConfig,
) -> Vec<FieldError> {
    if req.is_update() {
        return match old {
            Some(o) if o.spec != s.spec => {
                vec![FieldError::invalid("spec", super::SPEC_IMMUTABLE)]
            }
            _ => Vec::new(),
        };
    }
    let source = Path::root("spec").child("source");
    match s.spec.source.api_group.as_deref() {
        None => vec![FieldError::new(
            crate::field::CauseType::FieldValueNotFound,
            source.child("apiGroup"),
            "missing apiGroup",
        )],
        Some(KUBEVIRT_GROUP) if s.spec.source.kind != "VirtualMachine" => {
            vec![FieldError::invalid(source.child("kind"), "invalid kind")]
        }
        Some(KUBEVIRT_GROUP) => Vec::new(),
        Some(_) => vec![FieldError::invalid(
            source.child("apiGroup"),
            "invalid apiGroup",
        )],
    }
}
