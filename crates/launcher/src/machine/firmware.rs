//! `spec.domain.firmware` and `features` → [`Firmware`], ACPI, SMBIOS identity.

use super::*;

/// Firmware, ACPI, the SMBIOS UUID and serial.
pub(super) type FirmwareParts = (Firmware, bool, Option<String>, Option<String>);

pub(super) fn firmware(ctx: &Ctx) -> Result<FirmwareParts, SpecError> {
    let domain = &ctx.vmi.spec.domain;
    let (env, microvm) = (ctx.env, ctx.microvm);
    // Firmware.
    let fw = domain.firmware.clone().unwrap_or_default();
    let efi = fw.bootloader.as_ref().and_then(|b| b.efi.clone());
    let firmware = if let Some(kb) = &fw.kernel_boot {
        let kp = "spec.domain.firmware.kernelBoot";
        let Some(c) = &kb.container else {
            return Err(SpecError::new(
                format!("{kp}.container"),
                "kernelBoot needs a container with the kernel",
            ));
        };
        let Some(kernel_path) = c.kernel_path.clone().filter(|p| !p.is_empty()) else {
            return Err(SpecError::new(
                format!("{kp}.container.kernelPath"),
                "the kernel's path in the image is required",
            ));
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
        return Err(SpecError::new(
            "spec.domain.firmware.kernelBoot",
            "microvm has no firmware to boot a disk: set firmware.kernelBoot",
        ));
    } else if let Some(efi) = &efi {
        let secure_boot = efi.secure_boot.unwrap_or(true);
        let (code, vars) = if secure_boot {
            ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
        } else {
            ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
        };
        Firmware::Efi {
            code: env.ovmf_dir.join(code),
            vars_template: env.ovmf_dir.join(vars),
            vars: crate::api::VmiDir::unchecked(&env.dir).ovmf_vars(),
            secure_boot,
        }
    } else {
        Firmware::Bios
    };
    if microvm && efi.is_some() {
        return Err(SpecError::new(
            "spec.domain.firmware.bootloader.efi",
            "microvm has no EFI firmware",
        ));
    }
    let acpi = domain
        .features
        .as_ref()
        .and_then(|f| f.acpi.as_ref())
        .is_none_or(|a| a.enabled != Some(false));
    if matches!(
        firmware,
        Firmware::Efi {
            secure_boot: true,
            ..
        }
    ) {
        let smm_off = domain
            .features
            .as_ref()
            .and_then(|f| f.smm.as_ref())
            .is_some_and(|s| s.enabled == Some(false));
        if smm_off {
            return Err(SpecError::new(
                "spec.domain.features.smm",
                "EFI SecureBoot requires SMM, which is disabled",
            ));
        }
    }
    Ok((firmware, acpi, fw.uuid.clone(), fw.serial.clone()))
}

#[cfg(test)]
mod tests {
    use super::super::convert;

    #[test]
    fn secure_boot_needs_smm_and_efi_gets_its_own_vars() {
        let e = convert("  domain:\n    memory: {guest: 64Mi}\n    firmware: {bootloader: {efi: {}}}\n    features: {smm: {enabled: false}}\n").unwrap_err();
        assert_eq!(e.field, "spec.domain.features.smm");
        let s = convert("  domain:\n    memory: {guest: 64Mi}\n    firmware: {bootloader: {efi: {secureBoot: false}}, serial: abc}\n").unwrap();
        assert!(
            matches!(s.firmware, super::Firmware::Efi { secure_boot: false, ref vars, .. } if vars == std::path::Path::new("/d/OVMF_VARS.fd"))
        );
        assert_eq!(s.smbios_serial.as_deref(), Some("abc"));
    }
}
