//! KubeVirt's storage admitters for a VMI's disks and volumes (pkg/storage/admitters/disks.go,
//! storagehotplug.go and the volume part of vmi-create-admitter.go), with KubeVirt's messages.
//!
//! Where KubeVirt builds a field path twice over (`disks.domain.devices.disks[0]`), we report
//! the path of the field itself; docs/compat.md lists those spots.

use super::ValidationConfig;
use crate::field::{CauseType, FieldError, Path};
use crate::quantity::Quantity;
use crate::{Disk, VirtualMachineInstanceSpec, Volume};

/// KubeVirt's `cloudInitUserMaxLen` / `cloudInitNetworkMaxLen`.
pub const CLOUD_INIT_MAX_LEN: usize = 2048;
/// Smallest and largest custom block size (`minCustomBlockSize`, `maxCustomBlockSize`).
const MIN_BLOCK: i64 = 512;
const MAX_BLOCK: i64 = 2 * 1024 * 1024;
/// Paths KubeVirt keeps for itself inside the launcher pod.
const RESERVED_CONTAINER_PATHS: &[&str] = &["/var/run/kubevirt", "/var/run/libvirt"];

/// Per-disk rules of `storageadmitters.ValidateDisks` that the main loop does not cover, plus
/// the disk-to-volume rules of `validateBootOrder` (LUN and downwardMetrics targets).
pub(super) fn validate_disks(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let disks_p = root.child("domain").child("devices").child("disks");
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    for (idx, d) in spec
        .domain
        .devices
        .disks
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let dp = disks_p.index(idx);
        let volume = volumes.iter().find(|v| v.name == d.name);
        if volume.is_none() && d.cdrom.is_some() && !cfg.gate("DeclarativeHotplugVolumes") {
            errs.push(FieldError::invalid(
                dp.child("name"),
                "DeclarativeHotplugVolumes feature gate not enabled, cannot define an empty CD-ROM disk",
            ));
        }
        if let (Some(_), Some(v)) = (&d.lun, volume) {
            if v.persistent_volume_claim.is_none() && v.data_volume.is_none() {
                let lp = dp.child("lun");
                errs.push(FieldError::invalid(
                    lp.clone(),
                    format!(
                        "{lp} can only be mapped to a DataVolume or PersistentVolumeClaim volume."
                    ),
                ));
            }
        }
        if volume.is_some_and(|v| v.downward_metrics.is_some()) {
            match &d.disk {
                None => errs.push(FieldError::required(
                    dp.child("disk"),
                    format!(
                        "DownwardMetrics volume must be mapped to a disk, but disk is not set on {}.",
                        dp.child("disk")
                    ),
                )),
                Some(t) if !matches!(t.bus.as_deref().unwrap_or(""), "" | "virtio") => {
                    let bp = dp.child("disk").child("bus");
                    errs.push(FieldError::invalid(
                        bp.clone(),
                        format!(
                            "DownwardMetrics volume must be mapped to virtio bus, but {bp} is set to {}",
                            t.bus.as_deref().unwrap_or("")
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        validate_disk(d, &dp, &disks_p, errs);
    }
}

fn bus_of(d: &Disk) -> &str {
    d.disk
        .as_ref()
        .and_then(|t| t.bus.as_deref())
        .or_else(|| d.lun.as_ref().and_then(|t| t.bus.as_deref()))
        .or_else(|| d.cdrom.as_ref().and_then(|t| t.bus.as_deref()))
        .unwrap_or("")
}

fn validate_disk(d: &Disk, dp: &Path, disks_p: &Path, errs: &mut Vec<FieldError>) {
    if let Some(t) = &d.disk {
        if let Some(pci) = t.pci_address.as_deref().filter(|p| !p.is_empty()) {
            let pp = dp.child("disk").child("pciAddress");
            if t.bus.as_deref() != Some("virtio") {
                errs.push(FieldError::invalid(
                    pp.clone(),
                    format!("disk {dp}.name - setting a PCI address is only possible with bus type virtio."),
                ));
            }
            if !crate::names::pci_address_ok(pci) {
                errs.push(FieldError::invalid(
                    pp,
                    format!("disk {dp}.name has malformed PCI address ({pci})."),
                ));
            }
        }
    }
    let bus = bus_of(d);
    if d.dedicated_io_thread == Some(true) && !bus.is_empty() && bus != "virtio" {
        errs.push(FieldError::new(
            CauseType::FieldValueNotSupported,
            dp.clone(),
            format!("IOThreads are not supported for disks on a {bus} bus"),
        ));
    }
    if let Some(cache) = d.cache.as_deref() {
        if !matches!(cache, "" | "none" | "writethrough" | "writeback") {
            let cp = dp.child("cache");
            errs.push(FieldError::invalid(
                cp.clone(),
                format!("{cp} has invalid value {cache}"),
            ));
        }
    }
    if let Some(io) = d.io.as_deref() {
        if !matches!(io, "" | "native" | "threads") {
            errs.push(FieldError::not_supported(
                dp.child("io"),
                format!("Disk IO mode for {disks_p} is not supported. Supported modes are: native, threads."),
            ));
        }
    }
    if let Some(ep) = d.error_policy.as_deref() {
        if !matches!(ep, "stop" | "ignore" | "report" | "enospace") {
            let p = dp.child("errorPolicy");
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} has invalid value \"{ep}\""),
            ));
        }
    }
    validate_block_size(d, dp, bus, errs);
}

fn validate_block_size(d: &Disk, dp: &Path, bus: &str, errs: &mut Vec<FieldError>) {
    let Some(bs) = &d.block_size else {
        return;
    };
    let Some(custom) = &bs.custom else {
        return;
    };
    let bp = dp.child("blockSize");
    if bs
        .match_volume
        .as_ref()
        .is_some_and(|m| m.enabled.unwrap_or(true))
    {
        errs.push(FieldError::invalid(
            bp,
            "Block size matching can't be enabled together with a custom value",
        ));
        return;
    }
    let cp = bp.child("custom");
    let logical = i64::from(custom.logical.unwrap_or(0));
    let physical = i64::from(custom.physical.unwrap_or(0));
    if logical > physical {
        errs.push(FieldError::invalid(
            cp.child("logical"),
            format!("Logical size {logical} must be the same or less than the physical size of {physical}"),
        ));
    } else if bus == "sata" && logical != MIN_BLOCK {
        errs.push(FieldError::invalid(
            cp.child("logical"),
            format!("Logical size {logical} must be {MIN_BLOCK} for SATA devices"),
        ));
    } else if let Some(dg) = custom
        .discard_granularity
        .map(i64::from)
        .filter(|dg| logical != 0 && dg % logical != 0)
    {
        errs.push(FieldError::invalid(
            cp.child("discardGranularity"),
            format!("Discard granularity {dg} must be multiples of logical size {logical}"),
        ));
    } else {
        for (name, size) in [("logical", logical), ("physical", physical)] {
            let message = if size < MIN_BLOCK {
                format!("Provided size of {size} is less than the supported minimum size of {MIN_BLOCK}")
            } else if size > MAX_BLOCK {
                format!("Provided size of {size} is greater than the supported maximum size of {MAX_BLOCK}")
            } else if size & (size - 1) != 0 {
                format!("Provided size of {size} is not a power of 2")
            } else {
                continue;
            };
            errs.push(FieldError::invalid(cp.child(name), message));
        }
    }
}

/// `storageadmitters.ValidatePath`: an absolute path inside an image, without relative parts.
pub(super) fn validate_image_path(field: &Path, path: &str, errs: &mut Vec<FieldError>) {
    if path == "/" {
        errs.push(FieldError::invalid(
            field.clone(),
            format!("{field} must not point to root"),
        ));
        return;
    }
    let provided = path.strip_suffix('/').unwrap_or(path);
    // Go's filepath.Join("/", path): cleaned, absolute.
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let cleaned = format!("/{}", parts.join("/"));
    if cleaned != provided || path.contains('\0') {
        errs.push(FieldError::invalid(
            field.clone(),
            format!("{field} must be an absolute path to a file without relative components"),
        ));
    }
}

/// The volume rules of `validateVolumes` that the main loop does not cover, container disk
/// paths, utility volumes and `validateFilesystemsWithVirtIOFSEnabled`.
pub(super) fn validate_volumes(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    cfg: &ValidationConfig,
    errs: &mut Vec<FieldError>,
) {
    let vols_p = root.child("volumes");
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let (mut sa, mut dm, mut dump) = (0, 0, 0);
    for (idx, v) in volumes.iter().enumerate() {
        let vp = vols_p.index(idx);
        sa += usize::from(v.service_account.is_some());
        dm += usize::from(v.downward_metrics.is_some());
        dump += usize::from(v.memory_dump.is_some());
        validate_cloud_init(v, &vp, errs);
        if v.downward_metrics.is_some() && !cfg.gate("DownwardMetrics") {
            errs.push(FieldError::invalid(
                vp.clone(),
                "downwardMetrics disks are not allowed: DownwardMetrics feature gate is not enabled.",
            ));
        }
        if let Some(hd) = &v.host_disk {
            let hp = vp.child("hostDisk");
            if hd.path.is_empty() {
                errs.push(FieldError::new(
                    CauseType::FieldValueNotFound,
                    hp.child("path"),
                    format!("{} is required for hostDisk volume", hp.child("path")),
                ));
            }
            if hd.r#type != "Disk" && hd.r#type != "DiskOrCreate" {
                errs.push(FieldError::invalid(
                    hp.child("type"),
                    format!(
                        "{} has invalid value '{}', allowed are 'Disk' or 'DiskOrCreate'",
                        hp.child("type"),
                        hd.r#type
                    ),
                ));
            }
            let capacity = hd
                .capacity
                .as_ref()
                .is_some_and(|c| Quantity::from_k8s(c).is_ok_and(|q| !q.is_zero()));
            if hd.r#type == "Disk" && capacity {
                errs.push(FieldError::invalid(
                    hp.child("capacity"),
                    format!(
                        "{} is allowed to pass only with {} equal to 'DiskOrCreate'",
                        hp.child("capacity"),
                        hp.child("type")
                    ),
                ));
            }
        }
        let required = |p: Path, errs: &mut Vec<FieldError>| {
            errs.push(FieldError::invalid(
                p.clone(),
                format!("{p} is a required field"),
            ))
        };
        if let Some(cm) = &v.config_map {
            if cm.name.as_deref().unwrap_or("").is_empty() {
                required(vp.child("configMap").child("name"), errs);
            }
        }
        if let Some(s) = &v.secret {
            if s.secret_name.as_deref().unwrap_or("").is_empty() {
                required(vp.child("secret").child("secretName"), errs);
            }
        }
        if let Some(s) = &v.service_account {
            if s.service_account_name.as_deref().unwrap_or("").is_empty() {
                required(vp.child("serviceAccount").child("serviceAccountName"), errs);
            }
        }
        if let Some(path) = v
            .container_disk
            .as_ref()
            .and_then(|c| c.path.as_deref())
            .filter(|p| !p.is_empty())
        {
            validate_image_path(&vp.child("containerDisk"), path, errs);
        }
    }
    for (count, what) in [
        (sa, "serviceAccount volume"),
        (dm, "downwardMetric volume"),
        (dump, "memory dump volume"),
    ] {
        if count > 1 {
            errs.push(FieldError::invalid(
                vols_p.clone(),
                format!("{vols_p} must have max one {what} set"),
            ));
        }
    }
    if spec.utility_volumes.is_some() {
        errs.push(FieldError::invalid(
            root.child("utilityVolumes"),
            "cannot create VMI with utility volumes in spec, utility volumes can only be added via hotplug",
        ));
    }
    // Filesystems (virtiofs) backed by storage need the alpha gate; config volumes are GA.
    for fs in spec.domain.devices.filesystems.iter().flatten() {
        let storage = volumes.iter().find(|v| v.name == fs.name).is_some_and(|v| {
            v.persistent_volume_claim.is_some() || v.data_volume.is_some() || v.host_disk.is_some()
        });
        if storage && !cfg.gate("EnableVirtioFsStorageVolumes") {
            errs.push(FieldError::invalid(
                root.child("domain").child("devices").child("filesystems"),
                "virtiofs is not allowed: virtiofs feature gate is not enabled for PVC",
            ));
        }
    }
}

/// Go's `base64.StdEncoding.DecodeString`: padded standard alphabet; `\r` and `\n` are
/// skipped. Returns the decoded length.
pub fn std_base64_len(s: &str) -> Option<usize> {
    let b: Vec<u8> = s.bytes().filter(|c| *c != b'\r' && *c != b'\n').collect();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &b[..b.len() - pad];
    if !body
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
    {
        return None;
    }
    Some(b.len() / 4 * 3 - pad)
}

fn validate_cloud_init(v: &Volume, vp: &Path, errs: &mut Vec<FieldError>) {
    let named = |r: &Option<k8s_openapi::api::core::v1::LocalObjectReference>| {
        r.as_ref().is_some_and(|r| !r.name.is_empty())
    };
    let sources = [
        v.cloud_init_no_cloud.as_ref().map(|c| {
            (
                "cloudInitNoCloud",
                c.user_data.as_deref(),
                c.user_data_base64.as_deref(),
                named(&c.secret_ref),
                c.network_data.as_deref(),
                c.network_data_base64.as_deref(),
                named(&c.network_data_secret_ref),
            )
        }),
        v.cloud_init_config_drive.as_ref().map(|c| {
            (
                "cloudInitConfigDrive",
                c.user_data.as_deref(),
                c.user_data_base64.as_deref(),
                named(&c.secret_ref),
                c.network_data.as_deref(),
                c.network_data_base64.as_deref(),
                named(&c.network_data_secret_ref),
            )
        }),
    ];
    // KubeVirt looks at noCloud first and only then at configDrive.
    let Some((kind, ud, ud64, ud_secret, nd, nd64, nd_secret)) =
        sources.into_iter().flatten().next()
    else {
        return;
    };
    let cp = vp.child(kind);
    let count = |plain: Option<&str>,
                 b64: Option<&str>,
                 secret: bool,
                 field: &str,
                 errs: &mut Vec<FieldError>|
     -> (usize, usize) {
        let mut n = usize::from(secret);
        let mut len = 0;
        if let Some(b) = b64.filter(|b| !b.is_empty()) {
            n += 1;
            match std_base64_len(b) {
                Some(l) => len = l,
                None => {
                    let fp = cp.child(field);
                    errs.push(FieldError::invalid(
                        fp.clone(),
                        format!("{fp} is not a valid base64 value."),
                    ));
                }
            }
        }
        if let Some(p) = plain.filter(|p| !p.is_empty()) {
            n += 1;
            len = p.len();
        }
        (n, len)
    };
    let (user_n, user_len) = count(ud, ud64, ud_secret, "userDataBase64", errs);
    if user_n > 1 {
        errs.push(FieldError::invalid(
            cp.clone(),
            format!("{cp} must have only one userdatasource set."),
        ));
    }
    if user_len > CLOUD_INIT_MAX_LEN {
        errs.push(FieldError::invalid(
            cp.clone(),
            format!("{cp} userdata exceeds {CLOUD_INIT_MAX_LEN} byte limit. Should use UserDataSecretRef for larger data."),
        ));
    }
    let (net_n, net_len) = count(nd, nd64, nd_secret, "networkDataBase64", errs);
    if net_n > 1 {
        errs.push(FieldError::invalid(
            cp.clone(),
            format!("{cp} must have only one networkdata source set."),
        ));
    }
    if net_len > CLOUD_INIT_MAX_LEN {
        errs.push(FieldError::invalid(
            cp.clone(),
            format!("{cp} networkdata exceeds {CLOUD_INIT_MAX_LEN} byte limit. Should use NetworkDataSecretRef for larger data."),
        ));
    }
    if user_n == 0 && net_n == 0 {
        errs.push(FieldError::invalid(
            cp.clone(),
            format!("{cp} must have at least one userdatasource or one networkdatasource set."),
        ));
    }
}

/// `validateVirtualMachineInstanceSpecVolumeDisks` (VMIs only): every volume is used by a disk
/// or a filesystem; containerPath volumes only by a filesystem, outside KubeVirt's own paths.
pub(super) fn validate_volume_use(
    spec: &VirtualMachineInstanceSpec,
    root: &Path,
    errs: &mut Vec<FieldError>,
) {
    let devices = &spec.domain.devices;
    let vols_p = root.child("volumes");
    for (idx, v) in spec.volumes.iter().flatten().enumerate() {
        if v.memory_dump.is_some() {
            continue;
        }
        let vp = vols_p.index(idx);
        let disk = devices.disks.iter().flatten().any(|d| d.name == v.name);
        let fs = devices
            .filesystems
            .iter()
            .flatten()
            .any(|f| f.name == v.name);
        if !disk && !fs {
            let np = vp.child("name");
            errs.push(FieldError::invalid(
                np.clone(),
                format!("{np} '{}' not found.", v.name),
            ));
        }
        if let Some(cp) = &v.container_path {
            if disk {
                errs.push(FieldError::invalid(
                    vp.clone(),
                    format!(
                        "ContainerPath volume '{}' must be mapped to a filesystem, not a disk",
                        v.name
                    ),
                ));
            }
            if !fs {
                errs.push(FieldError::invalid(
                    vp.clone(),
                    format!("ContainerPath volume '{}' must have a matching filesystem defined in spec.domain.devices.filesystems", v.name),
                ));
            }
            if let Some(prefix) = RESERVED_CONTAINER_PATHS
                .iter()
                .find(|p| cp.path.starts_with(**p))
            {
                errs.push(FieldError::invalid(
                    vp.child("containerPath").child("path"),
                    format!(
                        "ContainerPath volume '{}' uses reserved path prefix '{prefix}'",
                        v.name
                    ),
                ));
            }
        }
    }
}
