//! VirtualMachine admission: KubeVirt's vms-admitter.go (pkg/virt-api/webhooks/
//! validating-webhook/admitters) plus the storage parts of it (pkg/storage/admitters/
//! vm-storage-admitter.go, vm-storage-status.go, data-volume-template.go) and the instancetype
//! part (pkg/instancetype/webhooks/vm/admitter.go, through [`crate::instancetype`]).
//!
//! As in KubeVirt, the VM's instancetype and preference are applied to a copy of its template
//! first, and the copy is what is validated; the stored VM keeps its template as written.

use crate::admission::Request;
use crate::field::{CauseType, FieldError, Path};
use crate::instancetype;
use crate::validation::{validate_dv_spec, validate_vmi_spec, ValidationConfig, RUN_STRATEGIES};
use crate::{VirtualMachine, VirtualMachineSpec};
use std::collections::{BTreeMap, BTreeSet};

/// The run strategy of a VM that waits for a decentralized migration (behind a gate).
pub const WAIT_AS_RECEIVER: &str = "WaitAsReceiver";

/// KubeVirt's warning for a VM that still uses `spec.running`.
pub const RUNNING_DEPRECATED: &str =
    "spec.running is deprecated, please use spec.runStrategy instead.";

/// The warnings KubeVirt's VM admitter returns with an accepted VM.
pub fn warnings(vm: &VirtualMachine, _cfg: &ValidationConfig) -> Vec<String> {
    if vm.spec.running.is_some() {
        vec![RUNNING_DEPRECATED.to_string()]
    } else {
        Vec::new()
    }
}

/// The template as it will be validated: the VM's instancetype and preference applied (when
/// the request can look them up), or the conflicts and failed requirements that refuse the VM
/// (KubeVirt's `ApplyToVM` and `Check`).
fn applied_spec(vm: &VirtualMachine, req: &Request) -> Result<VirtualMachineSpec, Vec<FieldError>> {
    let mut spec = vm.spec.clone();
    // Offline validation has no objects to look up: it skips these checks.
    let Some(lookup) = req.lookup else {
        return Ok(spec);
    };
    // A VM without a template is refused for that by the spec's validation.
    if spec.template.spec.is_none() {
        return Ok(spec);
    }
    let (it, pref) = instancetype::find(vm, lookup);
    if it.is_none() && pref.is_none() {
        return Ok(spec);
    }
    if let Some(c) = instancetype::check_spread(it.as_ref(), pref.as_ref()) {
        return Err(vec![c.to_field_error()]);
    }
    let meta = spec.template.metadata.get_or_insert_with(Default::default);
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    let tspec = spec.template.spec.get_or_insert_with(Default::default);
    let base = Path::root("spec").child("template").child("spec");
    instancetype::apply(&base, it.as_ref(), pref.as_ref(), tspec, &mut annotations)
        .map_err(|c| c.to_field_errors())?;
    if !annotations.is_empty() {
        meta.annotations = Some(annotations);
    }
    let mut defaulted = tspec.clone();
    crate::defaults::default_vmi_spec(
        &mut defaulted,
        vm.metadata.name.as_deref().unwrap_or(""),
        &Default::default(),
    );
    instancetype::check_requirements(it.as_ref(), pref.as_ref(), &defaulted)
        .map_err(|(fields, msg)| vec![instancetype::requirements_error(&fields, &msg)])?;
    Ok(spec)
}

/// The reserved-label half of `ValidateVirtualMachineInstanceMetadata` on a VM template:
/// only KubeVirt's components may put KubeVirt's reserved labels on the VMIs it will become.
pub fn template_labels(
    labels: Option<&BTreeMap<String, String>>,
    field: &Path,
    privileged: bool,
    errs: &mut Vec<FieldError>,
) {
    let reserved = labels
        .into_iter()
        .flatten()
        .any(|(k, _)| super::vmi_update::RESTRICTED_VMI_LABELS.contains(&k.as_str()));
    if reserved && !privileged {
        errs.push(FieldError::new(
            CauseType::FieldValueNotSupported,
            field.child("labels"),
            super::vmi_update::LABELS_CREATE_RESTRICTED,
        ));
    }
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
    // at spec.template.metadata; its reserved-label half needs the user: `template_labels`).
    crate::validation::vmi_create::validate_metadata(
        spec.template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref()),
        &root.child("template").child("metadata"),
        cfg,
        errs,
    );
    let defaulted = match spec.template.spec.as_ref() {
        None => {
            errs.push(FieldError::required(
                root.child("template"),
                "missing virtual machine template.",
            ));
            None
        }
        Some(tspec) => {
            // The template is checked as the VMI it will become, defaults included, with the
            // VM's paths; memory may come from an instancetype, so it is not required here.
            let mut t = tspec.clone();
            crate::defaults::default_vmi_spec(&mut t, name, &Default::default());
            validate_vmi_spec(&t, &root.child("template").child("spec"), cfg, errs);
            Some(t)
        }
    };
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
    if cfg.vm_rollout_live_update {
        validate_live_update_cpu(spec, root, errs);
        if let Some(t) = &defaulted {
            validate_live_update_memory(t, root, errs);
        }
    }
}

/// Memory hotplug's block size (QEMU's recommended virtio-mem block, 2Mi), and 1Gi with 1Gi
/// hugepages (KubeVirt's pkg/liveupdate/memory).
pub const HOTPLUG_BLOCK_ALIGNMENT: i128 = 2 << 20;
pub const HOTPLUG_1G_HUGEPAGES_ALIGNMENT: i128 = 1 << 30;
/// The least guest memory a VM with memory hotplug may have.
pub const HOTPLUG_MIN_GUEST_MEMORY: i128 = 1 << 30;

/// `ValidateLiveUpdateMemory`, for a template with `memory.maxGuest` under LiveUpdate; the
/// error is reported at `spec.template.spec.domain.memory.guest`, as KubeVirt does.
pub fn live_update_memory_error(t: &crate::VirtualMachineInstanceSpec) -> Option<String> {
    use crate::quantity::Quantity;
    let domain = &t.domain;
    let memory = domain.memory.as_ref();
    let max = memory.and_then(|m| m.max_guest.as_ref())?;
    let cpu = domain.cpu.as_ref();
    if cpu.is_some_and(|c| c.realtime.is_some()) {
        return Some("Memory hotplug is not compatible with realtime VMs".into());
    }
    if cpu
        .and_then(|c| c.numa.as_ref())
        .is_some_and(|n| n.guest_mapping_passthrough.is_some())
    {
        return Some("Memory hotplug is not compatible with guest mapping passthrough".into());
    }
    if domain.launch_security.is_some() {
        return Some("Memory hotplug is not compatible with encrypted VMs".into());
    }
    let align = if memory
        .and_then(|m| m.hugepages.as_ref())
        .is_some_and(|h| h.page_size.as_deref() == Some("1Gi"))
    {
        HOTPLUG_1G_HUGEPAGES_ALIGNMENT
    } else {
        HOTPLUG_BLOCK_ALIGNMENT
    };
    let Some(guest) = memory.and_then(|m| m.guest.as_ref()) else {
        return Some("Guest memory must be configured when memory hotplug is enabled".into());
    };
    // Quantities that do not parse were refused by the template's own validation.
    let (Ok(guest), Ok(max)) = (Quantity::from_k8s(guest), Quantity::from_k8s(max)) else {
        return None;
    };
    let shown = Quantity::from_value(align);
    if guest > max {
        return Some("Guest memory is greater than the configured maxGuest memory".into());
    }
    if guest.value() % align != 0 {
        return Some(format!("Guest memory must be {shown} aligned"));
    }
    if max.value() % align != 0 {
        return Some(format!("MaxGuest must be {shown} aligned"));
    }
    if t.architecture.as_deref() != Some("amd64") {
        return Some("Memory hotplug is only available for x86_64 VMs".into());
    }
    if guest.value() < HOTPLUG_MIN_GUEST_MEMORY {
        return Some(
            "Memory hotplug is only available for VMs with at least 1Gi of guest memory".into(),
        );
    }
    None
}

fn validate_live_update_memory(
    t: &crate::VirtualMachineInstanceSpec,
    root: &Path,
    errs: &mut Vec<FieldError>,
) {
    if let Some(m) = live_update_memory_error(t) {
        errs.push(FieldError::invalid(
            root.child("template")
                .child("spec")
                .child("domain")
                .child("memory")
                .child("guest"),
            m,
        ));
    }
}

/// `validateLiveUpdateCPU`.
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

/// Everything KubeVirt's VM admitter checks, in its order: the instancetype and preference,
/// the template (as the VMI it will become), the data volume templates' namespaces, the spec
/// while a snapshot or restore is in progress, and the volume requests in the status. A write
/// to `/status` is checked only for its volume requests (`AdmitStatus`).
pub fn rules(
    vm: &VirtualMachine,
    old: Option<&VirtualMachine>,
    req: &Request,
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
    // A VM being deleted is let through, so it does not race its own deletion.
    if vm.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let mut errs = Vec::new();
    let old = old.filter(|_| req.is_update());
    if req.subresource != Some("status") {
        let spec = match applied_spec(vm, req) {
            Ok(s) => s,
            Err(e) => return e,
        };
        // A hand-written memory reference that is not one (a path, a namespace, a name that
        // is not a UUID) is refused here; a valid one reaches only this namespace's memory.
        if let Some(e) = crate::memsnap::admit_annotations(vm.metadata.annotations.as_ref()) {
            return vec![e];
        }
        let root = Path::root("spec");
        template_labels(
            spec.template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref()),
            &root.child("template").child("metadata"),
            req.privileged(),
            &mut errs,
        );
        validate_vm_spec(
            &spec,
            vm.metadata.name.as_deref().unwrap_or(""),
            &root,
            cfg,
            &mut errs,
        );
        if !errs.is_empty() {
            return errs;
        }
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
    volume_requests(vm, req, cfg, &mut errs);
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

/// `ApplyVolumeRequestOnVMISpec`: the spec with one volume request carried out.
pub fn apply_volume_request(
    spec: &mut crate::VirtualMachineInstanceSpec,
    r: &crate::VirtualMachineVolumeRequest,
) {
    if let Some(add) = &r.add_volume_options {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        if volumes.iter().any(|v| v.name == add.name) {
            return;
        }
        let mut v = crate::Volume {
            name: add.name.clone(),
            ..Default::default()
        };
        if let Some(pvc) = &add.volume_source.persistent_volume_claim {
            let mut pvc = pvc.clone();
            pvc.hotpluggable = Some(true);
            v.persistent_volume_claim = Some(pvc);
        } else if let Some(dv) = &add.volume_source.data_volume {
            let mut dv = dv.clone();
            dv.hotpluggable = Some(true);
            v.data_volume = Some(dv);
        }
        volumes.push(v);
        let mut disk = add.disk.clone();
        disk.name = add.name.clone();
        spec.domain
            .devices
            .disks
            .get_or_insert_with(Vec::new)
            .push(disk);
    } else if let Some(rm) = &r.remove_volume_options {
        if let Some(v) = spec.volumes.as_mut() {
            v.retain(|v| v.name != rm.name);
        }
        if let Some(d) = spec.domain.devices.disks.as_mut() {
            d.retain(|d| d.name != rm.name);
        }
    }
}

/// `IsMigrating`: a migration has started and not ended.
fn is_migrating(vmi: &crate::VirtualMachineInstance) -> bool {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .is_some_and(|m| m.start_timestamp.is_some() && m.end_timestamp.is_none())
}

/// `validateVolumeRequests`: each request adds or removes, once per volume; an added disk is
/// one that can be hotplugged; an added volume does not clash with the template's or the
/// running VMI's; the template and the running VMI with every request carried out are still
/// valid; no requests while the VMI migrates. The running VMI is looked up when the VM is
/// ready (and skipped offline).
fn volume_requests(
    vm: &VirtualMachine,
    req: &Request,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let Some(reqs) = vm
        .status
        .as_ref()
        .and_then(|s| s.volume_requests.as_ref())
        .filter(|r| !r.is_empty())
    else {
        return;
    };
    let field = "Status.volumeRequests";
    let ready = vm.status.as_ref().and_then(|s| s.ready) == Some(true);
    let mut vmi: Option<crate::VirtualMachineInstance> = None;
    if let (true, Some(lookup), Some(name)) = (ready, req.lookup, vm.metadata.name.as_deref()) {
        let ns = vm.metadata.namespace.as_deref().unwrap_or("");
        vmi = lookup
            .get("kubevirt.io", "virtualmachineinstances", ns, name)
            .and_then(|v| serde_json::from_value::<crate::VirtualMachineInstance>(v).ok())
            // A VMI being deleted is not checked.
            .filter(|v| v.metadata.deletion_timestamp.is_none());
    }
    let volumes =
        |spec: Option<&crate::VirtualMachineInstanceSpec>| -> BTreeMap<String, crate::Volume> {
            spec.into_iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .map(|v| (v.name.clone(), v.clone()))
                .collect()
        };
    let template = volumes(vm.spec.template.spec.as_ref());
    let running = volumes(vmi.as_ref().map(|v| &v.spec));
    let mut new_spec = vm.spec.template.spec.clone().unwrap_or_default();
    let mut added = BTreeSet::new();
    let mut removed = BTreeSet::new();
    let refuse = |errs: &mut Vec<FieldError>, m: String| errs.push(FieldError::invalid(field, m));
    for r in reqs {
        match (&r.add_volume_options, &r.remove_volume_options) {
            (Some(_), Some(_)) => {
                return refuse(errs, "VolumeRequests require either addVolumeOptions or removeVolumeOptions to be set, not both".into());
            }
            (Some(add), None) => {
                let name = add.name.as_str();
                if !added.insert(name) {
                    return refuse(
                        errs,
                        format!("AddVolume request for [{name}] aleady exists"),
                    );
                }
                // KubeVirt reports a bad boot order of the request's disk at `disks[1]`.
                if let Some(e) = super::vmi_update::hotplug_disk_configuration(
                    &add.disk,
                    name,
                    "AddVolume request",
                    field,
                    1,
                ) {
                    errs.push(e);
                    return;
                }
                let mut new = crate::Volume {
                    name: name.to_string(),
                    ..Default::default()
                };
                if add.volume_source.persistent_volume_claim.is_some() {
                    new.persistent_volume_claim = add.volume_source.persistent_volume_claim.clone();
                } else {
                    new.data_volume = add.volume_source.data_volume.clone();
                }
                if template.get(name).is_some_and(|v| *v != new) {
                    return refuse(errs, format!("AddVolume request for [{name}] conflicts with an existing volume of the same name on the vmi template."));
                }
                if running.get(name).is_some_and(|v| *v != new) {
                    return refuse(errs, format!("AddVolume request for [{name}] conflicts with an existing volume of the same name on currently running vmi"));
                }
            }
            (None, Some(rm)) => {
                let name = rm.name.as_str();
                if !removed.insert(name) {
                    return refuse(
                        errs,
                        format!("RemoveVolume request for [{name}] aleady exists"),
                    );
                }
            }
            (None, None) => {
                return refuse(errs, "VolumeRequests require one of either addVolumeOptions or removeVolumeOptions to be set".into());
            }
        }
        apply_volume_request(&mut new_spec, r);
        if let Some(v) = vmi.as_mut() {
            apply_volume_request(&mut v.spec, r);
        }
    }
    // The template, and the running VMI, with every request carried out.
    let at = Path::root("spec").child("template").child("spec");
    let before = errs.len();
    crate::defaults::default_vmi_spec(
        &mut new_spec,
        vm.metadata.name.as_deref().unwrap_or(""),
        &Default::default(),
    );
    validate_vmi_spec(&new_spec, &at, cfg, errs);
    if errs.len() > before {
        return;
    }
    if let Some(v) = &vmi {
        validate_vmi_spec(&v.spec, &at, cfg, errs);
        if errs.len() > before {
            return;
        }
        if is_migrating(v) {
            errs.push(FieldError::not_supported(
                "spec",
                "Cannot handle volume requests while VMI migration is in progress",
            ));
        }
    }
}
