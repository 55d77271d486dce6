//! VirtualMachine admission: KubeVirt's vms-admitter.go (pkg/virt-api/webhooks/
//! validating-webhook/admitters) plus the storage parts of it (pkg/storage/admitters/
//! vm-storage-admitter.go, vm-storage-status.go, data-volume-template.go).

use crate::admission::Request;
use crate::field::{FieldError, Path};
use crate::validation::{validate_dv_spec, validate_vmi_spec, ValidationConfig, RUN_STRATEGIES};
use crate::{VirtualMachine, VirtualMachineSpec};
use std::collections::{BTreeMap, BTreeSet};

/// The run strategy of a VM that waits for a decentralized migration (behind a gate).
pub const WAIT_AS_RECEIVER: &str = "WaitAsReceiver";

pub fn validate_vm(vm: &VirtualMachine, cfg: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_vm_spec(
        &vm.spec,
        vm.metadata.name.as_deref().unwrap_or(""),
        &Path::root("spec"),
        cfg,
        &mut errs,
    );
    errs
}

/// KubeVirt's `ValidateVirtualMachineSpec`, for a VM and for a pool's VM template.
pub fn validate_vm_spec(
    spec: &VirtualMachineSpec,
    name: &str,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    match (spec.running, spec.run_strategy.as_deref()) {
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            root.child("running"),
            "Running and RunStrategy are mutually exclusive. Note that Running is deprecated, please use RunStrategy instead",
        )),
        (None, None) => errs.push(FieldError::invalid(
            root.child("running"),
            "RunStrategy must be specified",
        )),
        (None, Some(WAIT_AS_RECEIVER)) if !cfg.gate(super::migration::DECENTRALIZED_GATE) => {
            errs.push(FieldError::invalid(
                root.child("runStrategy"),
                format!(
                    "Invalid RunStrategy ({WAIT_AS_RECEIVER}), {} feature gate is not enabled in kubevirt resource",
                    super::migration::DECENTRALIZED_GATE
                ),
            ))
        }
        (None, Some(WAIT_AS_RECEIVER)) => {}
        (None, Some(rs)) if !RUN_STRATEGIES.contains(&rs) => errs.push(FieldError::invalid(
            root.child("runStrategy"),
            format!(
                "Invalid RunStrategy ({rs}), must be one of: {}",
                RUN_STRATEGIES.join(", ")
            ),
        )),
        _ => {}
    }
    // The template's annotations that need a feature gate (ValidateVirtualMachineInstanceMetadata
    // at spec.template.metadata; its reserved-label rule is not applied to templates yet).
    crate::validation::vmi_create::validate_metadata(
        spec.template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref()),
        &root.child("template").child("metadata"),
        cfg,
        errs,
    );
    match spec.template.spec.as_ref() {
        None => errs.push(FieldError::required(
            root.child("template"),
            "missing virtual machine template.",
        )),
        Some(tspec) => {
            // The template is checked as the VMI it will become, defaults included, with the
            // VM's paths; memory may come from an instancetype, so it is not required here.
            let mut t = tspec.clone();
            crate::defaults::default_vmi_spec(&mut t, name, &Default::default());
            validate_vmi_spec(&t, &root.child("template").child("spec"), cfg, errs);
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
        validate_dv_spec(&dvt.spec, &p.child("spec"), errs);
    }
    validate_live_update_cpu(spec, root, errs);
}

/// `validateLiveUpdateCPU` (the default rollout strategy, LiveUpdate).
fn validate_live_update_cpu(spec: &VirtualMachineSpec, root: &Path, errs: &mut Vec<FieldError>) {
    let cpu = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.domain.cpu.as_ref());
    if let Some(c) = cpu {
        let sockets = c.sockets.unwrap_or(0);
        let max = c.max_sockets.unwrap_or(0);
        if sockets != 0 && max != 0 && sockets > max {
            errs.push(FieldError::invalid(
                root.child("template")
                    .child("spec")
                    .child("domain")
                    .child("cpu")
                    .child("sockets"),
                "Number of sockets in CPU topology is greater than the maximum sockets allowed",
            ));
        }
    }
}

/// The rules that need the request: data volume template namespaces, the spec while a
/// snapshot or restore is in progress, and volume requests in the status (KubeVirt's
/// storage admitter and `validateVolumeRequests`).
pub fn rules(
    vm: &VirtualMachine,
    old: Option<&VirtualMachine>,
    req: &Request,
    _cfg: &ValidationConfig,
) -> Vec<FieldError> {
    // A VM being deleted is let through, so it does not race its own deletion.
    if vm.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let mut errs = Vec::new();
    let old = old.filter(|_| req.is_update());
    if req.subresource != Some("status") {
        data_volume_template_namespace(vm, old, &mut errs);
        if !errs.is_empty() {
            return errs;
        }
    }
    if let Some(old) = old {
        let causes = in_progress(vm, old);
        if !causes.is_empty() {
            return causes;
        }
    }
    volume_requests(vm, &mut errs);
    errs
}

fn data_volume_template_namespace(
    vm: &VirtualMachine,
    old: Option<&VirtualMachine>,
    errs: &mut Vec<FieldError>,
) {
    if old.is_some_and(|o| o.spec.data_volume_templates == vm.spec.data_volume_templates) {
        return;
    }
    let ns = vm.metadata.namespace.as_deref().unwrap_or("");
    for (i, dvt) in vm.spec.data_volume_templates.iter().flatten().enumerate() {
        let dv_ns = dvt
            .metadata
            .as_ref()
            .and_then(|m| m.namespace.as_deref())
            .unwrap_or("");
        if !dv_ns.is_empty() && dv_ns != ns {
            errs.push(FieldError::invalid(
                Path::root("spec").child("dataVolumeTemplates").index(i),
                format!("Embedded DataVolume namespace {dv_ns} differs from VM namespace {ns}"),
            ));
        }
    }
}

/// `validateSnapshotStatus` and `validateRestoreStatus`.
fn in_progress(vm: &VirtualMachine, old: &VirtualMachine) -> Vec<FieldError> {
    let status = vm.status.as_ref();
    if let Some(snap) = status.and_then(|s| s.snapshot_in_progress.as_deref()) {
        let volumes = |v: &VirtualMachine| {
            v.spec
                .template
                .spec
                .as_ref()
                .and_then(|s| s.volumes.clone())
        };
        if volumes(old).unwrap_or_default() != volumes(vm).unwrap_or_default() {
            return vec![FieldError::not_supported(
                "spec",
                format!("Cannot update vm disks or volumes until snapshot {snap:?} completes"),
            )];
        }
        let same_running = match (
            (old.spec.running, vm.spec.running),
            (
                old.spec.run_strategy.as_deref(),
                vm.spec.run_strategy.as_deref(),
            ),
        ) {
            ((Some(a), Some(b)), _) => a == b,
            (_, (Some(a), Some(b))) => a == b,
            _ => false,
        };
        if !same_running {
            return vec![FieldError::not_supported(
                "spec",
                format!("Cannot update vm running state until snapshot {snap:?} completes"),
            )];
        }
    }
    if let Some(restore) = status.and_then(|s| s.restore_in_progress.as_deref()) {
        if old.spec != vm.spec && run_strategy(old) != run_strategy(vm) {
            return vec![FieldError::not_supported(
                "spec",
                format!("Cannot update VM runStrategy until restore {restore:?} completes"),
            )];
        }
    }
    Vec::new()
}

/// The effective run strategy (`VirtualMachine.RunStrategy()`): `running` maps onto
/// Always/Halted.
fn run_strategy(vm: &VirtualMachine) -> Option<String> {
    match (vm.spec.running, &vm.spec.run_strategy) {
        (Some(true), _) => Some("Always".into()),
        (Some(false), _) => Some("Halted".into()),
        (None, rs) => rs.clone(),
    }
}

/// `validateVolumeRequests`, the parts that need no running VMI: each request adds or
/// removes, once per volume, and an added volume does not clash with the template's.
fn volume_requests(vm: &VirtualMachine, errs: &mut Vec<FieldError>) {
    let Some(reqs) = vm.status.as_ref().and_then(|s| s.volume_requests.as_ref()) else {
        return;
    };
    let field = "Status.volumeRequests";
    let template: BTreeMap<&str, &crate::Volume> = vm
        .spec
        .template
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mut added = BTreeSet::new();
    let mut removed = BTreeSet::new();
    for r in reqs {
        match (&r.add_volume_options, &r.remove_volume_options) {
            (Some(_), Some(_)) => {
                errs.push(FieldError::invalid(field, "VolumeRequests require either addVolumeOptions or removeVolumeOptions to be set, not both"));
                return;
            }
            (Some(add), None) => {
                let name = add.name.as_str();
                if !added.insert(name) {
                    errs.push(FieldError::invalid(
                        field,
                        format!("AddVolume request for [{name}] aleady exists"),
                    ));
                    return;
                }
                if let Some(existing) = template.get(name) {
                    let same = existing
                        .persistent_volume_claim
                        .as_ref()
                        .map(|p| &p.claim_name)
                        == add
                            .volume_source
                            .persistent_volume_claim
                            .as_ref()
                            .map(|p| &p.claim_name)
                        && existing.data_volume.as_ref().map(|d| &d.name)
                            == add.volume_source.data_volume.as_ref().map(|d| &d.name);
                    if !same {
                        errs.push(FieldError::invalid(field, format!("AddVolume request for [{name}] conflicts with an existing volume of the same name on the vmi template.")));
                        return;
                    }
                }
            }
            (None, Some(rm)) => {
                let name = rm.name.as_str();
                if !removed.insert(name) {
                    errs.push(FieldError::invalid(
                        field,
                        format!("RemoveVolume request for [{name}] aleady exists"),
                    ));
                    return;
                }
            }
            (None, None) => {
                errs.push(FieldError::invalid(field, "VolumeRequests require one of either addVolumeOptions or removeVolumeOptions to be set"));
                return;
            }
        }
    }
}
