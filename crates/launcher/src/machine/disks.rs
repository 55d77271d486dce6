//! `spec.domain.devices.disks` + `spec.volumes` → [`DiskSpec`]s (bus, cache, source file).

use super::*;

/// A disk or volume field the QEMU backend cannot honour. Every variant carries the field path
/// (`spec.domain.devices.disks[i]…` or `spec.volumes[i]…`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    /// Volume names become QEMU ids and file names: a DNS-1123 label only.
    #[error("{field}: {reason}")]
    VolumeName { field: String, reason: String },
    /// Disk names become QEMU ids and file names: a DNS-1123 label only.
    #[error("{field}: {reason}")]
    DiskName { field: String, reason: String },
    #[error("{field}: disk {disk} has no volume of the same name")]
    NoVolume { field: String, disk: String },
    #[error("{field}: bus {bus} is not supported by the QEMU backend: use virtio, sata or scsi")]
    Bus { field: String, bus: String },
    #[error("{field}: microvm has no cdrom device: use a disk with bus virtio")]
    MicrovmCdrom { field: String },
    #[error("{field}: microvm supports only virtio")]
    MicrovmBus { field: String },
    /// QEMU's arm `virt` machine has no SATA controller.
    #[error("{field}: Arm64 not support this disk bus type, please use virtio or scsi")]
    Arm64Bus { field: String },
    /// QEMU's `s390-ccw-virtio` machine has no SATA (no PCI, no AHCI).
    #[error("{field}: s390x has no SATA: use virtio or scsi")]
    S390xBus { field: String },
    #[error("{field}: Bus type virtio is invalid for CD-ROM device")]
    VirtioCdrom { field: String },
    #[error("{field}: sata hard-disks do not support read-only (QEMU's ide-hd refuses a read-only node): use bus virtio")]
    ReadonlySata { field: String },
    #[error("{field}: unknown cache mode {cache}: use none, writethrough or writeback")]
    Cache { field: String, cache: String },
    #[error("{field}: unknown io mode {io}: use native or threads")]
    Io { field: String, io: String },
    #[error("{field}: io native needs cache none (O_DIRECT)")]
    NativeIoNeedsCacheNone { field: String },
    #[error("{field}: {order} must be 1 or more")]
    BootOrder { field: String, order: i64 },
    /// KubeVirt's (and libvirt's) serial rule; the serial becomes a QEMU device property.
    #[error("{field}: {serial:?} must be made up of the characters [A-Za-z0-9_.+-] and be at most 256 long")]
    Serial { field: String, serial: String },
    /// The file named after the disk would not be a plain file of the VMI directory.
    #[error("{field}: {reason}")]
    FileName { field: String, reason: String },
    #[error("{field}: {reason}")]
    HostDiskPath { field: String, reason: String },
    #[error("{field}: {path}: a hostDisk cannot be a system file or device (the launcher gives the image to QEMU's user)")]
    HostDiskSystemPath { field: String, path: String },
    #[error("{field}: DiskOrCreate needs a capacity")]
    HostDiskNoCapacity { field: String },
    #[error("{field}: unknown type {disk_type}: use Disk or DiskOrCreate")]
    HostDiskType { field: String, disk_type: String },
    #[error("{field}: PersistentVolumeClaim {claim} is not available on this node")]
    PvcUnavailable { field: String, claim: String },
    #[error("{field}: DataVolume {name} is not available on this node")]
    DataVolumeUnavailable { field: String, name: String },
    #[error("{field}: volume {volume} has a source the launcher does not support (containerDisk, hostDisk, persistentVolumeClaim, dataVolume, emptyDisk, cloudInitNoCloud, cloudInitConfigDrive)")]
    UnsupportedSource { field: String, volume: String },
    #[error("spec.domain.devices.disks: q35 has 6 SATA ports: use virtio or scsi for more disks")]
    TooManySata,
    #[error(transparent)]
    Capacity(#[from] SizeError),
    #[error(transparent)]
    CloudInit(#[from] CloudInitError),
}

impl DiskError {
    /// The KubeVirt field path the error is about.
    pub fn field(&self) -> &str {
        match self {
            DiskError::VolumeName { field, .. }
            | DiskError::DiskName { field, .. }
            | DiskError::NoVolume { field, .. }
            | DiskError::Bus { field, .. }
            | DiskError::MicrovmCdrom { field }
            | DiskError::MicrovmBus { field }
            | DiskError::Arm64Bus { field }
            | DiskError::S390xBus { field }
            | DiskError::VirtioCdrom { field }
            | DiskError::ReadonlySata { field }
            | DiskError::Cache { field, .. }
            | DiskError::Io { field, .. }
            | DiskError::NativeIoNeedsCacheNone { field }
            | DiskError::BootOrder { field, .. }
            | DiskError::Serial { field, .. }
            | DiskError::FileName { field, .. }
            | DiskError::HostDiskPath { field, .. }
            | DiskError::HostDiskSystemPath { field, .. }
            | DiskError::HostDiskNoCapacity { field }
            | DiskError::HostDiskType { field, .. }
            | DiskError::PvcUnavailable { field, .. }
            | DiskError::DataVolumeUnavailable { field, .. }
            | DiskError::UnsupportedSource { field, .. } => field,
            DiskError::TooManySata => "spec.domain.devices.disks",
            DiskError::Capacity(e) => e.field(),
            DiskError::CloudInit(e) => e.field(),
        }
    }
}

/// The data of a cloudInitNoCloud / cloudInitConfigDrive volume cannot be read
/// (`cloudinit::from_volume`). `field` is the volume field, e.g.
/// `spec.volumes[0].cloudInitNoCloud.userDataBase64`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloudInitError {
    #[error("{field}: not a cloud-init volume")]
    NotCloudInit { field: String },
    #[error("{field}: not valid base64: {reason}")]
    Base64 { field: String, reason: String },
    #[error("{field}: not UTF-8 text")]
    NotUtf8 { field: String },
    #[error("{field}: the user data Secret was not resolved for the launcher")]
    UserDataSecret { field: String },
    #[error("{field}: the network data Secret was not resolved for the launcher")]
    NetworkDataSecret { field: String },
}

impl CloudInitError {
    /// The KubeVirt field path the error is about.
    pub fn field(&self) -> &str {
        match self {
            CloudInitError::NotCloudInit { field }
            | CloudInitError::Base64 { field, .. }
            | CloudInitError::NotUtf8 { field }
            | CloudInitError::UserDataSecret { field }
            | CloudInitError::NetworkDataSecret { field } => field,
        }
    }
}

/// A spec name that becomes a QEMU id or a file name must be a DNS-1123 label.
fn label(name: &str) -> Result<(), String> {
    crate::paths::dns1123_label(name)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `dir/component` for a file named after disk `dp` (see `paths::beneath`).
fn in_dir(dir: &Path, component: &str, dp: &str) -> Result<PathBuf, DiskError> {
    crate::paths::beneath(dir, component).map_err(|e| DiskError::FileName {
        field: format!("{dp}.name"),
        reason: e.to_string(),
    })
}

pub(super) fn disks(ctx: &Ctx) -> Result<Vec<DiskSpec>, DiskError> {
    let (vmi, env, microvm) = (ctx.vmi, ctx.env, ctx.microvm);
    let (name, namespace) = (ctx.name, ctx.namespace);
    let spec = &vmi.spec;
    let dev = &spec.domain.devices;
    // Volumes by name, then disks.
    let volumes: BTreeMap<&str, (usize, &kubevirt_api::Volume)> = spec
        .volumes
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), (i, v)))
        .collect();
    // Names become QEMU ids and file names (disks/<name>.qcow2): admission allows DNS-1123
    // labels only, and a VMI that bypassed it must not get further (security issue 10).
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        label(&v.name).map_err(|reason| DiskError::VolumeName {
            field: format!("spec.volumes[{i}].name"),
            reason,
        })?;
    }
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.to_string());
    let mut disks = Vec::new();
    for (i, d) in dev.disks.iter().flatten().enumerate() {
        let dp = format!("spec.domain.devices.disks[{i}]");
        label(&d.name).map_err(|reason| DiskError::DiskName {
            field: format!("{dp}.name"),
            reason,
        })?;
        let Some(&(vi, vol)) = volumes.get(d.name.as_str()) else {
            return Err(DiskError::NoVolume {
                field: format!("{dp}.name"),
                disk: d.name.clone(),
            });
        };
        let vp = format!("spec.volumes[{vi}]");
        let (device, bus, readonly, bus_field) = if let Some(t) = &d.disk {
            (
                DiskDevice::Disk,
                t.bus.clone(),
                t.readonly.unwrap_or(false),
                format!("{dp}.disk.bus"),
            )
        } else if let Some(t) = &d.cdrom {
            (
                DiskDevice::Cdrom,
                t.bus.clone(),
                t.readonly.unwrap_or(true),
                format!("{dp}.cdrom.bus"),
            )
        } else if let Some(t) = &d.lun {
            (
                DiskDevice::Lun,
                t.bus.clone(),
                t.readonly.unwrap_or(false),
                format!("{dp}.lun.bus"),
            )
        } else {
            (DiskDevice::Disk, None, false, format!("{dp}.disk.bus"))
        };
        let bus = match bus.as_deref().unwrap_or("sata") {
            "virtio" => Bus::Virtio,
            "sata" => Bus::Sata,
            "scsi" => Bus::Scsi,
            b => {
                return Err(DiskError::Bus {
                    field: bus_field,
                    bus: b.into(),
                })
            }
        };
        if microvm {
            if device == DiskDevice::Cdrom {
                return Err(DiskError::MicrovmCdrom {
                    field: format!("{dp}.cdrom"),
                });
            }
            if bus != Bus::Virtio {
                return Err(DiskError::MicrovmBus { field: bus_field });
            }
        }
        if ctx.profile == Profile::Virt && bus == Bus::Sata {
            return Err(DiskError::Arm64Bus { field: bus_field });
        }
        if ctx.profile == Profile::S390Ccw && bus == Bus::Sata {
            return Err(DiskError::S390xBus { field: bus_field });
        }
        if device == DiskDevice::Cdrom && bus == Bus::Virtio {
            return Err(DiskError::VirtioCdrom { field: bus_field });
        }
        if device != DiskDevice::Cdrom && bus == Bus::Sata && readonly {
            return Err(DiskError::ReadonlySata {
                field: format!("{dp}.disk.readonly"),
            });
        }
        let cache = match d.cache.as_deref() {
            None | Some("") => None,
            Some(c @ ("none" | "writethrough" | "writeback")) => Some(c.to_string()),
            Some(c) => {
                return Err(DiskError::Cache {
                    field: format!("{dp}.cache"),
                    cache: c.into(),
                })
            }
        };
        let io = match d.io.as_deref() {
            None | Some("") => None,
            Some(m @ ("native" | "threads")) => Some(m.to_string()),
            Some(m) => {
                return Err(DiskError::Io {
                    field: format!("{dp}.io"),
                    io: m.into(),
                })
            }
        };
        if io.as_deref() == Some("native") && cache.as_deref() != Some("none") {
            return Err(DiskError::NativeIoNeedsCacheNone {
                field: format!("{dp}.io"),
            });
        }
        let boot_order = match d.boot_order {
            None => None,
            Some(n) if n > 0 => Some(n as u32),
            Some(n) => {
                return Err(DiskError::BootOrder {
                    field: format!("{dp}.bootOrder"),
                    order: n.into(),
                })
            }
        };
        // Admission checks the serial too; a VMI that bypassed it must not reach QEMU.
        if let Some(serial) = d.serial.as_deref().filter(|s| !s.is_empty()) {
            if !kubevirt_api::names::serial_chars_ok(serial)
                || serial.chars().count() > kubevirt_api::names::SERIAL_MAX
            {
                return Err(DiskError::Serial {
                    field: format!("{dp}.serial"),
                    serial: serial.into(),
                });
            }
        }
        let disk_dir = crate::api::VmiDir::unchecked(&env.dir).disks_dir();
        let (path, format, source) = if let Some(cd) = &vol.container_disk {
            (
                in_dir(&disk_dir, &format!("{}.qcow2", d.name), &dp)?,
                DiskFormat::Qcow2,
                DiskSource::ContainerDisk {
                    image: cd.image.clone(),
                    path: cd.path.clone(),
                    base_dir: in_dir(
                        &crate::api::VmiDir::unchecked(&env.dir).container_disks_dir(),
                        &d.name,
                        &dp,
                    )?,
                },
            )
        } else if let Some(hd) = &vol.host_disk {
            let path = PathBuf::from(&hd.path);
            // The launcher creates and chowns this file as root: only an absolute path
            // without `.`/`..` (symlinks are refused when it is opened, volumes.rs).
            crate::paths::check_normal_absolute(&path).map_err(|e| DiskError::HostDiskPath {
                field: format!("{vp}.hostDisk.path"),
                reason: e.to_string(),
            })?;
            if crate::paths::is_system_path(&path) {
                return Err(DiskError::HostDiskSystemPath {
                    field: format!("{vp}.hostDisk.path"),
                    path: hd.path.clone(),
                });
            }
            match hd.r#type.as_str() {
                "Disk" => (path.clone(), detect_format(&path), DiskSource::HostDisk),
                "DiskOrCreate" => {
                    let capacity = match &hd.capacity {
                        Some(q) => bytes_of(q, &format!("{vp}.hostDisk.capacity"))?,
                        None => {
                            return Err(DiskError::HostDiskNoCapacity {
                                field: format!("{vp}.hostDisk.capacity"),
                            })
                        }
                    };
                    // KubeVirt's hostDisk is always a raw disk.img.
                    (
                        path,
                        DiskFormat::Raw,
                        DiskSource::HostDiskOrCreate { capacity },
                    )
                }
                t => {
                    return Err(DiskError::HostDiskType {
                        field: format!("{vp}.hostDisk.type"),
                        disk_type: t.into(),
                    })
                }
            }
        } else if let Some(pvc) = &vol.persistent_volume_claim {
            let Some(path) = env.pvc_paths.get(&pvc.claim_name) else {
                return Err(DiskError::PvcUnavailable {
                    field: format!("{vp}.persistentVolumeClaim.claimName"),
                    claim: pvc.claim_name.clone(),
                });
            };
            (path.clone(), detect_format(path), DiskSource::File)
        } else if let Some(dv) = &vol.data_volume {
            let Some(path) = env.data_volume_paths.get(&dv.name) else {
                return Err(DiskError::DataVolumeUnavailable {
                    field: format!("{vp}.dataVolume.name"),
                    name: dv.name.clone(),
                });
            };
            (path.clone(), detect_format(path), DiskSource::File)
        } else if let Some(ed) = &vol.empty_disk {
            let capacity = bytes_of(&ed.capacity, &format!("{vp}.emptyDisk.capacity"))?;
            (
                in_dir(&disk_dir, &format!("{}.qcow2", d.name), &dp)?,
                DiskFormat::Qcow2,
                DiskSource::EmptyDisk { capacity },
            )
        } else if vol.cloud_init_no_cloud.is_some() || vol.cloud_init_config_drive.is_some() {
            let data = crate::cloudinit::from_volume(vol, &vp, vmi, namespace, &hostname, env)?;
            (
                in_dir(&disk_dir, &format!("{}.iso", d.name), &dp)?,
                DiskFormat::Raw,
                DiskSource::CloudInit(data),
            )
        } else {
            return Err(DiskError::UnsupportedSource {
                field: vp,
                volume: vol.name.clone(),
            });
        };
        // KubeVirt's classification (live-migration-source.go, classifyVolumesForMigration):
        // volumes are shared unless known to be node-local, hostDisks are copied unless
        // `shared`, what the launcher makes is copied, read-only disks are not.
        let migration = if readonly || device == DiskDevice::Cdrom {
            DiskMigration::NotCopied
        } else {
            match &source {
                DiskSource::CloudInit(_) => DiskMigration::NotCopied,
                DiskSource::ContainerDisk { .. } => DiskMigration::Copy(MirrorSync::Top),
                DiskSource::EmptyDisk { .. } => DiskMigration::Copy(MirrorSync::Full),
                DiskSource::HostDisk | DiskSource::HostDiskOrCreate { .. } => {
                    if vol.host_disk.as_ref().and_then(|h| h.shared) == Some(true) {
                        DiskMigration::Shared
                    } else {
                        DiskMigration::Copy(MirrorSync::Full)
                    }
                }
                DiskSource::File => {
                    let claim = vol
                        .persistent_volume_claim
                        .as_ref()
                        .map(|p| p.claim_name.as_str())
                        .or(vol.data_volume.as_ref().map(|d| d.name.as_str()));
                    if claim.is_some_and(|c| env.node_local_claims.contains(c)) {
                        DiskMigration::Copy(MirrorSync::Full)
                    } else {
                        DiskMigration::Shared
                    }
                }
            }
        };
        disks.push(DiskSpec {
            migration,
            name: d.name.clone(),
            device,
            bus,
            boot_order,
            cache,
            io,
            readonly,
            format,
            path,
            serial: d.serial.clone(),
            source,
        });
    }
    if disks.iter().filter(|d| d.bus == Bus::Sata).count() > 6 {
        return Err(DiskError::TooManySata);
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::super::{convert, SpecError};
    use super::*;

    /// The disk error of a VMI with `disks` and `volumes` (flow YAML lists).
    fn disk_err(disks: &str, volumes: &str) -> DiskError {
        let spec = format!(
            "  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{disks: {disks}}}\n  volumes: {volumes}\n"
        );
        match convert(&spec) {
            Err(SpecError::Disk(e)) => {
                assert!(
                    e.to_string().starts_with(&format!("{}: ", e.field())),
                    "{e}"
                );
                e
            }
            other => panic!("not a disk error: {other:?}"),
        }
    }

    #[test]
    fn a_disk_without_its_volume_names_the_disk() {
        let e = disk_err(
            "[{name: a, disk: {bus: virtio}}, {name: b, disk: {bus: virtio}}]",
            "[{name: a, emptyDisk: {capacity: 1Gi}}]",
        );
        assert_eq!(
            e,
            DiskError::NoVolume {
                field: "spec.domain.devices.disks[1].name".into(),
                disk: "b".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.disks[1].name: disk b has no volume of the same name"
        );
    }

    #[test]
    fn hostile_volume_and_disk_names_are_refused() {
        for bad in ["x,romfile=/etc/shadow", "a=b", "a/b", "..", "a\\u0000b"] {
            let e = disk_err(
                "[{name: ok, disk: {bus: virtio}}]",
                &format!("[{{name: ok, emptyDisk: {{capacity: 1Gi}}}}, {{name: \"{bad}\", emptyDisk: {{capacity: 1Gi}}}}]"),
            );
            assert!(matches!(e, DiskError::VolumeName { .. }), "{bad}: {e}");
            assert_eq!(e.field(), "spec.volumes[1].name");
            assert!(e.to_string().contains("DNS-1123"), "{e}");
            // A disk named so, without any volume: the name is refused before the lookup.
            let e = disk_err(&format!("[{{name: \"{bad}\"}}]"), "[]");
            assert!(matches!(e, DiskError::DiskName { .. }), "{bad}: {e}");
            assert_eq!(e.field(), "spec.domain.devices.disks[0].name");
        }
    }

    #[test]
    fn bad_modes_serials_and_sources_say_what_is_wrong() {
        let v = "[{name: c, emptyDisk: {capacity: 1Gi}}]";
        let e = disk_err("[{name: c, disk: {bus: ide}}]", v);
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.disks[0].disk.bus: bus ide is not supported by the QEMU backend: use virtio, sata or scsi"
        );
        let e = disk_err("[{name: c, disk: {bus: virtio}, cache: unsafe}]", v);
        assert!(matches!(e, DiskError::Cache { ref cache, .. } if cache == "unsafe"));
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.disks[0].cache: unknown cache mode unsafe: use none, writethrough or writeback"
        );
        let e = disk_err("[{name: c, disk: {bus: virtio}, serial: \"a,drive=x\"}]", v);
        assert!(matches!(e, DiskError::Serial { .. }));
        assert_eq!(
            e.to_string(),
            r#"spec.domain.devices.disks[0].serial: "a,drive=x" must be made up of the characters [A-Za-z0-9_.+-] and be at most 256 long"#
        );
        let e = disk_err(
            "[{name: c, disk: {bus: virtio}}]",
            "[{name: c, emptyDisk: {capacity: lots}}]",
        );
        assert!(
            matches!(e, DiskError::Capacity(SizeError::Invalid { .. })),
            "{e}"
        );
        assert_eq!(e.field(), "spec.volumes[0].emptyDisk.capacity");
        let e = disk_err(
            "[{name: c, disk: {bus: virtio}}]",
            "[{name: c, persistentVolumeClaim: {claimName: nowhere}}]",
        );
        assert_eq!(
            e.to_string(),
            "spec.volumes[0].persistentVolumeClaim.claimName: PersistentVolumeClaim nowhere is not available on this node"
        );
        let e = disk_err(
            "[{name: c, disk: {bus: virtio}}]",
            "[{name: c, hostDisk: {path: /var/../etc/shadow, type: Disk}}]",
        );
        assert!(matches!(e, DiskError::HostDiskPath { .. }), "{e}");
        assert_eq!(e.field(), "spec.volumes[0].hostDisk.path");
        let e = disk_err(
            "[{name: c, disk: {bus: virtio}}]",
            "[{name: c, hostDisk: {path: /var/lib/x.img, type: Block}}]",
        );
        assert_eq!(
            e.to_string(),
            "spec.volumes[0].hostDisk.type: unknown type Block: use Disk or DiskOrCreate"
        );
    }

    #[test]
    fn cloud_init_errors_are_disk_errors_with_the_volume_field() {
        let e = disk_err(
            "[{name: ci, disk: {bus: virtio}}]",
            "[{name: ci, cloudInitNoCloud: {userDataBase64: \"%%%\"}}]",
        );
        assert!(
            matches!(e, DiskError::CloudInit(CloudInitError::Base64 { .. })),
            "{e}"
        );
        assert_eq!(e.field(), "spec.volumes[0].cloudInitNoCloud.userDataBase64");
        assert!(e
            .to_string()
            .starts_with("spec.volumes[0].cloudInitNoCloud.userDataBase64: not valid base64: "));
        let e = disk_err(
            "[{name: ci, disk: {bus: virtio}}]",
            "[{name: ci, cloudInitNoCloud: {secretRef: {name: s}}}]",
        );
        assert_eq!(
            e.to_string(),
            "spec.volumes[0].cloudInitNoCloud.secretRef: the user data Secret was not resolved for the launcher"
        );
    }

    /// Block migration copies what the guest writes on this node only: KubeVirt's
    /// classification, with node-local claims from `volumes.json`.
    #[test]
    fn a_live_migration_copies_local_writable_disks_only() {
        let yaml = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: t, namespace: ns}\nspec:\n  domain:\n    memory: {guest: 64Mi}\n    devices:\n      disks:\n      - {name: root, disk: {bus: virtio}}\n      - {name: scratch, disk: {bus: virtio}}\n      - {name: shared, disk: {bus: virtio}}\n      - {name: local, disk: {bus: virtio}}\n      - {name: localdv, disk: {bus: virtio}}\n      - {name: host, disk: {bus: virtio}}\n      - {name: nfs, disk: {bus: virtio}}\n      - {name: ro, disk: {bus: virtio, readonly: true}}\n      - {name: cd, cdrom: {bus: sata}}\n      - {name: ci, disk: {bus: virtio}}\n  volumes:\n  - {name: root, containerDisk: {image: r/x}}\n  - {name: scratch, emptyDisk: {capacity: 1Gi}}\n  - {name: shared, persistentVolumeClaim: {claimName: c1}}\n  - {name: local, persistentVolumeClaim: {claimName: c2}}\n  - {name: localdv, dataVolume: {name: dv}}\n  - {name: host, hostDisk: {path: /var/lib/h.img, type: DiskOrCreate, capacity: 1Gi}}\n  - {name: nfs, hostDisk: {path: /mnt/n.img, type: Disk, shared: true}}\n  - {name: ro, emptyDisk: {capacity: 1Gi}}\n  - {name: cd, containerDisk: {image: r/y}}\n  - {name: ci, cloudInitNoCloud: {userData: x}}\n";
        let mut env = Environment::fixed(Path::new("/d"), crate::accel::Accelerator::Tcg);
        for (claim, file) in [("c1", "/v/1"), ("c2", "/v/2")] {
            env.pvc_paths.insert(claim.into(), file.into());
        }
        env.data_volume_paths.insert("dv".into(), "/v/3".into());
        // The handler marks local-path claims; a DataVolume by its (claim's) name.
        env.node_local_claims = ["c2".to_string(), "dv".to_string()].into();
        let spec = MachineSpec::from_vmi(&crate::machine::parse_vmi(yaml).unwrap(), &env).unwrap();
        let got: Vec<(&str, DiskMigration)> = spec
            .disks
            .iter()
            .map(|d| (d.name.as_str(), d.migration))
            .collect();
        use DiskMigration::*;
        assert_eq!(
            got,
            [
                ("root", Copy(MirrorSync::Top)),
                ("scratch", Copy(MirrorSync::Full)),
                ("shared", Shared),
                ("local", Copy(MirrorSync::Full)),
                ("localdv", Copy(MirrorSync::Full)),
                ("host", Copy(MirrorSync::Full)),
                ("nfs", Shared),
                ("ro", NotCopied),
                ("cd", NotCopied),
                ("ci", NotCopied),
            ]
        );
    }

    #[test]
    fn bus_and_device_rules_name_the_disk_field() {
        let v = "  volumes: [{name: c, emptyDisk: {capacity: 1Gi}}]\n";
        let e = convert(&format!("  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{disks: [{{name: c, cdrom: {{bus: virtio}}}}]}}\n{v}")).unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.disks[0].cdrom.bus");
        let e = convert(&format!("  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{disks: [{{name: c, disk: {{bus: virtio}}, io: native}}]}}\n{v}")).unwrap_err();
        assert_eq!(e.field(), "spec.domain.devices.disks[0].io");
        let s = convert(&format!("  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{disks: [{{name: c, disk: {{bus: virtio}}}}]}}\n{v}")).unwrap();
        assert_eq!(s.disks[0].path, std::path::Path::new("/d/disks/c.qcow2"));
    }
}
