//! `spec.domain.devices.disks` + `spec.volumes` → [`DiskSpec`]s (bus, cache, source file).

use super::*;

pub(super) fn disks(ctx: &Ctx) -> Result<Vec<DiskSpec>, SpecError> {
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
        label(&v.name, format!("spec.volumes[{i}].name"))?;
    }
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.to_string());
    let mut disks = Vec::new();
    for (i, d) in dev.disks.iter().flatten().enumerate() {
        let dp = format!("spec.domain.devices.disks[{i}]");
        label(&d.name, format!("{dp}.name"))?;
        let Some(&(vi, vol)) = volumes.get(d.name.as_str()) else {
            return Err(SpecError::new(
                format!("{dp}.name"),
                format!("disk {} has no volume of the same name", d.name),
            ));
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
                return Err(SpecError::new(
                    bus_field,
                    format!(
                        "bus {b} is not supported by the QEMU backend: use virtio, sata or scsi"
                    ),
                ))
            }
        };
        if microvm {
            if device == DiskDevice::Cdrom {
                return Err(SpecError::new(
                    format!("{dp}.cdrom"),
                    "microvm has no cdrom device: use a disk with bus virtio",
                ));
            }
            if bus != Bus::Virtio {
                return Err(SpecError::new(bus_field, "microvm supports only virtio"));
            }
        }
        if device == DiskDevice::Cdrom && bus == Bus::Virtio {
            return Err(SpecError::new(
                bus_field,
                "Bus type virtio is invalid for CD-ROM device",
            ));
        }
        if device != DiskDevice::Cdrom && bus == Bus::Sata && readonly {
            return Err(SpecError::new(
                format!("{dp}.disk.readonly"),
                "sata hard-disks do not support read-only (QEMU's ide-hd refuses a read-only node): use bus virtio",
            ));
        }
        let cache = match d.cache.as_deref() {
            None | Some("") => None,
            Some(c @ ("none" | "writethrough" | "writeback")) => Some(c.to_string()),
            Some(c) => {
                return Err(SpecError::new(
                    format!("{dp}.cache"),
                    format!("unknown cache mode {c}: use none, writethrough or writeback"),
                ))
            }
        };
        let io = match d.io.as_deref() {
            None | Some("") => None,
            Some(m @ ("native" | "threads")) => Some(m.to_string()),
            Some(m) => {
                return Err(SpecError::new(
                    format!("{dp}.io"),
                    format!("unknown io mode {m}: use native or threads"),
                ))
            }
        };
        if io.as_deref() == Some("native") && cache.as_deref() != Some("none") {
            return Err(SpecError::new(
                format!("{dp}.io"),
                "io native needs cache none (O_DIRECT)",
            ));
        }
        let boot_order = match d.boot_order {
            None => None,
            Some(n) if n > 0 => Some(n as u32),
            Some(n) => {
                return Err(SpecError::new(
                    format!("{dp}.bootOrder"),
                    format!("{n} must be 1 or more"),
                ))
            }
        };
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
            crate::paths::check_normal_absolute(&path)
                .map_err(|e| SpecError::new(format!("{vp}.hostDisk.path"), e.to_string()))?;
            if crate::paths::is_system_path(&path) {
                return Err(SpecError::new(
                    format!("{vp}.hostDisk.path"),
                    format!("{}: a hostDisk cannot be a system file or device (the launcher gives the image to QEMU's user)", hd.path),
                ));
            }
            match hd.r#type.as_str() {
                "Disk" => (path.clone(), detect_format(&path), DiskSource::HostDisk),
                "DiskOrCreate" => {
                    let capacity = match &hd.capacity {
                        Some(q) => bytes_of(q, &format!("{vp}.hostDisk.capacity"))?,
                        None => {
                            return Err(SpecError::new(
                                format!("{vp}.hostDisk.capacity"),
                                "DiskOrCreate needs a capacity",
                            ))
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
                    return Err(SpecError::new(
                        format!("{vp}.hostDisk.type"),
                        format!("unknown type {t}: use Disk or DiskOrCreate"),
                    ))
                }
            }
        } else if let Some(pvc) = &vol.persistent_volume_claim {
            let Some(path) = env.pvc_paths.get(&pvc.claim_name) else {
                return Err(SpecError::new(
                    format!("{vp}.persistentVolumeClaim.claimName"),
                    format!(
                        "PersistentVolumeClaim {} is not available on this node",
                        pvc.claim_name
                    ),
                ));
            };
            (path.clone(), detect_format(path), DiskSource::File)
        } else if let Some(dv) = &vol.data_volume {
            let Some(path) = env.data_volume_paths.get(&dv.name) else {
                return Err(SpecError::new(
                    format!("{vp}.dataVolume.name"),
                    format!("DataVolume {} is not available on this node", dv.name),
                ));
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
            return Err(SpecError::new(
                vp,
                format!("volume {} has a source the launcher does not support (containerDisk, hostDisk, persistentVolumeClaim, dataVolume, emptyDisk, cloudInitNoCloud, cloudInitConfigDrive)", vol.name),
            ));
        };
        disks.push(DiskSpec {
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
        return Err(SpecError::new(
            "spec.domain.devices.disks",
            "q35 has 6 SATA ports: use virtio or scsi for more disks",
        ));
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::super::convert;

    #[test]
    fn bus_and_device_rules_name_the_disk_field() {
        let v = "  volumes: [{name: c, emptyDisk: {capacity: 1Gi}}]\n";
        let e = convert(&format!("  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{disks: [{{name: c, cdrom: {{bus: virtio}}}}]}}\n{v}")).unwrap_err();
        assert_eq!(e.field, "spec.domain.devices.disks[0].cdrom.bus");
        let e = convert(&format!("  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{disks: [{{name: c, disk: {{bus: virtio}}, io: native}}]}}\n{v}")).unwrap_err();
        assert_eq!(e.field, "spec.domain.devices.disks[0].io");
        let s = convert(&format!("  domain:\n    memory: {{guest: 64Mi}}\n    devices: {{disks: [{{name: c, disk: {{bus: virtio}}}}]}}\n{v}")).unwrap();
        assert_eq!(s.disks[0].path, std::path::Path::new("/d/disks/c.qcow2"));
    }
}
