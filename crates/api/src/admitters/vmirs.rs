//! VirtualMachineInstanceReplicaSet: KubeVirt's vmirs-admitter.go.

use crate::field::{FieldError, Path};
use crate::validation::{validate_vmi_spec, ValidationConfig};
use crate::VirtualMachineInstanceReplicaSet;

pub fn validate(rs: &VirtualMachineInstanceReplicaSet, cfg: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let field = Path::root("spec");
    let Some(tspec) = rs.spec.template.spec.as_ref() else {
        return vec![FieldError::required(
            field.child("template"),
            "missing virtual machine template.",
        )];
    };
    // Checked as the VMIs it creates will be, defaults included.
    let mut t = tspec.clone();
    crate::defaults::default_vmi_spec(&mut t, "", &Default::default());
    validate_vmi_spec(&t, &field.child("template").child("spec"), cfg, &mut errs);
    let labels = rs
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    super::check_selector(&rs.spec.selector, labels, &field, &mut errs);
    errs
}
