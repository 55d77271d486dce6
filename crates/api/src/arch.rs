//! Guest architectures (`spec.architecture`): the values this implementation runs, their
//! default machine types, and KubeVirt v1.9's arm64 and s390x defaults and rejections
//! (pkg/defaults/arm64.go, pkg/defaults/s390x.go, pkg/virt-api/webhooks/arm64.go,
//! pkg/virt-api/webhooks/s390x.go).
//!
//! One owner for the architecture names: admission, defaulting and the launcher all read them
//! through [`Arch`]. Any other value (ppc64le...) is refused.

use crate::field::{FieldError, Path};
use crate::{Bootloader, Firmware, VirtualMachineInstanceSpec, CPU, EFI};

/// KubeVirt's `DefaultAARCH64MachineType`.
pub const DEFAULT_ARM64_MACHINE_TYPE: &str = "virt";
/// KubeVirt's `DefaultS390XMachineType`.
pub const DEFAULT_S390X_MACHINE_TYPE: &str = "s390-ccw-virtio";
/// KubeVirt's default (and on arm64 only) CPU model.
pub const HOST_PASSTHROUGH: &str = "host-passthrough";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
    S390x,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Amd64, Arch::Arm64, Arch::S390x];

    /// The `spec.architecture` value; `None` for anything this implementation does not run.
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "amd64" => Some(Arch::Amd64),
            "arm64" => Some(Arch::Arm64),
            "s390x" => Some(Arch::S390x),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::S390x => "s390x",
        }
    }

    /// The architecture of this build's host (what KVM can run), if it is one of ours.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            "s390x" => Some(Arch::S390x),
            _ => None,
        }
    }

    /// KubeVirt's `Default*MachineType` for the architecture.
    pub fn default_machine_type(self) -> &'static str {
        match self {
            Arch::Amd64 => crate::defaults::DEFAULT_MACHINE_TYPE,
            Arch::Arm64 => DEFAULT_ARM64_MACHINE_TYPE,
            Arch::S390x => DEFAULT_S390X_MACHINE_TYPE,
        }
    }

    /// The Node label a node agent sets to `"true"` when it can run guests of this
    /// architecture (the emulator and firmware are installed), in the style of KubeVirt's node
    /// labeller (`cpu-model.node.kubevirt.io/<model>`): `guest-arch.node.kubevirt.io/<arch>`.
    /// The scheduler places a VMI only on a node advertising its `spec.architecture`.
    pub fn node_label(self) -> &'static str {
        match self {
            Arch::Amd64 => "guest-arch.node.kubevirt.io/amd64",
            Arch::Arm64 => "guest-arch.node.kubevirt.io/arm64",
            Arch::S390x => "guest-arch.node.kubevirt.io/s390x",
        }
    }

    /// KubeVirt's `Default*EmulatedMachines`: the machine types admission accepts (globs).
    pub fn emulated_machines(self) -> &'static [&'static str] {
        match self {
            Arch::Amd64 => &["q35*", "pc-q35*"],
            Arch::Arm64 => &["virt*"],
            Arch::S390x => &["s390-ccw-virtio*"],
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The prefix of [`Arch::node_label`]: a node carrying any such label advertises its guest
/// architectures.
pub const NODE_LABEL_PREFIX: &str = "guest-arch.node.kubevirt.io/";

/// The refusal of an unknown `spec.architecture`, in KubeVirt's words.
pub fn unsupported_message(arch: &str) -> String {
    format!("unsupported architecture: {arch}")
}

/// KubeVirt's `SetArm64Defaults`: CPU model host-passthrough, UEFI (Secure Boot off), virtio
/// disk buses (QEMU's `virt` machine has no SATA).
pub fn set_arm64_defaults(spec: &mut VirtualMachineInstanceSpec) {
    let cpu = spec.domain.cpu.get_or_insert_with(CPU::default);
    if cpu.model.as_deref().unwrap_or("").is_empty() {
        cpu.model = Some(HOST_PASSTHROUGH.into());
    }
    let fw = spec.domain.firmware.get_or_insert_with(Firmware::default);
    let bl = fw.bootloader.get_or_insert_with(|| Bootloader {
        efi: Some(EFI::default()),
        ..Default::default()
    });
    if let Some(efi) = bl.efi.as_mut() {
        efi.secure_boot.get_or_insert(false);
    }
}

/// KubeVirt's `ValidateVirtualMachineInstanceArm64Setting`, with its messages.
pub fn validate_arm64(spec: &VirtualMachineInstanceSpec, root: &Path, errs: &mut Vec<FieldError>) {
    let domain = root.child("domain");
    let devices_p = domain.child("devices");
    let devices = &spec.domain.devices;
    if let Some(bl) = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref())
    {
        if bl.bios.is_some() {
            errs.push(FieldError::not_supported(
                domain.child("firmware").child("bootloader").child("bios"),
                "Arm64 does not support bios boot, please change to uefi boot",
            ));
        }
    }
    if let Some(model) = spec.domain.cpu.as_ref().and_then(|c| c.model.as_deref()) {
        if !model.is_empty() && model != HOST_PASSTHROUGH {
            errs.push(FieldError::not_supported(
                domain.child("cpu").child("model"),
                format!("currently, {HOST_PASSTHROUGH} is the only model supported on Arm64"),
            ));
        }
    }
    let bus_ok = |bus: Option<&str>| matches!(bus.unwrap_or(""), "" | "virtio" | "scsi");
    for (i, d) in devices.disks.iter().flatten().enumerate() {
        let dp = devices_p.child("disks").index(i);
        let targets = [
            ("disk", d.disk.as_ref().map(|t| t.bus.as_deref())),
            ("cdrom", d.cdrom.as_ref().map(|t| t.bus.as_deref())),
            ("lun", d.lun.as_ref().map(|t| t.bus.as_deref())),
        ];
        for (kind, bus) in targets {
            if let Some(bus) = bus {
                if !bus_ok(bus) {
                    errs.push(FieldError::not_supported(
                        dp.child(kind).child("bus"),
                        "Arm64 not support this disk bus type, please use virtio or scsi",
                    ));
                }
            }
        }
    }
    if devices.watchdog.is_some() {
        errs.push(FieldError::not_supported(
            devices_p.child("watchdog"),
            "Arm64 not support Watchdog device",
        ));
    }
    if devices.sound.is_some() {
        errs.push(FieldError::not_supported(
            devices_p.child("sound"),
            "Arm64 not support sound device",
        ));
    }
    if let Some(video) = &devices.video {
        let t = video.r#type.as_deref().unwrap_or("");
        if !matches!(t, "virtio" | "ramfb") {
            errs.push(FieldError::not_supported(
                devices_p.child("video").child("type"),
                format!("video model '{t}' is not supported on arm64 architecture"),
            ));
        }
    }
}

/// KubeVirt's `SetS390xDefaults` and `setS390xDefaultFeatures`: virtio disk buses (no SATA
/// on the channel subsystem), a diag288 watchdog (action reset) for a watchdog that names no
/// model, ACPI off (s390x has none).
pub fn set_s390x_defaults(spec: &mut VirtualMachineInstanceSpec) {
    fn virtio(bus: &mut Option<String>) {
        if bus.as_deref().unwrap_or("").is_empty() {
            *bus = Some("virtio".into());
        }
    }
    for disk in spec.domain.devices.disks.iter_mut().flatten() {
        if let Some(t) = disk.disk.as_mut() {
            virtio(&mut t.bus);
        }
        if let Some(t) = disk.lun.as_mut() {
            virtio(&mut t.bus);
        }
        if let Some(t) = disk.cdrom.as_mut() {
            virtio(&mut t.bus);
        }
    }
    if let Some(w) = spec.domain.devices.watchdog.as_mut() {
        let d = w.diag288.get_or_insert_with(Default::default);
        if d.action.as_deref().unwrap_or("").is_empty() {
            d.action = Some("reset".into());
        }
    }
    let features = spec.domain.features.get_or_insert_with(Default::default);
    let acpi = features.acpi.get_or_insert_with(Default::default);
    acpi.enabled.get_or_insert(false);
}

/// KubeVirt's `ValidateVirtualMachineInstanceS390XSetting`, with its messages: the diag288
/// watchdog only, virtio video only.
pub fn validate_s390x(spec: &VirtualMachineInstanceSpec, root: &Path, errs: &mut Vec<FieldError>) {
    let devices_p = root.child("domain").child("devices");
    let devices = &spec.domain.devices;
    if let Some(w) = &devices.watchdog {
        if w.diag288.is_none() || w.i6300esb.is_some() {
            errs.push(FieldError::not_supported(
                devices_p.child("watchdog"),
                "s390x only supports Diag288 watchdog device",
            ));
        }
    }
    if let Some(video) = &devices.video {
        let t = video.r#type.as_deref().unwrap_or("");
        if t != "virtio" {
            errs.push(FieldError::not_supported(
                devices_p.child("video").child("type"),
                format!("video model '{t}' is not supported on s390x architecture"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_architectures_we_run_parse() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.as_str()), Some(a));
        }
        for bad in [
            "", "S390X", "s390", "ppc64le", "ARM64", "arm64 ", "x86_64", "aarch64",
        ] {
            assert_eq!(Arch::parse(bad), None, "{bad:?}");
        }
    }
}
