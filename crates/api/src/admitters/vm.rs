//! VirtualMachine admission: KubeVirt's vms-admitter.go (pkg/virt-api/webhooks/
//! validating-webhook/admitters) plus the storage parts of it (pkg/storage/admitters/
//! vm-storage-admitter.go, data-volume-template.go).

use crate::field::{FieldError, Path};
use crate::validation::{validate_dv_spec, validate_vmi_spec, ValidationConfig, RUN_STRATEGIES};
use crate::VirtualMachine;
use std::collections::BTreeSet;

pub fn validate_vm(vm: &VirtualMachine, cfg: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = &vm.spec;
    let root = Path::root("spec");
    match (spec.running, spec.run_strategy.as_deref()) {
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            root.child("running"),
            "Running and RunStrategy are mutually exclusive. Note that Running is deprecated, please use RunStrategy instead",
        )),
        (None, None) => errs.push(FieldError::invalid(
            root.child("running"),
            "RunStrategy must be specified",
        )),
        (None, Some(rs)) if !RUN_STRATEGIES.contains(&rs) => errs.push(FieldError::invalid(
            root.child("runStrategy"),
            format!(
                "Invalid RunStrategy ({rs}), must be one of: {}",
                RUN_STRATEGIES.join(", ")
            ),
        )),
        _ => {}
    }
    match spec.template.spec.as_ref() {
        None => errs.push(FieldError::required(
            root.child("template"),
            "missing virtual machine template.",
        )),
        Some(tspec) => {
            // The template is checked as the VMI it will become, defaults included, with the
            // VM's paths; memory may come from an instancetype, so it is not required here.
            let mut t = tspec.clone();
            crate::defaults::default_vmi_spec(
                &mut t,
                vm.metadata.name.as_deref().unwrap_or(""),
                &Default::default(),
            );
            validate_vmi_spec(&t, &root.child("template").child("spec"), cfg, &mut errs);
        }
    }
    // Every dataVolumeTemplate must be used by a volume.
    let used: BTreeSet<&str> = spec
        .template
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            v.data_volume.as_ref().map(|d| d.name.as_str()).or(v
                .persistent_volume_claim
                .as_ref()
                .map(|p| p.claim_name.as_str()))
        })
        .collect();
    for (i, dvt) in spec.data_volume_templates.iter().flatten().enumerate() {
        let p = root.child("dataVolumeTemplate").index(i);
        let name = dvt
            .metadata
            .as_ref()
            .and_then(|m| m.name.as_deref())
            .unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(
                p.child("name"),
                format!("'name' field must not be empty for DataVolumeTemplate entry {p}."),
            ));
        } else if !used.contains(name) {
            errs.push(FieldError::required(
                p.clone(),
                format!("DataVolumeTemplate entry {p} must be referenced in the VMI template's 'volumes' list"),
            ));
        }
        validate_dv_spec(&dvt.spec, &p.child("spec"), &mut errs);
    }
    errs
}
