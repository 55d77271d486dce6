//! The cases of KubeVirt v1.9's disk admitter tests (pkg/storage/admitters/disks_test.go), as
//! tables over a valid VMI; see tests/admitters/mod.rs.

#[macro_use]
mod admitters;

use admitters::{run, set, Accept, Reject};
use serde_json::json;

#[test]
fn disk_fields() {
    run(&[
        case!(
            "PCI address on virtio",
            |v| set(v, "/spec/domain/devices/disks/0/disk/pciAddress", json!("0000:04:10.0")),
            Accept
        ),
        case!(
            "PCI address on sata",
            |v| set(v, "/spec/domain/devices/disks/0/disk", json!({"bus": "sata", "pciAddress": "0000:04:10.0"})),
            Reject("spec.domain.devices.disks[0].disk.pciAddress", "disk spec.domain.devices.disks[0].name - setting a PCI address is only possible with bus type virtio.")
        ),
        case!(
            "malformed PCI address",
            |v| set(v, "/spec/domain/devices/disks/0/disk/pciAddress", json!("0000:04:10")),
            Reject("spec.domain.devices.disks[0].disk.pciAddress", "disk spec.domain.devices.disks[0].name has malformed PCI address (0000:04:10).")
        ),
        case!(
            "PCI address with a QEMU option appended (hostile)",
            |v| set(v, "/spec/domain/devices/disks/0/disk/pciAddress", json!("0000:04:10.0,romfile=/etc/shadow")),
            Reject("spec.domain.devices.disks[0].disk.pciAddress", "has malformed PCI address")
        ),
        case!(
            "dedicated IO thread on virtio",
            |v| set(v, "/spec/domain/devices/disks/0/dedicatedIOThread", json!(true)),
            Accept
        ),
        case!(
            "dedicated IO thread on sata",
            |v| {
                set(v, "/spec/domain/devices/disks/0/disk/bus", json!("sata"));
                set(v, "/spec/domain/devices/disks/0/dedicatedIOThread", json!(true));
            },
            Reject("spec.domain.devices.disks[0]", "IOThreads are not supported for disks on a sata bus")
        ),
        case!(
            "cache modes",
            |v| set(v, "/spec/domain/devices/disks/0/cache", json!("writethrough")),
            Accept
        ),
        case!(
            "unknown cache mode",
            |v| set(v, "/spec/domain/devices/disks/0/cache", json!("unsafe")),
            Reject("spec.domain.devices.disks[0].cache", "spec.domain.devices.disks[0].cache has invalid value unsafe")
        ),
        case!("io native", |v| set(v, "/spec/domain/devices/disks/0/io", json!("native")), Accept),
        case!(
            "unknown io mode",
            |v| set(v, "/spec/domain/devices/disks/0/io", json!("io_uring")),
            Reject("spec.domain.devices.disks[0].io", "Disk IO mode for spec.domain.devices.disks is not supported. Supported modes are: native, threads.")
        ),
        case!("error policy report", |v| set(v, "/spec/domain/devices/disks/0/errorPolicy", json!("report")), Accept),
        case!(
            "unknown error policy",
            |v| set(v, "/spec/domain/devices/disks/0/errorPolicy", json!("explode")),
            Reject("spec.domain.devices.disks[0].errorPolicy", "spec.domain.devices.disks[0].errorPolicy has invalid value \"explode\"")
        ),
        case!(
            "serial too long",
            |v| set(v, "/spec/domain/devices/disks/0/serial", json!("s".repeat(257))),
            Reject("spec.domain.devices.disks[0].serial", "spec.domain.devices.disks[0] must be less than or equal to 256 in length, if specified")
        ),
        case!(
            "serial with bad characters",
            |v| set(v, "/spec/domain/devices/disks/0/serial", json!("sn 1,drive=x")),
            Reject("spec.domain.devices.disks[0].serial", "spec.domain.devices.disks[0] must be made up of the following characters [A-Za-z0-9_.+-], if specified")
        ),
        case!(
            "two targets",
            |v| set(v, "/spec/domain/devices/disks/0/cdrom", json!({"bus": "sata"})),
            Reject("spec.domain.devices.disks[0]", "spec.domain.devices.disks[0] can only have a single target type defined")
        ),
        case!(
            "virtio cdrom",
            |v| set(v, "/spec/domain/devices/disks/0", json!({"name": "root", "cdrom": {"bus": "virtio"}})),
            Reject("spec.domain.devices.disks[0].cdrom.bus", "Bus type virtio is invalid for CD-ROM device")
        ),
        case!(
            "read-only sata disk",
            |v| set(v, "/spec/domain/devices/disks/0/disk", json!({"bus": "sata", "readonly": true})),
            Reject("spec.domain.devices.disks[0].disk.bus", "sata hard-disks do not support read-only.")
        ),
    ]);
}

#[test]
fn block_sizes() {
    run(&[
        case!(
            "custom block size",
            |v| set(
                v,
                "/spec/domain/devices/disks/0/blockSize",
                json!({"custom": {"logical": 512, "physical": 4096, "discardGranularity": 4096}})
            ),
            Accept
        ),
        case!(
            "match volume",
            |v| set(
                v,
                "/spec/domain/devices/disks/0/blockSize",
                json!({"matchVolume": {}})
            ),
            Accept
        ),
        case!(
            "logical above physical",
            |v| set(
                v,
                "/spec/domain/devices/disks/0/blockSize",
                json!({"custom": {"logical": 4096, "physical": 512}})
            ),
            Reject(
                "spec.domain.devices.disks[0].blockSize.custom.logical",
                "Logical size 4096 must be the same or less than the physical size of 512"
            )
        ),
        case!(
            "custom with match volume",
            |v| set(
                v,
                "/spec/domain/devices/disks/0/blockSize",
                json!({"matchVolume": {}, "custom": {"logical": 512, "physical": 512}})
            ),
            Reject(
                "spec.domain.devices.disks[0].blockSize",
                "Block size matching can't be enabled together with a custom value"
            )
        ),
        case!(
            "custom with match volume disabled",
            |v| set(
                v,
                "/spec/domain/devices/disks/0/blockSize",
                json!({"matchVolume": {"enabled": false}, "custom": {"logical": 512, "physical": 512}})
            ),
            Accept
        ),
        case!(
            "sata logical 4096",
            |v| {
                set(v, "/spec/domain/devices/disks/0/disk/bus", json!("sata"));
                set(
                    v,
                    "/spec/domain/devices/disks/0/blockSize",
                    json!({"custom": {"logical": 4096, "physical": 4096}}),
                );
            },
            Reject(
                "spec.domain.devices.disks[0].blockSize.custom.logical",
                "Logical size 4096 must be 512 for SATA devices"
            )
        ),
        case!(
            "discard granularity not a multiple",
            |v| set(
                v,
                "/spec/domain/devices/disks/0/blockSize",
                json!({"custom": {"logical": 4096, "physical": 4096, "discardGranularity": 6000}})
            ),
            Reject(
                "spec.domain.devices.disks[0].blockSize.custom.discardGranularity",
                "Discard granularity 6000 must be multiples of logical size 4096"
            )
        ),
        case!(
            "size too small",
            |v| set(
                v,
                "/spec/domain/devices/disks/0/blockSize",
                json!({"custom": {"logical": 256, "physical": 512}})
            ),
            Reject(
                "spec.domain.devices.disks[0].blockSize.custom.logical",
                "Provided size of 256 is less than the supported minimum size of 512"
            )
        ),
        case!(
            "size too large",
            |v| set(
                v,
                "/spec/domain/devices/disks/0/blockSize",
                json!({"custom": {"logical": 512, "physical": 4194304}})
            ),
            Reject(
                "spec.domain.devices.disks[0].blockSize.custom.physical",
                "Provided size of 4194304 is greater than the supported maximum size of 2097152"
            )
        ),
        case!(
            "size not a power of two",
            |v| set(
                v,
                "/spec/domain/devices/disks/0/blockSize",
                json!({"custom": {"logical": 512, "physical": 1536}})
            ),
            Reject(
                "spec.domain.devices.disks[0].blockSize.custom.physical",
                "Provided size of 1536 is not a power of 2"
            )
        ),
    ]);
}
