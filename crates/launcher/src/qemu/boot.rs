//! Firmware and boot: SeaBIOS (nothing to add), OVMF pflash drives, direct kernel boot.

use super::cpu::push;
use super::opts::{self, Opts, OptsError};
use crate::machine::{Firmware, MachineSpec, Profile};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("OVMF: {0}")]
    Efi(#[source] OptsError),
    #[error("kernelBoot: {0}")]
    Kernel(#[source] OptsError),
}

pub fn render(spec: &MachineSpec, a: &mut Vec<String>) -> Result<(), BootError> {
    match &spec.firmware {
        Firmware::Bios => {}
        Firmware::Efi {
            code,
            vars,
            secure_boot,
            ..
        } => {
            let pflash = |unit: &str| {
                Opts::keyed()
                    .set("if", "pflash")
                    .set("format", "raw")
                    .set("unit", unit)
            };
            push(
                a,
                "-drive",
                pflash("0")
                    .set_path("file", code)
                    .set("readonly", "on")
                    .build()
                    .map_err(BootError::Efi)?,
            );
            push(
                a,
                "-drive",
                pflash("1")
                    .set_path("file", vars)
                    .build()
                    .map_err(BootError::Efi)?,
            );
            // The x86 variable store is SMM-protected; arm's `virt` has no SMM.
            if *secure_boot && spec.profile == Profile::Q35 {
                push(
                    a,
                    "-global",
                    Opts::keyed()
                        .set("driver", "cfi.pflash01")
                        .set("property", "secure")
                        .set("value", "on")
                        .build()
                        .map_err(BootError::Efi)?,
                );
            }
        }
        Firmware::Kernel(k) => {
            // -kernel/-initrd/-append are stored as plain strings by QEMU (no option parsing).
            push(
                a,
                "-kernel",
                opts::plain_path("-kernel", &k.kernel).map_err(BootError::Kernel)?,
            );
            if let Some(i) = &k.initrd {
                push(
                    a,
                    "-initrd",
                    opts::plain_path("-initrd", i).map_err(BootError::Kernel)?,
                );
            }
            if !k.cmdline.is_empty() {
                push(
                    a,
                    "-append",
                    opts::plain("-append", &k.cmdline).map_err(BootError::Kernel)?,
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_spec;
    use super::*;
    use crate::machine::KernelBoot;
    use std::path::PathBuf;

    #[test]
    fn efi_paths_are_escaped() {
        let mut s = test_spec();
        s.firmware = Firmware::Efi {
            code: "/o,x/CODE.fd".into(),
            vars_template: "/o/VARS.fd".into(),
            vars: "/d/OVMF_VARS.fd".into(),
            secure_boot: true,
        };
        let mut a = vec![];
        render(&s, &mut a).unwrap();
        assert_eq!(
            a[1],
            "if=pflash,format=raw,unit=0,file=/o,,x/CODE.fd,readonly=on"
        );
        assert_eq!(a[5], "driver=cfi.pflash01,property=secure,value=on");
    }

    #[test]
    fn a_kernel_cmdline_with_a_line_break_is_refused() {
        let mut s = test_spec();
        s.firmware = Firmware::Kernel(KernelBoot {
            kernel: PathBuf::from("/d/kernel-boot/kernel"),
            initrd: None,
            cmdline: "console=ttyS0\n-device x".into(),
            image: None,
            kernel_path: "/boot/vmlinuz".into(),
            initrd_path: None,
            prefer_vmlinux: false,
        });
        assert!(matches!(
            render(&s, &mut vec![]).unwrap_err(),
            BootError::Kernel(_)
        ));
    }
}
