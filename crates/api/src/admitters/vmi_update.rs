//! VMI updates: KubeVirt's vmi-update-admitter.go. Only KubeVirt's own components may change
//! a VMI's spec (they do so for hotplug and live updates, after the subresource API checked
//! the request), and only they may change the reserved `kubevirt.io/` labels.

use crate::admission::Request;
use crate::field::{CauseType, FieldError, Path};
use crate::validation::ValidationConfig;
use crate::{
    Disk, UtilityVolume, VirtualMachineInstance, VirtualMachineInstanceSpec, Volume, VolumeStatus,
};
use std::collections::{BTreeMap, BTreeSet};

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
    cfg: &ValidationConfig,
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
        errs.extend(admit_hotplug(old, new, cfg));
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
/// CPU socket and memory ceilings the domain was started with, then the volumes (utility
/// volumes, then `AdmitHotplugStorage`). The first problem only, as KubeVirt answers.
fn admit_hotplug(
    old: &VirtualMachineInstance,
    new: &VirtualMachineInstance,
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
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
    let statuses = old
        .status
        .as_ref()
        .and_then(|s| s.volume_status.as_deref())
        .unwrap_or_default();
    let utility = admit_utility_volumes(&new.spec, &old.spec, statuses, cfg);
    if !utility.is_empty() {
        return utility;
    }
    admit_hotplug_storage(old, new, cfg).into_iter().collect()
}

/// `AdmitUtilityVolumes`: KubeVirt's components may add and remove utility volumes (behind the
/// Alpha `UtilityVolumes` gate), never change one.
fn admit_utility_volumes(
    new: &VirtualMachineInstanceSpec,
    old: &VirtualMachineInstanceSpec,
    statuses: &[VolumeStatus],
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
    let causes = validate_utility_volumes(new, cfg);
    if !causes.is_empty() {
        return causes;
    }
    let utility = new.utility_volumes.as_deref().unwrap_or_default();
    // A volume virt-handler reports without `hotplugVolume` is one the domain started with.
    if let Some(u) = utility.iter().find(|u| {
        statuses
            .iter()
            .any(|s| s.hotplug_volume.is_none() && s.name == u.name)
    }) {
        return vec![FieldError::invalid(
            "",
            format!(
                "utility volume {} cannot be a permanent volume, utility volumes must always be hotplug",
                u.name
            ),
        )];
    }
    let olds: BTreeMap<&str, &UtilityVolume> = old
        .utility_volumes
        .iter()
        .flatten()
        .map(|u| (u.name.as_str(), u))
        .collect();
    let news: BTreeMap<&str, &UtilityVolume> =
        utility.iter().map(|u| (u.name.as_str(), u)).collect();
    for (name, u) in news {
        if olds.get(name).is_some_and(|o| *o != u) {
            return vec![FieldError::invalid(
                "",
                format!("utility volume {name} has changed"),
            )];
        }
    }
    Vec::new()
}

/// `validateUtilityVolumes`: the gate, names set and unique across volumes and utility
/// volumes, a claim name.
fn validate_utility_volumes(
    spec: &VirtualMachineInstanceSpec,
    cfg: &ValidationConfig,
) -> Vec<FieldError> {
    let up = Path::root("spec").child("utilityVolumes");
    let utility = spec.utility_volumes.as_deref().unwrap_or_default();
    if !utility.is_empty() && !cfg.gate("UtilityVolumes") {
        return vec![FieldError::invalid(
            &up,
            "UtilityVolumes feature gate is not enabled",
        )];
    }
    let mut errs = Vec::new();
    let mut volumes: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        volumes.insert(&v.name, i);
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, u) in utility.iter().enumerate() {
        let p = up.index(i);
        if u.name.is_empty() {
            errs.push(FieldError::required(
                p.child("name"),
                "UtilityVolume 'name' must be set",
            ));
        }
        if let Some(j) = seen.get(u.name.as_str()) {
            errs.push(FieldError::duplicate(
                p.child("name"),
                format!("{p} and {} must not have the same Name.", up.index(*j)),
            ));
        } else {
            seen.insert(&u.name, i);
        }
        if let Some(j) = volumes.get(u.name.as_str()) {
            errs.push(FieldError::duplicate(
                p.child("name"),
                format!(
                    "{p} conflicts with {}. UtilityVolume names must be unique across both volumes and utilityVolumes.",
                    Path::root("spec").child("volumes").index(*j)
                ),
            ));
        }
        if u.claim_name.is_empty() {
            errs.push(FieldError::required(
                p.child("claimName"),
                "UtilityVolume PVC 'claimName' must be set",
            ));
        }
    }
    errs
}

/// `AdmitHotplugStorage`: an update may add and remove hotplugged volumes (with their disks),
/// and change nothing else about the volumes and disks.
///
/// Which volumes are hotplugged: KubeVirt asks the VMI's `status.volumeStatus` (a volume
/// virt-handler lists without `hotplugVolume` is permanent); we ask the volume,
/// [`Volume::is_hotpluggable`], the rule our controller, handler and launcher share. KubeVirt's
/// virt-api marks every volume it hotplugs `hotpluggable`, so both agree on what KubeVirt
/// writes; a new volume that is not hotpluggable (a containerDisk, a PVC without the flag) is
/// a permanent one and changes their number.
fn admit_hotplug_storage(
    old: &VirtualMachineInstance,
    new: &VirtualMachineInstance,
    cfg: &ValidationConfig,
) -> Option<FieldError> {
    let new_vols = new.spec.volumes.as_deref().unwrap_or_default();
    let old_vols = old.spec.volumes.as_deref().unwrap_or_default();
    let new_disks = new.spec.domain.devices.disks.as_deref().unwrap_or_default();
    let old_disks = old.spec.domain.devices.disks.as_deref().unwrap_or_default();
    let fail = |m: String| Some(FieldError::invalid("", m));

    // validateExpectedDisksAndFilesystems: each volume (but a memory dump) is used by exactly
    // one disk or filesystem; a CD-ROM may be empty (DeclarativeHotplugVolumes, Beta).
    let names: BTreeSet<&str> = new_vols
        .iter()
        .filter(|v| v.memory_dump.is_none())
        .map(|v| v.name.as_str())
        .collect();
    let empty_cdroms = cfg.gate("DeclarativeHotplugVolumes");
    let mut required = new
        .spec
        .domain
        .devices
        .filesystems
        .as_ref()
        .map_or(0, Vec::len);
    for d in new_disks {
        if !names.contains(d.name.as_str()) && d.cdrom.is_some() && empty_cdroms {
            continue;
        }
        required += 1;
    }
    if required != names.len() {
        return fail(format!(
            "mismatch between volumes declared ({}) and required ({required})",
            names.len()
        ));
    }

    let (new_hot, new_perm) = split(new_vols);
    let (old_hot, old_perm) = split(old_vols);
    // Volumes being migrated to other storage (volume migration) may change their source.
    let migrated: BTreeSet<&str> = new
        .status
        .as_ref()
        .and_then(|s| s.migrated_volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|m| m.volume_name.as_str())
        .collect();
    let disk_map = |disks: &[Disk]| -> BTreeMap<String, Disk> {
        disks
            .iter()
            .filter(|d| !d.name.is_empty())
            .map(|d| (d.name.clone(), d.clone()))
            .collect()
    };
    let (new_dm, old_dm) = (disk_map(new_disks), disk_map(old_disks));

    // verifyPermanentVolumes.
    if new_perm.len() != old_perm.len() {
        return fail("Number of permanent volumes has changed".into());
    }
    for (k, v) in &new_perm {
        let Some(o) = old_perm.get(k) else {
            return fail(format!("permanent volume {k}, not found"));
        };
        if migrated.contains(k) {
            continue;
        }
        if v != o {
            return fail(format!("permanent volume {k}, changed"));
        }
        if new_dm.get(*k) != old_dm.get(*k) {
            return fail(format!("permanent disk {k}, changed"));
        }
    }

    // verifyHotplugVolumes.
    for (k, v) in &new_hot {
        match old_hot.get(k) {
            Some(o) => {
                if v != o && !migrated.contains(k) {
                    return fail(format!("hotplug volume {k}, changed"));
                }
                let Some(d) = new_dm.get(*k) else {
                    return fail(format!("volume {k} doesn't have a matching disk"));
                };
                if Some(d) != old_dm.get(*k) {
                    return fail(format!("hotplug disk {k}, changed"));
                }
            }
            None => {
                let Some(d) = new_dm.get(*k) else {
                    return fail(format!("disk {k} does not exist"));
                };
                if !old_dm.contains_key(*k) {
                    let i = new_disks.iter().position(|x| x.name == **k).unwrap_or(0);
                    if let Some(e) =
                        hotplug_disk_configuration(d, k, "Hotplug configuration", "", i)
                    {
                        return Some(e);
                    }
                }
            }
        }
    }
    None
}

type ByName<'a> = BTreeMap<&'a str, &'a Volume>;

/// The hotplugged and the permanent volumes, by name.
fn split(vols: &[Volume]) -> (ByName<'_>, ByName<'_>) {
    let mut hot = BTreeMap::new();
    let mut permanent = BTreeMap::new();
    for v in vols {
        if v.is_hotpluggable() {
            hot.insert(v.name.as_str(), v);
        } else {
            permanent.insert(v.name.as_str(), v);
        }
    }
    (hot, permanent)
}

/// `ValidateHotplugDiskConfiguration` (pkg/storage/admitters/storagehotplug.go), for VMI
/// updates and a VM's volume requests alike: a hotplugged disk is a `disk` on bus scsi or
/// virtio, or a `lun` on scsi; IO threads need virtio. Those refusals are reported at `field`;
/// a bad boot order at `spec.domain.devices.disks[index]` (KubeVirt always says `disks[1]`;
/// a VMI update names the disk's own index).
pub fn hotplug_disk_configuration(
    disk: &Disk,
    name: &str,
    prefix: &str,
    field: &str,
    index: usize,
) -> Option<FieldError> {
    let bus = disk
        .disk
        .as_ref()
        .and_then(|t| t.bus.as_deref())
        .or_else(|| disk.lun.as_ref().and_then(|t| t.bus.as_deref()))
        .or_else(|| disk.cdrom.as_ref().and_then(|t| t.bus.as_deref()))
        .unwrap_or("");
    let fail = |m: String| Some(FieldError::invalid(field, m));
    if disk.disk.is_some() {
        if bus != "scsi" && bus != "virtio" {
            return fail(format!("{prefix} for disk [{name}] requires bus to be 'scsi' or 'virtio'. [{bus}] is not permitted."));
        }
    } else if disk.lun.is_some() {
        if bus != "scsi" {
            return fail(format!(
                "{prefix} for LUN [{name}] requires bus to be 'scsi'. [{bus}] is not permitted."
            ));
        }
    } else {
        return fail(format!(
            "{prefix} for [{name}] requires diskDevice of type 'disk' or 'lun' to be used."
        ));
    }
    if disk.dedicated_io_thread == Some(true) && bus != "virtio" {
        return fail(format!(
            "{prefix} for [{name}] requires virtio bus for IOThreads."
        ));
    }
    if disk.boot_order.is_some_and(|b| b < 1) {
        let dp = Path::root("spec")
            .child("domain")
            .child("devices")
            .child("disks")
            .index(index);
        return Some(FieldError::invalid(
            dp.child("bootOrder"),
            format!("{dp} must have a boot order > 0, if supplied"),
        ));
    }
    None
}
