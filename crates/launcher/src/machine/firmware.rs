//! `spec.domain.firmware` and `features` → [`Firmware`], ACPI, SMBIOS identity.

use super::*;

/// A firmware, ACPI/SMM or SMBIOS identity field the QEMU backend cannot honour.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FirmwareError {
    #[error(
        "spec.domain.firmware.kernelBoot.container: kernelBoot needs a container with the kernel"
    )]
    KernelBootNoContainer,
    #[error("spec.domain.firmware.kernelBoot.container.kernelPath: the kernel's path in the image is required")]
    NoKernelPath,
    #[error("spec.domain.firmware.kernelBoot: microvm has no firmware to boot a disk: set firmware.kernelBoot")]
    MicrovmNeedsKernelBoot,
    #[error("spec.domain.firmware.bootloader.efi: microvm has no EFI firmware")]
    MicrovmEfi,
    #[error("spec.domain.firmware.bootloader.bios: Arm64 does not support bios boot, please change to uefi boot")]
    Arm64Bios,
    /// s390x boots through the s390-ccw firmware built into QEMU (or a kernel loaded
    /// directly); there is no UEFI for it.
    #[error("spec.domain.firmware.bootloader.efi: s390x has no UEFI (QEMU's s390-ccw firmware boots it): remove bootloader.efi")]
    S390xEfi,
    #[error("spec.domain.features.smm: EFI SecureBoot requires SMM, which is disabled")]
    SecureBootWithoutSmm,
    /// KubeVirt's (and libvirt's) serial rule; the serial becomes QEMU's SMBIOS type 1 serial.
    #[error("spec.domain.firmware.serial: {serial:?} must be made up of the characters [A-Za-z0-9_.+-] and be at most 256 long")]
    Serial { serial: String },
    /// The UUID becomes QEMU's `-uuid` and the guest's SMBIOS system UUID.
    #[error(
        "spec.domain.firmware.uuid: {uuid:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
    )]
    Uuid { uuid: String },
}

impl FirmwareError {
    /// The KubeVirt field path the error is about.
    pub fn field(&self) -> &str {
        match self {
            FirmwareError::KernelBootNoContainer => "spec.domain.firmware.kernelBoot.container",
            FirmwareError::NoKernelPath => "spec.domain.firmware.kernelBoot.container.kernelPath",
            FirmwareError::MicrovmNeedsKernelBoot => "spec.domain.firmware.kernelBoot",
            FirmwareError::MicrovmEfi => "spec.domain.firmware.bootloader.efi",
            FirmwareError::Arm64Bios => "spec.domain.firmware.bootloader.bios",
            FirmwareError::S390xEfi => "spec.domain.firmware.bootloader.efi",
            FirmwareError::SecureBootWithoutSmm => "spec.domain.features.smm",
            FirmwareError::Serial { .. } => "spec.domain.firmware.serial",
            FirmwareError::Uuid { .. } => "spec.domain.firmware.uuid",
        }
    }
}

/// Firmware, ACPI, the SMBIOS UUID and serial.
pub(super) type FirmwareParts = (Firmware, bool, Option<String>, Option<String>);

pub(super) fn firmware(ctx: &Ctx) -> Result<FirmwareParts, FirmwareError> {
    let domain = &ctx.vmi.spec.domain;
    let (env, microvm) = (ctx.env, ctx.microvm);
    // Firmware.
    let fw = domain.firmware.clone().unwrap_or_default();
    let efi = fw.bootloader.as_ref().and_then(|b| b.efi.clone());
    if ctx.profile == Profile::S390Ccw && efi.is_some() {
        return Err(FirmwareError::S390xEfi);
    }
    let firmware = if let Some(kb) = &fw.kernel_boot {
        let Some(c) = &kb.container else {
            return Err(FirmwareError::KernelBootNoContainer);
        };
        let Some(kernel_path) = c.kernel_path.clone().filter(|p| !p.is_empty()) else {
            return Err(FirmwareError::NoKernelPath);
        };
        let initrd_path = c.initrd_path.clone().filter(|p| !p.is_empty());
        let mut cmdline = kb.kernel_args.clone().unwrap_or_default();
        if microvm && env.accelerator == Accelerator::Tcg && !cmdline.contains("tsc_early_khz=") {
            // microvm has no PIT/HPET calibration source that works under TCG: without these
            // hints the kernel hangs after "Marking TSC unstable" (docs/ENVIRONMENT.md).
            let khz = env.host_tsc_khz;
            cmdline = format!("{cmdline} tsc_early_khz={khz} lpj={}", khz * 2)
                .trim()
                .to_string();
        }
        let kdir = crate::api::VmiDir::unchecked(&env.dir).kernel_boot_dir();
        Firmware::Kernel(KernelBoot {
            kernel: kdir.join("kernel"),
            initrd: initrd_path.as_ref().map(|_| kdir.join("initrd")),
            cmdline,
            image: Some(c.image.clone()),
            kernel_path,
            initrd_path,
            prefer_vmlinux: efi.is_none(),
        })
    } else if microvm {
        return Err(FirmwareError::MicrovmNeedsKernelBoot);
    } else if let Some(efi) = &efi {
        let secure_boot = efi.secure_boot.unwrap_or(true);
        // Debian's ovmf (x86_64) and qemu-efi-aarch64 (AAVMF: its `.ms` variable store has
        // Secure Boot on with Microsoft's keys; arm needs no SMM for it).
        let (dir, code, vars) = match (ctx.profile, secure_boot) {
            (Profile::Virt, true) => (&env.aavmf_dir, "AAVMF_CODE.ms.fd", "AAVMF_VARS.ms.fd"),
            (Profile::Virt, false) => (&env.aavmf_dir, "AAVMF_CODE.fd", "AAVMF_VARS.fd"),
            (_, true) => (
                &env.ovmf_dir,
                "OVMF_CODE_4M.secboot.fd",
                "OVMF_VARS_4M.ms.fd",
            ),
            (_, false) => (&env.ovmf_dir, "OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
        };
        Firmware::Efi {
            code: dir.join(code),
            vars_template: dir.join(vars),
            vars: crate::api::VmiDir::unchecked(&env.dir).ovmf_vars(),
            secure_boot,
        }
    } else if ctx.profile == Profile::Virt {
        return Err(FirmwareError::Arm64Bios);
    } else {
        Firmware::Bios
    };
    if microvm && efi.is_some() {
        return Err(FirmwareError::MicrovmEfi);
    }
    let acpi = domain
        .features
        .as_ref()
        .and_then(|f| f.acpi.as_ref())
        .is_none_or(|a| a.enabled != Some(false));
    if ctx.profile != Profile::Virt
        && matches!(
            firmware,
            Firmware::Efi {
                secure_boot: true,
                ..
            }
        )
    {
        let smm_off = domain
            .features
            .as_ref()
            .and_then(|f| f.smm.as_ref())
            .is_some_and(|s| s.enabled == Some(false));
        if smm_off {
            return Err(FirmwareError::SecureBootWithoutSmm);
        }
    }
    // Admission checks both; a VMI that bypassed it must not reach QEMU's command line.
    if let Some(serial) = &fw.serial {
        if !kubevirt_api::names::serial_chars_ok(serial)
            || serial.chars().count() > kubevirt_api::names::SERIAL_MAX
        {
            return Err(FirmwareError::Serial {
                serial: serial.clone(),
            });
        }
    }
    if let Some(uuid) = &fw.uuid {
        // QEMU's `qemu_uuid_parse` reads only the 36-character hyphenated form.
        if uuid.len() != 36 || uuid::Uuid::parse_str(uuid).is_err() {
            return Err(FirmwareError::Uuid { uuid: uuid.clone() });
        }
    }
    Ok((firmware, acpi, fw.uuid.clone(), fw.serial.clone()))
}

#[cfg(test)]
mod tests {
    use super::super::{convert, SpecError};
    use super::*;

    fn firmware_err(spec: &str) -> FirmwareError {
        match convert(spec) {
            Err(SpecError::Firmware(e)) => {
                assert!(
                    e.to_string().starts_with(&format!("{}: ", e.field())),
                    "{e}"
                );
                e
            }
            other => panic!("not a firmware error: {other:?}"),
        }
    }

    #[test]
    fn hostile_serials_and_uuids_are_refused() {
        for bad in ["a,b", "x=y", "../etc", "a/b", "a\\u0000b", ""] {
            let e = firmware_err(&format!(
                "  domain:\n    memory: {{guest: 64Mi}}\n    firmware: {{serial: \"{bad}\"}}\n"
            ));
            assert!(matches!(e, FirmwareError::Serial { .. }), "{bad:?}: {e}");
        }
        let e =
            firmware_err("  domain:\n    memory: {guest: 64Mi}\n    firmware: {serial: \"a,b\"}\n");
        assert_eq!(
            e.to_string(),
            r#"spec.domain.firmware.serial: "a,b" must be made up of the characters [A-Za-z0-9_.+-] and be at most 256 long"#
        );
        let long = "a".repeat(257);
        let e = firmware_err(&format!(
            "  domain:\n    memory: {{guest: 64Mi}}\n    firmware: {{serial: {long}}}\n"
        ));
        assert!(matches!(e, FirmwareError::Serial { .. }));
        let e = firmware_err(
            "  domain:\n    memory: {guest: 64Mi}\n    firmware: {uuid: \"not-a-uuid,x\"}\n",
        );
        assert_eq!(
            e,
            FirmwareError::Uuid {
                uuid: "not-a-uuid,x".into()
            }
        );
        assert_eq!(
            e.to_string(),
            r#"spec.domain.firmware.uuid: "not-a-uuid,x" is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"#
        );
        // The braced and the undashed forms parse as UUIDs, but QEMU reads neither.
        for other_form in [
            "{5d307ca9-b3ef-428c-8861-06e72d69f223}",
            "5d307ca9b3ef428c886106e72d69f223",
        ] {
            let e = firmware_err(&format!(
                "  domain:\n    memory: {{guest: 64Mi}}\n    firmware: {{uuid: \"{other_form}\"}}\n"
            ));
            assert!(matches!(e, FirmwareError::Uuid { .. }), "{e}");
        }
        let s = convert("  domain:\n    memory: {guest: 64Mi}\n    firmware: {uuid: 5d307ca9-b3ef-428c-8861-06e72d69f223, serial: e4686d2c-6e8d.A_1+}\n").unwrap();
        assert_eq!(
            s.uuid.as_deref(),
            Some("5d307ca9-b3ef-428c-8861-06e72d69f223")
        );
        assert_eq!(s.smbios_serial.as_deref(), Some("e4686d2c-6e8d.A_1+"));
    }

    #[test]
    fn kernel_boot_and_microvm_rules_say_what_is_wrong() {
        let e = firmware_err("  domain:\n    memory: {guest: 64Mi}\n    firmware: {kernelBoot: {container: {image: k}}}\n");
        assert_eq!(e, FirmwareError::NoKernelPath);
        assert_eq!(
            e.to_string(),
            "spec.domain.firmware.kernelBoot.container.kernelPath: the kernel's path in the image is required"
        );
        let e =
            firmware_err("  domain:\n    machine: {type: microvm}\n    memory: {guest: 64Mi}\n");
        assert_eq!(e, FirmwareError::MicrovmNeedsKernelBoot);
        assert_eq!(
            e.to_string(),
            "spec.domain.firmware.kernelBoot: microvm has no firmware to boot a disk: set firmware.kernelBoot"
        );
        let e = firmware_err("  domain:\n    memory: {guest: 64Mi}\n    firmware: {bootloader: {efi: {}}}\n    features: {smm: {enabled: false}}\n");
        assert_eq!(e, FirmwareError::SecureBootWithoutSmm);
        assert_eq!(
            e.to_string(),
            "spec.domain.features.smm: EFI SecureBoot requires SMM, which is disabled"
        );
    }

    #[test]
    fn secure_boot_needs_smm_and_efi_gets_its_own_vars() {
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    firmware: {bootloader: {efi: {}}}\n    features: {smm: {enabled: false}}\n").unwrap_err();
        assert_eq!(e.field(), "spec.domain.features.smm");
        let s = convert("  domain:\n    memory: {guest: 64Mi}\n    firmware: {bootloader: {efi: {secureBoot: false}}, serial: abc}\n").unwrap();
        assert!(
            matches!(s.firmware, super::Firmware::Efi { secure_boot: false, ref vars, .. } if vars == std::path::Path::new("/d/OVMF_VARS.fd"))
        );
        assert_eq!(s.smbios_serial.as_deref(), Some("abc"));
    }
}
