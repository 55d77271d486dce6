//! VirtualMachineInstancetype and VirtualMachineClusterInstancetype: KubeVirt's
//! pkg/instancetype/webhooks/admitter.go.

use crate::field::{FieldError, Path};
use crate::validation::ValidationConfig;
use crate::{
    VirtualMachineClusterInstancetype, VirtualMachineInstancetype, VirtualMachineInstancetypeSpec,
};

/// `ValidateInstanceTypeSpec`.
pub fn validate_spec(spec: &VirtualMachineInstancetypeSpec, field: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let overcommit = field.child("memory").child("overcommitPercent");
    let pct = spec.memory.overcommit_percent.unwrap_or(0);
    if !(0..=100).contains(&pct) {
        errs.push(FieldError::invalid(
            overcommit.clone(),
            format!("{overcommit} '{pct}': must be in range between 0 and 100."),
        ));
    }
    if pct != 0 && spec.memory.hugepages.is_some() {
        errs.push(FieldError::invalid(
            overcommit.clone(),
            format!(
                "{overcommit} and {} should not be requested together.",
                field.child("memory").child("hugepages")
            ),
        ));
    }
    errs
}

pub fn validate(it: &VirtualMachineInstancetype, _cfg: &ValidationConfig) -> Vec<FieldError> {
    validate_spec(&it.spec, &Path::root("spec"))
}

pub fn validate_cluster(
    it: &VirtualMachineClusterInstancetype,
    _cfg: &ValidationConfig,
) -> Vec<FieldError> {
    // The cluster kind's spec is the same type under another name.
    match serde_json::to_value(&it.spec)
        .and_then(serde_json::from_value::<VirtualMachineInstancetypeSpec>)
    {
        Ok(spec) => validate_spec(&spec, &Path::root("spec")),
        Err(e) => vec![FieldError::invalid("spec", e.to_string())],
    }
}

/// KubeVirt's warning for an instancetype that sets `launchSecurity`.
pub const LAUNCH_SECURITY_DEPRECATED: &str =
    "launchSecurity is deprecated and will be removed in a future release. Use preference instead.";

/// `checkForDeprecatedFields`.
pub fn warnings(it: &VirtualMachineInstancetype, _cfg: &ValidationConfig) -> Vec<String> {
    deprecated(it.spec.launch_security.is_some())
}

pub fn warnings_cluster(
    it: &VirtualMachineClusterInstancetype,
    _cfg: &ValidationConfig,
) -> Vec<String> {
    deprecated(it.spec.launch_security.is_some())
}

fn deprecated(launch_security: bool) -> Vec<String> {
    if launch_security {
        vec![LAUNCH_SECURITY_DEPRECATED.to_string()]
    } else {
        Vec::new()
    }
}
