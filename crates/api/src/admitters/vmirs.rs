//! VirtualMachineInstanceReplicaSet: KubeVirt's vmirs-admitter.go.

use crate::admission::Request;
use crate::field::{FieldError, Path};
use crate::validation::{validate_vmi_spec, vmi_create, ValidationConfig};
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
    let template_metadata = rs.spec.template.metadata.as_ref();
    crate::validation::grace_io::validate_annotations(
        &field.child("template").child("metadata"),
        tspec,
        template_metadata.and_then(|m| m.annotations.as_ref()),
        cfg,
        &mut errs,
    );
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

/// On creation, a discontinued feature gate still listed in the cluster configuration whose API
/// the template uses (`featuregate.ValidateFeatureGates` on the template spec).
pub fn rules(
    rs: &VirtualMachineInstanceReplicaSet,
    _old: Option<&VirtualMachineInstanceReplicaSet>,
    req: &Request,
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
    match rs.spec.template.spec.as_ref() {
        Some(spec) if !req.is_update() => vmi_create::validate_feature_gates(spec, cfg),
        _ => Vec::new(),
    }
}
