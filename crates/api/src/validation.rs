//! Validation: what KubeVirt's (and CDI's) validating webhooks reject, as pure functions that
//! return every problem at once, each with its field path.
//!
//! Messages are KubeVirt's own where KubeVirt has one (pkg/virt-api/webhooks/validating-webhook/
//! admitters/vmi-create-admitter.go, vms-admitter.go, pkg/network/admitter; CDI's
//! datavolume-validate.go), so a user who greps for a KubeVirt error finds ours too. Rules of
//! our own (the microvm profile) say what to change.

use crate::arch::Arch;
use crate::field::{FieldError, Path};
use crate::names;
use crate::quantity::Quantity;
use crate::{DataVolume, DataVolumeSpec, Disk, VirtualMachineInstance, VirtualMachineInstanceSpec};
use std::collections::{BTreeMap, BTreeSet};

pub use storage::{std_base64_len, CLOUD_INIT_MAX_LEN};
/// Disk buses KubeVirt accepts, in the order its message lists them.
pub const DISK_BUSES: &[&str] = &["virtio", "scsi", "sata", "usb"];
/// Interface models KubeVirt accepts.
pub const INTERFACE_MODELS: &[&str] = &[
    "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio",
];
/// Run strategies of a VirtualMachine.
pub const RUN_STRATEGIES: &[&str] = &["Always", "Halted", "Manual", "RerunOnFailure", "Once"];
/// Our lightweight machine profile (Firecracker-style QEMU microvm).
pub const MICROVM: &str = "microvm";

mod affinity;
pub(crate) mod grace_io;
mod network;
mod storage;
pub mod vmi_create;

/// Cluster settings validation depends on (from the `KubeVirt` resource).
#[derive(Clone, Debug)]
pub struct ValidationConfig {
    /// `network.permitBridgeInterfaceOnPodNetwork` (KubeVirt default: true).
    pub permit_bridge_on_pod_network: bool,
    /// `developerConfiguration.featureGates` (KubeVirt default: none).
    pub feature_gates: Vec<String>,
    /// `developerConfiguration.disabledFeatureGates`: turns off a Beta gate (KubeVirt default:
    /// none).
    pub disabled_feature_gates: Vec<String>,
    /// `vmRolloutStrategy` is `LiveUpdate` (KubeVirt's default since v1.4). With `Stage`, guest
    /// memory may not exceed the memory limit.
    pub vm_rollout_live_update: bool,
    /// `permittedHostDevices.pciHostDevices` (KubeVirt default: none); the NVIDIA Grace rules
    /// look at their PCI selectors.
    pub permitted_pci_host_devices: Vec<crate::PciHostDevice>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            permit_bridge_on_pod_network: true,
            feature_gates: Vec::new(),
            disabled_feature_gates: Vec::new(),
            vm_rollout_live_update: true,
            permitted_pci_host_devices: Vec::new(),
        }
    }
}

/// Maturity of a KubeVirt feature gate (pkg/virt-config/featuregate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateState {
    /// Off unless listed in `featureGates`.
    Alpha,
    /// On unless listed in `disabledFeatureGates`.
    Beta,
    /// Always on.
    Ga,
}

/// The v1.9 state of the gates admission consults; a gate not listed is Alpha.
pub const GATES: &[(&str, GateState)] = &[
    ("DeclarativeHotplugVolumes", GateState::Beta),
    ("PasstBinding", GateState::Beta),
    ("RebootPolicy", GateState::Beta),
    ("GPUsWithDRA", GateState::Beta),
    ("HostDevicesWithDRA", GateState::Beta),
    ("WorkloadEncryptionSEV", GateState::Beta),
    ("ImageVolume", GateState::Beta),
    ("Snapshot", GateState::Beta),
    ("NUMA", GateState::Ga),
    ("GPU", GateState::Ga),
    ("PersistentReservation", GateState::Ga),
    ("PanicDevices", GateState::Ga),
    ("VideoConfig", GateState::Ga),
    ("EnableVirtioFsConfigVolumes", GateState::Ga),
    ("ExpandDisks", GateState::Ga),
    ("SecureExecution", GateState::Ga),
    ("LiveMigration", GateState::Ga),
    ("HotplugNICs", GateState::Ga),
    ("VMLiveUpdateFeatures", GateState::Ga),
];

impl ValidationConfig {
    /// KubeVirt's `featuregate.IsEnabled`: GA always, then an explicit enable, then an explicit
    /// disable, then Beta gates are on by default.
    pub fn gate(&self, name: &str) -> bool {
        let state = GATES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .unwrap_or(GateState::Alpha);
        if state == GateState::Ga || self.feature_gates.iter().any(|g| g == name) {
            return true;
        }
        if self.disabled_feature_gates.iter().any(|g| g == name) {
            return false;
        }
        state == GateState::Beta
    }
}

pub fn validate_vmi(vmi: &VirtualMachineInstance, cfg: &ValidationConfig) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let root = Path::root("spec");
    errs.extend(vmi_create::validate_feature_gates(&vmi.spec, cfg));
    validate_vmi_spec(&vmi.spec, &root, cfg, &mut errs);
    // Only for VMIs (not VM templates), as in KubeVirt's VMI-create admitter.
    storage::validate_volume_use(&vmi.spec, &root, &mut errs);
    require_memory(&vmi.spec, &mut errs);
    vmi_create::validate_metadata(
        vmi.metadata.annotations.as_ref(),
        &Path::root("metadata"),
        cfg,
        &mut errs,
    );
    grace_io::validate_annotations(
        &Path::root("metadata"),
        &vmi.spec,
        vmi.metadata.annotations.as_ref(),
        cfg,
        &mut errs,
    );
    errs
}

pub fn validate_dv(dv: &DataVolume) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if dv.metadata.name.as_ref().is_some_and(|n| n.len() > 253) {
        errs.push(FieldError::invalid(
            "metadata.name",
            "Name of data volume cannot be more than 253 characters",
        ));
    }
    validate_dv_spec(&dv.spec, &Path::root("spec"), &mut errs);
    errs
}

pub fn validate_dv_spec(spec: &DataVolumeSpec, p: &Path, errs: &mut Vec<FieldError>) {
    match (&spec.pvc, &spec.storage) {
        (Some(_), Some(_)) => errs.push(FieldError::invalid(
            p.child("storage"),
            "Duplicate storage definition, both target storage and target pvc defined",
        )),
        (None, None) => errs.push(FieldError::invalid(
            p.child("storage"),
            "Missing Data volume PVC or Storage",
        )),
        _ => {}
    }
    let external = spec
        .pvc
        .as_ref()
        .is_some_and(|c| c.data_source_ref.is_some() || c.data_source.is_some())
        || spec
            .storage
            .as_ref()
            .is_some_and(|c| c.data_source_ref.is_some() || c.data_source.is_some());
    let sources = spec.source.as_ref().map(|s| {
        [
            s.blank.is_some(),
            s.gcs.is_some(),
            s.http.is_some(),
            s.imageio.is_some(),
            s.pvc.is_some(),
            s.registry.is_some(),
            s.s3.is_some(),
            s.snapshot.is_some(),
            s.upload.is_some(),
            s.vddk.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    });
    match (sources, spec.source_ref.is_some()) {
        // A volume populated by someone else (a `dataSource`/`dataSourceRef` on the claim)
        // takes no CDI source (KubeVirt's data-volume-template.go, CDI's DataVolume webhook).
        (s, r) if external && (s.is_some() || r) => errs.push(FieldError::invalid(
            p.child("source"),
            "External population is incompatible with Source and SourceRef",
        )),
        (None, false) if !external => errs.push(FieldError::invalid(
            p.child("source"),
            "Data volume should have either Source, SourceRef, or be externally populated",
        )),
        (Some(_), true) => errs.push(FieldError::invalid(
            p.child("source"),
            "Data volume should have either Source or SourceRef, not both",
        )),
        (Some(0), _) => errs.push(FieldError::invalid(
            p.child("source"),
            "Missing Data volume source",
        )),
        (Some(n), _) if n > 1 => errs.push(FieldError::invalid(
            p.child("source"),
            "Multiple Data volume sources",
        )),
        _ => {}
    }
    // A `pvc` target needs a size; a `storage` target may infer it from a clone source.
    let clone_like = spec.source_ref.is_some()
        || spec
            .source
            .as_ref()
            .is_some_and(|s| s.pvc.is_some() || s.snapshot.is_some());
    let sized = |req: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
                 what: &str,
                 path: Path,
                 required: bool,
                 errs: &mut Vec<FieldError>| {
        match req.and_then(|r| r.get("storage")) {
            None if required => {
                errs.push(FieldError::invalid(path, format!("{what} size is missing")))
            }
            Some(q) => match Quantity::from_k8s(q) {
                Ok(v) if v.value() <= 0 => errs.push(FieldError::invalid(
                    path,
                    format!("{what} size can't be equal or less than zero"),
                )),
                Err(e) => errs.push(FieldError::invalid(path, format!("'{}': {e}", q.0))),
                Ok(_) => {}
            },
            None => {}
        }
    };
    if let Some(pvc) = &spec.pvc {
        let req = pvc.resources.as_ref().and_then(|r| r.requests.as_ref());
        sized(
            req,
            "PVC",
            p.child("pvc")
                .child("resources")
                .child("requests")
                .child("storage"),
            !clone_like,
            errs,
        );
        if pvc.access_modes.as_ref().is_none_or(Vec::is_empty) && !clone_like {
            errs.push(FieldError::required(
                p.child("pvc").child("accessModes"),
                "at least 1 access mode is required",
            ));
        }
    }
    if let Some(st) = &spec.storage {
        let req = st.resources.as_ref().and_then(|r| r.requests.as_ref());
        sized(
            req,
            "Storage",
            p.child("storage")
                .child("resources")
                .child("requests")
                .child("storage"),
            false,
            errs,
        );
    }
}

/// KubeVirt's `ValidateVirtualMachineInstanceMandatoryFields` (VMIs only, after defaulting).
fn require_memory(spec: &VirtualMachineInstanceSpec, errs: &mut Vec<FieldError>) {
    let d = &spec.domain;
    let has_request = d
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .is_some_and(|q| Quantity::from_k8s(q).is_ok_and(|q| !q.is_zero()));
    let has_guest = d.memory.as_ref().is_some_and(|m| m.guest.is_some());
    let has_hugepages = d
        .memory
        .as_ref()
        .and_then(|m| m.hugepages.as_ref())
        .is_some_and(|h| h.page_size.is_some());
    if !(has_request || has_guest || has_hugepages) {
        errs.push(FieldError::required(
            "",
            "no memory requested, at least one of 'spec.domain.memory.guest', 'spec.domain.memory.hugepages.size' or 'spec.domain.resources.requests.memory' must be set",
        ));
    }
}

/// One disk target (disk, lun, cdrom) as a (name, bus, readonly) triple.
fn targets(d: &Disk) -> Vec<(&'static str, Option<&str>, Option<bool>)> {
    let mut t = Vec::new();
    if let Some(x) = &d.disk {
        t.push(("disk", x.bus.as_deref(), x.readonly));
    }
    if let Some(x) = &d.lun {
        t.push(("lun", x.bus.as_deref(), x.readonly));
    }
    if let Some(x) = &d.cdrom {
        t.push(("cdrom", x.bus.as_deref(), x.readonly));
    }
    t
}

/// The checks KubeVirt applies to a VMI spec; `root` is `spec` for a VMI and
/// `spec.template.spec` for a VM.
pub fn validate_vmi_spec(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let domain = root.child("domain");
    let devices_p = domain.child("devices");
    let devices = &spec.domain.devices;
    let disks = devices.disks.as_deref().unwrap_or_default();
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let machine = spec
        .domain
        .machine
        .as_ref()
        .and_then(|m| m.r#type.as_deref())
        .unwrap_or("");

    // An unset architecture is the cluster default's (amd64 here); anything else must be one
    // this implementation runs: it picks the emulator binary and the machine.
    let arch_value = spec.architecture.as_deref().unwrap_or("");
    let arch = if arch_value.is_empty() {
        Some(Arch::Amd64)
    } else {
        Arch::parse(arch_value)
    };
    // (An unknown one is refused at spec.architecture by `vmi_create::validate_arch`.)
    let allowed = match arch {
        Some(Arch::Amd64)
            if !machine.is_empty()
                && machine != MICROVM
                && !machine.starts_with("q35")
                && !machine.starts_with("pc-q35") =>
        {
            Some(format!("q35* pc-q35* {MICROVM}"))
        }
        Some(Arch::Arm64) if !machine.is_empty() && !machine.starts_with("virt") => {
            Some("virt*".to_string())
        }
        Some(Arch::S390x) if !machine.is_empty() && !machine.starts_with("s390-ccw-virtio") => {
            Some("s390-ccw-virtio*".to_string())
        }
        _ => None,
    };
    if let Some(allowed) = allowed {
        errs.push(FieldError::invalid(
            domain.child("machine").child("type"),
            format!(
                "{domain}.machine.type is not supported: {machine} (allowed values: [{allowed}])"
            ),
        ));
    }

    // Disks.
    let volume_names: BTreeSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    let mut seen_disks: BTreeMap<&str, usize> = BTreeMap::new();
    let mut boot_orders: BTreeSet<i32> = BTreeSet::new();
    let boot_orders = &mut boot_orders;
    for (i, d) in disks.iter().enumerate() {
        let dp = devices_p.child("disks").index(i);
        if let Some(j) = seen_disks.get(d.name.as_str()) {
            let other = devices_p.child("disks").index(*j);
            errs.push(FieldError::invalid(
                dp.child("name"),
                format!("{dp} and {other} must not have the same Name."),
            ));
        } else {
            seen_disks.insert(&d.name, i);
        }
        // The disk name becomes a QEMU id and, through its volume, a file name.
        if let Some(form) = names::dns1123_label(&d.name) {
            errs.push(FieldError::invalid(
                dp.child("name"),
                format!("{dp}.name {:?} is not a valid disk name: {form}", d.name),
            ));
        }
        if let Some(serial) = d.serial.as_deref() {
            if !serial.is_empty() && !names::serial_chars_ok(serial) {
                errs.push(FieldError::invalid(
                    dp.child("serial"),
                    format!(
                        "{dp} must be made up of the following characters {}, if specified",
                        names::SERIAL_CHARS
                    ),
                ));
            }
            if serial.chars().count() > names::SERIAL_MAX {
                errs.push(FieldError::invalid(
                    dp.child("serial"),
                    format!(
                        "{dp} must be less than or equal to {} in length, if specified",
                        names::SERIAL_MAX
                    ),
                ));
            }
        }
        if d.cdrom.is_none() && !volume_names.contains(d.name.as_str()) {
            errs.push(FieldError::invalid(
                dp.child("name"),
                format!("{dp}.Name '{}' not found.", d.name),
            ));
        }
        let ts = targets(d);
        if ts.len() > 1 {
            errs.push(FieldError::invalid(
                dp.clone(),
                format!("{dp} can only have a single target type defined"),
            ));
        }
        for (kind, bus, readonly) in &ts {
            let bp = dp.child(kind).child("bus");
            match bus.unwrap_or("") {
                "" => {}
                "ide" => errs.push(FieldError::invalid(bp.clone(), "IDE bus is not supported")),
                b if !DISK_BUSES.contains(&b) => errs.push(FieldError::invalid(
                    bp.clone(),
                    format!(
                        "{dp} is set with an unrecognized bus {b}, must be one of: [{}]",
                        DISK_BUSES.join(" ")
                    ),
                )),
                "virtio" if *kind == "cdrom" => errs.push(FieldError::invalid(
                    bp.clone(),
                    "Bus type virtio is invalid for CD-ROM device",
                )),
                "sata" if *kind == "disk" && *readonly == Some(true) => errs.push(
                    FieldError::invalid(bp.clone(), "sata hard-disks do not support read-only."),
                ),
                _ => {}
            }
            if machine == MICROVM {
                if *kind == "cdrom" {
                    errs.push(FieldError::invalid(
                        dp.child("cdrom"),
                        format!("{dp} is a cdrom: machine type microvm has no cdrom device; use a disk with bus virtio"),
                    ));
                } else if bus.unwrap_or("") != "virtio" {
                    errs.push(FieldError::invalid(
                        bp,
                        format!(
                            "{dp} uses bus {}: machine type microvm supports only bus virtio",
                            bus.unwrap_or("<unset, defaults to sata>")
                        ),
                    ));
                }
            }
        }
        if let Some(bo) = d.boot_order {
            check_boot_order(bo, &dp, boot_orders, errs);
        }
    }

    // Volumes.
    let mut seen_volumes: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, v) in volumes.iter().enumerate() {
        let vp = root.child("volumes").index(i);
        if let Some(j) = seen_volumes.get(v.name.as_str()) {
            let other = root.child("volumes").index(*j);
            errs.push(FieldError::invalid(
                vp.child("name"),
                format!("{vp} and {other} must not have the same Name."),
            ));
        } else {
            seen_volumes.insert(&v.name, i);
        }
        // Volume names become file names in the VMI directory (overlays, cloud-init images).
        if let Some(form) = names::dns1123_label(&v.name) {
            errs.push(FieldError::invalid(
                vp.child("name"),
                format!("{vp}.name {:?} is not a valid volume name: {form}", v.name),
            ));
        }
        if let Some(hd) = &v.host_disk {
            if let Some(problem) = names::absolute_clean_path(&hd.path) {
                errs.push(FieldError::invalid(
                    vp.child("hostDisk").child("path"),
                    format!("{vp}.hostDisk.path {:?} {problem}", hd.path),
                ));
            }
        }
        let sources = [
            v.cloud_init_config_drive.is_some(),
            v.cloud_init_no_cloud.is_some(),
            v.config_map.is_some(),
            v.container_disk.is_some(),
            v.container_path.is_some(),
            v.data_volume.is_some(),
            v.downward_api.is_some(),
            v.downward_metrics.is_some(),
            v.empty_disk.is_some(),
            v.ephemeral.is_some(),
            v.host_disk.is_some(),
            v.memory_dump.is_some(),
            v.persistent_volume_claim.is_some(),
            v.secret.is_some(),
            v.service_account.is_some(),
            v.sysprep.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if sources != 1 {
            errs.push(FieldError::invalid(
                vp.clone(),
                format!("{vp} must have exactly one source type set"),
            ));
        }
        if v.host_disk.is_some() && !cfg.gate("HostDisk") {
            errs.push(FieldError::invalid(
                vp.clone(),
                "HostDisk feature gate is not enabled",
            ));
        }
        if let Some(dv) = &v.data_volume {
            if dv.name.is_empty() {
                errs.push(FieldError::required(
                    vp.child("name"),
                    "DataVolume 'name' must be set",
                ));
            }
        }
    }
    storage::validate_disks(spec, root, cfg, errs);
    storage::validate_volumes(spec, root, cfg, errs);

    validate_resources(spec, &domain, cfg, errs);
    validate_firmware(spec, &domain, machine, errs);
    validate_cpu_names(spec, &domain, errs);
    network::validate_network(spec, root, cfg, machine, boot_orders, errs);
    vmi_create::validate_spec(spec, root, cfg, errs);
}

fn validate_resources(
    spec: &VirtualMachineInstanceSpec,
    domain: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let res = spec.domain.resources.as_ref();
    let rp = domain.child("resources");
    let get = |which: &str, key: &str, errs: &mut Vec<FieldError>| -> Option<(Quantity, String)> {
        let q = res
            .and_then(|r| {
                if which == "requests" {
                    r.requests.as_ref()
                } else {
                    r.limits.as_ref()
                }
            })
            .and_then(|m| m.get(key))?;
        let path = rp.child(which).child(key);
        match Quantity::from_k8s(q) {
            Ok(v) if v.is_negative() => {
                errs.push(FieldError::invalid(
                    path.clone(),
                    format!("{path} '{}': must be greater than or equal to 0.", q.0),
                ));
                None
            }
            Ok(v) => Some((v, q.0.clone())),
            Err(e) => {
                errs.push(FieldError::invalid(
                    path.clone(),
                    format!("{path} '{}': {e}", q.0),
                ));
                None
            }
        }
    };
    let req_mem = get("requests", "memory", errs);
    let lim_mem = get("limits", "memory", errs);
    let req_cpu = get("requests", "cpu", errs);
    let lim_cpu = get("limits", "cpu", errs);
    let req_mem_p = rp.child("requests").child("memory");
    let lim_mem_p = rp.child("limits").child("memory");
    if let (Some((r, rs)), Some((l, ls))) = (&req_mem, &lim_mem) {
        if !l.is_zero() && r > l {
            errs.push(FieldError::invalid(
                req_mem_p.clone(),
                format!("{req_mem_p} '{rs}' is greater than {lim_mem_p} '{ls}'"),
            ));
        }
    }
    if let Some((r, rs)) = &req_mem {
        if !r.is_zero() && r.value() < 1_000_000 {
            errs.push(FieldError::invalid(
                req_mem_p.clone(),
                format!("{req_mem_p} '{rs}': must be greater than or equal to 1M."),
            ));
        }
    }
    if let (Some((r, rs)), Some((l, ls))) = (&req_cpu, &lim_cpu) {
        if !l.is_zero() && r.milli() > l.milli() {
            let p = rp.child("requests").child("cpu");
            let lp = rp.child("limits").child("cpu");
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} '{rs}' is greater than {lp} '{ls}'"),
            ));
        }
    }
    let memory = spec.domain.memory.as_ref();
    // `validateGuestMemoryLimit`: only under the `Stage` rollout strategy; with the default
    // `LiveUpdate` the limit may be below guest memory (memory hotplug raises it later).
    if let (Some(guest), Some((l, ls))) = (memory.and_then(|m| m.guest.as_ref()), &lim_mem) {
        let gp = domain.child("memory").child("guest");
        match Quantity::from_k8s(guest) {
            Ok(g) if !cfg.vm_rollout_live_update && !l.is_zero() && g > *l => {
                errs.push(FieldError::invalid(
                    gp.clone(),
                    format!(
                    "{gp} '{}' must be equal to or less than the memory limit {lim_mem_p} '{ls}'",
                    guest.0
                ),
                ))
            }
            Err(e) => errs.push(FieldError::invalid(
                gp.clone(),
                format!("{gp} '{}': {e}", guest.0),
            )),
            _ => {}
        }
    }
    if let Some(ps) = memory
        .and_then(|m| m.hugepages.as_ref())
        .and_then(|h| h.page_size.as_deref())
    {
        let hp = domain.child("memory").child("hugepages").child("pageSize");
        match Quantity::parse(ps) {
            Err(e) => errs.push(FieldError::invalid(hp.clone(), format!("{hp} '{ps}': {e}"))),
            Ok(page) => {
                // The memory the guest gets must be whole pages: the request, else guest
                // memory, else the limit.
                let mem = req_mem
                    .clone()
                    .filter(|(q, _)| !q.is_zero())
                    .or_else(|| {
                        memory
                            .and_then(|m| m.guest.as_ref())
                            .and_then(|g| Quantity::from_k8s(g).ok().map(|q| (q, g.0.clone())))
                    })
                    .or_else(|| lim_mem.clone());
                if let Some((m, ms)) = mem {
                    if page.value() > 0 && m < page {
                        errs.push(FieldError::invalid(
                            req_mem_p.clone(),
                            format!("{req_mem_p} '{ms}' must be equal to or larger than page size {hp} '{ps}'"),
                        ));
                    } else if page.value() > 0 && m.value() % page.value() != 0 {
                        errs.push(FieldError::invalid(
                            req_mem_p.clone(),
                            format!(
                                "{req_mem_p} '{ms}' is not a multiple of the page size {hp} '{ps}'"
                            ),
                        ));
                    }
                }
            }
        }
    }
}

fn validate_firmware(
    spec: &VirtualMachineInstanceSpec,
    domain: &Path,
    machine: &str,
    errs: &mut Vec<FieldError>,
) {
    let fw = spec.domain.firmware.as_ref();
    if let Some(serial) = fw.and_then(|f| f.serial.as_deref()) {
        let sp = domain.child("firmware").child("serial");
        if serial.chars().count() > names::SERIAL_MAX {
            errs.push(FieldError::invalid(
                sp.clone(),
                format!(
                    "{sp} must be less than or equal to {} in length, if specified",
                    names::SERIAL_MAX
                ),
            ));
        }
        if !names::serial_chars_ok(serial) {
            errs.push(FieldError::invalid(
                sp.clone(),
                format!(
                    "{sp} must be made up of the following characters {}, if specified",
                    names::SERIAL_CHARS
                ),
            ));
        }
    }
    let bl = fw.and_then(|f| f.bootloader.as_ref());
    let efi = bl.and_then(|b| b.efi.as_ref());
    if efi.is_some() && bl.is_some_and(|b| b.bios.is_some()) {
        errs.push(FieldError::invalid(
            domain.child("firmware").child("bootloader"),
            format!("{domain}.firmware.bootloader has both EFI and BIOS configured, but they are mutually exclusive."),
        ));
    }
    if let Some(efi) = efi {
        let secure_boot = efi.secure_boot.unwrap_or(true);
        let smm = spec
            .domain
            .features
            .as_ref()
            .and_then(|f| f.smm.as_ref())
            .is_some_and(|s| s.enabled.unwrap_or(true));
        // TDX firmware keeps its Secure Boot keys in ROM and needs no SMM.
        let tdx = spec
            .domain
            .launch_security
            .as_ref()
            .is_some_and(|l| l.tdx.is_some());
        if secure_boot && !smm && !tdx {
            errs.push(FieldError::invalid(
                domain.clone(),
                format!("{domain} has EFI SecureBoot enabled. SecureBoot requires SMM, which is currently disabled."),
            ));
        }
    }
    if machine == MICROVM {
        if efi.is_some() {
            errs.push(FieldError::invalid(
                domain.child("firmware").child("bootloader").child("efi"),
                "machine type microvm boots a kernel directly and has no EFI firmware: remove firmware.bootloader.efi",
            ));
        }
        if fw.and_then(|f| f.kernel_boot.as_ref()).is_none() {
            errs.push(FieldError::required(
                domain.child("firmware").child("kernelBoot"),
                "machine type microvm has no firmware to boot a disk: set firmware.kernelBoot with a kernel (and initrd)",
            ));
        }
    }
}

/// CPU model and feature names become parts of QEMU's `-cpu` option: only names of the form
/// QEMU uses pass (our rule; KubeVirt leaves this to libvirt).
fn validate_cpu_names(
    spec: &VirtualMachineInstanceSpec,
    domain: &Path,
    errs: &mut Vec<FieldError>,
) {
    let Some(cpu) = spec.domain.cpu.as_ref() else {
        return;
    };
    let cp = domain.child("cpu");
    if let Some(model) = cpu.model.as_deref().filter(|m| !m.is_empty()) {
        if let Some(form) = names::cpu_name(model) {
            errs.push(FieldError::invalid(
                cp.child("model"),
                format!("{cp}.model {model:?} is not a CPU model name: use {form}"),
            ));
        }
    }
    for (i, f) in cpu
        .features
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if let Some(form) = names::cpu_name(&f.name) {
            let fp = cp.child("features").index(i);
            errs.push(FieldError::invalid(
                fp.child("name"),
                format!(
                    "{fp}.name {:?} is not a CPU feature name: use {form}",
                    f.name
                ),
            ));
        }
    }
}

/// Boot orders start at 1 and are unique across disks and interfaces (disks are seen first).
pub(crate) fn check_boot_order(
    bo: i32,
    device: &Path,
    seen: &mut BTreeSet<i32>,
    errs: &mut Vec<FieldError>,
) {
    let bp = device.child("bootOrder");
    if bo < 1 {
        errs.push(FieldError::invalid(
            bp,
            format!("{device} must have a boot order > 0, if supplied"),
        ));
    } else if !seen.insert(bo) {
        errs.push(FieldError::invalid(
            bp.clone(),
            format!("Boot order for {bp} already set for a different device."),
        ));
    }
}
