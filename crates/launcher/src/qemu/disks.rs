//! Disks: one `-drive if=none` (the backend) and one `-device` (the frontend) per disk.

use super::cpu::push;
use super::opts::{Opts, OptsError};
use crate::machine::{Bus, DiskDevice, DiskSpec, MachineSpec, Profile};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {disk:?}: {source}")]
    Option {
        disk: String,
        #[source]
        source: OptsError,
    },
    #[error("virtio-scsi controller: {0}")]
    Controller(#[source] OptsError),
    /// Hotplug goes to the SCSI controller: other buses need free PCI slots this machine
    /// does not reserve.
    #[error("disk {disk:?}: bus {bus} cannot be hotplugged by the QEMU backend: use bus scsi")]
    HotplugBus { disk: String, bus: String },
}

pub fn render(spec: &MachineSpec, a: &mut Vec<String>) -> Result<(), DiskError> {
    let virtio_suffix = spec.profile.virtio_transport();
    // KubeVirt always gives a PCI machine (q35, arm virt) and s390x its SCSI controller:
    // volumes are hotplugged there.
    if spec.profile != Profile::Microvm || spec.disks.iter().any(|d| d.bus == Bus::Scsi) {
        push(
            a,
            "-device",
            Opts::new(&format!("virtio-scsi-{virtio_suffix}"))
                .set("id", "scsi0")
                .build()
                .map_err(DiskError::Controller)?,
        );
    }
    let mut sata_port = 0;
    for d in &spec.disks {
        let err = |source| DiskError::Option {
            disk: d.name.clone(),
            source,
        };
        let backend = drive_id(&d.name);
        push(a, "-drive", drive(d, &backend).build().map_err(err)?);
        let mut next_sata = || {
            sata_port += 1;
            Some(format!("ide.{}", sata_port - 1))
        };
        let (kind, bus) = match (d.bus, d.device) {
            (Bus::Virtio, _) => (format!("virtio-blk-{virtio_suffix}"), None),
            (Bus::Sata, DiskDevice::Cdrom) => ("ide-cd".into(), next_sata()),
            (Bus::Sata, _) => ("ide-hd".into(), next_sata()),
            (Bus::Scsi, DiskDevice::Cdrom) => ("scsi-cd".into(), Some("scsi0.0".into())),
            (Bus::Scsi, _) => ("scsi-hd".into(), Some("scsi0.0".into())),
        };
        let dev = Opts::new(&kind)
            .set("drive", &backend)
            .set_opt("bus", bus)
            .set("id", format!("ua-{}", d.name))
            .set_opt("bootindex", d.boot_order.map(|b| b.to_string()))
            .set_opt("serial", d.serial.as_deref());
        push(a, "-device", dev.build().map_err(err)?);
    }
    Ok(())
}

/// The `-drive` id (QEMU's BlockBackend name) of disk `name`: what `query-block` calls its
/// `device`.
pub fn drive_id(name: &str) -> String {
    format!("drive-{name}")
}

fn drive(d: &DiskSpec, id: &str) -> Opts {
    Opts::keyed()
        .set("if", "none")
        .set("id", id)
        .set_path("file", &d.path)
        .set("format", d.format.as_str())
        .set_if(d.device == DiskDevice::Cdrom, "media", "cdrom")
        .set_if(d.readonly, "readonly", "on")
        .set_opt("cache", d.cache.as_deref())
        .set_opt("aio", d.io.as_deref())
}

/// The QMP arguments that hotplug disk `d`: a `blockdev-add` node (`drive-<name>`) and a
/// `device_add` guest device (`ua-<name>`) on the SCSI controller every q35 machine has.
///
/// QMP takes JSON, so nothing is parsed on `,` here; the values still pass the option
/// builder's checks first (ids well-formed, no NUL or line breaks, UTF-8 paths): what the
/// argv of a cold-plugged disk refuses, a hotplugged one refuses too.
pub fn hotplug_args(d: &DiskSpec) -> Result<(serde_json::Value, serde_json::Value), DiskError> {
    use serde_json::json;
    let err = |source| DiskError::Option {
        disk: d.name.clone(),
        source,
    };
    let node = format!("drive-{}", d.name);
    let id = format!("ua-{}", d.name);
    let kind = match (d.bus, d.device) {
        (Bus::Scsi, DiskDevice::Cdrom) => "scsi-cd",
        (Bus::Scsi, _) => "scsi-hd",
        (bus, _) => {
            return Err(DiskError::HotplugBus {
                disk: d.name.clone(),
                bus: format!("{bus:?}").to_lowercase(),
            })
        }
    };
    drive(d, &node).build().map_err(err)?;
    Opts::new(kind)
        .set("drive", &node)
        .set("bus", "scsi0.0")
        .set("id", &id)
        .set_opt("serial", d.serial.as_deref())
        .build()
        .map_err(err)?;
    let path = d.path.to_str().ok_or_else(|| {
        err(OptsError::NotUtf8 {
            key: "filename".into(),
            path: d.path.to_string_lossy().into(),
        })
    })?;
    let mut file = json!({"driver": "file", "filename": path});
    if let Some(aio) = d.io.as_deref() {
        file["aio"] = json!(aio);
    }
    let blockdev = json!({
        "node-name": node,
        "driver": d.format.as_str(),
        "read-only": d.readonly,
        "cache": {"direct": d.cache.as_deref() == Some("none"), "no-flush": false},
        "file": file,
    });
    let mut device = json!({"driver": kind, "id": id, "drive": node, "bus": "scsi0.0"});
    if let Some(serial) = d.serial.as_deref() {
        device["serial"] = json!(serial);
    }
    if d.cache.as_deref() == Some("writethrough") {
        device["write-cache"] = json!("off");
    }
    Ok((blockdev, device))
}

#[cfg(test)]
mod tests {
    use super::super::test_spec;
    use super::*;
    use crate::machine::{DiskFormat, DiskSource};

    fn disk(name: &str) -> DiskSpec {
        DiskSpec {
            name: name.into(),
            device: DiskDevice::Disk,
            bus: Bus::Sata,
            boot_order: Some(1),
            cache: None,
            io: None,
            readonly: false,
            format: DiskFormat::Raw,
            path: "/d/disks/a,b.img".into(),
            serial: Some("s,romfile=/etc/shadow".into()),
            source: DiskSource::File,
            migration: crate::machine::DiskMigration::Shared,
        }
    }

    #[test]
    fn sata_disk_renders_drive_then_device() {
        let mut s = test_spec();
        s.disks = vec![disk("root")];
        let mut a = vec![];
        render(&s, &mut a).unwrap();
        assert_eq!(
            a,
            [
                "-device",
                "virtio-scsi-pci,id=scsi0",
                "-drive",
                "if=none,id=drive-root,file=/d/disks/a,,b.img,format=raw",
                "-device",
                "ide-hd,drive=drive-root,bus=ide.0,id=ua-root,bootindex=1,serial=s,,romfile=/etc/shadow"
            ]
        );
    }

    #[test]
    fn a_disk_name_that_is_no_qemu_id_is_refused() {
        let mut s = test_spec();
        s.disks = vec![disk("x,file=/etc/shadow")];
        let e = render(&s, &mut vec![]).unwrap_err();
        assert!(
            matches!(
                &e,
                DiskError::Option {
                    source: OptsError::BadId { .. },
                    ..
                }
            ),
            "{e}"
        );
    }
}
