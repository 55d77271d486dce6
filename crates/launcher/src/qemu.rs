//! The QEMU backend: `MachineSpec` → `qemu-system-x86_64` argv for the q35 and microvm
//! profiles, `qemu-system-aarch64` argv for arm64's `virt`, `qemu-system-s390x` argv for
//! s390x's `s390-ccw-virtio` ([`binary`]).
//!
//! Every machine starts paused (`-S`) with no default devices, QEMU's seccomp sandbox and a QMP
//! socket; the launcher continues it over QMP once it is attached. `-no-shutdown` keeps QEMU
//! alive after the guest powers off, so the launcher sees the SHUTDOWN event, can turn it into a
//! reboot (soft reboot) and quits QEMU itself.
//!
//! Every option string is built by [`opts::Opts`], which escapes values and refuses what QEMU
//! would misread (security issue 10); one module per device family renders its arguments and
//! has its own error type.

pub mod boot;
pub mod cpu;
pub mod devices;
pub mod disks;
pub mod nics;
pub mod opts;

use crate::machine::{Arch, MachineSpec};

pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// arm64 guests (Debian's `qemu-system-arm` package).
pub const QEMU_BINARY_AARCH64: &str = "qemu-system-aarch64";
/// s390x guests (Debian's `qemu-system-misc` package).
pub const QEMU_BINARY_S390X: &str = "qemu-system-s390x";

/// The emulator of a guest architecture; `x86_64` is the launcher's `--qemu` (default
/// [`QEMU_BINARY`]), which stays overridable for tests and benchmarks.
pub fn binary(arch: Arch, x86_64: &str) -> &str {
    match arch {
        Arch::Amd64 => x86_64,
        Arch::Arm64 => QEMU_BINARY_AARCH64,
        Arch::S390x => QEMU_BINARY_S390X,
    }
}

/// Where Debian's `qemu-efi-aarch64` puts AAVMF, arm64's UEFI (`MachineEnv::aavmf_dir`'s
/// default).
pub const AAVMF_DIR: &str = "/usr/share/AAVMF";

/// The s390-ccw firmware Debian's `qemu-system-misc` ships: `qemu-system-s390x` refuses to
/// start without it.
pub const S390_CCW_FIRMWARE: &str = "/usr/share/qemu/s390-ccw.img";

/// Whether this host can run guests of `arch`: the emulator ([`binary`], default x86_64
/// binary) on `PATH`, for arm64 AAVMF (UEFI, KubeVirt's arm64 boot), for s390x the s390-ccw
/// firmware QEMU loads at every start. `Err` says what is missing. The node agent advertises the result ([`Arch::node_label`]).
pub fn can_run(arch: Arch) -> Result<(), String> {
    let bin = binary(arch, QEMU_BINARY);
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    if !on_path {
        return Err(format!("{bin} is not installed"));
    }
    if arch == Arch::Arm64 {
        let code = std::path::Path::new(AAVMF_DIR).join("AAVMF_CODE.fd");
        if !code.is_file() {
            return Err(format!("{} is missing (qemu-efi-aarch64)", code.display()));
        }
    }
    if arch == Arch::S390x && !std::path::Path::new(S390_CCW_FIRMWARE).is_file() {
        return Err(format!("{S390_CCW_FIRMWARE} is missing (qemu-system-misc)"));
    }
    Ok(())
}

/// A machine property QEMU's argv cannot carry safely; names the device family and the value.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("machine/CPU/memory: {0}")]
    Cpu(#[from] cpu::CpuError),
    #[error("firmware: {0}")]
    Boot(#[from] boot::BootError),
    #[error("devices: {0}")]
    Device(#[from] devices::DeviceError),
    #[error("disks: {0}")]
    Disk(#[from] disks::DiskError),
    #[error("network: {0}")]
    Nic(#[from] nics::NicError),
}

pub fn render(spec: &MachineSpec) -> Result<Vec<String>, RenderError> {
    let mut a: Vec<String> = Vec::new();
    cpu::render(spec, &mut a)?;
    devices::render_control(spec, &mut a)?;
    boot::render(spec, &mut a)?;
    devices::render_console(spec, &mut a)?;
    disks::render(spec, &mut a)?;
    nics::render(spec, &mut a)?;
    devices::render_other(spec, &mut a)?;
    cpu::render_memory_hotplug(spec, &mut a)?;
    Ok(a)
}

/// A live migration's target: the same argv, waiting for `migrate-incoming` instead of
/// starting paused. `-S` goes: with `-incoming` QEMU runs no vCPU before the migration
/// completes, and without `-S` it then resumes the guest itself exactly when the source was
/// running (a guest paused at the source stays paused), which the launcher reads back.
pub fn as_migration_target(argv: &mut Vec<String>) {
    argv.retain(|a| a != "-S");
    argv.extend(["-incoming".to_string(), "defer".to_string()]);
}

/// A VMI started from a saved guest state (memory snapshot, `memstate.rs`): the same argv,
/// still paused (`-S`: the launcher continues it once the state is loaded), waiting for
/// `migrate-incoming fd:...`.
pub fn as_restore_target(argv: &mut Vec<String>) {
    argv.extend(["-incoming".to_string(), "defer".to_string()]);
}

/// A small q35 machine with nothing attached, for the family modules' unit tests.
#[cfg(test)]
pub(crate) fn test_spec() -> MachineSpec {
    use crate::accel::Accelerator;
    use crate::machine::{CpuSpec, Firmware, MemorySpec, Profile};
    MachineSpec {
        vmi: "ns/t".into(),
        uid: None,
        arch: Arch::Amd64,
        profile: Profile::Q35,
        accelerator: Accelerator::Tcg,
        cpu: CpuSpec {
            sockets: 1,
            max_sockets: 1,
            cores: 1,
            threads: 1,
            model: "max".into(),
            features: vec![],
        },
        memory: MemorySpec {
            bytes: 64 << 20,
            hugepages: None,
            hotplug: None,
        },
        firmware: Firmware::Bios,
        uuid: None,
        smbios_serial: None,
        acpi: true,
        disks: vec![],
        nics: vec![],
        serial_console: false,
        vnc: false,
        tablet: false,
        rng: false,
        balloon: None,
        watchdog: None,
        start_paused: false,
        termination_grace_period_seconds: 30,
        dir: "/d".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_target_waits_for_the_incoming_migration_instead_of_starting_paused() {
        let spec = test_spec();
        let argv = render(&spec).unwrap();
        assert!(argv.iter().any(|a| a == "-S"));
        let mut target = argv.clone();
        as_migration_target(&mut target);
        assert!(!target.iter().any(|a| a == "-S"), "{target:?}");
        assert_eq!(target[target.len() - 2..], ["-incoming", "defer"]);
        // Everything else (the machine the guest state must fit) is the source's.
        let without: Vec<&String> = argv.iter().filter(|a| *a != "-S").collect();
        assert_eq!(
            without,
            target[..target.len() - 2].iter().collect::<Vec<_>>()
        );
    }

    /// A restore from a saved state stays paused (`-S`) while the state loads: the launcher
    /// continues the guest itself, or leaves it paused as it was saved.
    #[test]
    fn a_restore_waits_for_its_state_and_stays_paused_until_the_launcher_continues_it() {
        let argv = render(&test_spec()).unwrap();
        let mut restore = argv.clone();
        as_restore_target(&mut restore);
        assert!(restore.iter().any(|a| a == "-S"), "{restore:?}");
        assert_eq!(restore[..argv.len()], argv[..]);
        assert_eq!(restore[argv.len()..], ["-incoming", "defer"]);
    }
}
